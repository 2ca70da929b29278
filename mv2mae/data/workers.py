"""The guards around the DataLoader's worker processes: a dead, stopped or stuck worker, or one that cannot
hand a batch over, ends the stream with one line (:class:`LoaderError`) instead of a hang or a page of
traceback. Each guard, and what it is for:

* :class:`WorkerPids` records every worker's process id and, when the loader gives up, wakes a stopped
  (SIGSTOP) worker: a stopped process holds back the SIGTERM the DataLoader's shutdown sends it, and the
  interpreter would wait for it forever on exit.
* :func:`leave_stop_signals_to_the_trainer`, in each worker: Ctrl-C, SIGUSR1 and SIGTERM reach the whole
  process group, but the training process decides when to stop (it finishes its step with the workers'
  batches and saves first; ``mv2mae.train.preemption``).
* the DataLoader's own ``timeout`` (``data.timeout``) ends a wait for a worker's next batch.
* :func:`_deadline` ends what that timeout does not cover: receiving a batch's shared memory asks the
  worker that sent it for a file descriptor, and a stopped worker never answers.
* :func:`in_shared_memory`, in each worker: a batch that cannot get shared memory (``ulimit -f``, a full
  /dev/shm) says what to do instead of failing somewhere inside the DataLoader's queue.
* :func:`_worker_error` re-raises a worker's own error as the worker raised it (the DataLoader wraps it in
  a message holding the worker's traceback), and a dead or stalled worker as a :class:`LoaderError`.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import traceback
from collections.abc import Callable, Iterator

import torch
import torch.utils.data


class LoaderError(RuntimeError):
    """The loader's workers cannot deliver: one died, none answered within ``data.timeout``, or batches
    cannot be handed over (no shared memory)."""


class WorkerPids:
    """The process ids of one DataLoader's workers, each recorded by the worker as it starts (pass
    :meth:`record` as ``worker_init_fn``), so that a loader that gave up can wake a stopped one (:meth:`wake`)."""

    def __init__(self, workers: int):
        self.pids = multiprocessing.Array("q", workers, lock=False)

    def record(self, worker_id: int) -> None:
        self.pids[worker_id] = os.getpid()
        leave_stop_signals_to_the_trainer()

    def wake(self) -> None:
        """SIGCONT every recorded worker that is still a child of this process."""
        children = {p.pid for p in multiprocessing.active_children()}
        for pid in self.pids:
            if pid in children:
                os.kill(pid, signal.SIGCONT)


# seconds a worker lives on after a SIGTERM: long enough for the training process to finish its step with
# the worker's batches and end it itself, short enough that a worker ended by nobody else still goes
WORKER_TERM_GRACE = 60.0


def leave_stop_signals_to_the_trainer() -> None:
    """In a loader worker: Ctrl-C and SIGUSR1 (sent to a whole process group, or to every process of a
    scheduler's job step) are ignored, and a SIGTERM ends the worker only after :data:`WORKER_TERM_GRACE`.
    The training process receives the same signals, finishes its step with the batches the workers make,
    saves, and ends them (mv2mae.train.preemption); a worker that died first would fail that step."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _end_after_grace)


def _end_after_grace(signum: int, frame: object) -> None:
    timer = threading.Timer(WORKER_TERM_GRACE, os._exit, args=(128 + signum,))
    timer.daemon = True
    timer.start()


def in_shared_memory(collate: Callable[[list[dict]], dict], samples: list[dict]) -> dict:
    """``collate(samples)``, every tensor of it in shared memory when this is a loader worker (where
    ``default_collate`` already stacks into shared memory; the rest is moved there now rather than while
    the batch is queued, where a failure would leave the loader waiting for a batch that never comes).

    Shared memory is a file (in /dev/shm): a file-size limit (``ulimit -f``) or a full /dev/shm refuses
    it, and batches that cross processes have no way round that, so the error says what to do. Which
    allocation failed torch does not tell apart from other errors: the reason it gave is quoted."""
    if torch.utils.data.get_worker_info() is None:
        return collate(samples)
    try:
        batch = collate(samples)
        for value in batch.values():
            if isinstance(value, torch.Tensor):
                value.share_memory_()
    except RuntimeError as e:
        raise LoaderError(f"a loader worker cannot allocate shared memory for a batch ({e}): a file-size limit "
                          f"(ulimit -f) or a full /dev/shm; raise the limit or free the space, or set "
                          f"data.workers=0 to load batches in the training process") from None
    return batch


def _stalled(timeout: float) -> LoaderError:
    return LoaderError(f"no batch from the data-loader workers in {timeout:g} s (data.timeout): a worker is stopped "
                       f"or stuck (e.g. on a network file system read); raise data.timeout if the storage is this slow")


def _worker_error(e: Exception, timeout: float) -> Exception:
    """The error a consumer should see for what a DataLoader raised: a worker's own error as the worker
    raised it, a dead or stalled worker as a :class:`LoaderError` that says so — also when it died with a
    batch still queued, whose shared memory this process then cannot fetch from it (``EOFError`` or a
    refused connection). The DataLoader gives these only as text: they are told apart by it."""
    text = str(e)
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:
        kind = type(e)
        marker = f"\n{kind.__module__}.{kind.__qualname__}: " if kind.__module__ != "builtins" else f"\n{kind.__name__}: "
        _, found, original = text.rpartition(marker)
        if found:
            try:
                return kind(original.strip())
            except Exception:  # an exception type that takes other arguments: keep the DataLoader's message
                return e
    if isinstance(e, RuntimeError) and text.startswith("DataLoader timed out"):
        return _stalled(timeout)
    if isinstance(e, RuntimeError) and text.startswith("DataLoader worker"):
        return LoaderError(f"a data-loader worker died ({text}; killed, or out of memory?)")
    if isinstance(e, (EOFError, ConnectionError)):  # a queued batch's shared memory is fetched from its worker
        return LoaderError(f"a data-loader worker died before its batch was received ({type(e).__name__}; killed, "
                           f"or out of memory?)")
    return e


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Raise :func:`_stalled` in the main thread if the block takes longer than ``seconds`` (the module
    notes say why the DataLoader's timeout is not enough). Only the main thread can take the alarm;
    elsewhere only the DataLoader's timeout holds."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise _stalled(seconds)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Batches:
    """A DataLoader iterated under the guards (module notes), each batch then passed through ``stages`` in
    this process, in order (decoding on the device, then clip motion: ``mv2mae.data.loaders``). A loader
    that raised is done (a worker's own error, one that died or stalled, a stage's): a stopped worker is
    woken (``pids``) and the DataLoader and its iterator dropped at once (the frames of the error's
    traceback would otherwise keep the iterator, and with it the DataLoader's watch on its workers' exits,
    alive), so that its shutdown ends the workers (and the failing process can exit)."""

    def __init__(self, loader: torch.utils.data.DataLoader, pids: WorkerPids | None = None,
                 stages: tuple[Callable[[dict], dict], ...] = ()):
        self.loader: torch.utils.data.DataLoader | None = loader
        self.pids, self.stages = pids, stages
        self.dataset, self.batch_size = loader.dataset, loader.batch_size

    def __iter__(self) -> Iterator[dict]:
        if self.loader is None:
            raise LoaderError("this loader's workers failed earlier; build a new loader")
        timeout = self.loader.timeout
        try:
            yield from self._batches(timeout)
        except Exception as e:
            error = _worker_error(e, timeout)
            if isinstance(error, LoaderError) and self.pids is not None:
                self.pids.wake()
            # whatever failed, this stream is over: drop the DataLoader and its iterator now, so that their
            # workers are shut down at once rather than at some later garbage collection, or at exit, where
            # the SIGTERM they are sent would hold the process for their grace (WORKER_TERM_GRACE)
            self.loader = None
            traceback.clear_frames(e.__traceback__)
            if error is e:
                raise
            raise error from None

    def _batches(self, timeout: float) -> Iterator[dict]:
        batches = iter(self.loader)
        while True:
            with _deadline(timeout):
                batch = next(batches, _END)
            if batch is _END:
                return
            for stage in self.stages:
                batch = stage(batch)
            yield batch


_END = object()
