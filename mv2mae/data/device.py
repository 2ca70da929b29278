"""Decoding where the model runs (``data.decode_on=device``): the workers plan, the training process decodes.

JPEG decoding is most of a worker's work per sample (BENCHMARKS.md), so with ``decode_on=device`` a
worker only plans the clip (views, frame indices, crop boxes, mask-free motion rows from the cache)
and reads the sampled JPEG members' bytes (:func:`encode_views`). The training process then decodes
a whole batch's JPEGs in one call of torchvision's ``decode_jpeg`` on the device (nvJPEG on CUDA,
libjpeg-turbo on the CPU, which is how CI runs this very code), and crops and resizes there
(:class:`DeviceDecoder`), giving the same uint8 ``video`` as the workers' cv2 path within rounding.

A sample crosses from a worker as:

* ``jpeg``: uint8 [bytes], every distinct (view, stored frame) JPEG of the sample back to back;
  ``jpeg_sizes``: int64 [F], their lengths; ``jpeg_count``: F. A batch concatenates these
  (:data:`JPEG_FIELDS`), so its JPEGs travel as one shared-memory tensor, not as many small objects;
* ``frames``: int64 [V, T], which of the sample's JPEGs each view's sampled frame is;
* ``boxes``: int64 [V, 4], each view's crop box (x0, y0, x1, y1) in stored pixels;
* ``frame_size``: int64 [2], the stored (width, height) the metadata promises.

A single-view sample (finetuning, evaluation) has ``frames`` [T] and ``boxes`` [4], and its decoded
video no view axis, exactly like the cpu path's.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg

from mv2mae.data.config import ClipGeometry
from mv2mae.data.motion import area_matrix, clip_token_motion
from mv2mae.data.sampling import Box
from mv2mae.shards.reader import GroupSample
from mv2mae.shards.schema import ContractError

JPEG_FIELDS = ("jpeg", "jpeg_sizes")  # ragged per sample: a batch concatenates them
PLAN_FIELDS = ("jpeg", "jpeg_sizes", "jpeg_count", "frames", "boxes", "frame_size")


def encode_views(group: GroupSample, cams: list[int], indices: np.ndarray, boxes: list[Box],
                 single: bool = False) -> dict:
    """The worker's share of a sample: bytes of the JPEGs ``cams`` × ``indices`` use (each distinct
    frame once) and the plan to cut the clip from them (module notes); ``single`` drops the view axis."""
    chunks: list[bytes] = []
    distinct, where = np.unique(indices, return_inverse=True)
    frames = np.empty((len(cams), len(indices)), np.int64)
    for v, cam in enumerate(cams):
        frames[v] = len(chunks) + where
        chunks.extend(group.frame(cam, t) for t in distinct.tolist())
    data = torch.frombuffer(bytearray().join(chunks), dtype=torch.uint8)
    plan = {"jpeg": data, "jpeg_sizes": torch.tensor([len(c) for c in chunks], dtype=torch.int64),
            "jpeg_count": len(chunks), "frames": torch.from_numpy(frames),
            "boxes": torch.tensor(boxes, dtype=torch.int64), "frame_size": torch.tensor(group.meta.size)}
    if single:
        plan["frames"], plan["boxes"] = plan["frames"][0], plan["boxes"][0]
    return plan


def decode_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """RGB uint8 [3, H, W] images on ``device`` from 1-D uint8 CPU tensors of JPEG bytes, in one call."""
    with warnings.catch_warnings():
        # torchvision 0.29 marks its image codecs deprecated in favour of TorchCodec; they still are
        # the batched nvJPEG path, and the only one among our dependencies
        warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def resize_views(images: list[torch.Tensor], frames: torch.Tensor, boxes: torch.Tensor, size: int,
                 out: torch.Tensor) -> None:
    """Cut every view's clip out of decoded ``images`` (uint8 [C, H, W] each): ``frames`` [N, T] indices
    into them, ``boxes`` [N, 4]; writes ``out`` float [N, T, C, size, size] (pixel units, not rounded).

    The same resampling as the cpu path's :func:`~mv2mae.data.decode.crop_resize` (cv2): bilinear with
    half-pixel centres on the cropped region, its own edge replicated, up to a shrink of 2x; beyond,
    area averaging by exact pixel overlap, as cv2's INTER_AREA (rare: 128-pixel crops of frames stored
    at short side 160 shrink 1-1.6x)."""
    for n, (idx, (x0, y0, x1, y1)) in enumerate(zip(frames.tolist(), boxes.tolist(), strict=True)):
        clip = torch.stack([images[i][:, y0:y1, x0:x1] for i in idx]).float()  # [T, C, h, w]: the crops only
        # (a horizontal flip of the plan would go here: clip.flip(-1) — both resamplings are symmetric)
        if min(x1 - x0, y1 - y0) > 2 * size:
            rows, cols = (torch.from_numpy(area_matrix(0, extent, size, 1, extent)).to(clip)
                          for extent in (y1 - y0, x1 - x0))
            out[n] = rows @ clip @ cols.T
        else:
            out[n] = F.interpolate(clip, size=(size, size), mode="bilinear", align_corners=False)


@dataclass(frozen=True)
class DeviceDecoder:
    """Turns a batch of plans (module notes) into the batch the cpu path would have produced, on ``device``:
    ``video`` uint8 [B, (V,) C, T, H, W] there, and, with ``clip_motion``, ``motion`` [B, V, N] computed
    from the decoded clip (the hook for motion that needs pixels: ``data.motion=online``)."""

    geom: ClipGeometry
    device: torch.device
    clip_motion: bool = False

    def __call__(self, batch: dict) -> dict:
        plan = {k: batch[k] for k in PLAN_FIELDS}
        batch = {k: v for k, v in batch.items() if k not in PLAN_FIELDS}
        single = plan["frames"].dim() == 2
        frames = plan["frames"] if not single else plan["frames"][:, None]
        boxes = plan["boxes"] if not single else plan["boxes"][:, None]
        counts = plan["jpeg_count"]
        frames = frames + (counts.cumsum(0) - counts)[:, None, None]  # the sample's images -> the batch's
        images = self._decode(plan["jpeg"], plan["jpeg_sizes"], counts, batch["key"])
        self._check_sizes(images, plan["frame_size"], counts, batch["key"])
        size = self.geom.size
        pixels = torch.empty((*frames.shape, images[0].shape[0], size, size), dtype=torch.float32,
                             device=self.device)
        resize_views(images, frames.flatten(0, 1), boxes.flatten(0, 1), size, pixels.flatten(0, 1))
        # like cv2's uint8 resize: rounded to the nearest level; [B, V, T, C, H, W] -> [B, V, C, T, H, W]
        video = pixels.round_().clamp_(0, 255).to(torch.uint8).transpose(2, 3)
        decoded = {"video": video[:, 0] if single else video}
        if self.clip_motion:
            decoded["motion"] = clip_token_motion(video, self.geom.tubelet, self.geom.patch)
        return decoded | batch  # the fields in the cpu path's order

    def _decode(self, data: torch.Tensor, sizes: torch.Tensor, counts: torch.Tensor,
                keys: list[str]) -> list[torch.Tensor]:
        parts = list(data.split(sizes.tolist()))
        try:
            return decode_jpegs(parts, self.device)
        except RuntimeError as exc:  # one bad JPEG fails the batched call: name its sample
            first = (counts.cumsum(0) - counts).tolist()
            for i, part in enumerate(parts):
                try:
                    decode_jpegs([part], torch.device("cpu"))
                except RuntimeError:
                    sample = int(np.searchsorted(first, i, side="right")) - 1
                    raise ContractError(f"{keys[sample]}: sampled JPEG {i - first[sample]} of the group does "
                                        f"not decode ({exc})") from None
            raise

    @staticmethod
    def _check_sizes(images: list[torch.Tensor], frame_size: torch.Tensor, counts: torch.Tensor,
                     keys: list[str]) -> None:
        start = 0
        for key, (width, height), count in zip(keys, frame_size.tolist(), counts.tolist(), strict=True):
            for image in images[start:start + count]:
                if tuple(image.shape[1:]) != (height, width):
                    raise ContractError(f"{key}: a sampled frame is {image.shape[2]}x{image.shape[1]}, "
                                        f"metadata says {width}x{height}")
            start += count
