"""The dataset contract's checks beyond types, shared by ``mv2mae shards verify`` and every loader.

``schema`` refuses what has the wrong type as it parses (a group's metadata, ``index.json``); what is
typed right can still be wrong together: a label outside the classes, a group key in two shards (the
evaluation would merge two videos into one), totals that disagree, a motion array with holes or
nonsense values (the loss weighting would turn silently uniform). Each check returns its problems as
lines naming where; ``verify`` prints them all, a loader skips and counts a group with any
(``mv2mae.shards.reader.BadSamples``) and refuses an index with any.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from mv2mae.shards.schema import INDEX_FILE, ContractError, DatasetIndex, GroupMeta, read_index_stated

MOTION_DTYPE = np.dtype("float16")


def index_problems(index: DatasetIndex, stated_groups: object = None) -> list[str]:
    """The index against itself: shard names and group keys each listed once, every entry's count equal
    to its keys, and the total it states (``groups``, when given) equal to its shards'."""
    problems = [f"{INDEX_FILE}: shard {name} is listed {n} times"
                for name, n in Counter(s.name for s in index.shards).items() if n > 1]
    seen: dict[str, str] = {}
    for shard in index.shards:
        if shard.samples != len(shard.keys):
            problems.append(f"{shard.name}: index.json says {shard.samples} groups and lists {len(shard.keys)} keys")
        for key in shard.keys:
            if key in seen:
                problems.append(f"{shard.name}: group {key} is also listed in {seen[key]}")
            seen.setdefault(key, shard.name)
    if stated_groups is not None and stated_groups != index.groups:
        problems.append(f"{INDEX_FILE}: says {stated_groups} groups, its shards hold {index.groups}")
    return problems


def checked_index(root: Path) -> DatasetIndex:
    """``index.json`` of ``root`` for a loader: parsed, typed, and consistent (:func:`index_problems`), or
    one ``ContractError`` naming the first problem."""
    index, stated = read_index_stated(root)
    problems = index_problems(index, stated)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ContractError(f"{root}: {problems[0]}{more}; run `mv2mae shards verify {root}`")
    return index


def group_problems(meta: GroupMeta, classes: list[str]) -> list[str]:
    """A group's metadata against its dataset's ``classes``: the label names one of them."""
    if not 0 <= meta.label < len(classes):
        return [f"label {meta.label} is outside the {len(classes)} classes (0..{len(classes) - 1})"]
    return []


def motion_problems(array, values: np.ndarray, where: str) -> list[str]:
    """A motion array (``zarr.Array`` ``array``, its ``values`` read) is float16, complete (every chunk
    stored: a deleted chunk would read back as zeros), finite and non-negative (an energy or a speed)."""
    problems = []
    if values.dtype != MOTION_DTYPE:
        problems.append(f"{where} is {values.dtype}, want {MOTION_DTYPE}")
    if array.nchunks_initialized != array.nchunks:
        problems.append(f"{where} has {array.nchunks_initialized} of its {array.nchunks} chunks (deleted or never "
                        f"written)")
    finite = np.isfinite(values)
    if not finite.all():
        problems.append(f"{where} holds {int((~finite).sum())} non-finite values")
    if (values[finite] < 0).any():
        problems.append(f"{where} holds negative values")
    return problems
