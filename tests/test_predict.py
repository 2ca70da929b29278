"""``mv2mae predict``: a finetuned classifier on video files, sampled as eval samples stored groups, with
the run's stride kept in time whatever the video's frame rate, and views of one recording fused."""

import csv
import json

import cv2
import numpy as np
import pytest
import torch
from fixtures_data import session_synth_data
from train_helpers import TINY_MODEL
from typer.testing import CliRunner

from mv2mae.cli import app
from mv2mae.config import load_config
from mv2mae.eval.predict import Predictor
from mv2mae.model.checkpoint import save_model_state
from mv2mae.model.classifier import VideoClassifier

torch.set_num_threads(2)
CLASSES = ["wave", "punch", "kick"]
DATASET_FPS = 15.0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A classifier as finetuning saves it (run config, class names, stored frame rate), its weights
    moved off their near-zero head initialisation so that different pixels give different scores."""
    cfg = load_config("tiny", "finetune", [*TINY_MODEL, "data.stride=2", "data.eval_clips=1", "data.eval_crops=2"])
    torch.manual_seed(0)
    model = VideoClassifier(cfg.model, len(CLASSES))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    path = tmp_path_factory.mktemp("ck") / "classifier.pt"
    save_model_state(path, model, cfg.model, run_config=cfg.to_dict(), classes=CLASSES, fps=DATASET_FPS)
    return path


def moving_frames(count: int, size=(48, 64)) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size[0], size[1] + 4 * count, 3), dtype=np.uint8)
    return [np.ascontiguousarray(base[:, 4 * t:4 * t + size[1]]) for t in range(count)]


def write_video(path, frames, fps: float) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (frames[0].shape[1], frames[0].shape[0]))
    for frame in frames:
        writer.write(frame)
    writer.release()


def test_the_stride_is_kept_in_time_whatever_the_frame_rate(checkpoint, tmp_path):
    """The same motion filmed at 30 fps and at the dataset's 15 fps: the run's stride (2 stored frames at
    15 fps) becomes 4 frames of the 30 fps video, so both are sampled at the same instants and score alike."""
    frames = moving_frames(60)
    write_video(tmp_path / "fast.avi", frames, 2 * DATASET_FPS)
    write_video(tmp_path / "slow.avi", frames[::2], DATASET_FPS)
    predictor = Predictor.load(checkpoint)
    fast, slow = predictor.probabilities(tmp_path / "fast.avi"), predictor.probabilities(tmp_path / "slow.avi")
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-7)
    assert fast.shape == (len(CLASSES),) and fast.sum() == pytest.approx(1.0)
    assert predictor.clips(tmp_path / "fast.avi").shape == (1 * 2, 3, 4, 32, 32)  # 1 clip × 2 crops, as trained
    shifted = predictor.probabilities(tmp_path / "fast.avi", crops=1)
    assert not np.allclose(shifted, fast, atol=1e-6)  # the pixels matter: other crops, other scores


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    return session_synth_data(tmp_path_factory)


def test_cli_predicts_a_folder_and_fuses_the_views_of_one_recording(synth_data, checkpoint, tmp_path):
    raw = synth_data.parent / "raw" / "nturgb+d_rgb"
    views = sorted(raw.glob("S001C00?P001R001A001_rgb.avi"))
    assert len(views) == 3
    runner = CliRunner()
    res = runner.invoke(app, ["predict", *map(str, views), "--checkpoint", str(checkpoint), "--views", "--top-k", "2",
                              "--device", "cpu", "--out", str(tmp_path / "p.json")])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "p.json").read_text())["predictions"]
    assert [r["video"] for r in rows] == [*map(str, views), "fused"]
    assert all(len(r["top"]) == 2 and {t["class"] for t in r["top"]} <= set(CLASSES) for r in rows)
    predictor = Predictor.load(checkpoint)
    fused = np.mean([predictor.probabilities(v) for v in views], axis=0)
    assert rows[-1]["top"][0] == {"class": CLASSES[int(fused.argmax())], "score": round(float(fused.max()), 6)}
    assert f"fused: {rows[-1]['top'][0]['class']}" in res.output

    folder = tmp_path / "videos"
    folder.mkdir()
    for v in views[:2]:
        (folder / v.name).write_bytes(v.read_bytes())
    (folder / "notes.txt").write_text("not a video")
    res = runner.invoke(app, ["predict", str(folder), "--checkpoint", str(checkpoint), "--device", "cpu",
                              "--out", str(tmp_path / "p.csv")])
    assert res.exit_code == 0, res.output
    with (tmp_path / "p.csv").open() as f:
        table = list(csv.DictReader(f))
    assert {r["video"] for r in table} == {str(folder / v.name) for v in views[:2]}  # separate videos, no fusion
    assert [int(r["rank"]) for r in table[:3]] == [1, 2, 3]

    res = runner.invoke(app, ["predict", str(folder / "notes.txt"), "--checkpoint", str(checkpoint), "--device", "cpu"])
    assert res.exit_code == 1 and "notes.txt: cannot open video" in res.output
