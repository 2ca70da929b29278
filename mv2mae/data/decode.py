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

from mv2mae.data.sampling import Crop
from mv2mae.data.transport import batch_buffer, fresh_buffer, ship
from mv2mae.shards.reader import GroupSample
from mv2mae.shards.schema import ContractError, frame_member

# libjpeg-turbo writes RGB directly when asked (OpenCV >= 4.10): no per-frame colour conversion.
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)


def decode_jpeg_rgb(data: bytes) -> np.ndarray | None:
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
        img = decode_jpeg_rgb(group.frame(camera, t))
        if img is None:
            raise ContractError(f"{group.shard}: {frame_member(group.key, camera, t)} is not a decodable JPEG")
        if img.shape[:2] != (height, width):
            raise ContractError(f"{group.shard}: {frame_member(group.key, camera, t)} is {img.shape[1]}x"
                                f"{img.shape[0]}, metadata says {width}x{height}")
        frames[t] = img
    return frames


def crop_resize(frames: dict[int, np.ndarray], indices: np.ndarray, crop: Crop, size: int,
                out: np.ndarray | None = None) -> np.ndarray:
    """``[T, size, size, C]`` uint8: each sampled frame cut to ``crop.box``, resized (channels kept) and
    mirrored when ``crop.flip``, written into ``out`` when given (e.g. one view of a multi-view sample,
    which then needs no stacking)."""
    x0, y0, x1, y1 = crop.box
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
        if crop.flip:
            cv2.flip(out[k], 1, dst=out[k])
    return out


def to_video_tensor(clips: np.ndarray) -> torch.Tensor:
    """``[..., T, H, W, C]`` uint8 -> ``[..., C, T, H, W]`` uint8 view of the same channels-last memory.

    Batches keep that memory order too (:func:`collate_clips`): turning interleaved RGB into planes on
    the CPU is a strided byte shuffle that cost a worker ~0.7 ms per two-view sample. ``Tensor.to(device)``
    and ``pin_memory`` preserve the strides of such a dense tensor, so it crosses to the GPU as one
    straight copy, and the device (or the CPU normalising pass) produces the layout the model reads."""
    return torch.from_numpy(np.ascontiguousarray(clips)).movedim(-1, -4)


def channels_last(video: torch.Tensor) -> torch.Tensor | None:
    """The contiguous ``[..., T, H, W, C]`` tensor a ``[..., C, T, H, W]`` video is a view of, or None
    when the video is not laid out that way in memory."""
    if video.dim() < 4:
        return None
    inner = video.movedim(-4, -1)
    return inner if inner.is_contiguous() else None


def normalize_video(video: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 ``[..., C, T, H, W]`` (on any device) -> float ``(x - 255·mean) / (255·std)``, same shape: the
    one place pixels are normalised (on-device preparation and ``mv2mae embed`` call it, and the collate runs
    its CPU kernel, :func:`_lut_normalize`, straight into the batch buffer; the statistics are the model's
    ``pixel_mean``/``pixel_std``, which ``denormalise`` undoes).

    On the CPU a uint8 video goes through a 256-entry float table per channel (``cv2.LUT``): a single
    pass that reads bytes and writes floats, instead of a converting copy plus two in-place passes over
    ~1.5 M floats per two-view sample; the result keeps the channels-last memory order of the loader's
    batches (a view with the requested shape). Elsewhere: one converting copy into a contiguous tensor,
    then in-place arithmetic with the same float32 values."""
    if video.device.type == "cpu" and video.dtype == torch.uint8 and video.dim() >= 4 and video.numel():
        src = channels_last(video)
        if src is None:
            src = video.movedim(-4, -1).contiguous()
        out = fresh_buffer(tuple(src.shape), torch.float32)
        _lut_normalize(src, out, mean, std)
        return out.movedim(-1, -4)
    out = torch.empty(video.shape, dtype=torch.float32, device=video.device)
    out.copy_(video)
    shape = (-1, 1, 1, 1)
    m = torch.tensor(mean, dtype=torch.float32, device=video.device).view(shape) * 255.0
    s = torch.tensor(std, dtype=torch.float32, device=video.device).view(shape) * 255.0
    return out.sub_(m).div_(s)


@functools.lru_cache(maxsize=8)
def _channel_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """``[1, 256, C]`` float32: per channel, the value of every byte, with the same float32 arithmetic
    as the tensor path (``cv2.LUT`` applies channel c's column to channel c of interleaved pixels)."""
    levels = np.arange(256, dtype=np.float32)
    columns = [(levels - np.float32(m) * np.float32(255.0)) / (np.float32(s) * np.float32(255.0))
               for m, s in zip(mean, std, strict=True)]
    return np.ascontiguousarray(np.stack(columns, axis=-1)[None])


def _lut_normalize(src: torch.Tensor, out: torch.Tensor, mean, std) -> None:
    """Contiguous channels-last uint8 ``src`` -> float32 ``out`` of the same shape, in one pass."""
    channels = src.shape[-1]
    table = _channel_table(tuple(float(m) for m in mean), tuple(float(s) for s in std))
    if table.shape[-1] != channels:
        raise ValueError(f"{table.shape[-1]} normalisation channels for a video with {channels} channels")
    if not (src.is_contiguous() and out.is_contiguous()) or out.shape != src.shape:
        raise ValueError("_lut_normalize needs contiguous channels-last tensors of one shape")
    image = src.numpy().reshape(-1, src.shape[-2], channels)  # one tall image: rows = everything but W, C
    result = out.numpy().reshape(image.shape)
    if cv2.LUT(image, table, dst=result) is not result:  # OpenCV reallocates rather than fail on a mismatch
        raise RuntimeError("cv2.LUT did not write into the batch buffer")


def collate_clips(samples: list[dict], mean, std, normalize: bool) -> dict:
    """A batch of samples: same-shaped CPU tensors are stacked and ints become an int64 tensor, in
    :func:`~mv2mae.data.transport.batch_buffer` memory (a worker's reused shared buffers, shipped as
    leases); anything else goes to ``default_collate``. A uint8 channels-last video
    (:func:`to_video_tensor`) is copied once, straight into the batch — as bytes, or through the
    normalising table when ``normalize`` — and arrives as a ``[B, ..., C, T, H, W]`` view of
    channels-last memory; a video of any other kind is stacked and then normalised."""
    batch, plain = {}, []
    for key in samples[0]:
        values = [s[key] for s in samples]
        if all(type(v) is int for v in values):
            out = batch_buffer((len(values),), torch.int64, key)
            out.numpy()[:] = values
            batch[key] = ship(out)
        elif not all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in values) or \
                len({(v.dtype, tuple(v.shape)) for v in values}) != 1:
            plain.append(key)
        elif key == "video" and values[0].dtype == torch.uint8 and \
                (sources := [channels_last(v) for v in values]) and all(src is not None for src in sources):
            batch[key] = _collate_video(sources, mean, std, normalize, key)
        elif key == "video" and normalize:
            batch[key] = normalize_video(torch.stack(values), mean, std)
        else:
            out = batch_buffer((len(values), *values[0].shape), values[0].dtype, key)
            batch[key] = ship(torch.stack(values, out=out))
    if plain:
        batch.update(torch.utils.data.default_collate([{k: s[k] for k in plain} for s in samples]))
        if normalize and "video" in plain:
            batch["video"] = normalize_video(batch["video"], mean, std)
    return {k: batch[k] for k in samples[0]}


def _collate_video(sources: list[torch.Tensor], mean, std, normalize: bool, field: str):
    """Channels-last ``sources`` copied once into the batch buffer (normalised on the way when asked)."""
    shape = (len(sources), *sources[0].shape)
    if normalize:
        out = batch_buffer(shape, torch.float32, field)
        for src, dst in zip(sources, out, strict=True):
            _lut_normalize(src, dst, mean, std)
    else:
        out = torch.stack(sources, out=batch_buffer(shape, torch.uint8, field))
    return ship(out.movedim(-1, -4))
