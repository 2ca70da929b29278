"""Northwestern-UCLA Multiview Action3D: per-frame image folders or ``.avi`` videos, three views.

Layouts: ``multiview_action/view_V/aAA_sSS_eEE/`` (per-frame images, ``*_rgb.jpg`` preferred) or
``aAA/vVV_sSS_eEE.avi``. A group is one (action, subject, episode) seen by views 1-3; partitions are
subjects (``s01``), and the cross-view protocol picks views inside a sample. No camera layout is
recorded (we could not confirm where the three Kinects stood), so the ``adjacent`` source policy is not
available for N-UCLA unless ``layout`` is added to ``index.json``.
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
    record_missing_views,
)

ACTIONS = {1: "pick up with one hand", 2: "pick up with two hands", 3: "drop trash", 4: "walk around",
           5: "sit down", 6: "stand up", 8: "donning", 9: "doffing", 11: "throw", 12: "carry"}
ACTION_IDS = sorted(ACTIONS)
CLASSES = [ACTIONS[a] for a in ACTION_IDS]
FOLDER_RE = re.compile(r"^a(\d{2})_s(\d{2})_e(\d{2})$")
VIEW_DIR_RE = re.compile(r"^view_(\d+)$")
VIDEO_RE = re.compile(r"^v(\d{2})_s(\d{2})_e(\d{2})\.(?:avi|mp4)$", re.IGNORECASE)
ACTION_DIR_RE = re.compile(r"^a(\d{2})$")


def _views(root: Path) -> list[tuple[tuple[int, int, int], int, Path]]:
    """((action, subject, episode), view, source) for both layouts."""
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_dir():
            m, v = FOLDER_RE.match(path.name), VIEW_DIR_RE.match(path.parent.name)
            if m and v:
                found.append(((int(m.group(1)), int(m.group(2)), int(m.group(3))), int(v.group(1)), path))
        elif path.is_file():
            m, a = VIDEO_RE.match(path.name), ACTION_DIR_RE.match(path.parent.name)
            if m and a:
                found.append(((int(a.group(1)), int(m.group(2)), int(m.group(3))), int(m.group(1)), path))
    return found


def scan_nucla(root: Path, options: AdapterOptions) -> Scan:
    groups_views: dict[tuple[int, int, int], list[ViewSource]] = {}
    failures: list[dict] = []
    for (a, s, e), view, path in _views(root):
        if a not in ACTIONS:
            failures.append({"file": str(path), "reason": f"action a{a:02d} is not one of the 10 N-UCLA classes"})
            continue
        groups_views.setdefault((a, s, e), []).append(ViewSource(camera=view, path=path))
    if not groups_views and not failures:
        raise AdapterError(f"{root}: no N-UCLA data (view_V/aAA_sSS_eEE/ folders or aAA/vVV_sSS_eEE.avi)")
    groups = []
    cameras = {v.camera for views in groups_views.values() for v in views}
    for (a, s, e), views in sorted(groups_views.items()):
        key = f"a{a:02d}_s{s:02d}_e{e:02d}"
        views.sort(key=lambda v: v.camera)
        record_missing_views(key, {v.camera for v in views}, cameras, failures, lambda c, k=key: f"{k}: view {c}")
        label = ACTION_IDS.index(a)
        groups.append(GroupSpec(key=key, label=label, label_name=CLASSES[label], subject=s,
                                partition=f"s{s:02d}", views=views, replication=e))
    return Scan(dataset="nucla", classes=list(CLASSES), groups=groups, failures=failures)
