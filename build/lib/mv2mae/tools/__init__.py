"""Inspection and visualisation of shards, motion caches and reconstructions."""
