"""What every dataset adapter shares: the group description, options, the scan result and helpers.

Adapters each turn a root folder (or a CSV manifest) into a sorted list of multi-view groups.

An adapter only *lists* what is there — it reads file names, label files and split files, never video
frames — so a scan of 100k videos takes seconds. Problems it can see without decoding (a camera the
rest of the dataset has but a group lacks, a missing skeleton file) become ``failures`` records, never
exceptions. A group with a single camera is kept: it serves finetuning and evaluation (ROCOG-v2's real
videos have one camera), and pretraining skips it for want of a second view.

An adapter also says where the dataset's cameras stand (``Scan.layout``), when it knows: the
``adjacent`` source policy needs it, because camera ids need not follow the cameras' physical order.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ViewSource:
    """One camera's recording of a group: a video file or a folder of per-frame images."""

    camera: int
    path: Path
    start: int | None = None  # first source frame (untrimmed videos), inclusive
    end: int | None = None  # last source frame, exclusive
    skeleton: Path | None = None  # NTU skeleton file: source of the person-centred crop box


@dataclass
class GroupSpec:
    """A multi-view group as an adapter sees it, before any decoding."""

    key: str
    label: int
    label_name: str
    subject: int
    partition: str
    views: list[ViewSource]
    setup: int | None = None
    replication: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class AdapterOptions:
    """Options an adapter may use; every adapter ignores those it has no use for."""

    need_person_crop: bool = False  # parse skeleton files for a person box (``--crop person``)
    drop_missing_skeletons: bool = False  # NTU: leave out videos whose skeleton file is missing


@dataclass
class Scan:
    """The result of an adapter: class names, groups sorted by (partition, key), and failures."""

    dataset: str
    classes: list[str]
    groups: list[GroupSpec]
    failures: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # dataset-level facts (e.g. official splits)
    flip_classes: list[int] | None = None  # class of each class's mirror image, when known (index.json)
    layout: dict[str, dict[str, float]] = field(default_factory=dict)  # cam -> {"azimuth": deg, "height": m}
    unlisted: int = 0  # groups left out because the dataset's official split lists them in neither split


class AdapterError(ValueError):
    """The root folder does not look like the dataset at all (nothing usable found)."""


Adapter = Callable[[Path, AdapterOptions], Scan]


def record_missing_views(key: str, present: set[int], expected: set[int], failures: list[dict[str, Any]],
                         file_of: Callable[[int], str]) -> None:
    """Record each camera of ``expected`` (the cameras the dataset was recorded with) absent from a group.

    The group is kept with the cameras it has; a missing view is never silent.
    """
    for camera in sorted(expected - present):
        failures.append({"file": file_of(camera), "group": key, "kept": True,
                         "reason": f"camera {camera} missing: the group is kept with cameras {sorted(present)}"})


def camera_layout(places: dict[int, tuple[float | None, float | None]]) -> dict[str, dict[str, float]]:
    """``{cam: (azimuth degrees, height metres)}`` -> ``Scan.layout`` (a ``None`` is left out)."""
    return {str(cam): {k: float(v) for k, v in zip(("azimuth", "height"), place, strict=True) if v is not None}
            for cam, place in sorted(places.items())}


def safe_partition(text: str) -> str:
    """A partition name usable in shard file names (letters, digits, ``_`` and ``-``)."""
    return re.sub(r"[^A-Za-z0-9_\-]+", "_", text).strip("_") or "all"
