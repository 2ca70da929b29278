"""Pure sampling decisions: which frames, which cameras, which crop. No I/O, numpy RNG only.

Every decision is a plain value (index array, camera list, :class:`Crop`) so that the same decision
drives the pixels and the motion weights — the two can never disagree about what was sampled.

Augmentation, and where it departs from VideoMAE's recipes [ours]:

- Pretraining: a random resized crop (area ``data.crop_scale``, aspect 3/4-4/3) drawn for each view
  independently (VideoMAE's pretraining crops and nothing else; METHOD.md). The views come from
  different cameras, so one box would not cut matching content from them anyway; independent boxes
  give each view its own scale and framing, as separate VideoMAE samples would have.
  ``data.shared_crop`` cuts one box from every view. No flip unless ``data.flip=on``, and then every
  view of a sample flips together: a mirrored scene filmed by mirrored cameras is still one
  consistent multi-view recording, while flipping a subset would ask the cross-view decoder to
  reconstruct a view of the mirror-image scene from the other.
- Finetuning: a random resized crop, and a horizontal flip (p = 0.5) only where the dataset records
  which class a mirrored video shows (``flip_classes``): left/right action pairs (the synthetic set's
  waves, punches, kicks and bends) would otherwise be taught with the wrong label. VideoMAE also
  applies RandAugment (m7, n4) and random erasing (0.25); we leave both out. METHOD.md's recipe
  regularises with mixup, cutmix, label smoothing and drop path, and RandAugment is per-frame image
  work on the loader's CPU: timm's rand-m7-n4-mstd0.5-inc1 took ~32 ms for a 16-frame 128² clip on
  one core of the 2-core box, four times what a whole two-view pretraining sample costs a worker
  (~8.2 ms, BENCHMARKS.md).
- Evaluation: fixed crops (:func:`eval_boxes`), never flipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from mv2mae.data.config import ClipGeometry, DataConfig
from mv2mae.shards.schema import GroupMeta

CROP_RATIO = (3 / 4, 4 / 3)  # random resized crop: aspect ratio range (torchvision's default)
FLIP_PROB = 0.5  # horizontal flip, when flipping is on (VideoMAE's and torchvision's rate)

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in stored-frame pixels, end exclusive


class Crop(NamedTuple):
    """Where one view of a sample comes from in its stored frames: ``box`` is cut and resized to the
    clip size, then mirrored left-right when ``flip``. The clip's pixels and its motion weights are
    both taken through the one Crop."""

    box: Box
    flip: bool = False


def draw_flip(enabled: bool, rng: np.random.Generator) -> bool:
    """One flip decision (no draw when flipping is off)."""
    return enabled and bool(rng.random() < FLIP_PROB)


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


def shared_clip(meta: GroupMeta, views: list[int], geom: ClipGeometry,
                rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
    """One random clip of the same instants in every view of ``views``: ``[(camera, stored frame indices)]``,
    drawn from the span those views share (``GroupMeta.span``: a pair of views may share more than the
    span common to all the group's views)."""
    first, length = meta.span(views)
    indices = train_frame_indices(length, geom, rng)
    return [(cam, first[cam] + indices) for cam in views]


def eval_frame_indices(num_frames: int, geom: ClipGeometry, clips: int) -> list[np.ndarray]:
    """``clips`` clips with evenly spaced starts covering the video (VideoMAE multi-clip testing)."""
    stride = _effective_stride(num_frames, geom)
    room = max(0, num_frames - ((geom.frames - 1) * stride + 1))
    starts = np.linspace(0, room, clips) if clips > 1 else np.array([room / 2])
    return [_clip_at(int(round(s)), num_frames, geom) for s in starts]


Layout = dict[str, dict[str, float]]  # ``index.json``'s ``layout``: cam -> {"azimuth": deg, "height": m}


def view_distance(layout: Layout, a: int, b: int) -> tuple[float, float]:
    """How far camera ``b`` stands from camera ``a``: (azimuth difference in degrees, 0-180; height
    difference in metres), compared in that order — the other height of the same position is nearer
    than the next position (ETRI's pairs), and ids play no part."""
    pa, pb = layout[str(a)], layout[str(b)]
    turn = abs(pa.get("azimuth", 0.0) - pb.get("azimuth", 0.0)) % 360
    return min(turn, 360 - turn), abs(pa.get("height", 0.0) - pb.get("height", 0.0))


def choose_views(available: Sequence[int], cfg: DataConfig, rng: np.random.Generator,
                 layout: Layout | None = None) -> list[int] | None:
    """``[target, *sources]`` camera ids drawn from ``available`` by the configured policy.

    ``available`` is already the intersection of the group's cameras and the protocol's allowed ones;
    ``None`` when the group cannot provide 1 + K distinct views. The ``adjacent`` policy takes the K
    cameras nearest the target in the dataset's ``layout`` (:func:`view_distance`, random among equals),
    ``opposite`` the K farthest."""
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
    # adjacent / opposite: the nearest / farthest cameras in the recorded layout; random tie-break
    unplaced = [c for c in cams if layout is None or str(c) not in layout]
    if unplaced:
        raise ValueError(f"source policy {cfg.source_policy!r} needs the camera layout; cameras {unplaced} have no place")
    ties = rng.random(len(others))
    sign = 1 if cfg.source_policy == "adjacent" else -1
    order = sorted(range(len(others)),
                   key=lambda i: (*(sign * d for d in view_distance(layout, target, others[i])), ties[i]))
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
