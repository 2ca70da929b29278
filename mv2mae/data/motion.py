"""Per-token motion ``m_i`` for the objective (METHOD.md, Objective), from the clip or from the Zarr cache.

``framediff`` (every preset's default) is the method's
definition computed from the clip the model sees (:func:`clip_token_motion`): the mean absolute
difference of consecutive *sampled* frames (``stride`` stored frames apart) inside each tubelet, on
the cropped and resized uint8 pixels, in 0-255 grey levels; the first frame reuses the next difference.
It cannot come from a cache of consecutive stored-frame differences: |a - c| is not a function of
|a - b| and |b - c|, and summing the differences over the stride interval grows with the stride on
noisy or textured video (about 4x at stride 4, turning τ = 60 into τ ≈ 15). Nor from differences at
the stored resolution: the crop's resampling averages sensor noise away (on a noisy 128² clip cropped
to 64², static regions read 2.3 at stored resolution and 1.9 on the clip). Computing it from the clip
costs about 0.25 ms per 16×128² view on one core, about what the cache path did, and runs wherever the
clip is decoded.

``flow`` (DIS optical-flow magnitude) is too slow to compute online, so it comes from the cache, which
holds per stored frame ``t`` the flow between stored frames ``t-1`` and ``t`` on a grid of ``cell``-pixel
cells (``mv2mae.shards.schema``). Its units are **stored-frame pixels per stored frame** (a speed): for
sampled frame ``k`` of indices ``i_0 < ... < i_{T-1}`` it is the mean of rows ``i_{k-1}+1 .. i_k``
(``k = 0`` reuses ``k = 1``; a repeated index, from a clip longer than its video, is 0). The mean
rather than the sum keeps the units, and the noise floor, independent of the stride; flow has its own
τ (``model.tau_flow``). Space is area-resampled from the cell grid onto the token grid through the
clip's crop box (columns reversed when the crop is flipped, as the clip's pixels
are), and time is averaged over each tubelet, giving ``N = T'·H'·W'`` weights in t-major,
h, w order (the model's token order).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mv2mae.data.config import ClipGeometry
from mv2mae.data.sampling import Crop


def _local_rows(rows: np.ndarray, first_row: int, indices: np.ndarray, frames: int) -> np.ndarray:
    local = indices - first_row
    if len(local) != frames or np.any(local[1:] < local[:-1]):
        raise ValueError(f"indices {indices.tolist()} are not {frames} non-decreasing frame indices")
    if local.min() < 0 or local.max() >= len(rows):
        raise ValueError(f"indices {indices.tolist()} outside cache rows {first_row}..{first_row + len(rows) - 1}")
    return local


def _float_rows(rows: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` cache rows as float32 ``[count, cells]`` (torch's float16 conversion is
    vectorised, ~10x numpy's)."""
    return torch.from_numpy(np.ascontiguousarray(rows[:count])).float().numpy().reshape(count, -1)


def _interval_means(local: np.ndarray, count: int) -> np.ndarray:
    """``[T, count]`` weights over cache rows: row k averages the interval (i_{k-1}, i_k] (a repeated
    index is an empty interval: 0); row 0 repeats row 1 (the first frame has no predecessor)."""
    j = np.arange(count)
    weights = np.empty((len(local), count), np.float32)
    weights[1:] = (j > local[:-1, None]) & (j <= local[1:, None])
    weights[0] = weights[1]
    weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1)
    return weights


def area_matrix(lo: float, hi: float, bins: int, cell: int, extent: int) -> np.ndarray:
    """``[bins, cells]`` weights averaging cells (``cell`` pixels, last one clipped to ``extent``) over
    ``bins`` equal parts of the pixel interval ``[lo, hi)`` by exact overlap length."""
    cells = -(-extent // cell)
    cell_lo = np.arange(cells) * cell
    cell_hi = np.minimum(cell_lo + cell, extent)
    edges = lo + (hi - lo) * np.arange(bins + 1) / bins
    overlap = np.clip(np.minimum(edges[1:, None], cell_hi[None]) - np.maximum(edges[:-1, None], cell_lo[None]),
                      0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def _crop_area(crop: Crop, frame_size: tuple[int, int], cell: int, geom: ClipGeometry,
               cells: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """float32 area-resampling matrices (rows ``[H', gh]``, columns ``[W', gw]``) of ``crop``: its box,
    and the token columns in mirrored order when it flips."""
    width, height = frame_size
    x0, y0, x1, y1 = crop.box
    _, gh, gw = geom.grid
    ay = area_matrix(y0, y1, gh, cell, height)
    ax = area_matrix(x0, x1, gw, cell, width)
    if tuple(cells) != (ay.shape[1], ax.shape[1]):
        raise ValueError(f"motion grid {tuple(cells)} does not match a {width}x{height} frame "
                         f"with {cell}-px cells ({ay.shape[1]}x{ax.shape[1]})")
    if crop.flip:
        ax = ax[::-1]
    return ay.astype(np.float32), ax.astype(np.float32)


def cache_token_motion(rows: np.ndarray, first_row: int, indices: np.ndarray, crop: Crop,
                       frame_size: tuple[int, int], cell: int, geom: ClipGeometry) -> np.ndarray:
    """The whole path: cache rows of one view -> ``[N]`` per-token motion in the cache's units.

    ``rows`` start at stored frame ``first_row`` and cover ``indices[0] .. indices[-1]`` (the clip's
    non-decreasing frame indices). Time and space are both linear maps, so the per-frame interval means
    and the tubelet mean fold into one ``[T', rows]`` matrix applied before the spatial resampling: two
    small matrix products per view."""
    local = _local_rows(rows, first_row, indices, geom.frames)
    ay, ax = _crop_area(crop, frame_size, cell, geom, rows.shape[1:])
    tubelets = geom.frames // geom.tubelet
    span = _float_rows(rows, int(local[-1]) + 1)
    per_tubelet = _interval_means(local, len(span)).reshape(tubelets, geom.tubelet, -1).mean(axis=1)
    cells = (per_tubelet @ span).reshape((tubelets,) + rows.shape[1:])
    return (ay @ cells @ ax.T).reshape(-1).astype(np.float32)


def clip_token_motion(clip: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """The method's per-token motion [..., N] of an un-normalised clip [..., C, T, H, W] (uint8 or float,
    any memory layout, any device) in 0-255 units.

    Works channels-last (the loader's layout, so the sums run over contiguous memory) and, for uint8,
    in uint8 and int16: ``max - min`` is the absolute difference without wrap-around, a patch's rows
    are summed first (int16 holds ``patch`` x 255 for patches up to 128), then its columns and channels.
    About 0.25 ms per 16x128² view on one core, a fifth of a float32 pass (whose fresh buffers alone
    cost more than the arithmetic)."""
    *lead, c, t, h, w = clip.shape
    if t < 2:
        raise ValueError(f"online motion needs at least 2 frames, got a clip of {t}")
    x = clip.movedim(-4, -1)  # [..., T, H, W, C]
    now, before = x[..., 1:, :, :, :], x[..., :-1, :, :, :]
    diff = torch.maximum(now, before).sub_(torch.minimum(now, before))
    acc = None if diff.is_floating_point() else torch.int16 if patch <= 128 else torch.int32
    rows = diff.reshape(*lead, t - 1, h // patch, patch, w * c).sum(dim=-2, dtype=acc)
    per_frame = rows.reshape(*lead, t - 1, h // patch, w // patch, patch * c).sum(dim=-1, dtype=torch.float32)
    per_frame = torch.cat([per_frame[..., :1, :, :], per_frame], dim=-3) / (c * patch * patch)  # frame 0 reuses 1's
    return per_frame.unflatten(-3, (t // tubelet, tubelet)).mean(dim=-3).flatten(-3)


@dataclass(frozen=True)
class ClipMotion:
    """Stage 5 for ``decode_on=device``, in the training process after :class:`~mv2mae.data.pixels.DecodeOnDevice`:
    a batch with decoded ``video`` [B, V, C, T, H, W] in, the same batch with ``motion`` [B, V, N]
    (:func:`clip_token_motion` of those very pixels, as the workers compute it with ``decode_on=cpu``)
    right after ``video``, as the cpu path orders the fields."""

    geom: ClipGeometry

    def __call__(self, batch: dict) -> dict:
        motion = clip_token_motion(batch["video"], self.geom.tubelet, self.geom.patch)
        return {"video": batch["video"], "motion": motion} | batch
