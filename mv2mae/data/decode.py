"""Decode only the sampled JPEG members of a group, crop and resize them, and normalise.

Frames stay uint8 ``[T, H, W, C]`` RGB until the very end so that motion can be computed online from
the same pixels the model sees (``0-255`` units), and so that normalising can be moved to the device.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import torch
import torch.utils.data

from mv2mae.data.sampling import Box
from shards.reader import GroupSample
from shards.schema import ContractError, frame_member

# libjpeg-turbo writes RGB directly when asked (OpenCV >= 4.10): no per-frame colour conversion.
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)


def _imdecode_rgb(data: bytes) -> np.ndarray | None:
    buf = np.frombuffer(data, np.uint8)
    if _IMREAD_RGB is not None:
        return cv2.imdecode(buf, _IMREAD_RGB)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def decode_frames(group: GroupSample, camera: int, indices: np.ndarray) -> dict[int, np.ndarray]:
    """Stored frames ``indices`` of ``camera`` as RGB arrays, each distinct index decoded once."""
    width, height = group.meta.size
    frames = {}
    for t in np.unique(indices).tolist():
        img = _imdecode_rgb(group.frame(camera, t))
        if img is None:
            raise ContractError(f"{group.shard}: {frame_member(group.key, camera, t)} is not a decodable JPEG")
        if img.shape[:2] != (height, width):
            raise ContractError(f"{group.shard}: {frame_member(group.key, camera, t)} is {img.shape[1]}x"
                                f"{img.shape[0]}, metadata says {width}x{height}")
        frames[t] = img
    return frames


def crop_resize(frames: dict[int, np.ndarray], indices: np.ndarray, box: Box, size: int,
                out: np.ndarray | None = None) -> np.ndarray:
    """``[T, size, size, C]`` uint8: each sampled frame cropped to ``box`` and resized (channels kept),
    written into ``out`` when given (e.g. one view of a multi-view sample, which then needs no stacking)."""
    x0, y0, x1, y1 = box
    # Bilinear (VideoMAE's choice) unless shrinking by more than 2x, where it would alias; area
    # resampling is ~8x slower and at the usual 160 -> 128 ratio indistinguishable.
    interp = cv2.INTER_AREA if min(x1 - x0, y1 - y0) > 2 * size else cv2.INTER_LINEAR
    shape = (len(indices), size, size, frames[int(indices[0])].shape[2])
    if out is None:
        out = np.empty(shape, np.uint8)
    elif out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ValueError(f"crop_resize: out must be a C-contiguous uint8 array of shape {shape}, got "
                         f"{out.dtype} {out.shape}")
    for k, t in enumerate(indices):
        cv2.resize(frames[int(t)][y0:y1, x0:x1], (size, size), dst=out[k], interpolation=interp)
    return out


def to_video_tensor(clips: np.ndarray) -> torch.Tensor:
    """``[..., T, H, W, C]`` uint8 -> ``[..., C, T, H, W]`` uint8 view (normalising happens once per batch).

    Left strided on purpose: stacking the batch copies it into the contiguous layout anyway, so an
    extra per-sample copy here would only double the work."""
    return torch.from_numpy(np.ascontiguousarray(clips)).movedim(-1, -4)


def _empty_float(shape: torch.Size) -> torch.Tensor:
    """A float32 tensor, in shared memory when built inside a DataLoader worker so that handing the
    batch to the main process copies nothing (what ``default_collate`` does for its stacks)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=torch.float32)
    elem = torch.empty(0, dtype=torch.float32)
    storage = elem._typed_storage()._new_shared(shape.numel(), device="cpu")
    return elem.new(storage).resize_(shape)


def normalize_video(video: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 ``[..., C, T, H, W]`` (on any device) -> float ``(x/255 - mean) / std``.

    On the CPU a uint8 video goes through one 256-entry float table per channel (``cv2.LUT``): a single
    pass that reads bytes and writes floats, instead of a converting copy plus two in-place passes over
    ~1.5 M floats per two-view sample. Elsewhere: one converting copy, then in-place arithmetic."""
    if video.device.type == "cpu" and video.dtype == torch.uint8 and video.dim() >= 4 and video.numel():
        out = _empty_float(video.shape)
        _lut_normalize(video, out, mean, std)
        return out
    out = torch.empty(video.shape, dtype=torch.float32, device=video.device)
    out.copy_(video)
    shape = (-1, 1, 1, 1)
    m = torch.tensor(mean, dtype=torch.float32, device=video.device).view(shape) * 255.0
    s = torch.tensor(std, dtype=torch.float32, device=video.device).view(shape) * 255.0
    return out.sub_(m).div_(s)


@functools.lru_cache(maxsize=8)
def _channel_tables(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[np.ndarray, ...]:
    """Per channel, the float32 value of every byte, with the same float32 arithmetic as the tensor path."""
    levels = np.arange(256, dtype=np.float32)
    return tuple((levels - np.float32(m) * np.float32(255.0)) / (np.float32(s) * np.float32(255.0))
                 for m, s in zip(mean, std, strict=True))


def _lut_normalize(video: torch.Tensor, out: torch.Tensor, mean, std) -> None:
    channels, rows, width = video.shape[-4], video.shape[-3] * video.shape[-2], video.shape[-1]
    tables = _channel_tables(tuple(float(m) for m in mean), tuple(float(s) for s in std))
    if len(tables) != channels:
        raise ValueError(f"{len(tables)} normalisation channels for a video with {channels} channels")
    src = video.contiguous().numpy().reshape(-1, channels, rows, width)
    dst = out.numpy().reshape(src.shape)
    for clip, clip_out in zip(src, dst, strict=True):
        for table, plane, plane_out in zip(tables, clip, clip_out, strict=True):
            cv2.LUT(plane, table, dst=plane_out)


_STAGING: dict[tuple, torch.Tensor] = {}


def _staging(shape: tuple[int, ...]) -> torch.Tensor:
    """A private uint8 buffer reused batch after batch: stacking into fresh (shared) memory costs a page
    fault per 4 KiB, more than the copy itself, and the uint8 stack never leaves this process."""
    if shape not in _STAGING:
        _STAGING.clear()
        _STAGING[shape] = torch.empty(shape, dtype=torch.uint8)
    return _STAGING[shape]


def collate_clips(samples: list[dict], mean, std, normalize: bool) -> dict:
    """``default_collate`` of uint8 clips, then one normalising pass over the whole batch (half the
    work of normalising per sample and stacking the floats). When normalising, the uint8 stack goes
    to a reused private buffer and only the float batch is allocated (in shared memory in a worker)."""
    if not normalize:
        return torch.utils.data.default_collate(samples)
    videos = [s["video"] for s in samples]
    kinds = {(v.dtype, v.device.type, tuple(v.shape)) for v in videos}
    if len(kinds) != 1 or next(iter(kinds))[:2] != (torch.uint8, "cpu"):
        batch = torch.utils.data.default_collate(samples)
        batch["video"] = normalize_video(batch["video"], mean, std)
        return batch
    rest = torch.utils.data.default_collate([{k: v for k, v in s.items() if k != "video"} for s in samples])
    stacked = torch.stack(videos, out=_staging((len(videos), *videos[0].shape)))
    return {"video": normalize_video(stacked, mean, std), **rest}
