"""``mv2mae shards merge``: join the indexes written by ``--part i --parts n`` runs into one ``index.json``.

Parts either share one output directory (each wrote ``index.part-III-of-NNN.json``) or wrote separate
directories; with ``--out`` the shards, motion sub-groups and state records of every source are copied
into the destination, indexed there, and then removed from the sources (``keep_sources`` keeps them). Parts must agree on every output option but ``part``; every part of
``parts`` must be present, so a merge never silently publishes an incomplete dataset.
"""

from __future__ import annotations

import filecmp
import os
import re
import shutil
from pathlib import Path

from mv2mae.shards.atomic import sync_file, temporary_name, write_atomic, writing
from mv2mae.shards.schema import FAILURES_FILE, INDEX_FILE, MOTION_STORE, DatasetIndex, write_index
from mv2mae.shards.untrusted import MAX_INDEX_BYTES, confined, read_json_file

PART_RE = re.compile(r"^index\.part-(\d{3})-of-(\d{3})\.json$")


class MergeError(ValueError):
    pass


def _indexes(src: Path) -> list[tuple[Path, DatasetIndex]]:
    parts = sorted(p for p in src.glob("index.part-*-of-*.json") if PART_RE.match(p.name))
    paths = parts or ([src / INDEX_FILE] if (src / INDEX_FILE).is_file() else [])
    if not paths:
        raise MergeError(f"{src}: no index.json and no index.part-*.json — not a preprocessed directory")
    return [(p, DatasetIndex.from_dict(read_json_file(p, MAX_INDEX_BYTES), where=str(p))) for p in paths]


def _failures_of(index_path: Path) -> Path:
    m = PART_RE.match(index_path.name)
    name = f"failures.part-{m.group(1)}-of-{m.group(2)}.jsonl" if m else FAILURES_FILE
    return index_path.with_name(name)


def _check_compatible(found: list[tuple[Path, DatasetIndex]]) -> int:
    """All parts agree on dataset, classes and output options; returns the declared part count."""
    def comparable(ix: DatasetIndex) -> dict:
        args = {k: v for k, v in ix.args.items() if k not in ("part", "parts", "meta")}
        return {"dataset": ix.dataset, "classes": ix.classes, "flip_classes": ix.flip_classes, "cell": ix.cell,
                "motion": ix.motion, "short_side": ix.short_side, "layout": ix.layout, "args": args}

    first_path, first = found[0]
    for path, ix in found[1:]:
        if comparable(ix) != comparable(first):
            raise MergeError(f"{path} was written with other options or another dataset than {first_path}")
    parts = {ix.args.get("parts", 1) for _, ix in found}
    if len(parts) != 1:
        raise MergeError(f"parts disagree on --parts: {sorted(parts)}")
    n = parts.pop()
    have = sorted(ix.args.get("part", 0) for _, ix in found)
    if have != list(range(n)):
        missing = sorted(set(range(n)) - set(have))
        raise MergeError(f"--parts {n}: parts {missing or have} missing or duplicated — run them first")
    return n


def _moves(src: Path, dest: Path, ix: DatasetIndex) -> list[tuple[Path, Path]]:
    """(source, destination) of every file and motion sub-group of ``ix``'s shards that must move; the
    names come from a part's index, so each must stay inside its folder on both sides."""
    moves = []
    for entry in ix.shards:
        for rel in (entry.name, f"{MOTION_STORE}/{entry.name[:-4]}", f".state/{entry.name}.json"):
            source = confined(src, rel, "shard file")
            if source.exists():
                moves.append((source, confined(dest, rel, "shard file")))
    return moves


def _copy_all(moves: list[tuple[Path, Path]], dest: Path, stores: list[Path]) -> None:
    """Put every source file and motion sub-group into ``dest`` (hard-linked on one file system, copied
    across them), each complete on the disk before it gets its name; what a killed earlier merge already
    put there is kept. Nothing of the sources is touched."""
    for a, b in moves:
        if not b.exists():
            _copy_in(a, b)
    store_meta = dest / MOTION_STORE / "zarr.json"
    for src_store in stores:
        if (src_store / "zarr.json").is_file() and not store_meta.exists():
            write_atomic(store_meta, (src_store / "zarr.json").read_bytes())


def _copy_in(a: Path, b: Path) -> None:
    tmp = temporary_name(b)
    with writing(b, "the sources are untouched; free space and run the same merge again"):
        b.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        if a.is_dir():
            shutil.copytree(a, tmp, symlinks=True, copy_function=_link_or_copy)  # links stay links, as a move keeps them
            files = [f for f in tmp.rglob("*") if f.is_file()]
        else:
            _link_or_copy(a, tmp)
            files = [tmp]
        for f in files:
            sync_file(f)
        os.replace(tmp, b)


def _link_or_copy(a: str | Path, b: str | Path) -> None:
    try:
        os.link(a, b)  # instant and atomic where source and destination share a file system
    except OSError:
        shutil.copy2(a, b)


def _same(a: Path, b: Path) -> bool:
    """Whether ``b`` holds what ``a`` holds (files byte for byte, folders file by file)."""
    if a.is_dir() != b.is_dir():
        return False
    if not a.is_dir():
        return os.path.samefile(a, b) or filecmp.cmp(a, b, shallow=False)
    names = sorted(p.relative_to(a) for p in a.rglob("*"))
    if names != sorted(p.relative_to(b) for p in b.rglob("*")):
        return False
    return all(_same(a / n, b / n) for n in names if not (a / n).is_dir())


def _remove_sources(moves: list[tuple[Path, Path]]) -> None:
    """After the destination is complete and indexed: the sources' copies go."""
    for a, _ in moves:
        if a.is_dir():
            shutil.rmtree(a)
        else:
            a.unlink(missing_ok=True)


def merge(sources: list[Path], out: Path | None = None, keep_sources: bool = False) -> DatasetIndex:
    """Merge the part indexes in ``sources`` into ``out`` (default: the single source).

    Order (so that a merge killed at any moment can be run again, on one file system or across two):
    copy every shard, motion sub-group and state record into ``out`` (each flushed before it is named),
    write the merged index, and only then remove the sources' copies (unless ``keep_sources``)."""
    if not sources:
        raise MergeError("nothing to merge")
    if out is None and len(sources) > 1:
        raise MergeError("several source directories need --out DEST")
    dest = Path(out or sources[0])
    dest.mkdir(parents=True, exist_ok=True)
    found = [(p, ix) for src in sources for p, ix in _indexes(Path(src))]
    _check_compatible(found)
    names = [s.name for _, ix in found for s in ix.shards]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise MergeError(f"shards listed by more than one part: {dup[:5]}")
    # Every check before the first move: a refused merge leaves the sources as they were.
    moves = [m for p, ix in found if p.parent.resolve() != dest.resolve() for m in _moves(p.parent, dest, ix)]
    taken = [str(b) for a, b in moves if b.exists() and not _same(a, b)]
    if taken:
        raise MergeError(f"{taken[0]} already exists in {dest} with other contents; merge into an empty folder")
    _copy_all(moves, dest, [p.parent / MOTION_STORE for p, _ in found])
    failures = [_failures_of(p).read_text() for p, _ in found if _failures_of(p).is_file()]
    base = found[0][1]
    shards = sorted((s for _, ix in found for s in ix.shards), key=lambda s: s.name)
    fps = next((ix.fps for _, ix in found if ix.shards), base.fps)  # a part may hold no shard (fps 0)
    merged = DatasetIndex(dataset=base.dataset, classes=base.classes, fps=fps, short_side=base.short_side,
                          cell=base.cell, motion=base.motion, shards=shards, layout=base.layout,
                          tool_version=base.tool_version,
                          args={**base.args, "part": 0, "parts": 1, "merged_parts": len(found)},
                          flip_classes=base.flip_classes)
    write_atomic(dest / FAILURES_FILE, "".join(failures))
    write_index(dest, merged)
    if not keep_sources:
        _remove_sources(moves)
    return merged
