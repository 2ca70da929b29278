"""Real camera rigs are not uniform: one group's views differ in resolution (a coded height a few rows
taller), codec (H.264, VP9, MJPEG), container (mp4, mkv, avi), frame rate, rotation metadata and audio
streams. Each view is converted to the group's stored geometry and time base on its own; only a view the
crop policy cannot serve, or one far shorter than the others, is left out, with a record saying why."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from shard_helpers import group_metas

from mv2mae.preprocess.decode import ffmpeg_exe
from mv2mae.preprocess.pipeline import run
from mv2mae.preprocess.synth import generate

KEY = "S001P001R001A001"
FPS = 30


def _ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def rig(tmp_path_factory) -> tuple[Path, dict]:
    """A manifest of one five-camera group, each camera recorded differently: (CSV, ground truth)."""
    root = tmp_path_factory.mktemp("rig")
    generate(root / "synth", classes=1, cameras=5, subjects=1, replications=1, setups=1, frames=(48, 48),
             size=(160, 120), seed=3, workers=1, progress=False)
    truth = json.loads((root / "synth" / "ground_truth.json").read_text())["groups"][KEY]["cameras"]
    src = {c: root / "synth" / "nturgb+d_rgb" / f"S001C00{c}P001R001A001_rgb.avi" for c in range(1, 6)}
    views = root / "views"
    views.mkdir()
    x264 = ["-c:v", "libx264", "-pix_fmt", "yuv420p"]
    # 1: H.264 in MP4 with an AAC audio stream (the reference geometry: 4:3)
    _ffmpeg("-i", str(src[1]), "-f", "lavfi", "-i", "sine=frequency=440", "-shortest", *x264, "-c:a", "aac",
            str(views / "c1.mp4"))
    # 2: VP9 in Matroska, coded two rows taller (160x122, like 1088 beside 1080)
    _ffmpeg("-i", str(src[2]), "-vf", "scale=160:122", "-c:v", "libvpx-vp9", "-deadline", "realtime",
            "-pix_fmt", "yuv420p", str(views / "c2.mkv"))
    # 3: MJPEG in AVI at half the resolution and half the frame rate (every other frame, timestamps kept;
    # ffmpeg's fps filter would repeat the first frame and shift the recording against the truth)
    _ffmpeg("-i", str(src[3]), "-vf", "select=not(mod(n\\,2)),setpts=N/15/TB,scale=80:60", "-r", "15",
            "-c:v", "mjpeg", "-q:v", "3", str(views / "c3.avi"))
    # 4: H.264 recorded sideways: a 90-degree display rotation makes it a 120x160 portrait view
    _ffmpeg("-i", str(src[4]), *x264, str(views / "c4_coded.mp4"))
    _ffmpeg("-display_rotation", "90", "-i", str(views / "c4_coded.mp4"), "-c", "copy", str(views / "c4.mp4"))
    # 5: only the first 10 frames (a camera that stopped early)
    _ffmpeg("-i", str(src[5]), "-frames:v", "10", *x264, str(views / "c5.mkv"))
    names = {1: "c1.mp4", 2: "c2.mkv", 3: "c3.avi", 4: "c4.mp4", 5: "c5.mkv"}
    csv = root / "rig.csv"
    csv.write_text("group,camera,path,label,subject\n" +
                   "".join(f"{KEY},{c},views/{names[c]},0,1\n" for c in names))
    return csv, truth


def _failures(out: Path) -> dict[str, str]:
    return {Path(f["file"]).name: f["reason"] for f in map(json.loads, (out / "failures.jsonl").read_text().splitlines())}


def _misalignment(meta, truth) -> dict[int, int]:
    """Per camera, how many frames its offset relative to the first camera is off the recorded truth."""
    ref = meta.cameras[0]
    start = {c: truth[f"C{c:03d}"]["offset"] for c in meta.cameras}
    return {c: abs((meta.offsets[str(c)] - meta.offsets[str(ref)]) - (start[ref] - start[c])) for c in meta.cameras}


def test_each_view_is_converted_on_its_own_and_only_unusable_ones_are_dropped(rig, tmp_path):
    csv, truth = rig
    summary = run("manifest", csv, tmp_path / "none", size=48, workers=1, crop="none")
    assert (summary.written, summary.failed) == (1, 0)
    meta = group_metas(tmp_path / "none")[KEY]
    assert meta.cameras == [1, 2, 3] and meta.size == [64, 48] and meta.fps == FPS
    assert meta.crop["2"] == [0, 1, 160, 121]  # the two extra rows trimmed evenly, then scaled like the others
    assert meta.crop["3"] == [0, 0, 80, 60]
    # one time base: the 15 fps view was resampled to 30 (decoded at its own rate it would have half the
    # frames, and be left out as too short) and lines up with the others
    assert max(_misalignment(meta, truth).values()) <= 1, meta.offsets
    failures = _failures(tmp_path / "none")
    assert set(failures) == {"c4.mp4", "c5.mkv"}
    assert "120x160 crop of a 120x160 view does not fit the group's aspect ratio 1.333" in failures["c4.mp4"]
    assert "only 10 frames where the group's longest view has" in failures["c5.mkv"] and "cut every view to 10" in failures["c5.mkv"]


def test_a_crop_policy_that_can_serve_a_rotated_view_keeps_it(rig, tmp_path):
    csv, truth = rig
    run("manifest", csv, tmp_path / "center", size=48, workers=1, crop="center")
    meta = group_metas(tmp_path / "center")[KEY]
    assert meta.cameras == [1, 2, 3, 4] and meta.size == [48, 48]
    assert meta.crop["4"] == [0, 20, 120, 140]  # the centre square of the upright (rotated) frame
    assert set(_failures(tmp_path / "center")) == {"c5.mkv"}
