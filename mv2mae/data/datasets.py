"""The three streams, iterable datasets turning streamed groups into samples (stages 1-5 of ``mv2mae.data``,
in a DataLoader worker or the main process): pretraining (multi-view + motion weights), finetuning (one
camera + label) and evaluation (every test camera × clips × crops, with ids).

Time follows the shard contract (``mv2mae.shards.schema``): a pretraining sample takes the same instants
from each of its views, inside the span those views share (``GroupMeta.span``); finetuning and
evaluation clips come from the chosen camera's whole stored video. Pretraining skips groups with
fewer allowed cameras than it needs views (one-camera groups among them); the index counts them in
advance (``Selection.groups_with_views``).

Each ``__iter__`` derives its RNG from (seed, rank, worker, epoch), opens the motion cache there
(``flow``), and yields one dict per sample with uint8 video, or, when the dataset is ``encoded``
(``data.decode_on=device``), with the sampled JPEGs' bytes and the plan to cut the video from them
(:func:`mv2mae.data.pixels.pack_for_device`); the same RNG draws drive both, so the two give the same
samples. A resumed stream replays its first samples' decisions without their pixels (``mv2mae.data.replay``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import IterableDataset

from mv2mae.data.config import CACHED_MOTION, CLIP_MOTION, ClipGeometry, DataConfig
from mv2mae.data.motion import cache_token_motion, clip_token_motion
from mv2mae.data.pixels import crop_resize, decode_frames, pack_for_device, to_video_tensor
from mv2mae.data.replay import Replay
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
from mv2mae.data.splits import ShardSplit, check_pretrain_views
from mv2mae.shards.motion import MotionRows
from mv2mae.shards.reader import BadSamples, GroupSample, current_slot, eval_groups, train_groups
from mv2mae.shards.schema import ContractError, GroupMeta, frame_ext

# A stream that skips this many groups in a row cannot form samples under its protocol.
MAX_CONSECUTIVE_SKIPS = 10_000


class ClipDataset(IterableDataset):
    """What the three streams share: each draws its plan (stage 2) in ``choose`` as the reader meets a group
    and in ``build`` as it makes the group's samples (crops, flips), then reads, decodes and cuts the pixels
    (stages 3-4, :meth:`_decoded` and :meth:`_views`) unless the sample is replayed (``replay``)."""

    def __init__(self, split: ShardSplit, geom: ClipGeometry, data: DataConfig, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1, encoded: bool = False):
        super().__init__()
        self.split, self.geom, self.data = split, geom, data
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.encoded = encoded  # ship JPEG bytes + plan for the training process to decode (decode_on=device)
        self.bad = BadSamples(data.max_bad_samples, split.root)  # skipped groups (each worker counts its own)
        self.replay = Replay()  # a resumed run's: set by the loader builder
        self._epoch = -1

    def _start(self) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
        """(plan RNG: views and frames as groups are read; crop RNG: boxes as samples are built; flip RNG:
        its own stream, so that turning flips on leaves every box as it was)."""
        cv2.setNumThreads(1)  # parallelism comes from the workers, not from OpenCV
        self._epoch += 1
        self.replay.begin(self.rank, self.world_size, first_pass=self._epoch == 0)
        slot = current_slot(self.rank, self.world_size, shift=self.replay.batches)
        root = np.random.SeedSequence([self.seed, slot.index, slot.count, self._epoch])
        return tuple(np.random.default_rng(seed) for seed in root.spawn(3))

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
            return pack_for_device(group, plan, crops, single)
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
                            shift=self.replay.batches, index=self.split.index)

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
            if self.replay.active:  # most likely a replayed sample: read its frames only if it turns out not to be
                return set(), decision
            return {frame_ext(c, t) for c, indices in decision for t in np.unique(indices).tolist()}, decision

        return plan


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
                if self.replay.skip():
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
            # encoded, the training process computes it the same way once it has decoded them (ClipMotion)
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
            if self.replay.skip():
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
