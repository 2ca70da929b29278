"""Decoding where the model runs (``data.decode_on=device``): the workers plan, the training process decodes.

JPEG decoding is most of a worker's work per sample (BENCHMARKS.md), so with ``decode_on=device`` a
worker only plans the clip (views and each view's stored frame indices, crops and flips, motion rows
from the cache for ``flow``) and reads the sampled JPEG members' bytes (:func:`encode_views`); every
random decision is drawn exactly as with ``decode_on=cpu`` (a resumed run's replay included). The
training process then decodes a whole batch's JPEGs in one call of torchvision's ``decode_jpeg`` on
the device (nvJPEG on CUDA, libjpeg-turbo on the CPU, which is how CI runs this very code), and crops,
resizes and flips there (:class:`DeviceDecoder`), giving the same uint8 ``video`` as the workers' cv2
path within rounding; clip motion (``framediff``) is then computed from those decoded pixels.

A sample crosses from a worker as:

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
60000x60000) is refused in the worker (:func:`encode_views`), which skips and counts its group
(``data.max_bad_samples``) as ``decode_on=cpu`` does. A JPEG whose header is right but whose data does
not decode, or decodes to another size, is found only here in the training process, after the worker's
accounting: the batch fails with a :class:`~mv2mae.shards.schema.ContractError` naming the shard and
member, rather than being skipped (dropping a sample would change the batch the step and its resume
count on); ``decode_on=cpu`` skips such groups, and ``mv2mae shards verify`` finds them all beforehand.
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
from mv2mae.data.sampling import Crop
from mv2mae.shards.reader import GroupSample
from mv2mae.shards.schema import ContractError, frame_member
from mv2mae.shards.untrusted import check_jpeg

JPEG_FIELDS = ("jpeg", "jpeg_sizes", "jpeg_members")  # ragged per sample: a batch concatenates them
PLAN_FIELDS = (*JPEG_FIELDS, "jpeg_count", "frames", "boxes", "flips", "frame_size", "shard")


def encode_views(group: GroupSample, plan: list[tuple[int, np.ndarray]], crops: list[Crop],
                 single: bool = False) -> dict:
    """The worker's share of a sample: bytes of the JPEGs each ``(camera, stored frame indices)`` of
    ``plan`` uses (each distinct frame of a view once) and the plan to cut each view's clip from them
    through its crop (module notes); ``single`` drops the view axis."""
    chunks: list[bytes] = []
    members: list[tuple[int, int]] = []
    frames = np.empty((len(plan), len(plan[0][1])), np.int64)
    for v, (cam, indices) in enumerate(plan):
        distinct, where = np.unique(indices, return_inverse=True)
        frames[v] = len(chunks) + where
        for t in distinct.tolist():
            data = group.frame(cam, t)
            # here, in the worker, a frame that is not a JPEG of the stored size is a bad group, skipped and
            # counted, before the training process's decoder would allocate what its header declares
            check_jpeg(data, group.meta.size, f"{group.shard}: {frame_member(group.key, cam, t)}")
            chunks.append(data)
            members.append((cam, t))
    data = torch.frombuffer(bytearray().join(chunks), dtype=torch.uint8)
    encoded = {"jpeg": data, "jpeg_sizes": torch.tensor([len(c) for c in chunks], dtype=torch.int64),
               "jpeg_members": torch.tensor(members, dtype=torch.int64), "jpeg_count": len(chunks),
               "frames": torch.from_numpy(frames), "boxes": torch.tensor([c.box for c in crops], dtype=torch.int64),
               "flips": torch.tensor([c.flip for c in crops]), "frame_size": torch.tensor(group.meta.size),
               "shard": group.shard}
    if single:
        for key in ("frames", "boxes", "flips"):
            encoded[key] = encoded[key][0]
    return encoded


def decode_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """RGB uint8 [3, H, W] images on ``device`` from 1-D uint8 CPU tensors of JPEG bytes, in one call."""
    with warnings.catch_warnings():
        # torchvision 0.29 marks its image codecs deprecated in favour of TorchCodec; they still are
        # the batched nvJPEG path, and the only one among our dependencies
        warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def resize_views(images: list[torch.Tensor], frames: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor,
                 size: int, out: torch.Tensor) -> None:
    """Cut every view's clip out of decoded ``images`` (uint8 [C, H, W] each): ``frames`` [N, T] indices
    into them, ``boxes`` [N, 4], mirrored left-right after resizing where ``flips`` [N] says; writes ``out``
    float [N, T, C, size, size] (pixel units, not rounded).

    The same resampling as the cpu path's :func:`~mv2mae.data.decode.crop_resize` (cv2): bilinear with
    half-pixel centres on the cropped region, its own edge replicated, up to a shrink of 2x; beyond,
    area averaging by exact pixel overlap, as cv2's INTER_AREA (rare: 128-pixel crops of frames stored
    at short side 160 shrink 1-1.6x)."""
    for n, (idx, (x0, y0, x1, y1), flip) in enumerate(zip(frames.tolist(), boxes.tolist(), flips.tolist(),
                                                          strict=True)):
        clip = torch.stack([images[i][:, y0:y1, x0:x1] for i in idx]).float()  # [T, C, h, w]: the crops only
        if min(x1 - x0, y1 - y0) > 2 * size:
            rows, cols = (torch.from_numpy(area_matrix(0, extent, size, 1, extent)).to(clip)
                          for extent in (y1 - y0, x1 - x0))
            resized = rows @ clip @ cols.T
        else:
            resized = F.interpolate(clip, size=(size, size), mode="bilinear", align_corners=False)
        out[n] = resized.flip(-1) if flip else resized


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
class DeviceDecoder:
    """Turns a batch of plans (module notes) into the batch the cpu path would have produced, on ``device``:
    ``video`` uint8 [B, (V,) C, T, H, W] there, and, with ``clip_motion``, ``motion`` [B, V, N] computed
    from the decoded (cropped, flipped) clip, as the workers do (``data.motion`` framediff)."""

    geom: ClipGeometry
    device: torch.device
    clip_motion: bool = False

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
        pixels = torch.empty((*frames.shape, images[0].shape[0], size, size), dtype=torch.float32,
                             device=self.device)
        resize_views(images, frames.flatten(0, 1), boxes.flatten(0, 1), flips.flatten(0, 1), size,
                     pixels.flatten(0, 1))
        # like cv2's uint8 resize: rounded to the nearest level; [B, V, T, C, H, W] -> [B, V, C, T, H, W]
        video = pixels.round_().clamp_(0, 255).to(torch.uint8).transpose(2, 3)
        decoded = {"video": video[:, 0] if single else video}
        if self.clip_motion:
            decoded["motion"] = clip_token_motion(video, self.geom.tubelet, self.geom.patch)
        return decoded | batch  # the fields in the cpu path's order

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
