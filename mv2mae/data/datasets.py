"""Iterable datasets turning streamed groups into clips: pretraining (multi-view + motion weights),
finetuning (one camera + label) and evaluation (every test camera × clips × crops, with ids).

Time follows the shard contract (``mv2mae.shards.schema``): a pretraining sample takes the same instants
from each of its views, inside the span those views share (``GroupMeta.span``); finetuning and
evaluation clips come from the chosen camera's whole stored video. Pretraining skips groups with
fewer allowed cameras than it needs views (one-camera groups among them); the index counts them in
advance (``Selection.groups_with_views``).

Each ``__iter__`` runs inside a DataLoader worker (or the main process): it derives its RNG from
(seed, rank, worker, epoch), opens the motion cache there (``flow``), and yields one dict per sample with uint8
video, or, when the dataset is ``encoded`` (``data.decode_on=device``), with the sampled JPEGs' bytes
and the plan to cut the video from them (:mod:`mv2mae.data.device`); the same RNG draws drive both,
so the two give the same samples. :func:`mv2mae.data.decode.collate_clips` stacks them into batches.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import IterableDataset

from mv2mae.data.config import CACHED_MOTION, CLIP_MOTION, ClipGeometry, DataConfig
from mv2mae.data.decode import crop_resize, decode_frames, to_video_tensor
from mv2mae.data.device import encode_views
from mv2mae.data.motion import cache_token_motion, clip_token_motion
from mv2mae.data.sampling import (
    Box,
    Crop,
    choose_views,
    draw_flip,
    eval_boxes,
    eval_frame_indices,
    random_resized_box,
    shared_clip,
    train_frame_indices,
)
from mv2mae.data.transport import RingEnds, attach
from mv2mae.shards.contract import checked_index
from mv2mae.shards.motion import MotionRows
from mv2mae.shards.protocols import ProtocolError, Selection, hold_out, keep_subjects, select
from mv2mae.shards.reader import BadSamples, GroupSample, current_slot, eval_groups, train_groups
from mv2mae.shards.schema import ContractError, DatasetIndex, GroupMeta, frame_ext

# A stream that skips this many groups in a row cannot form samples under its protocol.
MAX_CONSECUTIVE_SKIPS = 10_000


@dataclass
class ShardSplit:
    """A dataset directory seen through one protocol split."""

    root: Path
    index: DatasetIndex
    selection: Selection

    @classmethod
    def open(cls, root: str | Path, protocol: str, split: str, val_by: str = "none",
             val_fraction: float = 0.0, train_subjects: int = 0, test_subjects: int = 0) -> ShardSplit:
        """``split`` of ``protocol`` on ``root``; with ``train_subjects`` > 0, ``train`` (and the ``val`` share
        carved from it) keeps only its first that many subjects (:func:`~mv2mae.shards.protocols.keep_subjects`),
        with ``test_subjects`` > 0 ``test`` likewise; with ``val_by`` other than ``none``, ``train`` loses the
        validation share that ``val`` is (:func:`~mv2mae.shards.protocols.hold_out`). An index that breaks
        the contract (:func:`~mv2mae.shards.contract.checked_index`) is refused here, its groups as read."""
        index = checked_index(Path(root))
        if split == "val" and val_by == "none":
            raise ContractError(f"{root}: no validation split (data.val_by is none)")
        selection = select(index, protocol, "train" if split == "val" else split)
        keep = test_subjects if split == "test" else train_subjects
        if keep:
            selection = keep_subjects(selection, keep)
        if split in ("train", "val") and val_by != "none":
            fit, val = hold_out(selection, val_by, val_fraction)
            selection = val if split == "val" else fit
        if not selection.shards:
            raise ContractError(f"{root}: protocol {protocol} selects no shard for split {split!r}")
        return cls(root=Path(root), index=index, selection=selection)

    @property
    def num_classes(self) -> int:
        return len(self.index.classes)

    def label_flips(self, flip: str) -> list[int] | None:
        """The class-swap table finetuning flips with under ``data.flip`` (None: no flipping)."""
        table = self.index.flip_classes
        if flip == "on" and table is None:
            raise ContractError(f"{self.root}: data.flip=on, but its index.json records no flip_classes (which "
                                f"class a mirrored video shows); without it a flip could teach a wrong label")
        return None if flip == "off" else table


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
        self.bad = BadSamples(data.max_bad_samples, split.root)  # skipped groups (each worker counts its own)
        # a resumed run: (batches of ``batch_size`` the stream already delivered, batch_size); see _consumed
        self.resume_at = (0, 0)
        self._replay = 0  # samples of this pass still to replay: their sampling decisions, not their pixels
        self._epoch = -1

    def _start(self) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
        """(plan RNG: views and frames as groups are read; crop RNG: boxes as samples are built; flip RNG:
        its own stream, so that turning flips on leaves every box as it was)."""
        cv2.setNumThreads(1)  # parallelism comes from the workers, not from OpenCV
        if torch.utils.data.get_worker_info() is not None:
            _keep_freed_memory()
        attach(self.ring)
        self._epoch += 1
        self._replay = self._consumed() if self._epoch == 0 else 0
        slot = current_slot(self.rank, self.world_size, shift=self.resume_at[0])
        root = np.random.SeedSequence([self.seed, slot.index, slot.count, self._epoch])
        return tuple(np.random.default_rng(seed) for seed in root.spawn(3))

    def _consumed(self) -> int:
        """Samples of this process's stream that a resumed run's loader delivered before the checkpoint. A
        DataLoader hands batch i to worker i mod W, each batch ``batch_size`` samples of that worker's own
        stream (a resumed loader rotates the workers' roles to match: ``current_slot``'s ``shift``);
        without workers every batch comes from this stream."""
        batches, batch_size = self.resume_at
        slot = current_slot(self.rank, self.world_size, shift=batches)
        workers = slot.count // self.world_size
        return len(range(slot.worker, batches, workers)) * batch_size

    def _replaying(self) -> bool:
        """Whether the next sample was delivered before a resume: it is then replayed — every random
        decision drawn as before, so the stream continues exactly where the checkpoint left it — but
        nothing decoded (exact resume at a large step costs the reading of the shards, not the decoding).
        Not exact if a bad sample was skipped in the replayed part: telling needs the decoding."""
        if self._replay > 0:
            self._replay -= 1
            return True
        return False

    @property
    def clip_motion(self) -> bool:
        """Whether this stream's motion weights come from the decoded clip (:func:`clip_token_motion`): in the
        worker, or, ``encoded``, in the training process right after the batch is decoded."""
        return False

    def _decoded(self, group: GroupSample, plan: list[tuple[int, np.ndarray]]) -> list[dict[int, np.ndarray]] | None:
        """The sampled frames of each ``(camera, stored frame indices)`` of ``plan``, decoded here (None
        when the training process decodes them)."""
        return None if self.encoded else [decode_frames(group, cam, indices) for cam, indices in plan]

    def _views(self, group: GroupSample, plan: list[tuple[int, np.ndarray]], crops: list[Crop],
               decoded: list[dict[int, np.ndarray]] | None, single: bool = False) -> dict:
        """One sample's pixels: ``video`` uint8 [V, C, T, H, W] cut from ``decoded`` frames through each
        view's crop ([C, T, H, W] when ``single``), or, encoded, the JPEG bytes and the plan the training
        process cuts it with."""
        if self.encoded:
            return encode_views(group, plan, crops, single)
        channels = decoded[0][int(plan[0][1][0])].shape[2]
        # every view is resized straight into its slot of the sample
        clips = np.empty((len(plan), self.geom.frames, self.geom.size, self.geom.size, channels), np.uint8)
        for (_, indices), frames, crop, out in zip(plan, decoded, crops, clips, strict=True):
            crop_resize(frames, indices, crop, self.geom.size, out=out)
        return {"video": to_video_tensor(clips[0] if single else clips)}

    def _train_stream(self, plan) -> Iterator[GroupSample]:
        return train_groups(self.split.root, [s.name for s in self.split.selection.shards],
                            seed=self.seed + 7919 * self._epoch, rank=self.rank, world_size=self.world_size,
                            shuffle_buffer=self.data.shuffle_buffer, plan=plan, bad=self.bad,
                            shift=self.resume_at[0], index=self.split.index)

    def _usable(self, groups: Iterator[GroupSample], build: Callable[[GroupSample], Iterator[dict]]) -> Iterator[dict]:
        """The samples ``build`` makes of each group; a group whose frames or motion turn out unusable
        (undecodable JPEG, missing member, motion rows missing or misshapen) yields nothing and is counted
        as a bad sample (:class:`~mv2mae.shards.reader.BadSamples`) instead of stopping the stream."""
        for group in groups:
            try:
                samples = list(build(group))
            except ContractError as e:
                self.bad.skip(f"{group.shard}:{group.key}", e)
                continue
            yield from samples

    def _planner(self, choose):
        """A reader plan from ``choose(meta) -> [(camera, stored frame indices), ...] | None``; raises when a
        long run of groups cannot form a sample under the protocol (an infinite stream would otherwise spin)."""
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
            if self._replay > 0:  # most likely a replayed sample: read its frames only if it turns out not to be
                return set(), decision
            return {frame_ext(c, t) for c, indices in decision for t in np.unique(indices).tolist()}, decision

        return plan


def check_pretrain_views(split: ShardSplit, data: DataConfig) -> None:
    """Refuse a pretraining that needs more views than the protocol's groups have, or a source policy the
    camera layout cannot serve (a usage error: the run's config asks what this dataset cannot give)."""
    cams, where = split.selection.cameras, f"{split.root}: protocol {split.selection.protocol}"
    if len(cams) < data.views:
        raise ProtocolError(f"{where} {split.selection.split} allows cameras {cams}; pretraining needs "
                            f"{data.views} views (1 target + {data.num_sources} source(s)): lower data.num_sources")
    if not split.selection.groups_with_views(data.views):
        raise ProtocolError(f"{where} {split.selection.split}: no group holds {data.views} of cameras {cams}; "
                            f"pretraining needs multi-view groups: lower data.num_sources")
    unplaced = [c for c in cams if str(c) not in split.index.layout]
    if data.source_policy in ("adjacent", "opposite") and unplaced:
        raise ProtocolError(f"{split.root}/index.json: source policy {data.source_policy!r} needs the camera "
                            f"layout, which places no camera {unplaced} (give the manifest an angle column, or "
                            f"add them to 'layout')")


class PretrainClips(ClipDataset):
    """Infinite stream of ``{"video": [V, C, T, H, W], "motion": [V, N], "cameras": [V], "label", "key"}``
    with view 0 the target and views 1..K the sources, all at the same instants of the span they share."""

    def __init__(self, split: ShardSplit, geom: ClipGeometry, data: DataConfig, **kwargs):
        super().__init__(split, geom, data, **kwargs)
        check_pretrain_views(split, data)

    @property
    def clip_motion(self) -> bool:
        return self.data.motion in CLIP_MOTION

    def __iter__(self) -> Iterator[dict]:
        plan_rng, crop_rng, flip_rng = self._start()
        cfg, geom, allowed = self.data, self.geom, self.split.selection.cameras
        layout = self.split.index.layout
        motion = None
        if cfg.motion in CACHED_MOTION:
            motion = MotionRows(self.split.root, cfg.motion, self.split.index)

        def choose(meta: GroupMeta):
            views = choose_views([c for c in meta.cameras if c in allowed], cfg, plan_rng, layout)
            return None if views is None else shared_clip(meta, views, geom, plan_rng)

        def build(group: GroupSample) -> Iterator[dict]:
            frames = None
            for _ in range(cfg.repeats):  # repeated sampling: new crops of the frames decoded once
                # every view flips together, or none does (mv2mae.data.sampling: a consistent mirrored scene)
                flip = draw_flip(cfg.flip == "on", flip_rng)
                crops = [Crop(box, flip) for box in self._boxes(group.meta, len(group.plan), crop_rng)]
                if self._replaying():
                    continue
                if frames is None:
                    frames = self._decoded(group, group.plan)
                yield self._sample(group, group.plan, frames, crops, motion)

        yield from self._usable(self._train_stream(self._planner(choose)), build)

    def _boxes(self, meta: GroupMeta, views: int, rng: np.random.Generator) -> list[Box]:
        """The crop box of each view of one sample: one shared box, or one per view."""
        width, height = meta.size
        if self.data.shared_crop:
            return [random_resized_box(width, height, self.data, rng)] * views
        return [random_resized_box(width, height, self.data, rng) for _ in range(views)]

    def _sample(self, group: GroupSample, plan: list[tuple[int, np.ndarray]],
                decoded: list[dict[int, np.ndarray]] | None, crops: list[Crop], motion: MotionRows | None) -> dict:
        geom = self.geom
        sample = self._views(group, plan, crops, decoded)
        if motion is not None:
            cached = []
            for (cam, indices), crop in zip(plan, crops, strict=True):
                rows, first = motion.view(group, cam, indices)
                cached.append(cache_token_motion(rows, first, indices, crop, group.meta.size, motion.cell, geom))
            sample["motion"] = torch.from_numpy(np.stack(cached))
        elif not self.clip_motion:
            sample["motion"] = torch.zeros(len(plan), geom.tokens)
        elif not self.encoded:  # the definition, from the very (cropped, flipped) pixels the model gets;
            # encoded, the training process computes it the same way once it has decoded them (DeviceDecoder)
            sample["motion"] = clip_token_motion(sample["video"], geom.tubelet, geom.patch)
        return sample | {"cameras": torch.tensor([cam for cam, _ in plan]), "label": group.meta.label,
                         "key": group.key}


class FinetuneClips(ClipDataset):
    """Infinite stream of single-camera clips ``{"video": [C, T, H, W], "label", "camera", "key"}`` from
    one random allowed camera per drawn group; a flipped clip (``data.flip``) carries its mirror class."""

    def __init__(self, split: ShardSplit, geom: ClipGeometry, data: DataConfig, **kwargs):
        super().__init__(split, geom, data, **kwargs)
        self.flip_classes = split.label_flips(data.flip)

    def __iter__(self) -> Iterator[dict]:
        plan_rng, crop_rng, flip_rng = self._start()
        allowed, table = self.split.selection.cameras, self.flip_classes

        def choose(meta: GroupMeta):
            cams = [c for c in meta.cameras if c in allowed]
            if not cams:
                return None
            cam = cams[int(plan_rng.integers(len(cams)))]
            return [(cam, train_frame_indices(meta.view_frames[str(cam)], self.geom, plan_rng))]

        def build(group: GroupSample) -> Iterator[dict]:
            ((cam, indices),) = group.plan
            width, height = group.meta.size
            crop = Crop(random_resized_box(width, height, self.data, crop_rng), draw_flip(table is not None, flip_rng))
            if self._replaying():
                return
            sample = self._views(group, group.plan, [crop], self._decoded(group, group.plan), single=True)
            label = table[group.meta.label] if crop.flip else group.meta.label
            yield sample | {"label": label, "camera": cam, "key": group.key}

        yield from self._usable(self._train_stream(self._planner(choose)), build)


class EvalClips(ClipDataset):
    """Exact pass: for every group once across ranks × workers, every allowed camera × ``eval_clips``
    temporal clips × ``eval_crops`` spatial crops. ``video_id`` (``KEY/cCCC``) and ``key`` let the
    evaluation average softmax per video and fuse cameras per group."""

    def __iter__(self) -> Iterator[dict]:
        self._start()
        cfg, geom, allowed = self.data, self.geom, self.split.selection.cameras

        def choose(meta: GroupMeta):  # each camera's clips spread over its own whole video
            return [(c, eval_frame_indices(meta.view_frames[str(c)], geom, cfg.eval_clips))
                    for c in meta.cameras if c in allowed] or None

        def build(group: GroupSample) -> Iterator[dict]:
            width, height = group.meta.size
            boxes = eval_boxes(width, height, cfg.eval_crops)
            for cam, clips in group.plan:
                for c, indices in enumerate(clips):
                    plan = [(cam, indices)]
                    frames = self._decoded(group, plan)
                    for k, box in enumerate(boxes):
                        yield self._views(group, plan, [Crop(box)], frames, single=True) | {
                            "label": group.meta.label, "camera": cam, "clip": c, "crop": k,
                            "key": group.key, "video_id": f"{group.key}/c{cam:03d}"}

        groups = eval_groups(self.split.root, self.split.selection.shards, rank=self.rank,
                             world_size=self.world_size, plan=self._planner(choose), bad=self.bad,
                             index=self.split.index)
        yield from self._usable(groups, build)
