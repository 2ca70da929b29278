"""Features of a raw video file from a frozen encoder: what ``mv2mae embed`` computes.

The video is decoded with OpenCV, clips are sampled evenly over it, each frame is resized on its short
side and centre-cropped, and handed to the model as uint8 pixels, exactly as the loaders do (the
encoder normalises them with the checkpoint's statistics). The features are
:func:`mv2mae.model.checkpoint.load_feature_model`'s: for a pretraining (or converted) checkpoint the
encoder's tokens with its final norm, mean-pooled; for a finetuned classifier what its head reads (the
mean through ``fc_norm``). ``--tokens`` returns the encoder's tokens unpooled (a classifier's without
any norm).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from mv2mae.data.pixels import to_video_tensor
from mv2mae.model.checkpoint import load_checkpoint, load_feature_model


def clip_starts(total: int, span: int, clips: int) -> list[int]:
    """Evenly spaced clip starts over the video (all at 0 when it is shorter than one clip)."""
    room = max(total - span, 0)
    if clips == 1:
        return [room // 2]
    return [round(i * room / (clips - 1)) for i in range(clips)]


def open_video(path: Path) -> tuple[cv2.VideoCapture, int, float]:
    """An opened capture with the frame count and frame rate its container reports."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"{path}: cannot open video (missing file or unsupported format)")
    total, fps = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), float(cap.get(cv2.CAP_PROP_FPS))
    if total <= 0:
        cap.release()
        raise ValueError(f"{path}: the container reports no frame count; re-encode it (e.g. to mp4)")
    return cap, total, fps


def read_frames(cap: cv2.VideoCapture, path: Path, wanted: set[int]) -> dict[int, np.ndarray]:
    """RGB frames ``wanted`` (indices) of an opened capture, which it releases; only those are kept in memory
    (the others are skipped with ``grab``). Indices past the last decodable frame get that frame."""
    kept: dict[int, np.ndarray] = {}
    for index in range(max(wanted) + 1):
        if not cap.grab():
            break  # the header over-counted: later indices reuse the last decoded frame
        if index in wanted:
            ok, image = cap.retrieve()
            if ok:
                kept[index] = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    cap.release()
    if not kept:
        raise ValueError(f"{path}: no decodable frames")
    last = kept[max(kept)]
    return {i: kept.get(i, last) for i in wanted}


def read_video_clips(path: Path, frames: int, stride: int, size: int, clips: int) -> np.ndarray:
    """Decode ``clips`` clips of ``frames`` frames (every ``stride``-th) -> uint8 [clips, T, size, size, 3] RGB,
    short side resized to ``size`` and centre-cropped. Short videos repeat their last frame."""
    cap, total, _ = open_video(path)
    span = (frames - 1) * stride + 1
    wanted = [[min(start + i * stride, total - 1) for i in range(frames)] for start in clip_starts(total, span, clips)]
    kept = {i: _square(rgb, size) for i, rgb in read_frames(cap, path, set(sum(wanted, []))).items()}
    return np.stack([np.stack([kept[i] for i in clip]) for clip in wanted])


def _square(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = size / min(h, w)
    resized = cv2.resize(image, (max(size, round(w * scale)), max(size, round(h * scale))),
                         interpolation=cv2.INTER_AREA)
    top, left = (resized.shape[0] - size) // 2, (resized.shape[1] - size) // 2
    return resized[top:top + size, left:left + size]


def embed_video(checkpoint: Path, video: Path, frames: int | None, stride: int, size: int | None, clips: int,
                pool: bool, device: str) -> np.ndarray:
    """Features of ``clips`` clips of a video from the frozen encoder: [clips, D] (or [clips, N, D])."""
    ckpt = load_checkpoint(checkpoint)
    saved = ckpt["config"]
    frames, size = frames or saved["frames"], size or saved["image_size"]
    model = load_feature_model(ckpt, frames=frames, image_size=size).to(device).eval()
    rgb = read_video_clips(video, frames, stride, size, clips)  # [clips, T, H, W, 3]
    x = to_video_tensor(rgb).to(device)  # uint8, as the loaders hand it out: the encoder normalises it
    with torch.inference_mode():
        feats = model.forward_features(x) if pool else model.forward_tokens(x)
    return feats.float().cpu().numpy().astype(np.float32)
