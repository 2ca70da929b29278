"""Any multi-camera set: a CSV ``group,camera,path,label,subject[,start,end][,angle]`` (one row per video).

``--root`` is the CSV file; relative paths resolve against its folder. ``label``, ``camera`` and
``subject`` may be integers or names: integer labels are 0-based class indices, names become classes in
sorted order (``--classes`` renames them); named cameras/subjects are numbered 1.. in sorted order.
``start``/``end`` (frames, end exclusive) cut an untrimmed video. Partitions are subjects (``P001``).
``angle`` (degrees around the subject, optional) places a camera, for the ``adjacent`` source policy;
every row of one camera must give it the same angle (or none).

A manifest may come from someone else: a video path must stay inside the CSV's folder (relative, no
``..``, no link out; a row that leaves it is a failure record), and numbers are bounded before anything
is sized by them (integer labels below ``MAX_CLASSES``, camera ids 0..999, finite angles).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from mv2mae.preprocess.adapters.base import (
    AdapterError,
    AdapterOptions,
    GroupSpec,
    Scan,
    ViewSource,
    camera_layout,
    safe_partition,
)
from mv2mae.shards.schema import MAX_CAMERA
from mv2mae.shards.untrusted import ContractError, confined

MAX_CLASSES = 100_000  # integer labels are class indices: a list of this many names is still small

REQUIRED = ("group", "camera", "path", "label", "subject")


def _numbering(values: list[str], start: int, what: str, path: Path, top: int | None = None) -> dict[str, int]:
    """Integers stay as they are (refused below 0 or above ``top``); otherwise names are numbered in
    sorted order from ``start``."""
    if all(v.lstrip("-").isdigit() for v in values):
        wrong = [v for v in values if int(v) < 0 or (top is not None and int(v) > top)]
        if wrong:
            raise AdapterError(f"{path}: {what} {wrong[0]} must be " + (f"0..{top}" if top is not None else ">= 0"))
        return {v: int(v) for v in values}
    return {v: i for i, v in enumerate(sorted(set(values)), start)}


def _read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise AdapterError(f"{path}: CSV header lacks {missing} (need {','.join(REQUIRED)}[,start,end][,angle])")
        rows = []
        for n, row in enumerate(reader, 2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            empty = [c for c in REQUIRED if not row.get(c)]
            if empty:
                raise AdapterError(f"{path}:{n}: empty {empty}")
            row["_line"] = str(n)
            rows.append(row)
    if not rows:
        raise AdapterError(f"{path}: the manifest lists no videos")
    return rows


def _frame(row: dict[str, str], col: str, path: Path) -> int | None:
    text = row.get(col, "")
    if not text:
        return None
    if not text.isdigit():
        raise AdapterError(f"{path}:{row['_line']}: {col} must be a frame number, got {text!r}")
    return int(text)


def _angles(rows: list[dict[str, str]], cams: dict[str, int], path: Path) -> dict[str, dict[str, float]]:
    """The layout the ``angle`` column gives: one azimuth per camera, the same on every row that has one."""
    angles: dict[int, tuple[float, str]] = {}
    for r in rows:
        text = r.get("angle", "")
        if not text:
            continue
        try:
            angle = float(text)
        except ValueError:
            angle = math.nan
        if not math.isfinite(angle):
            raise AdapterError(f"{path}:{r['_line']}: angle must be a finite number of degrees, got {text!r}")
        cam = cams[r["camera"]]
        seen = angles.setdefault(cam, (angle, r["_line"]))
        if seen[0] != angle:
            raise AdapterError(f"{path}:{r['_line']}: camera {r['camera']!r} at angle {angle:g}, but line "
                               f"{seen[1]} puts it at {seen[0]:g}")
    return camera_layout({cam: (angle, None) for cam, (angle, _) in angles.items()})


def scan_manifest(root: Path, options: AdapterOptions) -> Scan:
    if root.is_dir():
        raise AdapterError(f"{root}: for 'manifest', --root is the CSV file, not a folder")
    rows = _read_rows(root)
    base = root.parent
    labels_text = [r["label"] for r in rows]
    int_labels = all(v.isdigit() for v in labels_text)
    if int_labels and max(int(v) for v in labels_text) >= MAX_CLASSES:
        raise AdapterError(f"{root}: label {max(labels_text, key=int)} is no class index (integer labels are "
                           f"0..{MAX_CLASSES - 1}; name the classes instead)")
    classes = ([str(i) for i in range(max(int(v) for v in labels_text) + 1)] if int_labels
               else sorted(set(labels_text)))
    cams = _numbering([r["camera"] for r in rows], 1, "camera", root, MAX_CAMERA)
    subjects = _numbering([r["subject"] for r in rows], 1, "subject", root)
    grouped: dict[str, list[tuple[dict, ViewSource]]] = {}
    failures: list[dict] = []
    for r in rows:
        try:
            path = confined(base, r["path"], "video path")
        except ContractError as e:
            failures.append({"file": str(root), "group": r["group"], "reason": f"line {r['_line']}: {e}"})
            continue
        start, end = _frame(r, "start", root), _frame(r, "end", root)
        if end is not None and end <= (start or 0):
            raise AdapterError(f"{root}:{r['_line']}: end {end} must be after start {start or 0} (end is exclusive)")
        view = ViewSource(camera=cams[r["camera"]], path=path, start=start, end=end)
        grouped.setdefault(r["group"], []).append((r, view))
    groups, keys = [], set()
    for name, items in sorted(grouped.items()):
        key = safe_partition(name)
        if key in keys:
            raise AdapterError(f"{root}: group names {name!r} and another both map to key {key!r}")
        keys.add(key)
        first = items[0][0]
        if len({(r["label"], r["subject"]) for r, _ in items}) > 1:
            failures.append({"file": str(root), "group": name, "reason": "rows of one group disagree on label/subject"})
            continue
        views = sorted((v for _, v in items), key=lambda v: v.camera)
        if len({v.camera for v in views}) != len(views):
            failures.append({"file": str(root), "group": name, "reason": "a camera is listed twice in one group"})
            continue
        label = int(first["label"]) if int_labels else classes.index(first["label"])
        subject = subjects[first["subject"]]
        groups.append(GroupSpec(key=key, label=label, label_name=classes[label], subject=subject,
                                partition=f"P{subject:03d}", views=views, extra={"group": name}))
    return Scan(dataset="manifest", classes=classes, groups=groups, failures=failures,
                meta={"cameras": {k: v for k, v in cams.items()}, "subjects": {k: v for k, v in subjects.items()}},
                layout=_angles(rows, cams, root))
