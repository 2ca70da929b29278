"""PKU-MMD Phase II: untrimmed sequences ``AxxNyy-{L,M,R}`` cut into action instances.

Label files (``AxxNyy-V.txt`` per view, or ``AxxNyy.txt`` per sequence) hold lines
``label,start,end,confidence`` in frames; the i-th instance (by start frame) of every view forms a group
``AxxNyy_iIII``. Views whose own label file lists a different number of instances or other labels fall
back to the reference view's frame ranges. Classes are the label ids found in the files (the published
count varies between sources), named ``action NN``; ``--classes`` gives names.

Splits come from the official ``cross_subject_v2.txt`` / ``cross_view_v2.txt`` (line 2: training ids,
line 4: test ids): the partition of a group is its cross-subject membership (``xsub_train`` /
``xsub_test``), so that protocol selects whole shards; the cross-view split lists views, recorded as
camera ids in the index's dataset metadata. A sequence that the cross-subject file lists in neither
split is left out (one failure line per sequence, its instances counted as ``Scan.unlisted``): it
belongs to no official split, and must not become test data for not being training data. Sequence
``Axx`` is stored as ``subject`` [unverified: the dataset names no performers].

Camera layout: views L, M, R are left, middle and right of the subject at one height; we place them at
-45, 0 and +45 degrees [unverified angles; the order is the views' names].
"""

from __future__ import annotations

import re
from pathlib import Path

from mv2mae.preprocess.adapters.base import (
    AdapterError,
    AdapterOptions,
    GroupSpec,
    Scan,
    ViewSource,
    camera_layout,
    record_missing_views,
)

VIDEO_RE = re.compile(r"^(A(\d+)N(\d+))-([LMR])\.(?:avi|mp4|mkv)$", re.IGNORECASE)
LABEL_RE = re.compile(r"^(A\d+N\d+)(?:-([LMR]))?\.txt$", re.IGNORECASE)
VIEW_CAMERA = {"L": 1, "M": 2, "R": 3}
PKU_LAYOUT = camera_layout({1: (-45, None), 2: (0, None), 3: (45, None)})
SPLIT_FILES = {"cross_subject": "cross_subject_v2.txt", "cross_view": "cross_view_v2.txt"}

Instance = tuple[int, int, int]  # (label id, start, end exclusive)


def read_labels(path: Path) -> list[Instance]:
    """``label,start,end,confidence`` lines -> instances sorted by start (end made exclusive)."""
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        try:
            label, start, end = int(parts[0]), int(parts[1]), int(parts[2])
        except (IndexError, ValueError):
            raise ValueError(f"{path}:{n}: expected 'label,start,end,confidence', got {line.strip()!r}") from None
        if end < start:
            raise ValueError(f"{path}:{n}: end {end} before start {start}")
        out.append((label, start, end + 1))
    return sorted(out, key=lambda x: (x[1], x[0]))


def read_split(path: Path) -> tuple[set[str], set[str]]:
    """Official split file: line 2 = training ids, line 4 = test ids (comma separated, disjoint)."""
    lines = path.read_text().splitlines()
    if len(lines) < 4:
        raise AdapterError(f"{path}: expected 4 lines (header, training ids, header, test ids)")

    def ids(line: str) -> set[str]:
        return {t.strip() for t in line.split(",") if t.strip()}

    train, test = ids(lines[1]), ids(lines[3])
    if train & test:
        raise AdapterError(f"{path}: {sorted(train & test)[:3]} listed for both training and test")
    return train, test


def _find(root: Path):
    videos: dict[str, dict[str, Path]] = {}
    labels: dict[tuple[str, str | None], Path] = {}
    splits: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        if m := VIDEO_RE.match(path.name):
            videos.setdefault(m.group(1), {})[m.group(4).upper()] = path
        elif m := LABEL_RE.match(path.name):
            labels[(m.group(1), m.group(2).upper() if m.group(2) else None)] = path
        for name, fname in SPLIT_FILES.items():
            if path.name == fname:
                splits[name] = path
    return videos, labels, splits


def _split_meta(splits: dict[str, Path]) -> tuple[dict[str, str], dict]:
    """Sequence -> cross-subject partition, and dataset metadata of both splits."""
    membership: dict[str, str] = {}
    meta: dict = {}
    if "cross_subject" in splits:
        train, test = read_split(splits["cross_subject"])
        for ids, name in ((train, "xsub_train"), (test, "xsub_test")):
            for vid in ids:
                seq = vid.split("-")[0]
                if membership.setdefault(seq, name) != name:
                    raise AdapterError(f"{splits['cross_subject']}: sequence {seq} has views in both splits")
        meta["cross_subject"] = {"train_partitions": ["xsub_train"], "test_partitions": ["xsub_test"]}
    if "cross_view" in splits:
        train, test = read_split(splits["cross_view"])

        def cams(ids: set[str]) -> list[int]:
            return sorted({VIEW_CAMERA[v.split("-")[1].upper()] for v in ids if "-" in v})

        meta["cross_view"] = {"train_cameras": cams(train), "test_cameras": cams(test)}
    return membership, meta


def scan_pkummd2(root: Path, options: AdapterOptions) -> Scan:
    videos, labels, splits = _find(root)
    if not videos:
        raise AdapterError(f"{root}: no PKU-MMD videos (AxxNyy-L.avi / -M / -R) found")
    membership, split_meta = _split_meta(splits)
    failures: list[dict] = []
    per_seq: dict[str, dict[str, list[Instance]]] = {}
    letter = {c: v for v, c in VIEW_CAMERA.items()}
    for seq, views in sorted(videos.items()):
        some = next(iter(views.values()))
        record_missing_views(seq, {VIEW_CAMERA[v] for v in views}, set(VIEW_CAMERA.values()), failures,
                             lambda c, f=some, q=seq: str(f.with_name(f"{q}-{letter[c]}{f.suffix}")))
        per_view = {}
        for v in views:
            path = labels.get((seq, v)) or labels.get((seq, None))
            if path is None:
                failures.append({"file": str(views[v]), "reason": "no label file for this video"})
                continue
            try:
                per_view[v] = read_labels(path)
            except ValueError as e:
                failures.append({"file": str(path), "reason": str(e)})
        per_seq[seq] = per_view
    label_ids = sorted({inst[0] for pv in per_seq.values() for insts in pv.values() for inst in insts})
    classes = [f"action {i:02d}" for i in label_ids]
    groups, unlisted = [], 0
    for seq, per_view in per_seq.items():
        found = _instances(seq, videos[seq], per_view, label_ids, classes)
        if "cross_subject" in splits and seq not in membership:
            unlisted += len(found)
            failures.append({"file": str(next(iter(videos[seq].values()))),
                             "reason": f"sequence {seq} is in neither list of {splits['cross_subject'].name}: "
                                       f"its {len(found)} instance(s) are left out of every split"})
            continue
        for g in found:
            g.partition = membership.get(seq, "all")
        groups += found
    return Scan(dataset="pkummd2", classes=classes, groups=groups, failures=failures,
                meta={"splits": split_meta, "cameras": VIEW_CAMERA}, layout=PKU_LAYOUT, unlisted=unlisted)


def _instances(seq, videos, per_view, label_ids, classes) -> list[GroupSpec]:
    """Every labelled instance of a sequence, one group each, seen by every view with labels."""
    if not per_view:
        return []
    ref_view = "M" if "M" in per_view else sorted(per_view)[0]
    ref = per_view[ref_view]
    groups = []
    for i, (label, start, end) in enumerate(ref):
        views = []
        for v in sorted(per_view, key=VIEW_CAMERA.get):
            own = per_view[v]
            same = len(own) == len(ref) and [x[0] for x in own] == [x[0] for x in ref]
            s, e = (own[i][1], own[i][2]) if same else (start, end)
            views.append(ViewSource(camera=VIEW_CAMERA[v], path=videos[v], start=s, end=e))
        idx = label_ids.index(label)
        groups.append(GroupSpec(key=f"{seq}_i{i:03d}", label=idx, label_name=classes[idx],
                                subject=int(seq[1:seq.index("N")]), partition="all", views=views,
                                extra={"sequence": seq, "label_id": label, "instance": i}))
    return groups
