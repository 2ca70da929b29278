"""ETRI-Activity3D: ``A{aaa}_P{ppp}_G{ggg}_C{ccc}.mp4``, flat or nested (``P001-P010/P001/``).

A group is one (action, person, group) seen by up to eight cameras; partitions are persons (``P001``),
so the cross-subject protocol (test persons: multiples of 3 [unverified]) selects whole shards. The
class names are not part of the file names: they default to ``A001``..``A055``; pass ``--classes``.

Camera layout [unverified]: eight cameras at four positions, each position holding one camera at 70 cm
and one at 120 cm. We number them in pairs — C001/C002 at position 1 (70/120 cm), C003/C004 at
position 2, ... — and place the positions 90 degrees apart, so a camera's nearest view is the other
height of its own position, then the positions beside it. Correct ``layout`` in ``index.json`` if
your copy of the dataset documents other positions.
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

NAME_RE = re.compile(r"^A(\d{3})_P(\d{3})_G(\d{3})_C(\d{3})\.(?:mp4|avi|mkv)$", re.IGNORECASE)
N_CLASSES = 55
ETRI_LAYOUT = camera_layout({c: (90 * ((c - 1) // 2), 0.7 if c % 2 else 1.2) for c in range(1, 9)})


def scan_etri(root: Path, options: AdapterOptions) -> Scan:
    found: dict[tuple[int, int, int], list[ViewSource]] = {}
    failures: list[dict] = []
    for path in sorted(root.rglob("*")):
        m = NAME_RE.match(path.name)
        if not m or not path.is_file():
            continue
        a, p, g, c = (int(x) for x in m.groups())
        if not 1 <= a <= N_CLASSES:
            failures.append({"file": str(path), "reason": f"action A{a:03d} outside the {N_CLASSES} classes"})
            continue
        found.setdefault((a, p, g), []).append(ViewSource(camera=c, path=path))
    if not found and not failures:
        raise AdapterError(f"{root}: no ETRI-named videos (A001_P001_G001_C001.mp4) found")
    classes = [f"A{a:03d}" for a in range(1, N_CLASSES + 1)]
    groups = []
    cameras = {v.camera for views in found.values() for v in views}
    for (a, p, g), views in sorted(found.items()):
        key = f"A{a:03d}_P{p:03d}_G{g:03d}"
        views.sort(key=lambda v: v.camera)
        first = views[0].path
        record_missing_views(key, {v.camera for v in views}, cameras, failures,
                             lambda c, f=first: str(f.with_name(f"{f.name[:15]}C{c:03d}{f.suffix}")))
        groups.append(GroupSpec(key=key, label=a - 1, label_name=classes[a - 1], subject=p,
                                partition=f"P{p:03d}", views=views, extra={"group_id": g}))
    return Scan(dataset="etri", classes=classes, groups=groups, failures=failures, layout=ETRI_LAYOUT)
