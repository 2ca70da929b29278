"""``mv2mae shards verify``: every check a user wants before spending GPU hours on a directory.

Checksums and sizes match the index; every member is where the contract puts it and decodes (each
view's whole video); metadata is complete, its timeline consistent (``GroupMeta`` checks offsets and
spans as it parses) and agrees with the index, camera sets included; the Zarr cache covers every
group and camera, one row per stored frame.
Problems are collected (never the first one only) as ``"<shard>: <what is wrong>"`` lines.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from rich.console import Console
from rich.progress import track

from mv2mae.shards.motion import open_motion
from mv2mae.shards.schema import (
    META_EXT,
    ContractError,
    GroupMeta,
    ShardEntry,
    camera_set_key,
    motion_grid,
    parse_frame_ext,
    read_index,
    shard_stem,
)
from mv2mae.shards.writer import sha256_file
from mv2mae.tools.shardio import iter_members


def _check_members(path: Path, entry: ShardEntry, decode: bool) -> tuple[list[str], dict[str, GroupMeta]]:
    problems, metas, frames, shapes = [], {}, {}, {}
    for key, ext, data in iter_members(path, wanted=lambda e: e == META_EXT or decode):
        if ext == META_EXT:
            metas[key] = GroupMeta.from_json(data, where=f"{path.name}:{key}.{ext}")
            continue
        parsed = parse_frame_ext(ext)
        if parsed is None:
            problems.append(f"{path.name}: unexpected member {key}.{ext}")
            continue
        frames.setdefault(key, set()).add(parsed)
        if decode:
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            if img is None:
                problems.append(f"{path.name}: {key}.{ext} does not decode as JPEG")
            else:
                shapes.setdefault(key, set()).add((img.shape[1], img.shape[0]))
    if sorted(metas) != sorted(entry.keys):
        problems.append(f"{path.name}: groups {sorted(set(entry.keys) ^ set(metas))[:5]} differ from index.json")
    if entry.samples != len(metas):
        problems.append(f"{path.name}: {len(metas)} groups, index.json says {entry.samples}")
    for key, meta in metas.items():
        if shapes.get(key, {tuple(meta.size)}) != {tuple(meta.size)}:
            problems.append(f"{path.name}: {key} frames are {sorted(shapes[key])}, metadata says {meta.size}")
        want = {(c, t) for c in meta.cameras for t in range(meta.view_frames[str(c)])}
        have = frames.get(key, set())
        if want != have:
            problems.append(f"{path.name}: {key} has {len(have)} frame members, metadata implies {len(want)} "
                            f"(e.g. missing {sorted(want - have)[:2]}, extra {sorted(have - want)[:2]})")
        if meta.subject not in entry.subjects or not set(meta.cameras) <= set(entry.cameras):
            problems.append(f"{path.name}: {key} subject/cameras disagree with index.json")
        if set(meta.motion_rows) != {str(c) for c in meta.cameras}:
            problems.append(f"{path.name}: {key} motion_rows {sorted(meta.motion_rows)} != cameras {meta.cameras}")
    sets = dict(Counter(camera_set_key(m.cameras) for m in metas.values()))
    if sets != entry.camera_sets:
        problems.append(f"{path.name}: groups by cameras {sets}, index.json says {entry.camera_sets}")
    return problems, metas


def _check_motion(root: Path, entry: ShardEntry, metas: dict[str, GroupMeta], sources: list[str], cell: int):
    problems, stem = [], shard_stem(entry.name)
    try:
        store = open_motion(root)
    except FileNotFoundError as e:
        return [f"{entry.name}: {e}"]
    if stem not in store:
        return [f"{entry.name}: motion.zarr has no sub-group {stem}"]
    for source in sources:
        if source not in store[stem]:
            problems.append(f"{entry.name}: motion.zarr/{stem} has no {source} array")
            continue
        arr = store[stem][source]
        for key, meta in metas.items():
            gh, gw = motion_grid(*meta.size, cell)
            if gh > arr.shape[1] or gw > arr.shape[2]:
                problems.append(f"{entry.name}: {key} motion grid {gh}x{gw} exceeds {source} array {arr.shape}")
            for cam, first in meta.motion_rows.items():
                rows = meta.view_frames.get(cam, 0)
                if first < 0 or first + rows > arr.shape[0]:
                    problems.append(f"{entry.name}: {key} camera {cam} rows {first}+{rows} outside "
                                    f"{source} array of {arr.shape[0]} rows")
        if not np.isfinite(np.asarray(arr[...], np.float32)).all():
            problems.append(f"{entry.name}: {source} motion holds non-finite values")
    return problems


def verify_shard(root: Path, entry: ShardEntry, sources: list[str], cell: int, decode: bool) -> list[str]:
    path = root / entry.name
    if not path.is_file():
        return [f"{entry.name}: missing"]
    problems = []
    if path.stat().st_size != entry.bytes:
        problems.append(f"{entry.name}: {path.stat().st_size} bytes, index.json says {entry.bytes}")
    if sha256_file(path) != entry.sha256:
        problems.append(f"{entry.name}: sha256 does not match index.json (corrupted or rewritten)")
    try:
        member_problems, metas = _check_members(path, entry, decode)
    except ContractError as e:
        return problems + [f"{entry.name}: {e}" if not str(e).startswith(entry.name) else str(e)]
    problems += member_problems
    return problems + _check_motion(root, entry, metas, sources, cell)


def verify(root: str | Path, decode: bool = True, workers: int = 1) -> tuple[int, list[str]]:
    """(shards checked, problems); an empty list means the directory is sound."""
    root = Path(root)
    index = read_index(root)
    listed = {s.name for s in index.shards}
    problems = [f"{p.name}: shard file not listed in index.json" for p in sorted(root.glob("*.tar"))
                if p.name not in listed]
    args = [(root, s, list(index.motion), index.cell, decode) for s in index.shards]
    bar = dict(description="verifying shards", total=len(args), console=Console(stderr=True), transient=True)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(track(pool.map(verify_shard, *zip(*args, strict=True)), **bar))
    else:
        results = [verify_shard(*a) for a in track(args, **bar)]
    return len(args), problems + [p for r in results for p in r]
