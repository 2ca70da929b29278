"""The on-disk contract: sample schema, shard naming and manifest, writer, tar index, streaming readers, motion
cache."""

from mv2mae.shards.schema import ContractError, DatasetIndex, GroupMeta, ShardEntry, read_index, write_index

__all__ = ["ContractError", "DatasetIndex", "GroupMeta", "ShardEntry", "read_index", "write_index"]
