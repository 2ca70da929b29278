"""Decode only the sampled JPEG members of a group, crop and resize them (``data.decode_on=cpu``), and
collate samples into batches.

Frames stay uint8 ``[T, H, W, C]`` RGB, so that motion can be computed online from the same pixels the
model sees (``0-255`` units); batches stay uint8 too, and the model normalises them
(:class:`~mv2mae.model.embed.PixelNormalize`).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.utils.data

from mv2mae.data.device import JPEG_FIELDS
from mv2mae.data.sampling import Crop
from mv2mae.data.transport import batch_buffer, fresh_buffer, ship
from mv2mae.shards.reader import GroupSample
from mv2mae.shards.schema import ContractError, frame_member
from mv2mae.shards.untrusted import check_jpeg

# libjpeg-turbo writes RGB directly when asked (OpenCV >= 4.10): no per-frame colour conversion.
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)


def decode_jpeg_rgb(data: bytes) -> np.ndarray | None:
    buf = np.frombuffer(data, np.uint8)
    if _IMREAD_RGB is not None:
        return cv2.imdecode(buf, _IMREAD_RGB)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def decode_frames(group: GroupSample, camera: int, indices: np.ndarray) -> dict[int, np.ndarray]:
    """Stored frames ``indices`` of ``camera`` as RGB arrays, each distinct index decoded once; a frame whose
    header is not a JPEG of the stored size is refused before the decoder allocates for it."""
    width, height = group.meta.size
    frames = {}
    for t in np.unique(indices).tolist():
        data = group.frame(camera, t)
        check_jpeg(data, group.meta.size, f"{group.shard}: {frame_member(group.key, camera, t)}")
        img = decode_jpeg_rgb(data)
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
    straight copy, and the model's normalisation produces the layout it reads."""
    return torch.from_numpy(np.ascontiguousarray(clips)).movedim(-1, -4)


def channels_last(video: torch.Tensor) -> torch.Tensor | None:
    """The contiguous ``[..., T, H, W, C]`` tensor a ``[..., C, T, H, W]`` video is a view of, or None
    when the video is not laid out that way in memory."""
    if video.dim() < 4:
        return None
    inner = video.movedim(-4, -1)
    return inner if inner.is_contiguous() else None


def collate_clips(samples: list[dict]) -> dict:
    """A batch of samples: same-shaped CPU tensors are stacked and ints become an int64 tensor, in
    :func:`~mv2mae.data.transport.batch_buffer` memory (a worker's reused shared buffers, shipped as
    leases); the ragged JPEG fields of encoded samples (:data:`~mv2mae.data.device.JPEG_FIELDS`) are
    concatenated; anything else goes to ``default_collate``. A uint8 channels-last video
    (:func:`to_video_tensor`) is copied once, straight into the batch, and arrives as a
    ``[B, ..., C, T, H, W]`` view of channels-last memory. Video stays uint8: the model normalises it."""
    batch, plain = {}, []
    for key in samples[0]:
        values = [s[key] for s in samples]
        if all(type(v) is int for v in values):
            out = batch_buffer((len(values),), torch.int64, key)
            out.numpy()[:] = values
            batch[key] = ship(out)
        elif key in JPEG_FIELDS:  # a length of its own per batch: fresh memory, not a reused buffer
            shape = (sum(len(v) for v in values), *values[0].shape[1:])
            batch[key] = torch.cat(values, out=fresh_buffer(shape, values[0].dtype))
        elif not all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in values) or \
                len({(v.dtype, tuple(v.shape)) for v in values}) != 1:
            plain.append(key)
        elif key == "video" and (sources := [channels_last(v) for v in values]) and \
                all(src is not None for src in sources):
            out = torch.stack(sources, out=batch_buffer((len(sources), *sources[0].shape), torch.uint8, key))
            batch[key] = ship(out.movedim(-1, -4))
        else:
            out = batch_buffer((len(values), *values[0].shape), values[0].dtype, key)
            batch[key] = ship(torch.stack(values, out=out))
    if plain:
        batch.update(torch.utils.data.default_collate([{k: s[k] for k in plain} for s in samples]))
    return {k: batch[k] for k in samples[0]}
