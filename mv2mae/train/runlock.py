"""One training process per run folder: the process that trains in it holds a lock on ``RUN/.lock``.

The lock is a POSIX record lock (``lockf``) on the file, which the kernel releases when its holder exits
however it ends: a lock left by a process that died (SIGKILL, a lost node) is taken over by the next run
without asking. Not ``flock``: a loader worker forked by the trainer would share a ``flock`` and hold it
for the seconds it outlives a killed trainer, while record locks belong to one process (and work on NFS).
The file names its holder (pid, host, start time) for the refusal of a second run. Under torchrun only
rank 0 holds it: the other ranks write nothing in the folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from mv2mae.shards.atomic import WriteError, writing

LOCK_FILE = ".lock"


class RunLocked(ValueError):
    """Another process is training in the run folder (a usage error: choose another ``--out``)."""

    exit_code = 2


@contextlib.contextmanager
def run_lock(run_dir: str | Path, hold: bool = True) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block (nothing when ``hold`` is false); :class:`RunLocked` names the
    holder when another process has it."""
    if not hold:
        yield
        return
    path = Path(run_dir) / LOCK_FILE
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                raise WriteError(f"{path}: cannot lock the run folder ({e.strerror or e})") from None
            holder = os.pread(fd, 1024, 0).decode(errors="replace").strip() or "a process that did not say"
            raise RunLocked(f"{run_dir} is in use: another run is training in it ({holder}); wait for it to end, "
                            f"stop it, or choose another --out") from None
        with writing(path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
