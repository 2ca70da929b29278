"""Bad input never stops a run: truncated, zero-byte, non-video files, missing cameras; views of another
resolution or frame rate are converted rather than dropped."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from shard_helpers import group_metas

from mv2mae.config import load_config
from mv2mae.data import DataConfig, build_eval_loader, build_pretrain_loader
from mv2mae.model.config import ModelConfig
from mv2mae.preprocess.decode import ffmpeg_exe
from mv2mae.preprocess.pipeline import run
from mv2mae.preprocess.synth import generate
from mv2mae.shards.schema import read_index
from mv2mae.train.distributed import setup
from mv2mae.train.tasks import ShardSource

VID = "nturgb+d_rgb"


def _video(root: Path, cam: int, subject: int, action: int) -> Path:
    return root / VID / f"S001C{cam:03d}P{subject:03d}R001A{action:03d}_rgb.avi"


def _reencode(path: Path, *filters: str) -> None:
    tmp = path.with_name("tmp_" + path.name)
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", "-i", str(path), "-vf", ",".join(filters),
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", str(tmp)], check=True)
    tmp.replace(path)


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("damaged")
    generate(root, classes=3, cameras=3, subjects=2, replications=1, setups=1, frames=(24, 30), size=(64, 48),
             seed=0, workers=2, progress=False)
    truncated = _video(root, 1, 1, 1)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    _video(root, 1, 1, 2).write_bytes(b"")
    _video(root, 2, 1, 3).write_text("this is not a video\n")
    _video(root, 3, 2, 1).unlink()  # a missing camera: 2 remain, the group is kept
    _reencode(_video(root, 2, 2, 2), "scale=80:60")  # another resolution: converted, kept
    _video(root, 1, 2, 3).unlink()
    _reencode(_video(root, 3, 2, 3), "fps=25")  # another frame rate: resampled, so C002 keeps company
    shutil.copy(_video(root, 1, 1, 3), _video(root, 1, 9, 1))  # a lone camera of another group
    return root


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mv2mae.cli", "preprocess", *args], capture_output=True, text=True)


def test_bad_inputs_are_recorded_and_the_run_goes_on(damaged, tmp_path):
    out = tmp_path / "out"
    proc = _cli("synth", "--root", str(damaged), "--out", str(out), "--size", "48", "--workers", "2",
                "--no-progress")
    assert proc.returncode == 0, proc.stderr
    # one-camera groups are kept: a valid finetuning or test video each (pretraining skips them)
    assert "7 group(s) written (1 with one camera" in proc.stderr and "0 failed" in proc.stderr, proc.stderr[-400:]
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    by_file = {Path(f["file"]).name: f["reason"] for f in failures}
    assert "truncated or damaged" in by_file["S001C001P001R001A001_rgb.avi"]
    assert "empty file" in by_file["S001C001P001R001A002_rgb.avi"]
    assert "not a readable video" in by_file["S001C002P001R001A003_rgb.avi"]
    assert "S001C002P002R001A002_rgb.avi" not in by_file and "S001C003P002R001A003_rgb.avi" not in by_file
    assert "camera 2 missing" in by_file["S001C002P009R001A001_rgb.avi"]
    # a missing view is recorded even when its group is kept (or fails later for another reason)
    assert "camera 3 missing" in by_file["S001C003P002R001A001_rgb.avi"]
    assert "camera 1 missing" in by_file["S001C001P002R001A003_rgb.avi"]
    index = read_index(out)
    cams = {k: None for e in index.shards for k in e.keys}
    assert sorted(cams) == ["S001P001R001A001", "S001P001R001A002", "S001P001R001A003",
                            "S001P002R001A001", "S001P002R001A002", "S001P002R001A003", "S001P009R001A001"]
    metas = group_metas(out)
    assert metas["S001P001R001A001"].cameras == [2, 3]
    assert metas["S001P002R001A001"].cameras == [1, 2]
    assert metas["S001P002R001A002"].cameras == [1, 2, 3] and metas["S001P002R001A002"].size == [64, 48]
    assert metas["S001P002R001A003"].cameras == [2, 3] and metas["S001P002R001A003"].fps == 30.0
    assert metas["S001P009R001A001"].cameras == [1]
    assert sum(e.camera_sets.get("1", 0) + e.camera_sets.get("2", 0) for e in index.shards) == 1
    # a re-run skips what is done and reports the same failures
    before = (out / "failures.jsonl").read_bytes()
    again = run("synth", damaged, out, size=48, workers=1)
    assert (again.written, again.skipped, again.failed) == (0, 7, 0)
    assert (out / "failures.jsonl").read_bytes() == before


def test_one_camera_groups_serve_finetuning_and_evaluation_not_pretraining(damaged, tmp_path):
    """The one-camera group is a test video like any other; pretraining counts and skips it."""
    out = tmp_path / "out"
    run("synth", damaged, out, size=48, workers=2)
    model = ModelConfig(frames=4, image_size=32, tubelet=2, patch=16)
    options = DataConfig(root=str(out), protocol="all", stride=2, workers=0, eval_clips=1, eval_crops=1)
    videos = [v for b in build_eval_loader(model, options, batch_size=32) for v in b["video_id"]]
    assert "S001P009R001A001/c001" in videos and len(videos) == 14
    cfg = load_config("tiny", "pretrain", [f"data.root={out}", "data.protocol=all", "data.workers=0",
                                           "model.image_size=32"])
    source = ShardSource(cfg, setup("cpu"), "pretrain")
    assert source.samples_per_epoch() == 6  # 7 groups, 1 of them with one camera
    assert "1 group(s) with fewer than 2 of those cameras skipped" in source.describe()
    loader = build_pretrain_loader(model, options, batch_size=8, seed=0)
    keys = {k for _, b in zip(range(2), loader, strict=False) for k in b["key"]}
    assert keys and "S001P009R001A001" not in keys


def test_nothing_usable_exits_nonzero_with_a_clear_message(tmp_path):
    root = tmp_path / "broken"
    (root / VID).mkdir(parents=True)
    (root / "classes.txt").write_text("wave\n")
    for cam in (1, 2, 3):
        _video(root, cam, 1, 1).write_text("garbage")
    proc = _cli("synth", "--root", str(root), "--out", str(tmp_path / "out"), "--workers", "1", "--no-progress")
    assert proc.returncode != 0
    assert "nothing could be written" in proc.stderr
    lines = (tmp_path / "out" / "failures.jsonl").read_text().splitlines()
    assert len(lines) == 4  # three unreadable files and the group they leave empty


def test_not_a_dataset_folder_is_a_one_line_error(tmp_path):
    proc = _cli("synth", "--root", str(tmp_path), "--out", str(tmp_path / "out"), "--no-progress")
    assert proc.returncode != 0 and "classes.txt" in proc.stderr
