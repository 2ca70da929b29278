"""The Zarr v3 motion cache beside the shards: one sub-group per shard, written atomically.

``motion.zarr/<shard stem>/<source>`` is a float16 array [rows, grid_h, grid_w] compressed with Blosc/zstd
inside zarr's sharding codec (one file per array, however many rows). Rows of a group's camera are found
through ``GroupMeta.motion_rows`` or, without the shards, through the sub-group's attributes
``{"rows": {key: {camera: first_row}}, "frames": {key: T}, "grid": {key: [gh, gw]}}`` — plain
``zarr.open`` is all a reader needs. When the groups of one shard were stored at different sizes, the
arrays take the largest grid and a group's cells sit in the top-left corner (``grid`` says how many).

A sub-group is written under ``DIR/.tmp/`` and renamed into ``motion.zarr/`` before its shard's tar is
renamed, so a finished shard always has its motion, and a killed run leaves no half-written sub-group.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from mv2mae.shards.schema import MOTION_STORE

CHUNK_ROWS = 64  # rows per compressed chunk: a 16-frame clip touches one or two chunks
TMP_DIR = ".tmp"


def _codecs():
    import zarr

    return zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")


def ensure_store(root: str | Path) -> Path:
    """Create ``DIR/motion.zarr`` as an empty Zarr v3 group if it is not there (safe to race)."""
    store = Path(root) / MOTION_STORE
    meta = store / "zarr.json"
    if not meta.exists():
        store.mkdir(parents=True, exist_ok=True)
        tmp = store / f"zarr.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
        os.replace(tmp, meta)
    return store


def write_shard_motion(root: str | Path, stem: str, arrays: dict[str, np.ndarray],
                       attrs: dict[str, Any]) -> Path:
    """Write the motion arrays of shard ``stem`` and move them into the store in one rename."""
    import zarr

    root = Path(root)
    tmp = root / TMP_DIR / f"motion-{stem}"
    shutil.rmtree(tmp, ignore_errors=True)
    group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    group.attrs.update(attrs)
    for source, rows in sorted(arrays.items()):
        rows = np.ascontiguousarray(rows, dtype=np.float16)
        n, gh, gw = rows.shape
        shard_rows = -(-n // CHUNK_ROWS) * CHUNK_ROWS
        arr = group.create_array(source, shape=rows.shape, dtype="float16", chunks=(CHUNK_ROWS, gh, gw),
                                 shards=(shard_rows, gh, gw), compressors=_codecs(), fill_value=0.0)
        arr[...] = rows
    final = ensure_store(root) / stem
    if final.exists():  # left by a run killed between this rename and its shard's rename
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def open_motion(root: str | Path):
    """Open a motion store read-only: ``root`` is a dataset directory or the ``motion.zarr`` itself."""
    import zarr

    path = Path(root)
    if path.name != MOTION_STORE:
        path = path / MOTION_STORE
    if not (path / "zarr.json").is_file():
        raise FileNotFoundError(f"{path}: no motion cache (was the dataset preprocessed with --motion?)")
    return zarr.open_group(str(path), mode="r")


def read_motion_rows(store, shard: str, source: str, key: str, camera: int,
                     frames: list[int] | np.ndarray | None = None) -> np.ndarray:
    """Motion of ``camera`` in group ``key`` of ``shard``: float16 [T or len(frames), gh, gw].

    ``store`` is what ``open_motion`` returned; ``shard`` a shard name or stem; ``frames`` selects
    stored frame indices (default: all of the group's frames).
    """
    stem = shard[:-4] if shard.endswith(".tar") else shard
    if stem not in store:
        raise KeyError(f"motion cache has no sub-group for shard {stem!r}")
    sub = store[stem]
    if source not in sub:
        raise KeyError(f"motion cache of shard {stem!r} has no {source!r} array (has {sorted(sub.array_keys())})")
    rows, n_frames, grid = sub.attrs["rows"], sub.attrs["frames"], sub.attrs["grid"]
    if key not in rows or str(camera) not in rows[key]:
        raise KeyError(f"motion cache of shard {stem!r} has no rows for group {key!r} camera {camera}")
    first, total = rows[key][str(camera)], n_frames[key]
    idx = np.arange(total) if frames is None else np.asarray(frames, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= total):
        raise IndexError(f"{key} camera {camera}: frame indices outside 0..{total - 1}")
    gh, gw = grid[key]
    lo, hi = (first + int(idx.min()), first + int(idx.max()) + 1) if idx.size else (first, first)
    block = sub[source][lo:hi, :gh, :gw]
    return block[idx - (lo - first)]
