"""Contact sheets of a rendered dataset: one grid per camera, a row per action, columns over time."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from mv2mae.preprocess.synth.generate import VIDEO_DIR, video_stem


def read_video(path: Path | str) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such video")
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    if not frames:
        raise ValueError(f"{path}: no frames could be decoded")
    return np.stack(frames)


def camera_montage(root: Path, camera: int, actions: list[int], names: list[str], *, subject: int = 1,
                   replication: int = 1, setup: int = 1, steps: int = 6, tile_height: int = 120) -> np.ndarray:
    """Rows = ``actions`` (1-based) of one subject, columns = ``steps`` frames spread over each clip."""
    rows = []
    for action in actions:
        video = read_video(root / VIDEO_DIR / f"{video_stem(setup, camera, subject, replication, action)}_rgb.avi")
        picks = np.linspace(0, len(video) - 1, steps + 2)[1:-1].round().astype(int)
        scale = tile_height / video.shape[1]
        tiles = [cv2.resize(video[i], None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) for i in picks]
        label = np.full((tile_height, 150, 3), 255, np.uint8)
        for k, word in enumerate(_wrap(names[action - 1], 14)):
            cv2.putText(label, word, (6, 22 + 20 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (20, 20, 20), 1, cv2.LINE_AA)
        rows.append(np.concatenate([label, *tiles], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    title = np.full((30, width, 3), 255, np.uint8)
    cv2.putText(title, f"camera C{camera:03d}  (subject P{subject:03d}, R{replication:03d}; time ->)", (6, 21),
                cv2.FONT_HERSHEY_SIMPLEX, 0.6, (20, 20, 20), 1, cv2.LINE_AA)
    return np.concatenate([title, *rows], axis=0)


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + [line]
