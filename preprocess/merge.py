"""``mv2mae shards merge``: join the indexes written by ``--part i --parts n`` runs into one ``index.json``.

Parts either share one output directory (each wrote ``index.part-III-of-NNN.json``) or wrote separate
directories; with ``--out`` the shards, motion sub-groups and state records of every source are moved
into the destination first. Parts must agree on every output option but ``part``; every part of
``parts`` must be present, so a merge never silently publishes an incomplete dataset.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

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


def _move_all(moves: list[tuple[Path, Path]], dest: Path, stores: list[Path]) -> None:
    for a, b in moves:
        b.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(a), str(b))
    store_meta = dest / MOTION_STORE / "zarr.json"
    for src_store in stores:
        if (src_store / "zarr.json").is_file() and not store_meta.exists():
            store_meta.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src_store / "zarr.json", store_meta)


def merge(sources: list[Path], out: Path | None = None) -> DatasetIndex:
    """Merge the part indexes in ``sources`` into ``out`` (default: the single source)."""
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
    taken = [str(b) for _, b in moves if b.exists()]
    if taken:
        raise MergeError(f"{taken[0]} already exists in {dest}; merge into an empty folder")
    _move_all(moves, dest, [p.parent / MOTION_STORE for p, _ in found])
    failures = [_failures_of(p).read_text() for p, _ in found if _failures_of(p).is_file()]
    base = found[0][1]
    shards = sorted((s for _, ix in found for s in ix.shards), key=lambda s: s.name)
    fps = next((ix.fps for _, ix in found if ix.shards), base.fps)  # a part may hold no shard (fps 0)
    merged = DatasetIndex(dataset=base.dataset, classes=base.classes, fps=fps, short_side=base.short_side,
                          cell=base.cell, motion=base.motion, shards=shards, layout=base.layout,
                          tool_version=base.tool_version,
                          args={**base.args, "part": 0, "parts": 1, "merged_parts": len(found)},
                          flip_classes=base.flip_classes)
    write_index(dest, merged)
    tmp = dest / f"{FAILURES_FILE}.tmp"
    tmp.write_text("".join(failures))
    tmp.replace(dest / FAILURES_FILE)
    return merged
