"""From JPEG members to the uint8 clip the model sees: stages 3 and 4 of the data path (``mv2mae.data``).

* read (worker): :func:`read_jpegs`, the bytes of a view's sampled frames, each header checked;
* decode + crop/resize, in the worker (``data.decode_on=cpu``): :func:`decode_frames` then
  :func:`crop_resize`, a sample at a time; or, with ``decode_on=device``, the worker only packs the bytes
  and the plan (:func:`pack_for_device`) and the training process decodes, crops and resizes a whole batch
  on the device (:class:`DecodeOnDevice`): torchvision's ``decode_jpeg`` (nvJPEG on CUDA, libjpeg-turbo on
  the CPU, which is how CI runs this very code), then :func:`resize_views`. Both paths resample with
  the one :func:`resize_crops`.

Frames stay uint8 RGB, so that motion can be computed from the same pixels the model sees (0-255 units);
batches stay uint8 too, and the model normalises them (:class:`~mv2mae.model.embed.ToNormalizedClip`).

A packed sample crosses from a worker as:

* ``jpeg``: uint8 [bytes], every distinct (view, stored frame) JPEG of the sample back to back;
  ``jpeg_sizes``: int64 [F], their lengths; ``jpeg_members``: int64 [F, 2], the (camera, stored frame)
  each one is, for error messages; ``jpeg_count``: F. A batch concatenates the ragged ones
  (:data:`JPEG_FIELDS`), so its JPEGs travel as one shared-memory tensor, not as many small objects;
* ``frames``: int64 [V, T], which of the sample's JPEGs each view's sampled frame is;
* ``boxes``: int64 [V, 4], each view's crop box (x0, y0, x1, y1) in stored pixels; ``flips``: bool [V],
  whether the view is mirrored after resizing (``mv2mae.data.sampling.Crop``);
* ``frame_size``: int64 [2], the stored (width, height) the metadata promises; ``shard``: the shard's name.

A single-view sample (finetuning, evaluation) has ``frames`` [T], ``boxes`` [4] and ``flips`` [], and its
decoded video no view axis, exactly like the cpu path's.

A frame that is not a JPEG of the stored size by its header (a PNG, a WebP, a header declaring
60000x60000) is refused in the worker on both paths (:func:`read_jpegs`), which skips and counts its group
(``data.max_bad_samples``). A JPEG whose header is right but whose data does not decode, or decodes to
another size, is found by ``decode_on=device`` only in the training process, after the worker's
accounting: the batch fails with a :class:`~mv2mae.shards.schema.ContractError` naming the shard and
member, rather than being skipped (dropping a sample would change the batch the step and its resume
count on); ``decode_on=cpu`` skips such groups, and ``mv2mae shards verify`` finds them all beforehand.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg

from mv2mae.data.config import ClipGeometry
from mv2mae.data.motion import area_matrix
from mv2mae.data.sampling import Crop
from mv2mae.shards.reader import GroupSample
from mv2mae.shards.schema import ContractError, frame_member
from mv2mae.shards.untrusted import check_jpeg

JPEG_FIELDS = ("jpeg", "jpeg_sizes", "jpeg_members")  # ragged per sample: a batch concatenates them
PLAN_FIELDS = (*JPEG_FIELDS, "jpeg_count", "frames", "boxes", "flips", "frame_size", "shard")

# libjpeg-turbo writes RGB directly when asked (OpenCV >= 4.10): no per-frame colour conversion.
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)


def read_jpegs(group: GroupSample, camera: int, indices: np.ndarray) -> dict[int, bytes]:
    """Stage 3: the JPEG bytes of ``camera``'s stored frames ``indices``, each distinct frame once (in
    increasing order). A frame that is not a JPEG of the stored size by its header is refused here,
    before any decoder allocates what the header declares."""
    jpegs = {}
    for t in np.unique(indices).tolist():
        data = group.frame(camera, t)
        check_jpeg(data, group.meta.size, f"{group.shard}: {frame_member(group.key, camera, t)}")
        jpegs[t] = data
    return jpegs


def decode_jpeg_rgb(data: bytes) -> np.ndarray | None:
    """One JPEG as an RGB uint8 [H, W, 3] array (None when it does not decode)."""
    buf = np.frombuffer(data, np.uint8)
    if _IMREAD_RGB is not None:
        return cv2.imdecode(buf, _IMREAD_RGB)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def decode_frames(group: GroupSample, camera: int, indices: np.ndarray) -> dict[int, np.ndarray]:
    """Stages 3-4 in a worker: stored frames ``indices`` of ``camera`` read (:func:`read_jpegs`) and decoded
    to RGB uint8 [H, W, 3] arrays, by stored frame index; a frame that does not decode to the stored size
    is a :class:`ContractError` (its group is skipped and counted)."""
    width, height = group.meta.size
    frames = {}
    for t, data in read_jpegs(group, camera, indices).items():
        img = decode_jpeg_rgb(data)
        if img is None:
            raise ContractError(f"{group.shard}: {frame_member(group.key, camera, t)} is not a decodable JPEG")
        if img.shape[:2] != (height, width):
            raise ContractError(f"{group.shard}: {frame_member(group.key, camera, t)} is {img.shape[1]}x"
                                f"{img.shape[0]}, metadata says {width}x{height}")
        frames[t] = img
    return frames


def resize_crops(crops: torch.Tensor, size: int, flip: bool = False) -> torch.Tensor:
    """Stage 4's one resampling, in the workers and on the device alike: ``crops`` uint8 [T, C, h, w] (the
    sampled frames cut to one box; any memory layout, any device) in, uint8 [T, C, size, size] out,
    mirrored left-right when ``flip``.

    Bilinear with half-pixel centres on the crop, its own edge replicated (VideoMAE's choice), up to a
    shrink of 2x; beyond, where bilinear would alias, area averaging by exact pixel overlap (rare:
    128-pixel crops of frames stored at short side 160 shrink 1-1.6x). On the CPU torch resamples uint8
    natively, fastest on interleaved channels (0.35 ms per 16-frame 128² view, one thread; cv2 took 0.33,
    torch's float path ~5x that); elsewhere (CUDA has no uint8 bilinear) and for area, in float rounded
    to the nearest level. Against cv2's fixed-point bilinear a pixel may differ by one level."""
    h, w = crops.shape[-2:]
    if min(h, w) > 2 * size:
        rows, cols = (_area_weights(extent, size, crops.device) for extent in (h, w))
        resized = _to_levels(rows @ crops.float() @ cols.T)
    elif crops.device.type == "cpu":
        crops = crops.contiguous(memory_format=torch.channels_last)
        resized = F.interpolate(crops, size=(size, size), mode="bilinear", align_corners=False)
    else:
        resized = _to_levels(F.interpolate(crops.float(), size=(size, size), mode="bilinear", align_corners=False))
    return resized.flip(-1) if flip else resized


@functools.lru_cache(maxsize=256)
def _area_weights(extent: int, size: int, device: torch.device) -> torch.Tensor:
    """float32 [size, extent] area-averaging weights on ``device``, made once per shape (a copy to a GPU
    per view would make the host wait for it)."""
    return torch.from_numpy(area_matrix(0, extent, size, 1, extent)).to(device, torch.float32)


def _to_levels(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.round_().clamp_(0, 255).to(torch.uint8)


def crop_resize(frames: dict[int, np.ndarray], indices: np.ndarray, crop: Crop, size: int,
                out: np.ndarray | None = None) -> np.ndarray:
    """Stage 4 on decoded frames (``decode_on=cpu``): ``[T, size, size, C]`` uint8, each sampled frame cut
    to ``crop.box`` and resized by :func:`resize_crops` (mirrored when ``crop.flip``), written into ``out``
    when given (e.g. one view of a multi-view sample, which then needs no stacking)."""
    x0, y0, x1, y1 = crop.box
    cut = np.stack([frames[int(t)][y0:y1, x0:x1] for t in indices])  # [T, h, w, C]: the crops only
    resized = resize_crops(torch.from_numpy(cut).permute(0, 3, 1, 2), size, crop.flip).permute(0, 2, 3, 1)
    if out is None:
        return resized.contiguous().numpy()
    if out.shape != tuple(resized.shape) or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ValueError(f"crop_resize: out must be a C-contiguous uint8 array of shape {tuple(resized.shape)}, "
                         f"got {out.dtype} {out.shape}")
    torch.from_numpy(out).copy_(resized)
    return out


def to_video_tensor(clips: np.ndarray) -> torch.Tensor:
    """``[..., T, H, W, C]`` uint8 -> ``[..., C, T, H, W]`` uint8 view of the same channels-last memory.

    Batches keep that memory order too (``mv2mae.data.loaders.collate_clips``): turning interleaved RGB
    into planes on the CPU is a strided byte shuffle that cost a worker ~0.7 ms per two-view sample.
    ``Tensor.to(device)`` and ``pin_memory`` preserve the strides of such a dense tensor, so it crosses to
    the GPU as one straight copy, and the model's normalisation produces the layout it reads."""
    return torch.from_numpy(np.ascontiguousarray(clips)).movedim(-1, -4)


def channels_last(video: torch.Tensor) -> torch.Tensor | None:
    """The contiguous ``[..., T, H, W, C]`` tensor a ``[..., C, T, H, W]`` video is a view of, or None
    when the video is not laid out that way in memory."""
    if video.dim() < 4:
        return None
    inner = video.movedim(-4, -1)
    return inner if inner.is_contiguous() else None


def pack_for_device(group: GroupSample, plan: list[tuple[int, np.ndarray]], crops: list[Crop],
                    single: bool = False) -> dict:
    """Stage 3 for ``decode_on=device`` (worker): the bytes of the JPEGs each ``(camera, stored frame
    indices)`` of ``plan`` uses (:func:`read_jpegs`) and the plan to cut each view's clip from them through
    its crop, as the module notes lay out; ``single`` drops the view axis."""
    chunks: list[bytes] = []
    members: list[tuple[int, int]] = []
    frames = np.empty((len(plan), len(plan[0][1])), np.int64)
    for v, (cam, indices) in enumerate(plan):
        _, where = np.unique(indices, return_inverse=True)
        frames[v] = len(chunks) + where
        for t, data in read_jpegs(group, cam, indices).items():
            chunks.append(data)
            members.append((cam, t))
    data = torch.frombuffer(bytearray().join(chunks), dtype=torch.uint8)
    packed = {"jpeg": data, "jpeg_sizes": torch.tensor([len(c) for c in chunks], dtype=torch.int64),
              "jpeg_members": torch.tensor(members, dtype=torch.int64), "jpeg_count": len(chunks),
              "frames": torch.from_numpy(frames), "boxes": torch.tensor([c.box for c in crops], dtype=torch.int64),
              "flips": torch.tensor([c.flip for c in crops]), "frame_size": torch.tensor(group.meta.size),
              "shard": group.shard}
    if single:
        for key in ("frames", "boxes", "flips"):
            packed[key] = packed[key][0]
    return packed


def decode_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """RGB uint8 [3, H, W] images on ``device`` from 1-D uint8 CPU tensors of JPEG bytes, in one call."""
    with warnings.catch_warnings():
        # torchvision 0.29 marks its image codecs deprecated in favour of TorchCodec; they still are
        # the batched nvJPEG path, and the only one among our dependencies
        warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def resize_views(images: list[torch.Tensor], frames: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor,
                 size: int, out: torch.Tensor) -> None:
    """Stage 4 on the device: cut every view's clip out of decoded ``images`` (uint8 [C, H, W] each):
    ``frames`` [N, T] indices into them, ``boxes`` [N, 4], resized by :func:`resize_crops`, mirrored
    where ``flips`` [N] says; writes ``out`` uint8 [N, T, C, size, size]."""
    for n, (idx, (x0, y0, x1, y1), flip) in enumerate(zip(frames.tolist(), boxes.tolist(), flips.tolist(),
                                                          strict=True)):
        out[n] = resize_crops(torch.stack([images[i][:, y0:y1, x0:x1] for i in idx]), size, flip)


_SKIPPING = "found decoding on the device (data.decode_on), where a bad sample stops the run: decode_on=cpu skips it"


@dataclass(frozen=True)
class _Members:
    """Names the batch's JPEG ``i`` as ``shard: member`` (the workers' error format)."""

    shards: list[str]
    keys: list[str]
    members: torch.Tensor  # [F, 2] (camera, stored frame) of every JPEG of the batch
    counts: torch.Tensor  # [B] JPEGs per sample

    def __call__(self, i: int) -> str:
        sample = int(torch.searchsorted(self.counts.cumsum(0), i, right=True))
        camera, t = self.members[i].tolist()
        return f"{self.shards[sample]}: {frame_member(self.keys[sample], camera, t)}"


@dataclass(frozen=True)
class DecodeOnDevice:
    """Stage 4 for ``decode_on=device``, in the training process: a batch of packed plans (module notes) in,
    the batch the cpu path's workers would have produced out, its ``video`` uint8 [B, (V,) C, T, H, W] on
    ``device`` (motion from the clip is the next stage: :class:`~mv2mae.data.motion.ClipMotion`)."""

    geom: ClipGeometry
    device: torch.device

    def __call__(self, batch: dict) -> dict:
        plan = {k: batch[k] for k in PLAN_FIELDS}
        batch = {k: v for k, v in batch.items() if k not in PLAN_FIELDS}
        single = plan["frames"].dim() == 2
        frames = plan["frames"] if not single else plan["frames"][:, None]
        boxes = plan["boxes"] if not single else plan["boxes"][:, None]
        flips = plan["flips"] if not single else plan["flips"][:, None]
        counts = plan["jpeg_count"]
        frames = frames + (counts.cumsum(0) - counts)[:, None, None]  # the sample's images -> the batch's
        where = _Members(plan["shard"], batch["key"], plan["jpeg_members"], counts)
        images = self._decode(plan["jpeg"], plan["jpeg_sizes"], where)
        self._check_sizes(images, plan["frame_size"], where)
        size = self.geom.size
        pixels = torch.empty((*frames.shape, images[0].shape[0], size, size), dtype=torch.uint8, device=self.device)
        resize_views(images, frames.flatten(0, 1), boxes.flatten(0, 1), flips.flatten(0, 1), size,
                     pixels.flatten(0, 1))
        video = pixels.transpose(2, 3)  # [B, V, T, C, H, W] -> [B, V, C, T, H, W]
        return {"video": video[:, 0] if single else video} | batch  # the fields in the cpu path's order

    def _decode(self, data: torch.Tensor, sizes: torch.Tensor, where: _Members) -> list[torch.Tensor]:
        parts = list(data.split(sizes.tolist()))
        try:
            return decode_jpegs(parts, self.device)
        except RuntimeError as exc:  # one bad JPEG fails the batched call: name it
            for i, part in enumerate(parts):
                try:
                    decode_jpegs([part], torch.device("cpu"))
                except RuntimeError:
                    raise ContractError(f"{where(i)} is not a decodable JPEG ({exc}); {_SKIPPING}") from None
            raise

    def _check_sizes(self, images: list[torch.Tensor], frame_size: torch.Tensor, where: _Members) -> None:
        sizes = frame_size.repeat_interleave(where.counts, dim=0).tolist()
        for i, (image, (width, height)) in enumerate(zip(images, sizes, strict=True)):
            if tuple(image.shape[1:]) != (height, width):
                raise ContractError(f"{where(i)} is {image.shape[2]}x{image.shape[1]}, metadata says "
                                    f"{width}x{height}; {_SKIPPING}")
