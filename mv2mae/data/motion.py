"""Per-token motion weights from the Zarr cell-grid cache, with the clip's exact frames and crop box.

The cache holds, per stored frame ``t``, the motion energy between stored frames ``t-1`` and ``t`` on a
grid of ``cell``-pixel cells (``mv2mae.shards.schema``). A clip samples frames ``i_0 < ... < i_{T-1}``; the
paper's online signal for sampled frame ``k`` is the difference between frames ``i_{k-1}`` and ``i_k``
(``k = 0`` reuses ``k = 1``). The cache equivalent is the energy accumulated over the same interval,
``sum(rows i_{k-1}+1 .. i_k)`` — the path length of the change, which equals the endpoint difference
for small monotone changes and never ranks a static region above a moving one. Space is then
area-resampled from the cell grid onto the token grid through the crop box (columns reversed when the
crop is flipped, as the clip's pixels are), and time is averaged over each tubelet, giving
``N = T'·H'·W'`` weights in t-major, h, w order (the model's token order).
"""

from __future__ import annotations

import numpy as np
import torch

from mv2mae.data.config import ClipGeometry
from mv2mae.data.sampling import Crop


def _local_rows(rows: np.ndarray, first_row: int, indices: np.ndarray) -> np.ndarray:
    local = indices - first_row
    if local.min() < 0 or local.max() >= len(rows):
        raise ValueError(f"indices {indices.tolist()} outside cache rows {first_row}..{first_row + len(rows) - 1}")
    return local


def _float_rows(rows: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` cache rows as float32 ``[count, cells]`` (torch's float16 conversion is
    vectorised, ~10x numpy's)."""
    return torch.from_numpy(np.ascontiguousarray(rows[:count])).float().numpy().reshape(count, -1)


def _interval_weights(local: np.ndarray, count: int) -> np.ndarray:
    """``[T, count]`` 0/1 weights over cache rows: row k selects the interval (i_{k-1}, i_k] (a repeated
    index is an empty interval: 0); row 0 repeats row 1 (the first frame has no predecessor)."""
    j = np.arange(count)
    weights = np.empty((len(local), count), np.float32)
    weights[1:] = (j > local[:-1, None]) & (j <= local[1:, None])
    weights[0] = weights[1]
    return weights


def _monotone(local: np.ndarray) -> bool:
    return len(local) > 1 and not np.any(local[1:] < local[:-1])


def frame_interval_energy(rows: np.ndarray, first_row: int, indices: np.ndarray) -> np.ndarray:
    """Motion energy per sampled frame, ``[T, gh, gw]``, from cache ``rows`` starting at stored frame
    ``first_row`` (the slice covering ``indices[0] .. indices[-1]``)."""
    local = _local_rows(rows, first_row, indices)
    if len(local) == 1:
        return rows[local[0]][None].astype(np.float32)
    if not _monotone(local):
        return _unordered_interval_energy(rows, local)
    # Every interval sum is one row of a small matrix product over the clip's rows.
    span = _float_rows(rows, int(local[-1]) + 1)
    return (_interval_weights(local, len(span)) @ span).reshape((len(local),) + rows.shape[1:])


def _unordered_interval_energy(rows: np.ndarray, local: np.ndarray) -> np.ndarray:
    """The same differences for indices in any order (signed), through a running sum."""
    cum = np.cumsum(rows.astype(np.float32), axis=0)  # cum[j] = sum(rows[0..j])
    ends = cum[local]
    energy = ends - np.concatenate([ends[:1], ends[:-1]])
    energy[0] = energy[1]
    return energy


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


def cells_to_tokens(energy: np.ndarray, crop: Crop, frame_size: tuple[int, int], cell: int,
                    geom: ClipGeometry) -> np.ndarray:
    """``[T, gh, gw]`` per-frame cell energy -> ``[N]`` per-token motion through ``crop``."""
    ay, ax = _crop_area(crop, frame_size, cell, geom, energy.shape[1:])
    _, gh, gw = geom.grid
    per_frame = ay @ energy @ ax.T  # [T, H', W']
    per_tubelet = per_frame.reshape(geom.frames // geom.tubelet, geom.tubelet, gh, gw).mean(axis=1)
    return per_tubelet.reshape(-1).astype(np.float32)


def cache_token_motion(rows: np.ndarray, first_row: int, indices: np.ndarray, crop: Crop,
                       frame_size: tuple[int, int], cell: int, geom: ClipGeometry) -> np.ndarray:
    """The whole path: cache rows of one view -> ``[N]`` token weights in 0-255 units.

    Time and space are both linear maps, so for an ordinary clip the per-frame intervals and the
    tubelet mean fold into one ``[T', rows]`` matrix applied before the spatial resampling: two small
    matrix products per view instead of T per-frame ones (same values as ``cells_to_tokens`` of
    ``frame_interval_energy``, up to float rounding)."""
    local = _local_rows(rows, first_row, indices)
    if not _monotone(local) or len(local) != geom.frames:
        return cells_to_tokens(frame_interval_energy(rows, first_row, indices), crop, frame_size, cell, geom)
    ay, ax = _crop_area(crop, frame_size, cell, geom, rows.shape[1:])
    tubelets = geom.frames // geom.tubelet
    span = _float_rows(rows, int(local[-1]) + 1)
    per_tubelet = _interval_weights(local, len(span)).reshape(tubelets, geom.tubelet, -1).mean(axis=1)
    cells = (per_tubelet @ span).reshape((tubelets,) + rows.shape[1:])
    return (ay @ cells @ ax.T).reshape(-1).astype(np.float32)


def clip_token_motion(clip: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """Per-token motion [..., N] of an un-normalised clip [..., C, T, H, W] in 0-255 units."""
    *lead, c, t, h, w = clip.shape
    if t < 2:
        raise ValueError(f"online motion needs at least 2 frames, got a clip of {t}")
    clip = clip.float()  # uint8 clips would wrap around on subtraction
    diff = (clip[..., 1:, :, :] - clip[..., :-1, :, :]).abs()
    diff = torch.cat([diff[..., :1, :, :], diff], dim=-3)  # frame 0 has no predecessor: reuse frame 1's
    cells = diff.reshape(*lead, c, t // tubelet, tubelet, h // patch, patch, w // patch, patch)
    k = len(lead)
    return cells.mean(dim=(k, k + 2, k + 4, k + 6)).flatten(-3)


def online_token_motion(clip_uint8: np.ndarray, geom: ClipGeometry) -> np.ndarray:
    """Paper-exact motion of one cropped clip ``[T, H, W, C]`` uint8 -> ``[N]`` (:func:`clip_token_motion`)."""
    clip = torch.from_numpy(np.ascontiguousarray(clip_uint8)).permute(3, 0, 1, 2).float()
    return clip_token_motion(clip, geom.tubelet, geom.patch).numpy().astype(np.float32)
