"""Reading shards back in tests with nothing but the standard library's tarfile."""

from __future__ import annotations

import tarfile
from pathlib import Path

from mv2mae.shards.schema import GroupMeta


def group_metas(out: Path) -> dict[str, GroupMeta]:
    """key -> metadata of every group in the shards of the dataset directory ``out``."""
    metas = {}
    for shard in sorted(Path(out).glob("*.tar")):
        with tarfile.open(shard) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".json"):
                    meta = GroupMeta.from_json(tf.extractfile(m).read(), where=f"{shard.name}:{m.name}")
                    metas[meta.key] = meta
    return metas
