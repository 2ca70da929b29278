"""The tar index: where every member of a shard lies, read from the headers alone.

Python's ``tarfile`` parses each header in ~0.2 ms, which, at hundreds of frame members per group,
costs more than decoding the JPEGs we actually sample. :func:`scan_tar` reads only the 512-byte headers
(and the few bytes of GNU long-name / pax records) and verifies every checksum; :func:`shard_groups`
turns one shard into a table of its groups — member extensions and (offset, size) spans — parsed once
per shard and process, so the training stream, which revisits every shard many times, afterwards reads
only what it wants with one positioned read per member.

Member names follow the schema's contract (``KEY.EXT``, see :func:`mv2mae.shards.schema.split_member`).
Corruption of any kind is a ``ContractError`` naming the shard, or, in a shard's table, a ``problem`` of
the group it touches (the other groups of the shard stay readable).
"""

from __future__ import annotations

import os
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from mv2mae.shards.schema import ContractError, split_member

_BLOCK = 512
_REGULAR = (b"0", b"\0", b"7")
_ARCHIVE_RECORDS = (b"g", b"K", b"V", b"M", b"N")  # pax global header, GNU long link name, volume, multi-volume
MAX_MEMBER_BYTES = 64 << 20  # a stored frame is tens of KB, a group's metadata a few: the bound before reading
_KINDS = {b"1": "hard link", b"2": "symbolic link", b"3": "character device", b"4": "block device",
          b"5": "directory", b"6": "FIFO"}


def _octal(field: bytes, where: str) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for sizes of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    try:
        return int(field.strip(b"\0 ") or b"0", 8)
    except ValueError as e:
        raise ContractError(f"{where}: corrupt tar header ({field!r} is not octal)") from e


def _header(block: bytes, where: str) -> tuple[bytes, int, bytes]:
    """(name, size, type flag) of one 512-byte header, its checksum verified."""
    stored = _octal(block[148:156], where)
    if stored != sum(block) - sum(block[148:156]) + 8 * 32:  # the checksum field counts as spaces
        raise ContractError(f"{where}: corrupt tar header (checksum mismatch)")
    name = block[:100].split(b"\0", 1)[0]
    if block[257:263] == b"ustar\0" and block[345]:  # POSIX ustar: name = prefix/name
        name = block[345:500].split(b"\0", 1)[0] + b"/" + name
    return name, _octal(block[124:136], where), block[156:157]


def _pax_path(data: bytes) -> bytes | None:
    for record in data.split(b"\n"):
        _, _, kv = record.partition(b" ")
        if kv.startswith(b"path="):
            return kv[5:]
    return None


def scan_entries(stream, where: str) -> Iterator[tuple[str, int, int, bytes]]:
    """(name, data offset, size, type flag) of every member of an uncompressed, seekable tar stream, in
    order, reading only the headers (links, devices and folders included; long-name and pax records are
    folded into the member they name). Handles ustar, GNU long names (``L``) and pax ``path`` records;
    verifies every header checksum; a truncated archive (one that ends before its end-of-archive zero
    block, even between members) is an error naming the shard."""
    pos = stream.tell()
    end = stream.seek(0, 2)
    stream.seek(pos)
    long_name = None
    while True:
        block = stream.read(_BLOCK)
        if len(block) < _BLOCK:  # a tar ends with zero blocks: an end of file before them is a cut
            raise ContractError(f"{where}: truncated tar ({'partial header' if block else 'no end-of-archive marker'})")
        if block == bytes(_BLOCK):
            return  # end-of-archive
        name, size, kind = _header(block, where)
        start = pos + _BLOCK
        pos = start + size + (-size % _BLOCK)
        if pos > end:
            raise ContractError(f"{where}: truncated tar (member {name.decode(errors='replace')} cut short)")
        if kind in (b"L", b"x"):
            data = stream.read(size)
            long_name = data.rstrip(b"\0") if kind == b"L" else _pax_path(data) or long_name
        elif kind not in _ARCHIVE_RECORDS:
            yield (long_name or name).decode(errors="replace"), start, size, kind
            long_name = None
        stream.seek(pos)


def scan_tar(stream, where: str) -> Iterator[tuple[str, int, int]]:
    """(name, data offset, size) of every regular member (see :func:`scan_entries`)."""
    for name, start, size, kind in scan_entries(stream, where):
        if kind in _REGULAR:
            yield name, start, size


def iter_tar(stream, where: str, want: Callable[[str], bool] | None = None) -> Iterator[tuple[str, bytes | None]]:
    """(name, bytes) of every regular member of an uncompressed, seekable tar stream, in order (see
    :func:`scan_tar`); members for which ``want(name)`` is false are never read and yielded with ``None``."""
    for name, offset, size in scan_tar(stream, where):
        if want is not None and not want(name):
            yield name, None
            continue
        if size > MAX_MEMBER_BYTES:
            raise ContractError(f"{where}: member {name} is {size} bytes, more than the {MAX_MEMBER_BYTES} allowed")
        stream.seek(offset)
        yield name, stream.read(size)


@dataclass
class GroupTable:
    """Where one group's members lie in its shard."""

    key: str
    exts: tuple[str, ...]  # member extensions in tar order (one shared str object per distinct extension)
    spans: array  # offset, size, offset, size, ... (8 bytes per number, not a Python int each)
    problem: str = ""  # why the group cannot be read (a link or foreign member among its own, a cut-off tail)

    def span(self, i: int) -> tuple[int, int]:
        return self.spans[2 * i], self.spans[2 * i + 1]


def read_member(fd: int, span: tuple[int, int], where: str, member: str, limit: int = MAX_MEMBER_BYTES) -> bytes:
    """The bytes of one member at ``span`` (from a table) with one positioned read of file ``fd``; a
    member larger than ``limit`` is refused before anything is allocated for it."""
    offset, size = span
    if size > limit:
        raise ContractError(f"{where}: member {member} is {size} bytes, more than the {limit} allowed")
    try:
        data = os.pread(fd, size, offset)
    except OSError as e:
        raise ContractError(f"{where}: member {member} unreadable ({e})") from None
    if len(data) < size:
        raise ContractError(f"{where}: truncated tar (member {member} cut short)")
    return data


class _TableBuilder:
    """Groups in tar order; a problem belongs to the group being read when it appears (or, before the
    first group, to the next one)."""

    def __init__(self) -> None:
        self.groups: list[GroupTable] = []
        self.key: str | None = None
        self.exts: list[str] = []
        self.spans = array("q")
        self.problems: list[str] = []
        self.interned: dict[str, str] = {}

    def start(self, key: str) -> None:
        if key != self.key:
            self.flush()
            self.key = key

    def add(self, ext: str, offset: int, size: int) -> None:
        self.exts.append(self.interned.setdefault(ext, ext))
        self.spans.extend((offset, size))

    def flush(self) -> None:
        if self.key is not None:
            self.groups.append(GroupTable(self.key, tuple(self.exts), self.spans, "; ".join(self.problems)))
            self.exts, self.spans, self.problems = [], array("q"), []
        self.key = None

    def finish(self) -> list[GroupTable]:
        self.flush()
        if self.problems:  # problems after the last group (or in a shard without one): a nameless group
            self.groups.append(GroupTable("", (), array("q"), "; ".join(self.problems)))
        return self.groups


def shard_table(path: str, where: str) -> list[GroupTable]:
    """The groups of one shard in order: consecutive members sharing a key, as ``wds.tarfile_to_samples``
    groups them (a key that reappears later starts a new group).

    Shards may come from strangers: a member that is not a regular file, a name outside the contract
    (a path such as ``../x`` or ``/etc/x``), or the point where the archive is cut short or corrupt
    marks the group it falls in with a ``problem`` (read nothing of it); the groups before stay
    readable. Only an unreadable file raises (``OSError``)."""
    table = _TableBuilder()
    with open(path, "rb", buffering=1 << 16) as f:
        try:
            for name, offset, size, kind in scan_entries(f, where):
                try:
                    key, ext = split_member(name, where)
                except ContractError as e:
                    table.problems.append(str(e))
                    continue
                table.start(key)
                if kind in _REGULAR:
                    table.add(ext, offset, size)
                else:
                    table.problems.append(f"{where}: member {name} is a {_KINDS.get(kind, f'type {kind!r} entry')}, "
                                          f"not a file")
        except ContractError as e:  # the tail from here on is cut off or corrupt
            table.problems.append(str(e))
    return table.finish()


class _TableCache:
    """Member tables of the shards this process has read, least recently used out beyond ``budget``
    members (~20 bytes each); a shard whose size or modification time changed is re-scanned."""

    def __init__(self, budget: int = 2_000_000):
        self.budget = budget
        self.tables: OrderedDict[tuple, list[GroupTable]] = OrderedDict()

    def get(self, path: str, where: str) -> list[GroupTable]:
        st = os.stat(path)
        ident = (path, st.st_size, st.st_mtime_ns, st.st_ino)
        if ident in self.tables:
            self.tables.move_to_end(ident)
            return self.tables[ident]
        for old in [i for i in self.tables if i[0] == path]:
            del self.tables[old]
        self.tables[ident] = table = shard_table(path, where)
        while len(self.tables) > 1 and sum(len(g.exts) for t in self.tables.values() for g in t) > self.budget:
            self.tables.popitem(last=False)
        return table


_TABLES = _TableCache()


def shard_groups(path: str, where: str) -> list[GroupTable]:
    """:func:`shard_table` of ``path``, cached in this process until the file changes."""
    return _TABLES.get(path, where)
