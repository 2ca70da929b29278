"""Writing files and folders so that a name on disk always holds a complete output.

Every writer of the project that publishes a file under its final name goes through here (the model's
checkpoint writer, which may import nothing of ours, follows the same rule on its own):

- :func:`write_atomic`: a file is written to ``.<name>.tmp<pid>`` beside its final name, flushed to the
  disk and renamed; a failed write (a full disk, a file-size limit, a read-only folder) removes the
  temporary file and is one :class:`WriteError` naming the final path. What the name held before is
  untouched.
- :func:`writing`: the same one-line error for a file written in place (an appended log).
- :func:`publish_dir`: a folder of outputs (an export, an evaluation) is filled as a temporary sibling
  and swapped in with two renames, so a reader sees the old complete folder or the new one, never a mix;
  a kill between the two renames is repaired by the next run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

TMP_MARK = ".tmp"  # ``.<name>.tmp<pid>``: being written
OLD_MARK = ".old"  # ``.<name>.old<pid>``: the folder being replaced by publish_dir


class WriteError(ValueError):
    """An output could not be written; the message names the file and the reason."""

    exit_code = 1


def temporary_name(path: Path, mark: str = TMP_MARK) -> Path:
    return path.with_name(f".{path.name}{mark}{os.getpid()}")


def reason(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


@contextlib.contextmanager
def writing(path: Path, note: str = "") -> Iterator[None]:
    """An ``OSError`` inside the block becomes a :class:`WriteError` naming ``path`` (and ``note``)."""
    try:
        yield
    except OSError as e:
        raise WriteError(f"{path}: cannot write ({reason(e)}){'; ' + note if note else ''}") from None


def write_atomic(path: str | Path, data: str | bytes | Callable[[Path], object], sync: bool = True) -> Path:
    """Write ``data`` (text, bytes, or a function that writes the file it is given) to ``path`` through a
    temporary sibling and a rename; with ``sync`` the file is on the disk before its name is (``False``
    for many small files that a re-run rewrites anyway: a crash of the machine may then leave one empty)."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with writing(path, "nothing was written under that name"):
            path.parent.mkdir(parents=True, exist_ok=True)
            if callable(data):
                data(tmp)
            else:
                with open(tmp, "wb") as f:
                    f.write(data.encode() if isinstance(data, str) else data)
            if sync:
                sync_file(tmp)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def sync_file(path: Path) -> None:
    """``fsync`` a written file, so that a rename after it never names data still in the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_dir(dest: str | Path, fill: Callable[[Path], object], ours: Callable[[Path], bool],
                overwrite: bool = False) -> Path:
    """Fill a temporary sibling of ``dest`` with ``fill(folder)``, then put it in ``dest``'s place.

    A ``dest`` that is not empty and of which ``ours(dest)`` says it was not written by this kind of
    command is refused (:class:`FolderTaken`) unless ``overwrite``: it may be someone's own files."""
    dest = Path(dest)
    check_publishable(dest, ours, overwrite)
    tmp, old = temporary_name(dest), temporary_name(dest, OLD_MARK)
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            fill(tmp)
            for item in tmp.iterdir():
                if item.is_file():
                    sync_file(item)
        except OSError as e:  # named as the file it would have become in ``dest``
            being = _being_written(tmp, e)
            failed = dest / being.relative_to(tmp) if being != tmp else dest
            raise WriteError(f"{failed}: cannot write ({reason(e)}); {dest} is unchanged") from None
        with writing(dest):
            if dest.exists():
                os.replace(dest, old)
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return dest


def _being_written(folder: Path, e: OSError) -> Path:
    """The file a failed fill was writing: the error's own file name, else the newest file in ``folder``
    (a write cut short by a full disk names no file), else the folder."""
    if e.filename and Path(e.filename).is_relative_to(folder):
        return Path(e.filename)
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    return max(files, key=lambda p: p.stat().st_mtime_ns) if files else folder


def check_publishable(dest: Path, ours: Callable[[Path], bool], overwrite: bool = False) -> None:
    """What :func:`publish_dir` refuses, checked on its own (commands call it before any work)."""
    restore_interrupted(dest)
    if dest.exists() and not dest.is_dir():
        raise FolderTaken(f"{dest} is a file, not a folder: choose another output folder")
    if dest.is_dir() and any(dest.iterdir()) and not overwrite and not ours(dest):
        raise FolderTaken(f"{dest} holds files this command did not write: choose an empty or new folder, or pass "
                          f"--overwrite to replace it")


def holds_only(names: tuple[str, ...]) -> Callable[[Path], bool]:
    """``ours`` for :func:`publish_dir`: a folder holding nothing but some of ``names``."""
    return lambda folder: all(item.name in names for item in folder.iterdir())


def restore_interrupted(dest: Path) -> None:
    """Undo what a killed :func:`publish_dir` left: the replaced folder back when the new one never got
    its name, and half-filled temporary siblings removed."""
    for old in sorted(dest.parent.glob(f".{dest.name}{OLD_MARK}*")):
        if dest.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, dest)
    for tmp in dest.parent.glob(f".{dest.name}{TMP_MARK}*"):
        shutil.rmtree(tmp, ignore_errors=True)


class FolderTaken(ValueError):
    """An output folder holds what this command must not replace (a usage error)."""

    exit_code = 2
