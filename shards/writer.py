"""Writing one shard: a plain tar any tool reads, byte-stable for the same samples, atomic on disk.

Every member gets the same mtime, owner and mode, so the bytes depend only on the samples; the tar is
written under a temporary name and renamed into place only when closed, so a shard that exists is
complete (a killed run leaves at most a ``*.tar.partial`` that the next run deletes).
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

FIXED_MTIME = 946684800  # 2000-01-01T00:00:00Z: fixed, and not "implausibly old" for GNU tar
PARTIAL_SUFFIX = ".partial"


@dataclass
class Member:
    name: str
    data: bytes


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


class ShardWriter:
    """Append samples (lists of members) to ``path``; ``close()`` renames the finished tar into place."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        self._file = open(self.tmp, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.GNU_FORMAT)
        self.samples = 0

    @property
    def bytes(self) -> int:
        """Bytes written so far (tar headers and padding included, end-of-archive blocks not)."""
        return self._file.tell()

    def add_sample(self, members: Iterable[Member]) -> None:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.size = len(m.data)
            info.mtime = FIXED_MTIME
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(m.data))
        self.samples += 1

    def close(self) -> tuple[int, str]:
        """Finish the archive and make it durable under the temporary name; returns (bytes, sha256).

        The shard is not visible until ``commit()``: a caller first records what the shard holds
        (motion, manifest entry) and then commits, so a visible shard always has its records.
        """
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return self.tmp.stat().st_size, sha256_file(self.tmp)

    def commit(self) -> Path:
        os.replace(self.tmp, self.path)
        return self.path
