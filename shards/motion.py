"""The Zarr v3 motion cache beside the shards: one sub-group per shard, written atomically.

``motion.zarr/<shard stem>/<source>`` is a float16 array [rows, grid_h, grid_w] compressed with Blosc/zstd
inside zarr's sharding codec (one file per array, however many rows). Rows of a group's camera are found
through ``GroupMeta.motion_rows`` (as :class:`MotionRows`, our one reader, does) or, by a reader without
the shards, through the sub-group's attributes
``{"rows": {key: {camera: first_row}}, "frames": {key: {camera: T}}, "grid": {key: [gh, gw]}}`` — plain
``zarr.open`` is all a reader needs. When the groups of one shard were stored at different sizes, the
arrays take the largest grid and a group's cells sit in the top-left corner (``grid`` says how many).

A sub-group is written under ``DIR/.tmp/`` and renamed into ``motion.zarr/`` before its shard's tar is
renamed, so a finished shard always has its motion, and a killed run leaves no half-written sub-group.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from mv2mae.shards.contract import motion_problems
from mv2mae.shards.schema import MOTION_STORE, ContractError, DatasetIndex, motion_grid
from mv2mae.shards.untrusted import confined

if TYPE_CHECKING:  # the reader pulls in webdataset and torch, which the preprocessing processes never need
    from mv2mae.shards.reader import GroupSample

CHUNK_ROWS = 64  # rows per compressed chunk: a 16-frame clip touches one or two chunks
TMP_DIR = ".tmp"


def _codecs():
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
                                 shards=(shard_rows, gh, gw), compressors=_codecs(), fill_value=0.0,
                                 config={"write_empty_chunks": True})  # every chunk stored: a missing one is damage
        arr[...] = rows
    final = ensure_store(root) / stem
    if final.exists():  # left by a run killed between this rename and its shard's rename
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def open_motion(root: str | Path):
    """Open a motion store read-only: ``root`` is a dataset directory or the ``motion.zarr`` itself."""
    path = Path(root)
    if path.name != MOTION_STORE:
        path = confined(path, MOTION_STORE, "motion store")
    if not (path / "zarr.json").is_file():
        raise FileNotFoundError(f"{path}: no motion cache (was the dataset preprocessed with --motion?)")
    return zarr.open_group(str(path), mode="r")


class MotionRows:
    """The one reader of ``motion.zarr``: read-only, opened lazily in the process that reads it (a zarr
    handle must not cross a fork).

    Rows are located through ``GroupMeta.motion_rows`` and the grid through the stored frame size (the
    schema's contract). A shard's whole array is read once and kept (least recently used first out,
    within ``budget_bytes``): the training stream walks a shard's groups in order, and every zarr read
    is a round trip through zarr's event-loop thread that costs more than the clip's decoding on a busy
    machine.
    """

    def __init__(self, root: Path, source: str, index: DatasetIndex, budget_bytes: int = 256 << 20):
        if source not in index.motion:
            raise ContractError(f"{root}: motion source {source!r} not in the cache (has {index.motion}); "
                                f"use another data.motion, or re-run preprocessing with --motion train-flow or both")
        self.root, self.source, self.cell, self.budget = root, source, index.cell, budget_bytes
        self._store = None
        self._arrays: OrderedDict[str, np.ndarray] = OrderedDict()

    def _array(self, stem: str) -> np.ndarray:
        if stem in self._arrays:
            self._arrays.move_to_end(stem)
            return self._arrays[stem]
        if self._store is None:
            self._store = open_motion(self.root)
        confined(self.root / MOTION_STORE, stem, "motion sub-group")
        if stem not in self._store or self.source not in self._store[stem]:
            raise ContractError(f"{self.root}/motion.zarr: no {self.source} rows for shard {stem}")
        array = self._store[stem][self.source]
        values = np.asarray(array[...])
        problems = motion_problems(array, values, f"{self.root}/motion.zarr/{stem}/{self.source}")
        if problems:
            raise ContractError("; ".join(problems))
        self._arrays[stem] = values
        while len(self._arrays) > 1 and sum(a.nbytes for a in self._arrays.values()) > self.budget:
            self._arrays.popitem(last=False)
        return self._arrays[stem]

    def view(self, group: GroupSample, camera: int, indices: np.ndarray) -> tuple[np.ndarray, int]:
        """Cache rows of ``camera`` covering ``indices`` and the first frame index they start at."""
        start = group.meta.motion_rows.get(str(camera))
        if start is None:
            raise ContractError(f"{group.shard}: group {group.key} has no motion rows for camera {camera}")
        gh, gw = motion_grid(*group.meta.size, self.cell)
        first, last = int(indices.min()), int(indices.max())
        array = self._array(group.stem)
        if array.ndim != 3 or array.shape[1] < gh or array.shape[2] < gw:
            raise ContractError(f"{self.root}/motion.zarr/{group.stem}: {self.source} array of shape {array.shape} "
                                f"cannot hold the {gh}x{gw} cell grid of {group.key}")
        rows = array[start + first:start + last + 1, :gh, :gw]
        if len(rows) != last - first + 1:
            raise ContractError(f"{self.root}/motion.zarr/{group.stem}: rows {start + first}..{start + last} of "
                                f"{group.key} camera {camera} are outside the array")
        return rows, first
