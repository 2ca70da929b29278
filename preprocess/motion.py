"""Motion of stored frames on a cell grid, for the Zarr cache: ``framediff`` and ``flow`` (DIS).

Both return float16 [T, grid_h, grid_w] following ``mv2mae.shards.schema``: row t is the motion between stored
frames t-1 and t, row 0 repeats row 1, cells on the right/bottom edge average only the pixels they cover.
``flow`` is what training reads from the cache (too slow to compute per clip). Training's ``framediff`` is
computed from the sampled, cropped clip instead (``mv2mae.data.motion``: differences of frames ``stride``
apart cannot be rebuilt from consecutive ones); the cached rows serve inspection (``mv2mae shards show``).
"""

from __future__ import annotations

import cv2
import numpy as np

from mv2mae.shards.schema import motion_grid


def cell_means(values: np.ndarray, cell: int) -> np.ndarray:
    """Mean of ``values`` [T, H, W] over ``cell`` x ``cell`` pixel cells -> float32 [T, gh, gw]."""
    t, h, w = values.shape
    gh, gw = motion_grid(w, h, cell)
    padded = np.zeros((t, gh * cell, gw * cell), np.float32)
    padded[:, :h, :w] = values
    sums = padded.reshape(t, gh, cell, gw, cell).sum(axis=(2, 4))
    rows = np.minimum(cell, h - np.arange(gh) * cell).astype(np.float32)
    cols = np.minimum(cell, w - np.arange(gw) * cell).astype(np.float32)
    return sums / (rows[:, None] * cols[None, :])


def pixel_framediff(frames: np.ndarray) -> np.ndarray:
    """Mean absolute RGB difference of consecutive frames: float32 [T-1, H, W] in 0-255 units."""
    t, h, w = frames.shape[:3]
    if t < 2:
        return np.zeros((0, h, w), np.float32)
    diff = np.empty((t - 1, h, w, 3), np.uint8)
    for i in range(t - 1):  # cv2.absdiff: saturating uint8 SIMD, ~15x faster than int16 numpy
        cv2.absdiff(frames[i + 1], frames[i], diff[i])
    total = diff[..., 0].astype(np.uint16)
    total += diff[..., 1]
    total += diff[..., 2]
    out = total.astype(np.float32)
    out *= np.float32(1.0 / 3.0)
    return out


def _with_first_row(diffs: np.ndarray, t: int) -> np.ndarray:
    """Prepend row 0 (a copy of row 1, or zeros when there is one frame) to ``t-1`` difference rows."""
    if t == 1:
        return np.zeros((1, *diffs.shape[1:]), np.float32)
    return np.concatenate([diffs[:1], diffs], axis=0)


def framediff_grid(frames: np.ndarray, cell: int, diffs: np.ndarray | None = None) -> np.ndarray:
    """``framediff`` rows for RGB uint8 frames [T, H, W, 3]; ``diffs`` reuses a ``pixel_framediff``."""
    t, h, w = frames.shape[:3]
    if t == 1:
        return np.zeros((1, *motion_grid(w, h, cell)), np.float16)
    d = pixel_framediff(frames) if diffs is None else diffs
    return _with_first_row(cell_means(d, cell), t).astype(np.float16)


def flow_grid(frames: np.ndarray, cell: int) -> np.ndarray:
    """``flow`` rows: DIS optical-flow magnitude (stored pixels per stored frame), cell means."""
    t, h, w = frames.shape[:3]
    if t == 1:
        return np.zeros((1, *motion_grid(w, h, cell)), np.float16)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    mags = np.empty((t - 1, h, w), np.float32)
    for i in range(1, t):
        flow = dis.calc(gray[i - 1], gray[i], None)
        mags[i - 1] = np.sqrt(flow[..., 0] ** 2 + flow[..., 1] ** 2)
    return _with_first_row(cell_means(mags, cell), t).astype(np.float16)

