"""``mv2mae shards verify``: every check a user wants before spending GPU hours on a directory.

Checksums and sizes match the index; every member is where the contract puts it and decodes (each
view's whole video); metadata is complete, its timeline consistent (``GroupMeta`` checks offsets and
spans as it parses) and agrees with the index, camera sets included; the Zarr cache covers every
group and camera, one row per stored frame.
Problems are collected (never the first one only) as ``"<shard>: <what is wrong>"`` lines.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rich.console import Console
from rich.progress import track

from mv2mae.shards.contract import group_problems, index_problems, motion_problems
from mv2mae.shards.motion import open_motion
from mv2mae.shards.schema import (
    META_EXT,
    ContractError,
    DatasetIndex,
    GroupMeta,
    ShardEntry,
    camera_set_key,
    motion_grid,
    parse_frame_ext,
    read_index_stated,
    shard_stem,
)
from mv2mae.shards.tarindex import read_member, shard_table
from mv2mae.shards.untrusted import (
    MAX_FRAME_SIDE,
    MAX_META_BYTES,
    confined,
    jpeg_dimensions,
)
from mv2mae.shards.writer import sha256_file


def _check_members(path: Path, entry: ShardEntry, decode: bool, classes: list[str]
                   ) -> tuple[list[str], dict[str, GroupMeta]]:
    """Every problem of one shard's members, each naming shard and member: links, devices and foreign
    names among the members, a cut-off tail, metadata that does not parse, frames that do not decode
    or are missing, and disagreement with index.json. Checking goes on past each problem."""
    problems, metas, frames, shapes = [], {}, {}, {}
    fd = os.open(path, os.O_RDONLY)
    try:
        for group in shard_table(str(path), path.name):
            if group.problem:
                problems.append(group.problem)
            if group.key in metas:
                problems.append(f"{path.name}: group {group.key} appears twice")
            for i, ext in enumerate(group.exts):
                member = f"{group.key}.{ext}"
                if ext != META_EXT and parse_frame_ext(ext) is None:
                    problems.append(f"{path.name}: unexpected member {member}")
                    continue
                if ext != META_EXT and not decode:
                    frames.setdefault(group.key, set()).add(parse_frame_ext(ext))
                    continue
                try:
                    if ext == META_EXT:
                        data = read_member(fd, group.span(i), path.name, member, limit=MAX_META_BYTES)
                        metas[group.key] = meta = GroupMeta.from_json(data, where=f"{path.name}:{member}")
                        problems += [f"{path.name}:{member}: {p}" for p in group_problems(meta, classes)]
                        continue
                    frames.setdefault(group.key, set()).add(parse_frame_ext(ext))
                    data = read_member(fd, group.span(i), path.name, member)
                    problems += _check_frame(data, f"{path.name}: {member}", shapes.setdefault(group.key, set()))
                except ContractError as e:
                    problems.append(str(e))
    finally:
        os.close(fd)
    return problems + _check_groups(path.name, entry, metas, frames, shapes), metas


def _check_frame(data: bytes, where: str, shapes: set) -> list[str]:
    """A frame's problems as a JPEG; the size its header declares joins ``shapes`` (checked against the
    metadata later), and a frame is decoded only when that size is one a stored frame can have."""
    width, height = jpeg_dimensions(data, where)
    shapes.add((width, height))
    if max(width, height) > MAX_FRAME_SIDE:
        return [f"{where} declares {width}x{height}, beyond the {MAX_FRAME_SIDE}-pixel bound (not decoded)"]
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        return [f"{where} does not decode as JPEG"]
    if (img.shape[1], img.shape[0]) != (width, height):
        return [f"{where} decodes to {img.shape[1]}x{img.shape[0]}, its header says {width}x{height}"]
    return []


def _check_groups(name: str, entry: ShardEntry, metas: dict[str, GroupMeta], frames: dict, shapes: dict) -> list[str]:
    """What the parsed metadata says against the members found and against index.json."""
    problems = []
    if sorted(metas) != sorted(entry.keys):
        problems.append(f"{name}: groups {sorted(set(entry.keys) ^ set(metas))[:5]} differ from index.json")
    if entry.samples != len(metas):  # samples against keys: the index's own contract (_check_index)
        problems.append(f"{name}: {len(metas)} readable groups, index.json says {entry.samples} "
                        f"and lists {len(entry.keys)} keys")
    for key, meta in metas.items():
        if shapes.get(key, {tuple(meta.size)}) != {tuple(meta.size)}:
            problems.append(f"{name}: {key} frames are {sorted(shapes[key])}, metadata says {meta.size}")
        want = {(c, t) for c in meta.cameras for t in range(meta.view_frames[str(c)])}
        have = frames.get(key, set())
        if want != have:
            problems.append(f"{name}: {key} has {len(have)} frame members, metadata implies {len(want)} "
                            f"(e.g. missing {sorted(want - have)[:2]}, extra {sorted(have - want)[:2]})")
        if meta.subject not in entry.subjects or not set(meta.cameras) <= set(entry.cameras):
            problems.append(f"{name}: {key} subject/cameras disagree with index.json")
        if set(meta.motion_rows) != {str(c) for c in meta.cameras}:
            problems.append(f"{name}: {key} motion_rows {sorted(meta.motion_rows)} != cameras {meta.cameras}")
    sets = dict(Counter(camera_set_key(m.cameras) for m in metas.values()))
    if sets != entry.camera_sets:
        problems.append(f"{name}: groups by cameras {sets}, index.json says {entry.camera_sets}")
    return problems


def _check_motion(root: Path, entry: ShardEntry, metas: dict[str, GroupMeta], sources: list[str], cell: int):
    problems, stem = [], shard_stem(entry.name)
    try:
        store = open_motion(root)
    except FileNotFoundError as e:
        return [f"{entry.name}: {e}"]
    if stem not in store:
        return [f"{entry.name}: motion.zarr has no sub-group {stem}"]
    for source in sources:
        try:
            if source not in store[stem]:
                problems.append(f"{entry.name}: motion.zarr/{stem} has no {source} array")
                continue
            problems += _check_motion_array(entry, metas, store[stem][source], f"motion.zarr/{stem}/{source}", cell)
        except Exception as e:  # a damaged store breaks zarr in many ways: each is a problem to name
            problems.append(f"{entry.name}: motion.zarr/{stem}/{source} unreadable ({type(e).__name__}: {e})")
    return problems


def _check_motion_array(entry: ShardEntry, metas: dict[str, GroupMeta], arr, where: str, cell: int) -> list[str]:
    if arr.ndim != 3:
        return [f"{entry.name}: {where} has shape {arr.shape}, want [rows, grid_h, grid_w]"]
    problems = []
    rows = sum(sum(m.view_frames.values()) for m in metas.values())
    if arr.shape[0] != rows:
        problems.append(f"{entry.name}: {where} has {arr.shape[0]} rows, its groups' views need {rows}")
    for key, meta in metas.items():
        gh, gw = motion_grid(*meta.size, cell)
        if gh > arr.shape[1] or gw > arr.shape[2]:
            problems.append(f"{entry.name}: {key} motion grid {gh}x{gw} exceeds {where} {arr.shape}")
        for cam, first in meta.motion_rows.items():
            rows = meta.view_frames.get(cam, 0)
            if first < 0 or first + rows > arr.shape[0]:
                problems.append(f"{entry.name}: {key} camera {cam} rows {first}+{rows} outside "
                                f"{where} of {arr.shape[0]} rows")
    return problems + [f"{entry.name}: {p}" for p in motion_problems(arr, np.asarray(arr[...]), where)]


def verify_shard(root: Path, entry: ShardEntry, classes: list[str], motion: list[str], cell: int,
                 decode: bool) -> list[str]:
    try:
        path = confined(root, entry.name, "shard")
    except ContractError as e:
        return [str(e)]
    if not path.is_file():
        return [f"{entry.name}: missing"]
    problems = []
    if path.stat().st_size != entry.bytes:
        problems.append(f"{entry.name}: {path.stat().st_size} bytes, index.json says {entry.bytes}")
    try:
        if sha256_file(path) != entry.sha256:
            problems.append(f"{entry.name}: sha256 does not match index.json (corrupted or rewritten)")
        member_problems, metas = _check_members(path, entry, decode, classes)
    except OSError as e:
        return problems + [f"{entry.name}: unreadable ({e.strerror or e})"]
    problems += member_problems
    return problems + _check_motion(root, entry, metas, motion, cell)


def _check_index(root: Path, index: DatasetIndex, stated: Any) -> list[str]:
    """The manifest against the folder (unlisted shard files) and against itself (the contract's
    :func:`~mv2mae.shards.contract.index_problems`: duplicate names and keys, the totals)."""
    listed = {s.name for s in index.shards}
    problems = [f"{p.name}: shard file not listed in index.json" for p in sorted(root.glob("*.tar"))
                if p.name not in listed]
    return problems + index_problems(index, stated)


def verify(root: str | Path, decode: bool = True, workers: int = 1) -> tuple[int, list[str]]:
    """(shards checked, problems); an empty list means the directory is sound."""
    root = Path(root)
    index, stated = read_index_stated(root)
    problems = _check_index(root, index, stated)
    # each task gets what it reads of the index, not the index (every shard's key list, pickled per task)
    args = [(root, s, index.classes, index.motion, index.cell, decode) for s in index.shards]
    bar = dict(description="verifying shards", total=len(args), console=Console(stderr=True), transient=True)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(track(pool.map(verify_shard, *zip(*args, strict=True)), **bar))
    else:
        results = [verify_shard(*a) for a in track(args, **bar)]
    return len(args), problems + [p for r in results for p in r]
