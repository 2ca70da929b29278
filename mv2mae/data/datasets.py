"""Iterable datasets turning streamed groups into clips: pretraining (multi-view + motion weights),
finetuning (one camera + label) and evaluation (every test camera × clips × crops, with ids).

Each ``__iter__`` runs inside a DataLoader worker (or the main process): it derives its RNG from
(seed, rank, worker, epoch), opens the motion cache there, and yields one dict per sample with uint8
video, or, when the dataset is ``encoded`` (``data.decode_on=device``), with the sampled JPEGs' bytes
and the plan to cut the video from them (:mod:`mv2mae.data.device`); the same RNG draws drive both,
so the two give the same samples. :func:`mv2mae.data.decode.collate_clips` stacks them into batches.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import IterableDataset

from mv2mae.data.config import ClipGeometry, DataConfig
from mv2mae.data.decode import crop_resize, decode_frames, to_video_tensor
from mv2mae.data.device import encode_views
from mv2mae.data.motion import cache_token_motion, clip_token_motion
from mv2mae.data.sampling import (
    Box,
    choose_views,
    eval_boxes,
    eval_frame_indices,
    random_resized_box,
    train_frame_indices,
)
from mv2mae.data.transport import RingEnds, attach
from mv2mae.shards.motion import MotionRows
from mv2mae.shards.protocols import Selection, select
from mv2mae.shards.reader import GroupSample, current_slot, eval_groups, train_groups
from mv2mae.shards.schema import ContractError, DatasetIndex, GroupMeta, frame_ext, read_index

# A stream that skips this many groups in a row cannot form samples under its protocol.
MAX_CONSECUTIVE_SKIPS = 10_000


@dataclass
class ShardSplit:
    """A dataset directory seen through one protocol split."""

    root: Path
    index: DatasetIndex
    selection: Selection

    @classmethod
    def open(cls, root: str | Path, protocol: str, split: str) -> ShardSplit:
        index = read_index(root)
        selection = select(index, protocol, split)
        if not selection.shards:
            raise ContractError(f"{root}: protocol {protocol} selects no shard for split {split!r}")
        return cls(root=Path(root), index=index, selection=selection)

    @property
    def num_classes(self) -> int:
        return len(self.index.classes)


# glibc's mallopt parameters: allocations below the threshold come from the heap, and up to the trim
# threshold of freed heap is kept rather than given back to the kernel.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_HEAP_BLOCKS, _HEAP_KEEP = 4 << 20, 64 << 20


def _keep_freed_memory() -> None:
    """Make a worker reuse its freed memory. Every decoded frame (~140 KB) is a fresh allocation that
    glibc may serve by mmap and unmap on free, so a two-view sample re-faulted ~270 zeroed pages (~0.5 ms
    of ~11 ms measured per sample). Served from a heap that keeps what was freed, the same pages come
    back. A no-op outside glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, _HEAP_BLOCKS)
    mallopt(_M_TRIM_THRESHOLD, _HEAP_KEEP)


class ClipDataset(IterableDataset):
    def __init__(self, split: ShardSplit, geom: ClipGeometry, data: DataConfig, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1, encoded: bool = False):
        super().__init__()
        self.split, self.geom, self.data = split, geom, data
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.encoded = encoded  # ship JPEG bytes + plan for the training process to decode (decode_on=device)
        self.ring: RingEnds | None = None  # set by the loader builder: the workers' reused batch buffers
        self._epoch = -1

    def _start(self) -> tuple[np.random.Generator, np.random.Generator]:
        """(plan RNG: views and frames as groups are read; crop RNG: boxes as samples are built)."""
        cv2.setNumThreads(1)  # parallelism comes from the workers, not from OpenCV
        if torch.utils.data.get_worker_info() is not None:
            _keep_freed_memory()
        attach(self.ring)
        self._epoch += 1
        slot = current_slot(self.rank, self.world_size)
        root = np.random.SeedSequence([self.seed, slot.index, slot.count, self._epoch])
        plan_seed, crop_seed = root.spawn(2)
        return np.random.default_rng(plan_seed), np.random.default_rng(crop_seed)

    def _decoded(self, group: GroupSample, cams: list[int], indices: np.ndarray) -> list[dict[int, np.ndarray]] | None:
        """The sampled frames of ``cams``, decoded here (None when the training process decodes them)."""
        return None if self.encoded else [decode_frames(group, cam, indices) for cam in cams]

    def _views(self, group: GroupSample, cams: list[int], indices: np.ndarray, boxes: list[Box],
               decoded: list[dict[int, np.ndarray]] | None, single: bool = False) -> dict:
        """One sample's pixels: ``video`` uint8 [V, C, T, H, W] cut from ``decoded`` frames ([C, T, H, W]
        when ``single``), or, encoded, the JPEG bytes and plan the training process cuts it with."""
        if self.encoded:
            return encode_views(group, cams, indices, boxes, single)
        channels = decoded[0][int(indices[0])].shape[2]
        # every view is resized straight into its slot of the sample
        clips = np.empty((len(cams), len(indices), self.geom.size, self.geom.size, channels), np.uint8)
        for frames, box, out in zip(decoded, boxes, clips, strict=True):
            crop_resize(frames, indices, box, self.geom.size, out=out)
        return {"video": to_video_tensor(clips[0] if single else clips)}

    def _train_stream(self, plan) -> Iterator[GroupSample]:
        return train_groups(self.split.root, [s.name for s in self.split.selection.shards],
                            seed=self.seed + 7919 * self._epoch, rank=self.rank, world_size=self.world_size,
                            shuffle_buffer=self.data.shuffle_buffer, plan=plan)

    def _planner(self, choose):
        """A reader plan from ``choose(meta) -> (cameras, frame indices) | None``; raises when a long run of
        groups cannot form a sample under the protocol (an infinite stream would otherwise spin)."""
        skips = 0

        def plan(meta: GroupMeta, where: str):
            nonlocal skips
            decision = choose(meta)
            if decision is None:
                skips += 1
                if skips >= MAX_CONSECUTIVE_SKIPS:
                    raise ContractError(f"{self.split.root}: {skips} groups in a row cannot form a sample from "
                                        f"cameras {self.split.selection.cameras} (protocol "
                                        f"{self.split.selection.protocol}); last: {where}:{meta.key}")
                return None
            skips = 0
            cams, indices = decision
            return {frame_ext(c, t) for c in cams for t in np.unique(indices).tolist()}, decision

        return plan


class PretrainClips(ClipDataset):
    """Infinite stream of ``{"video": [V, C, T, H, W], "motion": [V, N], "cameras": [V], "label", "key"}``
    with view 0 the target and views 1..K the sources, all at the same stored-frame indices."""

    def __init__(self, split: ShardSplit, geom: ClipGeometry, data: DataConfig, **kwargs):
        super().__init__(split, geom, data, **kwargs)
        cams = split.selection.cameras
        if len(cams) < data.views:
            raise ContractError(f"{split.root}: protocol {split.selection.protocol} {split.selection.split} allows "
                                f"cameras {cams}; pretraining needs {data.views} views (1 target + "
                                f"{data.num_sources} source(s))")

    def __iter__(self) -> Iterator[dict]:
        plan_rng, crop_rng = self._start()
        cfg, geom, allowed = self.data, self.geom, self.split.selection.cameras
        motion = None
        if cfg.motion in ("framediff", "flow"):
            motion = MotionRows(self.split.root, cfg.motion, self.split.index)

        def choose(meta: GroupMeta):
            views = choose_views([c for c in meta.cameras if c in allowed], cfg, plan_rng)
            return None if views is None else (views, train_frame_indices(meta.frames, geom, plan_rng))

        for group in self._train_stream(self._planner(choose)):
            views, indices = group.plan
            frames = self._decoded(group, views, indices)
            for _ in range(cfg.repeats):  # repeated sampling: new crops of the frames decoded once
                yield self._sample(group, views, indices, frames, crop_rng, motion)

    def _sample(self, group: GroupSample, views: list[int], indices: np.ndarray,
                decoded: list[dict[int, np.ndarray]] | None, rng: np.random.Generator,
                motion: MotionRows | None) -> dict:
        cfg, geom = self.data, self.geom
        width, height = group.meta.size
        shared = random_resized_box(width, height, cfg, rng) if cfg.shared_crop else None
        boxes = [shared or random_resized_box(width, height, cfg, rng) for _ in views]
        sample = self._views(group, views, indices, boxes, decoded)
        if motion is not None:
            weights = []
            for cam, box in zip(views, boxes, strict=True):
                rows, first = motion.view(group, cam, indices)
                weights.append(cache_token_motion(rows, first, indices, box, (width, height), motion.cell, geom))
            sample["motion"] = torch.from_numpy(np.stack(weights))
        elif not cfg.motion_from_clip:
            sample["motion"] = torch.zeros((len(views), geom.tokens), dtype=torch.float32)
        elif not self.encoded:  # encoded, the training process computes it after decoding (DeviceDecoder)
            sample["motion"] = clip_token_motion(sample["video"], geom.tubelet, geom.patch)
        return sample | {"cameras": torch.tensor(views), "label": group.meta.label, "key": group.key}


class FinetuneClips(ClipDataset):
    """Infinite stream of single-camera clips ``{"video": [C, T, H, W], "label", "camera", "key"}`` from
    one random allowed camera per drawn group."""

    def __iter__(self) -> Iterator[dict]:
        plan_rng, crop_rng = self._start()
        allowed = self.split.selection.cameras

        def choose(meta: GroupMeta):
            cams = [c for c in meta.cameras if c in allowed]
            if not cams:
                return None
            return [cams[int(plan_rng.integers(len(cams)))]], train_frame_indices(meta.frames, self.geom, plan_rng)

        for group in self._train_stream(self._planner(choose)):
            (cam,), indices = group.plan
            width, height = group.meta.size
            box = random_resized_box(width, height, self.data, crop_rng)
            sample = self._views(group, [cam], indices, [box], self._decoded(group, [cam], indices), single=True)
            yield sample | {"label": group.meta.label, "camera": cam, "key": group.key}


class EvalClips(ClipDataset):
    """Exact pass: for every group once across ranks × workers, every allowed camera × ``eval_clips``
    temporal clips × ``eval_crops`` spatial crops. ``video_id`` (``KEY/cCCC``) and ``key`` let the
    evaluation average softmax per video and fuse cameras per group."""

    def __iter__(self) -> Iterator[dict]:
        self._start()
        cfg, geom, allowed = self.data, self.geom, self.split.selection.cameras

        def choose(meta: GroupMeta):
            cams = [c for c in meta.cameras if c in allowed]
            clips = eval_frame_indices(meta.frames, geom, cfg.eval_clips)
            return (cams, np.concatenate(clips)) if cams else None

        for group in eval_groups(self.split.root, self.split.selection.shards, rank=self.rank,
                                 world_size=self.world_size, plan=self._planner(choose)):
            width, height = group.meta.size
            boxes = eval_boxes(width, height, cfg.eval_crops)
            for cam in group.plan[0]:
                for c, indices in enumerate(eval_frame_indices(group.meta.frames, geom, cfg.eval_clips)):
                    frames = self._decoded(group, [cam], indices)
                    for k, box in enumerate(boxes):
                        yield self._views(group, [cam], indices, [box], frames, single=True) | {
                            "label": group.meta.label, "camera": cam, "clip": c, "crop": k,
                            "key": group.key, "video_id": f"{group.key}/c{cam:03d}"}
