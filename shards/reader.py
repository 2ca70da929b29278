"""Streaming readers of a shard directory: an infinite resampled training stream and an exact
evaluation pass, both split by rank (node) and DataLoader worker.

The stream yields :class:`GroupSample` — one multi-view group with its metadata parsed and its frame
members still JPEG bytes, so that the consumer decodes only the frames it samples. Nothing here opens
the Zarr motion cache: consumers open it lazily inside each worker (a handle must not cross a fork).
Where members lie comes from :mod:`mv2mae.shards.tarindex`.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch.utils.data
import webdataset as wds

from mv2mae.shards.contract import group_problems
from mv2mae.shards.schema import META_EXT, ContractError, DatasetIndex, GroupMeta, frame_ext, shard_stem
from mv2mae.shards.tarindex import GroupTable, read_member, shard_groups
from mv2mae.shards.untrusted import MAX_META_BYTES, confined

log = logging.getLogger(__name__)


@dataclass
class GroupSample:
    """One group as read from its shard: metadata plus the raw bytes of every frame member."""

    meta: GroupMeta
    shard: str  # shard file name (``<partition>-<seq>.tar``)
    members: dict[str, bytes]  # member extension (``c001.f0000.jpg``) -> bytes (those the plan wanted)
    plan: object = None  # the decision a plan returned when the group was read
    source: tuple[str, int] | None = None  # (shard path, group index): where :meth:`frame` reads a member not read yet

    @property
    def key(self) -> str:
        return self.meta.key

    @property
    def stem(self) -> str:
        """The shard's stem: the group's sub-group in ``motion.zarr``."""
        return shard_stem(self.shard)

    def frame(self, camera: int, t: int) -> bytes:
        ext = frame_ext(camera, t)
        if ext not in self.members and self.source is not None:
            self._read(ext)
        if ext not in self.members:
            raise ContractError(f"{self.shard}: group {self.key} has no member {self.key}.{ext}")
        return self.members[ext]

    def _read(self, ext: str) -> None:
        """Read member ``ext`` now (a plan may leave members unread until they are needed)."""
        path, index = self.source
        table = shard_groups(path, self.shard)
        group = table[index] if index < len(table) else None
        if group is None or group.key != self.key:
            raise ContractError(f"{self.shard}: changed while group {self.key} was being read")
        if ext in group.exts:
            fd = os.open(path, os.O_RDONLY)
            try:
                self.members[ext] = read_member(fd, group.span(group.exts.index(ext)), self.shard, f"{self.key}.{ext}")
            finally:
                os.close(fd)


@dataclass(frozen=True)
class Slot:
    """This process's position among all readers: ``index`` of ``count`` = rank × workers + worker."""

    index: int
    count: int
    rank: int
    worker: int


def current_slot(rank: int = 0, world_size: int = 1, shift: int = 0) -> Slot:
    """The calling process's slot, from the explicit rank/world size and the DataLoader worker info.

    ``shift`` rotates the workers' roles: DataLoader worker i plays worker (i + shift) mod W. A DataLoader
    asks its workers for batches in turn from worker 0, so a loader resumed after ``shift`` batches keeps
    every batch on the stream that produced it before."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    info = torch.utils.data.get_worker_info()
    worker, workers = ((info.id + shift) % info.num_workers, info.num_workers) if info is not None else (0, 1)
    return Slot(index=rank * workers + worker, count=world_size * workers, rank=rank, worker=worker)


# A plan looks at a group's metadata as it is read and returns the member extensions to read plus a
# decision to carry along (e.g. the sampled views and frames), or None to skip the group. A member it
# does not ask for is read when ``GroupSample.frame`` wants it.
Plan = Callable[[GroupMeta, str], "tuple[set[str], object] | None"]


class BadSampleLimit(ContractError):
    """More bad groups than ``BadSamples.limit``: the data itself is broken, not a sample or two."""


class BadSamples:
    """The groups a stream skipped because they cannot be read (a stranger's shard may be truncated,
    tampered with or damaged): each distinct one is logged once as a warning and counted, and once more
    than ``limit`` were seen in this process the stream stops with :class:`BadSampleLimit`.

    Streams revisit shards (the training stream resamples them), so a bad group counts once however
    often it is drawn; a stream that draws nothing but bad groups ``MAX_BAD_IN_ROW`` times in a row stops
    too (a resampled stream over only bad groups would otherwise spin). One counter per reading process
    (each DataLoader worker has its own)."""

    MAX_BAD_IN_ROW = 1000

    def __init__(self, limit: int, root: str | Path = ""):
        self.limit, self.root = limit, str(root)
        self.seen: dict[str, str] = {}  # where -> why
        self.in_row = 0

    @property
    def count(self) -> int:
        return len(self.seen)

    def passed(self) -> None:
        """A good group was read."""
        self.in_row = 0

    def skip(self, where: str, error: Exception) -> None:
        self.in_row += 1
        if where not in self.seen:
            self.seen[where] = str(error)
            log.warning("skipped bad sample %s: %s (%d skipped so far, data.max_bad_samples=%d)",
                        where, error, self.count, self.limit)
        if self.count > self.limit or self.in_row >= self.MAX_BAD_IN_ROW:
            raise BadSampleLimit(f"{self.root}: {self.count} bad sample(s) (data.max_bad_samples={self.limit}, "
                                 f"{self.in_row} in a row), last {where}: {error}; "
                                 f"run `mv2mae shards verify {self.root}`")


def _group_meta(fd: int, group: GroupTable, where: str, index: DatasetIndex | None) -> GroupMeta:
    """A group's parsed, checked metadata (against ``index``'s contract when given: the dataset's classes);
    any damage is a ``ContractError`` naming shard and member."""
    if group.problem:
        raise ContractError(group.problem)
    if META_EXT not in group.exts:
        raise ContractError(f"{where}: group {group.key} has no {group.key}.{META_EXT} metadata member")
    member = f"{group.key}.{META_EXT}"
    data = read_member(fd, group.span(group.exts.index(META_EXT)), where, member, limit=MAX_META_BYTES)
    meta = GroupMeta.from_json(data, where=f"{where}:{member}")
    if meta.key != group.key:
        raise ContractError(f"{where}: member key {group.key} holds metadata of {meta.key}")
    problems = group_problems(meta, index.classes) if index is not None else []
    if problems:
        raise ContractError(f"{where}:{member}: {'; '.join(problems)}")
    return meta


def tar_groups(sources: Iterable[dict], plan: Plan | None = None, bad: BadSamples | None = None,
               index: DatasetIndex | None = None) -> Iterator[dict]:
    """WebDataset-compatible stage: ``{"url": path}`` items -> samples ``{"__key__", "__url__", "__meta__",
    ext: bytes}`` (plus ``__plan__`` when a ``plan`` is given; members it does not want are never read).
    A group that cannot be read, or breaks ``index``'s contract, goes to ``bad`` (skipped, counted) — or
    raises when there is none."""
    for source in sources:
        url = source["url"]
        where = Path(url).name
        try:
            table = shard_groups(url, where)
            fd = os.open(url, os.O_RDONLY)
        except OSError as e:
            _skip(bad, where, ContractError(f"{where}: unreadable shard ({e})"))
            continue
        try:
            for i, group in enumerate(table):
                sample = _read_group(fd, group, (url, i), where, plan, bad, index)
                if sample is not None:
                    if bad is not None:
                        bad.passed()
                    yield sample
        finally:
            os.close(fd)


def _skip(bad: BadSamples | None, where: str, error: ContractError) -> None:
    if bad is None:
        raise error
    bad.skip(where, error)


def _read_group(fd: int, group: GroupTable, source: tuple[str, int], where: str, plan: Plan | None,
                bad: BadSamples | None, index: DatasetIndex | None) -> dict | None:
    """The sample dict of one group with only the members its plan wants (None if skipped)."""
    try:
        meta = _group_meta(fd, group, where, index)
    except ContractError as e:
        _skip(bad, f"{where}:{group.key or '(tail)'}", e)
        return None
    sample: dict = {"__key__": group.key, "__url__": source[0], "__meta__": meta, "__source__": source}
    wanted = None
    if plan is not None:  # outside the try: a plan's own error is no bad sample
        decision = plan(meta, where)
        if decision is None:
            return None
        wanted, sample["__plan__"] = decision
    try:
        for i, ext in enumerate(group.exts):
            if ext != META_EXT and (wanted is None or ext in wanted):
                sample[ext] = read_member(fd, group.span(i), where, f"{group.key}.{ext}")
    except ContractError as e:
        _skip(bad, f"{where}:{group.key}", e)
        return None
    return sample


def _to_group(sample: dict) -> GroupSample:
    members = {k: v for k, v in sample.items() if not k.startswith("__")}
    return GroupSample(meta=sample["__meta__"], shard=Path(sample["__url__"]).name, members=members,
                       plan=sample.get("__plan__"), source=sample["__source__"])


def _urls(root: str | Path, shard_names: Sequence[str]) -> list[str]:
    root = Path(root)
    urls = []
    for name in sorted(shard_names):
        path = confined(root, name, "shard")
        if not path.is_file():
            raise ContractError(f"{path}: shard listed in the index is missing")
        urls.append(str(path))
    return urls


def train_groups(root: str | Path, shard_names: Sequence[str], *, seed: int, rank: int = 0,
                 world_size: int = 1, shuffle_buffer: int = 256, plan: Plan | None = None,
                 bad: BadSamples | None = None, shift: int = 0, index: DatasetIndex | None = None
                 ) -> Iterator[GroupSample]:
    """Infinite, resampled, shuffled stream of groups; the same seed, rank and worker count give the
    same order. With at least as many shards as slots each slot resamples its own disjoint subset
    (shards are split by node and worker); with fewer, every slot resamples all shards with its own
    seed, so no slot ever runs dry and uneven shards cannot hang a rank. A ``plan`` decides per group,
    as it is read, which members to keep: the shuffle buffer then holds only the sampled frames.
    ``shift``: see :func:`current_slot`; ``index``: the contract groups are checked against (:func:`tar_groups`)."""
    slot = current_slot(rank, world_size, shift)
    urls = _urls(root, shard_names)
    if not urls:
        raise ContractError(f"{root}: no shards selected for training")
    mine = urls[slot.index::slot.count] if len(urls) >= slot.count else urls
    pipeline = wds.DataPipeline(
        wds.ResampledShards(mine, seed=seed, worker_seed=lambda: slot.index, deterministic=True),
        partial(tar_groups, plan=plan, bad=bad, index=index),
        wds.shuffle(bufsize=shuffle_buffer, initial=min(shuffle_buffer, 64),
                    rng=random.Random(f"{seed}:{slot.index}:{slot.count}")),
        wds.map(_to_group),
    )
    return iter(pipeline)


def balanced_assignment(sizes: Sequence[int], count: int) -> list[list[int]]:
    """Indices of ``sizes`` split into ``count`` lists of near-equal total (largest first, greedy)."""
    bins: list[list[int]] = [[] for _ in range(count)]
    totals = [0] * count
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        j = min(range(count), key=lambda j: (totals[j], j))
        bins[j].append(i)
        totals[j] += sizes[i]
    return [sorted(b) for b in bins]


def eval_groups(root: str | Path, shards: Sequence, *, rank: int = 0, world_size: int = 1,
                plan: Plan | None = None, bad: BadSamples | None = None,
                index: DatasetIndex | None = None) -> Iterator[GroupSample]:
    """Exact pass: every group of ``shards`` (``ShardEntry`` objects) exactly once across all ranks and
    workers, in a fixed order. Whole shards are dealt to slots, balanced by sample count."""
    slot = current_slot(rank, world_size)
    ordered = sorted(shards, key=lambda s: s.name)
    mine = [ordered[i].name for i in balanced_assignment([s.samples for s in ordered], slot.count)[slot.index]]
    if not mine:
        return iter(())
    return iter(wds.DataPipeline(wds.SimpleShardList(_urls(root, mine)), partial(tar_groups, plan=plan, bad=bad, index=index),
                                 wds.map(_to_group)))
