"""`mv2mae synth`: a tiny dataset is rendered once per module (real ffmpeg encoding, real OpenCV
decoding) and checked against its own ground truth."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from mv2mae.cli import app
from mv2mae.preprocess.merge import merge
from mv2mae.preprocess.pipeline import run
from mv2mae.preprocess.synth import ACTION_NAMES, MIRROR_PAIRS, SynthConfig, generate
from mv2mae.preprocess.synth.actions import ACTIONS, flip_classes, perform
from mv2mae.preprocess.synth.cameras import make_rig
from mv2mae.preprocess.synth.generate import plan_group, render_frames
from mv2mae.preprocess.synth.skeleton import NTU_JOINTS, J, forward_kinematics, make_body, place
from mv2mae.shards.schema import read_index

NTU_NAME = re.compile(r"^S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})_rgb\.avi$")
TINY = dict(classes=4, cameras=3, subjects=1, replications=2, setups=1, frames=(24, 32), size=(160, 120), seed=7)


def parse_group_key(key: str) -> tuple[int, int, int, int]:
    """``'S001P002R001A013'`` -> (setup, subject, replication, action)."""
    s, p, r, a = (int(g) for g in re.fullmatch(r"S(\d{3})P(\d{3})R(\d{3})A(\d{3})", key).groups())
    return s, p, r, a


def render_world_frame(cfg: SynthConfig, plan, camera_id: int, t: int, **flags: bool) -> np.ndarray:
    """World frame ``t`` as camera ``camera_id`` saw it, before encoding: the ground truth of its video."""
    return next(render_frames(cfg, plan, make_rig(cfg.cameras, cfg.size)[camera_id - 1], [t], **flags))


def read_video(path: Path) -> np.ndarray:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    assert frames, f"{path}: no frames could be decoded"
    return np.stack(frames)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    summary = generate(out, workers=1, progress=False, **TINY)
    assert summary["videos"] == 4 * 2 * 3 and summary["groups"] == 8
    return out


@pytest.fixture(scope="module")
def truth(dataset: Path) -> dict:
    return json.loads((dataset / "ground_truth.json").read_text())


def read_skeleton(path: Path) -> np.ndarray:
    """NTU text skeleton of a single-body file -> (frames, 25, 12)."""
    lines = path.read_text().split("\n")
    frames, pos, out = int(lines[0]), 1, []
    for _ in range(frames):
        assert lines[pos] == "1" and len(lines[pos + 1].split()) == 10 and lines[pos + 2] == "25"
        out.append([[float(v) for v in lines[pos + 3 + j].split()] for j in range(25)])
        pos += 3 + 25
    return np.array(out)


def video_path(root: Path, key: str, cam: str) -> Path:
    return root / "nturgb+d_rgb" / f"{key[:4]}{cam}{key[4:]}_rgb.avi"


def project(camera: dict, points: np.ndarray) -> np.ndarray:
    """Independent pinhole projection from the ground-truth camera parameters."""
    cam = points @ np.array(camera["R"]).T + np.array(camera["t"])
    uv = cam @ np.array(camera["K"]).T
    return uv[..., :2] / uv[..., 2:3]


def test_layout_names_and_classes(dataset: Path, truth: dict) -> None:
    videos = sorted(p.name for p in (dataset / "nturgb+d_rgb").iterdir())
    assert len(videos) == 24
    for name in videos:
        s, c, p, r, a = (int(g) for g in NTU_NAME.match(name).groups())
        assert s == 1 and 1 <= c <= 3 and p == 1 and 1 <= r <= 2 and 1 <= a <= 4
        assert (dataset / "nturgb+d_skeletons" / f"{name[:-8]}.skeleton").is_file()
    assert (dataset / "classes.txt").read_text().splitlines() == ACTION_NAMES[:4]
    assert len(truth["groups"]) == 8 and set(truth["cameras"]) == {"C001", "C002", "C003"}
    for key, group in truth["groups"].items():
        s, p, r, a = parse_group_key(key)
        assert group["label"] == a - 1 and (group["subject"], group["replication"]) == (p, r)
    # As in NTU, the subject faces a different camera in each replication.
    facing = {g["replication"]: g["facing_camera"] for g in truth["groups"].values()}
    assert facing == {1: 3, 2: 2}


def test_views_are_not_frame_aligned(truth: dict) -> None:
    limit = SynthConfig.from_json(truth["arguments"]).max_misalignment
    spread = []
    for group in truth["groups"].values():
        world = group["world_frames"]
        starts = [c["offset"] for c in group["cameras"].values()]
        ends = [world - c["offset"] - c["frames"] for c in group["cameras"].values()]
        assert min(starts) == 0 and min(ends) == 0 and max(starts) <= limit and max(ends) <= limit
        assert len(group["joints"]) == world
        spread.append(max(starts) + max(ends))
    assert max(spread) > 0


def test_videos_decode_to_expected_frames_and_size(dataset: Path, truth: dict) -> None:
    for key, group in truth["groups"].items():
        for cam, view in group["cameras"].items():
            video = read_video(video_path(dataset, key, cam))
            assert video.shape == (view["frames"], 120, 160, 3), (key, cam)


def test_deterministic_across_runs_and_workers(dataset: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path), "--classes", "4", "--subjects", "1",
                                      "--frames", "24:32", "--size", "160x120", "--seed", "7", "--workers", "2"])
    assert result.exit_code == 0, result.output
    first = sorted(p.relative_to(dataset) for p in dataset.rglob("*") if p.is_file())
    second = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert first == second
    for rel in first:
        if rel.name != "ground_truth.json":  # its arguments differ by nothing but are compared below
            assert (dataset / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel
    a, b = (json.loads((d / "ground_truth.json").read_text()) for d in (dataset, tmp_path))
    assert a == b


def test_projection_matches_drawn_figure_and_skeleton(dataset: Path, truth: dict) -> None:
    cfg = SynthConfig.from_json(truth["arguments"])
    names = truth["joint_names"]
    ntu_rows = [names.index(ours) for _, ours in NTU_JOINTS]
    hits = total = 0
    for key, group in truth["groups"].items():
        plan = plan_group(cfg, *parse_group_key(key))
        for cam, view in group["cameras"].items():
            camera, cam_id = truth["cameras"][cam], int(cam[1:])
            video = read_video(video_path(dataset, key, cam))
            skeleton = read_skeleton(dataset / "nturgb+d_skeletons" / f"{key[:4]}{cam}{key[4:]}.skeleton")
            assert skeleton.shape[0] == view["frames"]
            for i in (0, view["frames"] // 2, view["frames"] - 1):
                t = view["offset"] + i
                uv = project(camera, np.array(group["joints"][t]))
                np.testing.assert_allclose(skeleton[i, :, 5:7], uv[ntu_rows], atol=0.05)
                empty = render_world_frame(cfg, plan, cam_id, t, figure=False, noise=False)
                diff = np.abs(video[i].astype(int) - empty).sum(-1).astype(np.uint8)
                diff = cv2.medianBlur(diff, 3)
                px = np.round(uv).astype(int)
                hits += int((diff[px[:, 1], px[:, 0]] > 40).sum())
                total += len(px)
                # Away from the figure (its box grown by a margin) the frame is the empty room
                # (sum of |B|+|G|+|R| differences; x264 at this tiny size leaves ~3 per channel).
                margin = 20
                box = np.zeros(diff.shape, bool)
                box[max(px[:, 1].min() - margin, 0):px[:, 1].max() + margin,
                    max(px[:, 0].min() - margin, 0):px[:, 0].max() + margin] = True
                assert diff[~box].mean() < 14, (key, cam, i)  # codec error only
    assert hits / total > 0.9, hits / total


def test_offsets_match_the_frames_in_the_files(dataset: Path, truth: dict) -> None:
    """Decoded frame i of a camera is world frame offset + i, not its neighbours."""
    cfg = SynthConfig.from_json(truth["arguments"])
    ratios = []
    for key, group in truth["groups"].items():
        plan = plan_group(cfg, *parse_group_key(key))
        joints = np.array(group["joints"])
        for cam, view in group["cameras"].items():
            video = read_video(video_path(dataset, key, cam))
            for i in np.linspace(1, view["frames"] - 2, 8).round().astype(int):
                t = view["offset"] + i
                # Compare where the figure is (around its joints at t-1..t+1): the room is the same.
                uv = project(truth["cameras"][cam], joints[t - 1:t + 2].reshape(-1, 3))
                x0, y0 = np.maximum(np.floor(uv.min(0)).astype(int) - 6, 0)
                x1, y1 = np.ceil(uv.max(0)).astype(int) + 6
                clean = {dt: render_world_frame(cfg, plan, int(cam[1:]), t + dt, noise=False)[y0:y1, x0:x1]
                         .astype(float) for dt in (-1, 0, 1)}
                if min(np.abs(clean[0] - clean[dt]).mean() for dt in (-1, 1)) < 2.0:
                    continue  # the figure hardly moves in this view at this instant
                errors = {dt: np.abs(video[i, y0:y1, x0:x1] - clean[dt]).mean() for dt in (-1, 0, 1)}
                assert errors[0] < 9 and errors[0] < min(errors[-1], errors[1]), (key, cam, i, errors)
                ratios.append(errors[0] / min(errors[-1], errors[1]))
    assert len(ratios) >= 8 * 3 * 2 and np.median(ratios) < 0.8, (len(ratios), np.median(ratios))


def _motion_descriptor(action: int, subject_seed: int) -> np.ndarray:
    """Per-joint spread over time of a clip's joints around the pelvis (plus the pelvis path)."""
    rng = np.random.default_rng(subject_seed)
    body = make_body(rng)
    pose = perform(ACTIONS[action], body, 60, rng)
    joints = place(forward_kinematics(body, pose), pose["yaw"], np.zeros(2))
    rel = joints - joints[:, :1]
    rel[:, 0] = joints[:, 0]
    return rel.std(axis=0)


def test_classes_differ_in_motion() -> None:
    descriptors = [_motion_descriptor(a, 1) for a in range(len(ACTIONS))]
    for a in range(len(ACTIONS)):
        for b in range(a + 1, len(ACTIONS)):
            gap = np.linalg.norm(descriptors[a] - descriptors[b])
            assert gap > 0.2, (ACTION_NAMES[a], ACTION_NAMES[b], gap)
        # Another subject's clip is nearest to its own class: motion, not the body, tells classes apart.
        other = _motion_descriptor(a, 2)
        nearest = int(np.argmin([np.linalg.norm(other - d) for d in descriptors]))
        assert nearest == a, (ACTION_NAMES[a], ACTION_NAMES[nearest])


def test_mirror_pairs_move_opposite_sides() -> None:
    for right, left in MIRROR_PAIRS:
        assert ACTION_NAMES[right].replace("right", "left") == ACTION_NAMES[left]
        d_right, d_left = _motion_descriptor(right, 3), _motion_descriptor(left, 3)
        assert np.linalg.norm(d_right - d_left) > 0.15, ACTION_NAMES[right]
        for r_joint, l_joint in (("r_wrist", "l_wrist"), ("r_ankle", "l_ankle")):
            # What one side does in the right-hand version, the other side does in the left one.
            np.testing.assert_allclose(d_right[J[r_joint]].sum(), d_left[J[l_joint]].sum(), rtol=0.35, atol=0.02)
        moving = max((("r_wrist", "l_wrist"), ("r_ankle", "l_ankle")),
                     key=lambda pair: abs(d_right[J[pair[0]]].sum() - d_right[J[pair[1]]].sum()))
        gap = d_right[J[moving[0]]].sum() - d_right[J[moving[1]]].sum()
        assert abs(gap) > 0.1 and np.sign(gap) == -np.sign(d_left[J[moving[0]]].sum() - d_left[J[moving[1]]].sum())


def test_the_class_swap_table_is_recorded_where_every_mirror_class_exists(dataset: Path, tmp_path: Path) -> None:
    """Flipping a video turns a right-hand wave into a left-hand one: the synthetic set records which
    class each class's mirror image is (index.json ``flip_classes``), and a merge keeps it; with a mirror
    class missing there is no table."""
    run("synth", dataset, tmp_path / "run", size=64, workers=1, limit=2)
    assert read_index(tmp_path / "run").flip_classes == [1, 0, 3, 2]  # wave and punch, right and left
    assert merge([tmp_path / "run"], tmp_path / "merged").flip_classes == [1, 0, 3, 2]
    assert flip_classes(ACTION_NAMES[:4] + ["clap"]) == [1, 0, 3, 2, 4]  # a symmetric action keeps its class
    assert flip_classes(ACTION_NAMES[:3]) is None  # "punch with left hand" is not a class
    assert flip_classes(["wave right hand", "wave left hand", "yawn"]) is None  # not a synthetic action


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="size"):
        SynthConfig(size=(321, 240))
    with pytest.raises(ValueError, match="classes"):
        SynthConfig(classes=len(ACTION_NAMES) + 1)
    with pytest.raises(ValueError, match="frames"):
        SynthConfig(frames=(40, 30))


def test_no_skeletons_option_and_workers_default(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["synth", "--out", str(tmp_path), "--classes", "1", "--subjects", "1",
                                 "--replications", "1", "--frames", "16:16", "--size", "64x48", "--no-skeletons"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "nturgb+d_skeletons").exists()
    assert sorted(p.name for p in (tmp_path / "nturgb+d_rgb").iterdir()) == [
        f"S001C00{c}P001R001A001_rgb.avi" for c in (1, 2, 3)]  # no temporary files left behind
    assert json.loads((tmp_path / "ground_truth.json").read_text())["arguments"]["skeletons"] is False
    help_text = runner.invoke(app, ["synth", "--help"], env={"COLUMNS": "200"}).output
    assert "--no-skeletons" in help_text and "0 = one per core" in help_text
