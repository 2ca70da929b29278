"""Pure sampling decisions: which frames, which cameras, which crop box. No I/O, numpy RNG only.

Every decision is a plain value (index array, camera list, integer box) so that the same decision
drives the pixels and the motion weights — the two can never disagree about what was sampled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from mv2mae.data.config import ClipGeometry, DataConfig

CROP_RATIO = (3 / 4, 4 / 3)  # random resized crop: aspect ratio range (torchvision's default)

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in stored-frame pixels, end exclusive


def _effective_stride(num_frames: int, geom: ClipGeometry) -> int:
    # A clip shorter than the nominal span keeps as much of its temporal extent as it can: the stride
    # shrinks (never below 1) before any frame is repeated.
    if num_frames >= geom.span or geom.frames == 1:
        return geom.stride
    return max(1, min(geom.stride, (num_frames - 1) // (geom.frames - 1)))


def _clip_at(start: int, num_frames: int, geom: ClipGeometry) -> np.ndarray:
    stride = _effective_stride(num_frames, geom)
    return np.minimum(start + stride * np.arange(geom.frames), num_frames - 1).astype(np.int64)


def train_frame_indices(num_frames: int, geom: ClipGeometry, rng: np.random.Generator) -> np.ndarray:
    """One random clip: ``geom.frames`` stored-frame indices, non-decreasing, all < ``num_frames``.

    Short clips shrink the stride and then repeat the last frame (so they never crash)."""
    if num_frames < 1:
        raise ValueError(f"cannot sample a clip from {num_frames} frames")
    stride = _effective_stride(num_frames, geom)
    room = num_frames - ((geom.frames - 1) * stride + 1)
    start = int(rng.integers(0, room + 1)) if room > 0 else 0
    return _clip_at(start, num_frames, geom)


def eval_frame_indices(num_frames: int, geom: ClipGeometry, clips: int) -> list[np.ndarray]:
    """``clips`` clips with evenly spaced starts covering the video (VideoMAE multi-clip testing)."""
    stride = _effective_stride(num_frames, geom)
    room = max(0, num_frames - ((geom.frames - 1) * stride + 1))
    starts = np.linspace(0, room, clips) if clips > 1 else np.array([room / 2])
    return [_clip_at(int(round(s)), num_frames, geom) for s in starts]


def choose_views(available: Sequence[int], cfg: DataConfig, rng: np.random.Generator) -> list[int] | None:
    """``[target, *sources]`` camera ids drawn from ``available`` by the configured policy.

    ``available`` is already the intersection of the group's cameras and the protocol's allowed ones;
    ``None`` when the group cannot provide 1 + K distinct views."""
    cams = sorted(set(available))
    if len(cams) < cfg.views:
        return None
    if cfg.source_policy == "fixed":
        usable = [list(p) for p in cfg.fixed_pairs if set(p) <= set(cams)]
        return usable[int(rng.integers(len(usable)))] if usable else None
    target = cams[int(rng.integers(len(cams)))]
    others = [c for c in cams if c != target]
    if cfg.source_policy == "random":
        picks = rng.permutation(len(others))[: cfg.num_sources]
        return [target] + [others[i] for i in picks]
    # adjacent / opposite: the nearest / farthest camera ids from the target (camera ids enumerate
    # positions); random tie-break.
    pos = cams.index(target)
    dist = np.array([abs(cams.index(c) - pos) for c in others], dtype=float) + rng.random(len(others)) * 0.5
    order = np.argsort(dist if cfg.source_policy == "adjacent" else -dist)
    return [target] + [others[i] for i in order[: cfg.num_sources]]


def random_resized_box(width: int, height: int, cfg: DataConfig, rng: np.random.Generator) -> Box:
    """A random area/aspect crop box (torchvision's RandomResizedCrop rule), integer pixels."""
    area = width * height
    lo, hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(10):
        target = area * rng.uniform(*cfg.crop_scale)
        ratio = math.exp(rng.uniform(lo, hi))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            x0 = int(rng.integers(0, width - w + 1))
            y0 = int(rng.integers(0, height - h + 1))
            return x0, y0, x0 + w, y0 + h
    side = min(width, height)  # fallback: the central square
    x0, y0 = (width - side) // 2, (height - side) // 2
    return x0, y0, x0 + side, y0 + side


def eval_boxes(width: int, height: int, crops: int) -> list[Box]:
    """``crops`` full-height (or full-width) squares spread along the long side; one crop = centre."""
    side = min(width, height)
    long_room = max(width, height) - side
    offsets = np.linspace(0, long_room, crops) if crops > 1 else np.array([long_room / 2])
    boxes = []
    for off in offsets:
        o = int(round(off))
        boxes.append((o, 0, o + side, side) if width >= height else (0, o, side, o + side))
    return boxes
