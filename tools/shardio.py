"""Random-access reading of shards for the inspection tools (the training path streams instead)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mv2mae.shards.reader import GroupSample
from mv2mae.shards.schema import META_EXT, ContractError, DatasetIndex, GroupMeta, split_member
from mv2mae.shards.tarindex import iter_tar
from mv2mae.shards.untrusted import confined


def iter_members(path: Path, wanted=None) -> Iterator[tuple[str, str, bytes | None]]:
    """(key, ext, bytes) for every member of tar ``path``; bytes are read only where ``wanted(ext)``
    (the others are skipped with a seek). Corruption is a ``ContractError`` naming the shard."""

    def want(name: str) -> bool:
        return wanted is None or wanted(split_member(name, path.name)[1])

    try:
        with open(path, "rb", buffering=1 << 16) as f:
            for name, data in iter_tar(f, path.name, want):
                key, ext = split_member(name, path.name)
                yield key, ext, data
    except OSError as e:
        raise ContractError(f"{path.name}: unreadable ({e})") from e


def iter_metas(path: Path) -> Iterator[GroupMeta]:
    for key, ext, data in iter_members(path, wanted=lambda e: e == META_EXT):
        if ext == META_EXT:
            yield GroupMeta.from_json(data, where=f"{path.name}:{key}.{ext}")


def shard_of(index: DatasetIndex, key: str) -> str:
    for shard in index.shards:
        if key in shard.keys:
            return shard.name
    raise ContractError(f"group {key!r} is in no shard of the index ({index.groups} groups)")


def read_group(root: Path, index: DatasetIndex, key: str) -> GroupSample:
    """One group's metadata and members, found through the index."""
    name = shard_of(index, key)
    meta, members = None, {}
    for k, ext, data in iter_members(confined(root, name, "shard"), wanted=lambda _e: True):
        if k != key:
            continue
        if ext == META_EXT:
            meta = GroupMeta.from_json(data, where=f"{name}:{k}.{ext}")
        else:
            members[ext] = data
    if meta is None:
        raise ContractError(f"{name}: group {key} has no {key}.{META_EXT}")
    return GroupSample(meta=meta, shard=name, members=members)
