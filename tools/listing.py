"""``mv2mae shards ls`` and ``stats``: what is in a shard directory, as tables and as JSON."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import track

from mv2mae.shards.motion import open_motion
from mv2mae.shards.protocols import DEFAULT_VAL_FRACTION, ProtocolError, Selection, hold_out, select
from mv2mae.shards.schema import FAILURES_FILE, MOTION_STORE, read_index, shard_stem
from mv2mae.shards.untrusted import confined
from mv2mae.tools.shardio import iter_metas


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _ranges(values: list[int]) -> str:
    """``[1, 2, 3, 5]`` -> ``1-3,5``."""
    out, vals = [], sorted(set(values))
    i = 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        out.append(str(vals[i]) if i == j else f"{vals[i]}-{vals[j]}")
        i = j + 1
    return ",".join(out) or "-"


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def list_shards(root: str | Path) -> dict[str, Any]:
    root = Path(root)
    index = read_index(root)
    rows = [dict(name=s.name, partition=s.partition, samples=s.samples, bytes=s.bytes,
                 subjects=_ranges(s.subjects), setups=_ranges(s.setups), cameras=_ranges(s.cameras))
            for s in index.shards]
    return dict(dataset=index.dataset, shards=rows, groups=index.groups, bytes=sum(s.bytes for s in index.shards),
                motion_bytes=dir_bytes(confined(root, MOTION_STORE, "motion store")), motion=index.motion, classes=len(index.classes))


def protocol_counts(root: str | Path, protocol: str, val_by: str = "subject",
                    val_fraction: float = DEFAULT_VAL_FRACTION) -> dict[str, Any]:
    """Shards, groups and videos of each split of ``protocol`` on ``root``: train, the validation share
    finetuning holds out of it (``val_by``, as ``data.val_by``), and test, to set beside official counts."""
    index = read_index(root)

    def row(sel: Selection) -> dict[str, Any]:
        return dict(shards=len(sel.shards), groups=sel.groups, videos=sel.videos, cameras=sel.cameras,
                    subjects=_ranges([v for s in sel.shards for v in s.subjects]))

    train, test = select(index, protocol, "train"), select(index, protocol, "test")
    splits = {"train": row(train)}
    try:
        fit, val = hold_out(train, val_by, val_fraction)
        splits |= {"train without validation": row(fit), "val": row(val)}
        note = f"validation: {val_by}s held out of train ({val_fraction:g} of them)"
    except ProtocolError as e:
        note = f"no validation split: {e}"
    return dict(protocol=protocol, dataset=index.dataset, splits=splits | {"test": row(test)}, note=note)


def _motion_stats(root: Path, index) -> dict[str, dict[str, float]]:
    if not index.motion:
        return {}
    store = open_motion(root)
    out = {}
    for source in index.motion:
        shards = track(index.shards, description=f"reading {source} motion", console=Console(stderr=True),
                       transient=True)
        values = [np.asarray(store[shard_stem(s.name)][source][...], np.float32).ravel() for s in shards
                  if shard_stem(s.name) in store]
        v = np.concatenate(values) if values else np.zeros(1, np.float32)
        out[source] = dict(mean=float(v.mean()), p50=float(np.percentile(v, 50)), p95=float(np.percentile(v, 95)),
                           max=float(v.max()), zero_fraction=float((v == 0).mean()))
    return out


def _failures(root: Path) -> dict[str, Any]:
    path = root / FAILURES_FILE
    if not path.is_file():
        return dict(total=0, reasons={})
    reasons: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        if line.strip():
            reasons[str(json.loads(line).get("reason", "?")).split(":")[0][:60]] += 1
    return dict(total=sum(reasons.values()), reasons=dict(reasons.most_common()))


def dataset_stats(root: str | Path, bins: int = 8) -> dict[str, Any]:
    root = Path(root)
    index = read_index(root)
    shards = track(index.shards, description="reading group metadata", console=Console(stderr=True), transient=True)
    metas = [m for s in shards for m in iter_metas(confined(root, s.name, "shard"))]
    cameras = sorted({c for m in metas for c in m.cameras})
    per_class = {index.classes[m.label] if 0 <= m.label < len(index.classes) else str(m.label): None for m in metas}
    table = {name: {str(c): 0 for c in cameras} for name in sorted(per_class)}
    for m in metas:
        name = index.classes[m.label] if 0 <= m.label < len(index.classes) else str(m.label)
        for c in m.cameras:
            table[name][str(c)] += 1
    frames = np.array([m.frames for m in metas] or [0])
    bins = int(min(bins, frames.max() - frames.min() + 1))  # never finer than one frame per bin
    counts, edges = np.histogram(frames, bins=bins)
    return dict(
        dataset=index.dataset, groups=len(metas), views=sum(len(m.cameras) for m in metas),
        class_by_camera=table,
        groups_per_subject={str(k): v for k, v in sorted(Counter(m.subject for m in metas).items())},
        groups_per_camera={str(c): sum(c in m.cameras for m in metas) for c in cameras},
        frame_histogram=dict(counts=counts.tolist(), edges=[round(float(e), 1) for e in edges]),
        frames=dict(min=int(frames.min()), median=float(np.median(frames)), max=int(frames.max())),
        motion=_motion_stats(root, index), failures=_failures(root))
