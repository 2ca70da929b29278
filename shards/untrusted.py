"""What may be taken from a file someone else wrote: the one place that says how far it is trusted.

Shards, manifests and indexes may come from strangers (a download, a shared disk, a tampered copy).
Before anything read from one is used:

* a **name** joined to a folder (a shard name from ``index.json``, a motion sub-group, a manifest's
  video path) must stay inside that folder: relative, no ``..``, and no link leading out
  (:func:`confined`);
* **JSON** is parsed only within a size and a nesting depth (:func:`load_json`): Python's parser recurses
  per level, so a deeply nested document would end the process in a ``RecursionError``;
* a **JPEG frame**'s dimensions are read from its header and compared with the size its group promises
  before a decoder allocates for it (:func:`check_jpeg`): a header can declare 60000x60000 in a few
  bytes, and a PNG or WebP is no JPEG whatever its member name says.

Every refusal is a :class:`ContractError` naming where the input came from. This module imports nothing
of ours: it is the bottom of the bottom layer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np


class ContractError(ValueError):
    """A dataset directory, shard or sample does not follow the on-disk contract."""


MAX_JSON_DEPTH = 64  # our documents nest 4 levels at most; a bound far above, far below the recursion limit
MAX_META_BYTES = 1 << 20  # one group's metadata (a few KB in practice)
MAX_INDEX_BYTES = 1 << 30  # index.json: ~40 bytes per listed group key, so room for millions of groups
MAX_FRAME_SIDE = 4096  # stored frames are at training resolution (short side 160 by default)

_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')
_OPENS, _CLOSES = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)


def confined(root: str | Path, name: str, what: str = "name") -> Path:
    """``root / name``, refused unless it stays inside ``root``: ``name`` is relative, has no ``..``
    component, no backslash or NUL, and, where it exists, no link on the way resolves outside ``root``."""
    text = str(name)
    parts = PurePosixPath(text).parts
    if not text or "\0" in text or "\\" in text or text.startswith("/") or ".." in parts:
        raise ContractError(f"{root}: {what} {text!r} is not a relative name inside the folder")
    path = Path(root) / text
    base, real = Path(root).resolve(), path.resolve()
    if real != base and base not in real.parents:
        raise ContractError(f"{root}: {what} {text!r} leads out of the folder (a link to {real})")
    return path


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text (brackets inside strings do not count);
    counted without recursion, in one vectorised pass."""
    codes = np.frombuffer(_STRINGS.sub(b"", raw), np.uint8)
    steps = np.isin(codes, _OPENS).astype(np.int64) - np.isin(codes, _CLOSES)
    return int(np.cumsum(steps).max(initial=0))


def load_json(data: bytes | str, where: str, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` of an untrusted document, refused beyond ``max_bytes`` or ``max_depth`` levels."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise ContractError(f"{where}: {len(raw)} bytes of JSON, more than the {max_bytes} allowed")
    depth = json_depth(raw)
    if depth > max_depth:
        raise ContractError(f"{where}: JSON nested {depth} levels deep, more than the {max_depth} allowed")
    try:
        return json.loads(raw)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ContractError(f"{where}: not valid JSON ({e})") from None


def read_json_file(path: Path, max_bytes: int) -> Any:
    """:func:`load_json` of a file, its size checked before it is read."""
    size = path.stat().st_size
    if size > max_bytes:
        raise ContractError(f"{path}: {size} bytes of JSON, more than the {max_bytes} allowed")
    return load_json(path.read_bytes(), str(path), max_bytes)


# Start-of-frame markers: which JPEG processes a frame header may declare, and the ones both our decoders
# (libjpeg-turbo through OpenCV on the CPU, nvJPEG or libjpeg-turbo through torchvision) take: Huffman
# baseline, extended sequential and progressive.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_DECODABLE_SOF = {0xC0, 0xC1, 0xC2}
_NO_LENGTH = {0x01, *range(0xD0, 0xD8)}  # TEM and restart markers stand alone


def jpeg_dimensions(data: bytes, where: str) -> tuple[int, int]:
    """(width, height) a JPEG's frame header declares, read without decoding: the markers before the
    first scan are walked to the start-of-frame segment. Anything else (another image format, a header
    cut short, a JPEG process the decoders do not take) is a ``ContractError`` naming ``where``."""
    if data[:2] != b"\xff\xd8":
        raise ContractError(f"{where} is not a JPEG (it starts with {bytes(data[:4])!r})")
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ContractError(f"{where}: corrupt JPEG header (no marker at byte {pos})")
        marker = data[pos + 1]
        if marker == 0xFF or marker in _NO_LENGTH:  # fill byte, or a marker without a segment
            pos += 1 if marker == 0xFF else 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            break
        if marker in _SOF:
            if marker not in _DECODABLE_SOF or pos + 10 > len(data) or data[pos + 4] != 8:
                raise ContractError(f"{where}: a JPEG the decoders do not take (frame type 0x{marker:02X}, "
                                    f"8-bit Huffman only)")
            return int.from_bytes(data[pos + 7:pos + 9], "big"), int.from_bytes(data[pos + 5:pos + 7], "big")
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    raise ContractError(f"{where}: JPEG without a frame header")


def check_jpeg(data: bytes, size: tuple[int, int] | list[int], where: str) -> None:
    """Refuse a frame that is not a JPEG of ``size`` (width, height) before anything decodes it."""
    width, height = jpeg_dimensions(data, where)
    if (width, height) != tuple(size):
        raise ContractError(f"{where} is {width}x{height} by its header, metadata says {size[0]}x{size[1]}")
