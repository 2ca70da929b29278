"""Real files shaped like each dataset's layout, for the adapter and preset tests: tiny H.264 videos
(ffmpeg's moving test source) under the names, folders, label and split files the adapters read."""

from __future__ import annotations

import subprocess
from pathlib import Path

from mv2mae.preprocess.decode import ffmpeg_exe


def video(path: Path, frames: int, size: str = "64x48", seed: int = 0) -> Path:
    """A real H.264 video with moving content (ffmpeg's testsrc2, shifted so views differ)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size={size}:rate=30:duration={frames / 30 + 0.5}", "-vf", f"hue=h={seed * 40}",
                    "-frames:v", str(frames), "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


def pku_tree(root: Path) -> None:
    """PKU-MMD II: three sequences seen by views L, M and R, two labelled instances each, with per-view
    label files and both official split files."""
    for seq in ("A01N01", "A02N03", "A03N02"):  # the split file lists A03N02 on neither side
        for i, view in enumerate("LMR"):
            video(root / "RGB_VIDEO" / f"{seq}-{view}.avi", 60, seed=i)
            # per-view label files; R is off by one frame (views are not frame-locked)
            shift = 1 if view == "R" else 0
            (root / "Label").mkdir(exist_ok=True)
            (root / "Label" / f"{seq}-{view}.txt").write_text(
                f"12,{5 + shift},{24 + shift},1\n3,{30 + shift},{49 + shift},2\n")
    (root / "Split").mkdir()
    (root / "Split" / "cross_subject_v2.txt").write_text(
        "Training videos: \nA01N01-L, A01N01-M, A01N01-R\nValidation videos: \nA02N03-L, A02N03-M, A02N03-R\n")
    (root / "Split" / "cross_view_v2.txt").write_text(
        "Training videos: \nA01N01-L, A01N01-R, A02N03-L, A02N03-R\nValidation videos: \nA01N01-M, A02N03-M\n")
