"""The on-disk contract of a preprocessed dataset directory (``data/<dataset>/``).

This module is the single source of truth shared by the writer (``preprocess``) and the readers
(``shards`` streams, ``mv2mae.data``, ``tools``). It imports nothing of ours.

Layout of a dataset directory::

    DIR/
      index.json                  manifest: dataset metadata + one entry per shard (see ``ShardEntry``)
      failures.jsonl              one JSON line per input that could not be used: {"file", "reason", ...}
      <partition>-<seq:06d>.tar   WebDataset shards; a sample = one multi-view group
      motion.zarr/                Zarr v3 group; one sub-group per shard (named by the shard's stem)
        <shard stem>/framediff    float16 [rows, grid_h, grid_w]   (and/or ``flow``)

Members of one sample (group key ``K``, no dots in ``K``)::

    K.json                        ``GroupMeta`` as JSON
    K.c<cam:03d>.f<t:04d>.jpg     stored frame t of camera cam, t = 0 .. view_frames[cam] - 1

(``split_member`` is the one reader of member names: key before the first dot, no directories.)

Time (format 2): every view is stored whole — the official video, or the labelled cut of an untrimmed
one — at the group's common frame rate, so a view may hold more frames than its siblings. Alignment
only places the views on one timeline: stored frame ``offsets[cam] + k`` of every camera shows instant
``k`` of the *common span*, the ``frames`` instants every view covers (``GroupMeta.span`` gives the
span any subset of cameras shares). Pretraining samples the span its views share; finetuning and
evaluation read each view's whole video. Format 1 (views trimmed to the common span, offsets counted
in source frames) is refused with a message saying to preprocess again.

Motion rows: in ``motion.zarr/<shard stem>/<source>``, camera ``cam`` of group ``K`` occupies the
rows ``meta.motion_rows[str(cam)] ... + meta.view_frames[str(cam)]``; row ``r`` holds the motion energy
between stored frames t-1 and t of that camera on a grid of ``cell``x``cell`` pixel cells (grid =
ceil(H/cell) x ceil(W/cell), the last row/column of cells averaging only the pixels they cover). Row
t=0 repeats the value of t=1 (the first frame has no predecessor: reuse the next difference).
``framediff`` is in 0-255 pixel units, ``flow``
(optical-flow magnitude) in stored-frame pixels. Each motion sub-group's attributes repeat that index for readers
without the shards: ``rows`` {key: {cam: first row}}, ``frames`` {key: {cam: stored frames}}, ``grid``
{key: [grid_h, grid_w]}, ``cell`` (see ``mv2mae.shards.motion``: if a shard's groups differ in stored
size, its arrays take the largest grid).

Cameras: ``index.json``'s ``layout`` places the dataset's cameras ({cam: {"azimuth": degrees,
"height": metres}}, either key optional) where the adapter knows it; the ``adjacent`` source policy
reads it (``mv2mae.data.sampling.choose_views``). ``ShardEntry.camera_sets`` counts a shard's groups
by the cameras they hold, so a protocol knows how many groups can form a multi-view sample without
reading one.

Nothing in a directory is trusted: this module refuses what has the wrong type as it parses (shard
names are plain ``<partition>-<seq>.tar`` file names, numbers finite, ids and sizes within the bounds
above), :mod:`mv2mae.shards.untrusted` confines names and bounds JSON and JPEG headers, and
:mod:`mv2mae.shards.contract` checks what is typed right but wrong together.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mv2mae.shards.atomic import write_atomic
from mv2mae.shards.untrusted import (
    MAX_FRAME_SIDE,
    MAX_INDEX_BYTES,
    MAX_META_BYTES,
    ContractError,
    load_json,
    read_json_file,
)

FORMAT = "mv2mae-shards"
FORMAT_VERSION = 2  # 2: whole views + common-span offsets; camera sets per shard; layout
INDEX_FILE = "index.json"
FAILURES_FILE = "failures.jsonl"
MOTION_STORE = "motion.zarr"
MOTION_SOURCES = ("framediff", "flow")
META_EXT = "json"

_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")
_FRAME_EXT_RE = re.compile(r"^c(\d{3})\.f(\d{4})\.jpg$")
_SHARD_RE = re.compile(r"^[A-Za-z0-9_\-]+\.tar$")  # ``shard_name``'s output: a plain file name in DIR
_CAMERA_SET_RE = re.compile(r"^\d+(,\d+)*$")  # ``camera_set_key``'s output
MAX_CAMERA = 999  # camera ids are written with three digits in member names
MAX_VIEW_FRAMES = 10_000  # stored frame numbers are written with four digits


def check_key(key: str) -> str:
    if not _KEY_RE.match(key):
        raise ContractError(f"group key {key!r} must match {_KEY_RE.pattern} (no dots, no slashes)")
    return key


def frame_ext(camera: int, t: int) -> str:
    """The WebDataset extension (member name after ``KEY.``) of stored frame ``t`` of ``camera``."""
    return f"c{camera:03d}.f{t:04d}.jpg"


def frame_member(key: str, camera: int, t: int) -> str:
    return f"{key}.{frame_ext(camera, t)}"


def split_member(name: str, where: str = "") -> tuple[str, str]:
    """``KEY.c001.f0000.jpg`` -> (``KEY``, ``c001.f0000.jpg``): WebDataset's key/extension rule (the key is
    everything before the first dot, the extension the rest, lower-cased). Keys have no dots and no
    slashes, so a name in a directory or without a dot is not a member of ours."""
    key, dot, ext = name.partition(".")
    if not dot or "/" in name:
        raise ContractError(f"{where + ': ' if where else ''}member {name!r} is not KEY.EXT")
    return key, ext.lower()


def parse_frame_ext(ext: str) -> tuple[int, int] | None:
    """``'c002.f0013.jpg'`` -> ``(2, 13)``; ``None`` for non-frame members."""
    m = _FRAME_EXT_RE.match(ext)
    return (int(m.group(1)), int(m.group(2))) if m else None


def shard_name(partition: str, seq: int) -> str:
    check_key(partition)
    return f"{partition}-{seq:06d}.tar"


def shard_stem(name: str) -> str:
    return name[:-4] if name.endswith(".tar") else name


def motion_grid(width: int, height: int, cell: int) -> tuple[int, int]:
    """(grid_h, grid_w) of the motion cell grid for a stored frame of ``width`` x ``height``."""
    return math.ceil(height / cell), math.ceil(width / cell)


@dataclass
class GroupMeta:
    """Metadata of one multi-view group, stored as ``KEY.json`` in its shard."""

    key: str
    dataset: str
    label: int  # 0-based class index into the index's ``classes``
    subject: int
    cameras: list[int]  # camera ids in stored order
    fps: float  # common frame rate of the stored frames
    frames: int  # length of the common span: the instants every view covers
    size: list[int]  # stored frame [width, height]
    partition: str
    view_frames: dict[str, int]  # cam -> stored frames of that view (its whole video)
    offsets: dict[str, int]  # cam -> stored frame of that view where the common span starts
    setup: int | None = None
    replication: int | None = None
    label_name: str = ""
    crop: dict[str, list[int] | None] = field(default_factory=dict)  # cam -> [x0, y0, x1, y1] source px
    source_start: dict[str, int] = field(default_factory=dict)  # cam -> source frame (common fps) of stored frame 0
    motion_rows: dict[str, int] = field(default_factory=dict)  # cam -> first row in the shard's motion arrays
    source: dict[str, str] = field(default_factory=dict)  # cam -> source path relative to --root
    extra: dict[str, Any] = field(default_factory=dict)  # adapter-specific fields (e.g. PKU-MMD sequence id)

    def __post_init__(self) -> None:
        check_key(self.key)
        if self.frames < 1:
            raise ContractError(f"{self.key}: frames must be >= 1, got {self.frames}")
        if len(self.cameras) < 1 or len(set(self.cameras)) != len(self.cameras):
            raise ContractError(f"{self.key}: cameras must be distinct and non-empty, got {self.cameras}")
        if len(self.size) != 2 or not all(1 <= side <= MAX_FRAME_SIDE for side in self.size):
            raise ContractError(f"{self.key}: size must be [width, height] of 1..{MAX_FRAME_SIDE} pixels, got "
                                f"{self.size}")
        if not all(0 <= c <= MAX_CAMERA for c in self.cameras):
            raise ContractError(f"{self.key}: camera ids must be 0..{MAX_CAMERA}, got {self.cameras}")
        self._check_timeline()

    def _check_timeline(self) -> None:
        """Every camera has a stored length and an offset, and ``frames`` is exactly the common span."""
        cams = {str(c) for c in self.cameras}
        for name in ("view_frames", "offsets"):
            if set(getattr(self, name)) != cams:
                raise ContractError(f"{self.key}: {name} {sorted(getattr(self, name))} must name the cameras "
                                    f"{self.cameras}")
        ends = [self.view_frames[c] - self.offsets[c] for c in cams]
        if min(self.offsets.values()) != 0 or min(ends) != self.frames:
            raise ContractError(f"{self.key}: offsets {self.offsets} and view_frames {self.view_frames} do not "
                                f"give a common span of {self.frames} frames starting at offset 0 of some view")

    def span(self, cameras: list[int]) -> tuple[dict[int, int], int]:
        """The span ``cameras`` share: each camera's stored frame where it starts, and its length (at least
        the common span's ``frames``; longer when the others' views overhang it)."""
        start = max(-self.offsets[str(c)] for c in cameras)
        end = min(self.view_frames[str(c)] - self.offsets[str(c)] for c in cameras)
        return {c: start + self.offsets[str(c)] for c in cameras}, end - start

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str | dict, where: str = "") -> GroupMeta:
        """Parse and type-check metadata that may come from a stranger's shard: anything malformed is a
        ``ContractError`` naming ``where`` (the shard and member), never another exception."""
        where = where or "metadata"
        obj = load_json(data, where, MAX_META_BYTES) if isinstance(data, (bytes, str)) else dict(data)
        if not isinstance(obj, dict):
            raise ContractError(f"{where}: metadata must be a JSON object, got {type(obj).__name__}")
        missing = [k for k in _META_REQUIRED if k not in obj]
        if missing:
            raise ContractError(f"{where}: missing fields {missing}")
        unknown = sorted(set(obj) - set(_META_TYPES))
        if unknown:
            raise ContractError(f"{where}: unknown fields {unknown}")
        wrong = [f"{k} ({type(v).__name__})" for k, v in obj.items() if not _META_TYPES[k](v)]
        if wrong:
            raise ContractError(f"{where}: fields of the wrong type: {', '.join(wrong)}")
        try:
            return cls(**obj)
        except ContractError as e:
            raise ContractError(f"{where}: {e}") from None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_list(v: Any) -> bool:
    return isinstance(v, list) and all(_is_int(x) for x in v)


def _str_map(value_ok):
    return lambda v: isinstance(v, dict) and all(isinstance(k, str) and value_ok(x) for k, x in v.items())


# What each metadata field must hold (a stranger's shard is checked against this before any use).
_META_TYPES = {
    "key": lambda v: isinstance(v, str), "dataset": lambda v: isinstance(v, str), "label": _is_int,
    "subject": _is_int, "cameras": _int_list, "frames": _is_int, "partition": lambda v: isinstance(v, str),
    "fps": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0,
    "size": lambda v: _int_list(v) and len(v) == 2 and min(v) > 0,
    "setup": lambda v: v is None or _is_int(v), "replication": lambda v: v is None or _is_int(v),
    "label_name": lambda v: isinstance(v, str),
    "crop": _str_map(lambda x: x is None or (_int_list(x) and len(x) == 4)),
    "view_frames": _str_map(lambda x: _is_int(x) and 1 <= x <= MAX_VIEW_FRAMES), "offsets": _str_map(_is_int),
    "source_start": _str_map(_is_int), "motion_rows": _str_map(lambda x: _is_int(x) and x >= 0),
    "source": _str_map(lambda x: isinstance(x, str)), "extra": lambda v: isinstance(v, dict),
}
_META_REQUIRED = ("key", "dataset", "label", "subject", "cameras", "fps", "frames", "size", "partition", "view_frames",
                  "offsets")


def camera_set_key(cameras: list[int]) -> str:
    """``[3, 1]`` -> ``'1,3'``: the key of ``ShardEntry.camera_sets``."""
    return ",".join(str(c) for c in sorted(cameras))


def parse_camera_set(key: str) -> set[int]:
    return {int(c) for c in key.split(",")}


@dataclass
class ShardEntry:
    """One shard in ``index.json``."""

    name: str
    partition: str
    samples: int
    bytes: int
    sha256: str
    subjects: list[int]
    setups: list[int]
    cameras: list[int]
    camera_sets: dict[str, int]  # ``camera_set_key(group cameras)`` -> groups holding exactly those cameras
    keys: list[str]


@dataclass
class DatasetIndex:
    """``index.json``: dataset-level metadata plus the shard list."""

    dataset: str
    classes: list[str]
    fps: float
    short_side: int
    cell: int
    motion: list[str]  # motion sources present in motion.zarr
    shards: list[ShardEntry]
    layout: dict[str, dict[str, float]] = field(default_factory=dict)  # cam -> {"azimuth": deg, "height": m}
    tool_version: str = ""
    args: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    version: int = FORMAT_VERSION
    # the class-swap table of a left-right mirror: flip_classes[c] is the class a mirrored video of
    # class c shows (c itself for symmetric actions; an involution). None: the dataset does not say,
    # so a label-keeping flip is not known to be safe (``data.flip``).
    flip_classes: list[int] | None = None

    def __post_init__(self) -> None:
        table = self.flip_classes
        if table is None:
            return
        n = len(self.classes)
        if sorted(table) != list(range(n)) or any(table[table[c]] != c for c in range(n)):
            raise ContractError(f"flip_classes {table} is not a class-swap table of the {n} classes "
                                f"(a permutation that is its own inverse)")

    @property
    def groups(self) -> int:
        return sum(s.samples for s in self.shards)

    def to_json(self) -> str:
        d = asdict(self)
        d["groups"] = self.groups
        return json.dumps(d, indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, obj: dict, where: str = INDEX_FILE) -> DatasetIndex:
        if not isinstance(obj, dict):
            raise ContractError(f"{where}: an index is a JSON object, got {type(obj).__name__}")
        if obj.get("format") != FORMAT:
            raise ContractError(f"{where}: not an {FORMAT} index (format={obj.get('format')!r})")
        if obj.get("version") != FORMAT_VERSION:
            old = obj.get("version") == 1
            raise ContractError(f"{where}: format version {obj.get('version')} unsupported (want {FORMAT_VERSION})"
                                + ("; format 1 trimmed every view to the span all views share — run "
                                   "`mv2mae preprocess` again into a new --out" if old else ""))
        obj = {k: v for k, v in obj.items() if k != "groups"}
        wrong = _index_type_problems(obj)
        if wrong:
            raise ContractError(f"{where}: malformed index ({'; '.join(wrong[:3])})")
        try:
            obj["shards"] = [ShardEntry(**s) for s in obj["shards"]]
            return cls(**obj)
        except (TypeError, KeyError, ContractError) as e:
            raise ContractError(f"{where}: malformed index ({e})") from e


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


# What each field of a shard entry must hold; the name must be a plain shard file name of DIR.
_ENTRY_TYPES = {
    "name": lambda v: isinstance(v, str) and bool(_SHARD_RE.match(v)), "partition": lambda v: isinstance(v, str),
    "samples": lambda v: _is_int(v) and v >= 0, "bytes": lambda v: _is_int(v) and v >= 0,
    "sha256": lambda v: isinstance(v, str), "subjects": _int_list, "setups": _int_list, "cameras": _int_list,
    "camera_sets": lambda v: _str_map(lambda x: _is_int(x) and x >= 0)(v) and all(_CAMERA_SET_RE.match(k) for k in v),
    "keys": _str_list,
}
_LAYOUT_PLACE = ("azimuth", "height")


def _layout_ok(v: Any) -> bool:
    """{camera id: {"azimuth"|"height": finite number}}: what the source policies compute angles from."""
    return _str_map(lambda place: isinstance(place, dict) and set(place) <= set(_LAYOUT_PLACE)
                    and all(_finite(x) for x in place.values()))(v) and all(k.isdigit() for k in v)


def _index_type_problems(obj: dict) -> list[str]:
    """What of an index (a stranger's, perhaps) has the wrong type, before any of it is used: classes are
    a non-empty list of names, numbers are finite, shard entries typed, shard names plain file names."""
    problems = []
    classes = obj.get("classes")
    if not _str_list(classes) or not classes:
        problems.append(f"classes must be a non-empty list of names, got {str(classes)[:60]}")
    if not _finite(obj.get("fps")) or obj["fps"] < 0:
        problems.append(f"fps must be a finite number >= 0, got {obj.get('fps')!r}")
    for name in ("short_side", "cell"):
        if not _is_int(obj.get(name)) or obj[name] < 1:
            problems.append(f"{name} must be a positive integer, got {obj.get(name)!r}")
    if "layout" in obj and not _layout_ok(obj["layout"]):
        problems.append(f"layout must map camera ids to finite {'/'.join(_LAYOUT_PLACE)}, got {str(obj['layout'])[:80]}")
    if not _str_list(obj.get("motion")):
        problems.append(f"motion must be a list of source names, got {obj.get('motion')!r}")
    shards = obj.get("shards")
    if not isinstance(shards, list) or not all(isinstance(e, dict) for e in shards):
        return problems + ["shards must be a list of entries"]
    for i, entry in enumerate(shards):
        wrong = [k for k, ok in _ENTRY_TYPES.items() if k in entry and not ok(entry[k])]
        if wrong:
            problems.append(f"shard entry {i} ({str(entry.get('name'))[:60]!r}): wrong {', '.join(wrong)}"
                            + (" (a shard name is a plain <partition>-<seq>.tar)" if "name" in wrong else ""))
    return problems


def read_index(root: str | Path) -> DatasetIndex:
    return read_index_stated(root)[0]


def read_index_stated(root: str | Path) -> tuple[DatasetIndex, Any]:
    """``index.json`` of ``root``, parsed once: the typed index and the group total the file states (the
    contract checks it against the shards')."""
    path = Path(root) / INDEX_FILE
    if not path.is_file():
        raise ContractError(f"{path}: no index — is {root} a preprocessed dataset directory?")
    raw = read_json_file(path, MAX_INDEX_BYTES)
    return DatasetIndex.from_dict(raw, where=str(path)), raw.get("groups") if isinstance(raw, dict) else None


def write_index(root: str | Path, index: DatasetIndex) -> None:
    """Atomically (temporary file + rename) write ``index.json``."""
    write_atomic(Path(root) / INDEX_FILE, index.to_json())
