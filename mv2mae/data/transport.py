"""Reused shared-memory batch buffers between DataLoader workers and the main process.

A DataLoader worker hands a batch over in shared memory, and by default every batch gets fresh shared
memory: the kernel allocates and zeroes it (``posix_fallocate``) and the worker then faults every page
in as it writes. For a uint8 two-view batch that cost a worker ~1 ms per sample of its ~10, and ~5 ms
for float video — more than all the other work but JPEG decoding.

Here each worker keeps a small ring of shared buffers per batch field (name, shape, dtype) and writes
batch after batch into them. A buffer is only rewritten after the main process has released it:

* the worker ships a :class:`Lease` (the buffer, plus who owns it) in place of the tensor;
* when pinning (CUDA), the DataLoader's pin-memory thread copies the lease into page-locked memory —
  the copy it makes anyway — and releases the buffer at once (:meth:`Lease.pin_memory`);
* otherwise the consumer gets the buffer's tensor itself, no copy, and the buffer is released once no
  tensor, view or array in the main process refers to its memory any more (a weak reference to the
  storage, checked as each batch arrives);
* a release is a message on a pipe read by the owning worker, naming its process id and the buffer's
  slot; slots are never reused within a process, so a late or stray release frees nothing else;
* a worker whose buffers are all still out takes fresh shared memory for the batch and ships a plain
  tensor, exactly as without the ring. A release that never comes costs speed, never correctness;
* when a worker starts a new pass (persistent workers iterated again), it retires every buffer still
  out: batches the DataLoader threw away in flight (a consumer that broke out of its loop) would
  otherwise never be released. A retired buffer the consumer still holds stays valid; the worker
  just never writes to it again.

The loaders use the ring where it pays: for batches of decoded video (``decode_on=cpu``: 1.13x the
samples per worker CPU-second), not for the JPEG bytes of ``decode_on=device``, which take fresh memory
anyway (1.02x; BENCHMARKS.md, ``mv2mae bench loader``).

What the weak reference cannot see: a third process (a consumer that sends an unpinned batch tensor
on through a ``torch.multiprocessing`` queue should send a clone) and raw pointers handed to native
code that outlive the tensor. For those, build the loader with ``reuse_buffers=False``. Shared memory
use is at most ``slots`` buffers per field per worker beyond what a plain DataLoader holds.
"""

from __future__ import annotations

import collections
import contextlib
import math
import multiprocessing
import os
import signal
import struct
import threading
import traceback
import uuid
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.utils.data
from torch.multiprocessing.reductions import StorageWeakRef

_MESSAGE = struct.Struct("<qq")  # (worker pid, slot): one atomic pipe write (< PIPE_BUF)


class LoaderError(RuntimeError):
    """The loader's workers cannot deliver: one died, none answered within ``data.timeout``, or batches
    cannot be handed over (no shared memory)."""


def _shared_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor in (fresh) shared memory, as ``default_collate`` builds in a worker.

    Shared memory is a file (in /dev/shm): a file-size limit (``ulimit -f``) or a full /dev/shm refuses
    it, and there is no way round that for batches that cross processes — so the error says what to do."""
    elem = torch.empty(0, dtype=dtype)
    try:
        storage = elem._typed_storage()._new_shared(math.prod(shape), device="cpu")
    except RuntimeError as e:
        size = math.prod(shape) * elem.element_size()
        raise LoaderError(f"a loader worker cannot allocate {size} bytes of shared memory for a batch ({e}): "
                          f"a file-size limit (ulimit -f) or a full /dev/shm; raise the limit or free the space, "
                          f"or set data.workers=0 to load batches in the training process") from None
    return elem.new(storage).resize_(shape)


@dataclass
class Lease:
    """A batch tensor that lies in a worker's reused buffer, as shipped from the worker; the main process
    hands it out (:meth:`BatchRing.hand_out`) or pins it (:meth:`pin_memory`)."""

    tensor: torch.Tensor
    ring: str
    worker: int
    pid: int
    slot: int

    def pin_memory(self, device=None) -> torch.Tensor:
        """What the DataLoader's pin-memory thread calls on objects that are not tensors: the same
        page-locked copy (same shape and strides) it makes of a tensor, after which the worker may
        rewrite the buffer."""
        pinned = self.tensor.pin_memory()
        ring = _RINGS.get(self.ring)
        if ring is not None:
            ring.release(self)
        return pinned


_RINGS: weakref.WeakValueDictionary[str, BatchRing] = weakref.WeakValueDictionary()


@dataclass(frozen=True)
class RingEnds:
    """What workers receive (inside the dataset): the ring's id, the read end of every worker's release
    pipe (worker ``i`` reads ``readers[i]``) and the buffers each worker may keep per batch field."""

    ring: str
    readers: tuple
    slots: int


class BatchRing:
    """Main-process side of the buffers of one DataLoader's workers: one release pipe per worker, and
    the buffers handed out to the consumer without a copy."""

    def __init__(self, workers: int, slots: int):
        self.id = uuid.uuid4().hex
        pipes = [multiprocessing.Pipe(duplex=False) for _ in range(workers)]
        self.ends = RingEnds(ring=self.id, readers=tuple(r for r, _ in pipes), slots=slots)
        self._writers = [w for _, w in pipes]
        for w in self._writers:
            os.set_blocking(w.fileno(), False)  # a full pipe drops a release instead of stalling us
        self._out: list[tuple[StorageWeakRef, Lease]] = []  # handed out, not yet released
        # What was handed out: leases per (worker, pid, slot), and tensors not in ring memory (one-off
        # shared memory of a worker whose buffers were all out — or, when pinning, every pinned copy).
        self.leases: collections.Counter[tuple[int, int, int]] = collections.Counter()
        self.unleased = 0
        self._lock = threading.Lock()
        _RINGS[self.id] = self

    def release(self, lease: Lease) -> None:
        with self._lock:
            if not 0 <= lease.worker < len(self._writers):
                return
            try:
                self._writers[lease.worker].send_bytes(_MESSAGE.pack(lease.pid, lease.slot))
            except OSError:  # full (BlockingIOError) or closed: the worker falls back to fresh memory
                pass

    def hand_out(self, batch):
        """``batch`` with every :class:`Lease` replaced by its tensor, each released once the main
        process no longer refers to its memory (see :meth:`reclaim`)."""
        if isinstance(batch, Lease):
            tensor, ref = batch.tensor, StorageWeakRef(batch.tensor.untyped_storage())
            batch.tensor = None  # the record below must not keep the memory alive
            with self._lock:
                self._out.append((ref, batch))
                self.leases[(batch.worker, batch.pid, batch.slot)] += 1
            return tensor
        if isinstance(batch, torch.Tensor):
            self.unleased += 1
            return batch
        if isinstance(batch, dict):
            return {k: self.hand_out(v) for k, v in batch.items()}
        if isinstance(batch, list | tuple):
            return type(batch)(self.hand_out(v) for v in batch)
        return batch

    def reclaim(self) -> None:
        """Release every handed-out buffer whose memory nothing in this process refers to any more."""
        with self._lock:
            done, kept = [], []
            for ref, lease in self._out:  # one look per entry: another thread may drop a batch meanwhile
                (done if ref.expired() else kept).append((ref, lease))
            self._out = kept
        for _, lease in done:
            self.release(lease)


class _WorkerBuffers:
    """Worker side: buffers by slot (field key and tensor), the slots that are out, the release pipe."""

    def __init__(self, ends: RingEnds, worker: int):
        self.ends, self.worker, self.pid = ends, worker, os.getpid()
        self.reader = ends.readers[worker]
        self.buffers: dict[int, tuple[tuple, torch.Tensor]] = {}
        self.out: set[int] = set()
        self.next_slot = 0

    def _drain(self) -> None:
        if self.reader is None:
            return
        try:
            while self.reader.poll():
                pid, slot = _MESSAGE.unpack(self.reader.recv_bytes())
                if pid == self.pid:
                    self.out.discard(slot)
        except (EOFError, OSError):  # the main process's end is gone: nothing more will be released
            self.reader = None

    def retire_out(self) -> None:
        """Forget every buffer still out once the releases already sent are read (a new pass begins;
        see the module notes)."""
        self._drain()
        for slot in self.out:
            del self.buffers[slot]
        self.out.clear()

    def acquire(self, shape: tuple[int, ...], dtype: torch.dtype, field: str) -> torch.Tensor:
        self._drain()
        key = (field, tuple(shape), dtype)
        mine = [slot for slot, (k, _) in self.buffers.items() if k == key]
        for slot in mine:
            if slot not in self.out:
                self.out.add(slot)
                return self.buffers[slot][1]
        if len(mine) >= self.ends.slots:
            return _shared_empty(key[1], dtype)  # all out: a one-off buffer, shipped as a plain tensor
        slot, self.next_slot = self.next_slot, self.next_slot + 1
        self.buffers[slot] = (key, _shared_empty(key[1], dtype))
        self.out.add(slot)
        return self.buffers[slot][1]

    def ship(self, view: torch.Tensor):
        ptr = view.untyped_storage().data_ptr()
        for slot, (_, t) in self.buffers.items():
            if t.untyped_storage().data_ptr() == ptr:
                return Lease(view, self.ends.ring, self.worker, self.pid, slot)
        return view


_ACTIVE: _WorkerBuffers | None = None


def attach(ends: RingEnds | None) -> None:
    """Called at the start of each pass of a dataset: inside a DataLoader worker, batch buffers come
    from this worker's ring from now on (buffers still out from an earlier pass are retired)."""
    global _ACTIVE
    info = torch.utils.data.get_worker_info()
    if ends is None or info is None:
        _ACTIVE = None
    elif _ACTIVE is None or _ACTIVE.ends.ring != ends.ring or _ACTIVE.pid != os.getpid():
        _ACTIVE = _WorkerBuffers(ends, info.id)
    else:
        _ACTIVE.retire_out()


def fresh_buffer(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """New memory for a tensor: shared in a DataLoader worker (handing it to the main process then
    copies nothing, as with ``default_collate``), ordinary elsewhere."""
    if torch.utils.data.get_worker_info() is not None:
        return _shared_empty(tuple(shape), dtype)
    return torch.empty(shape, dtype=dtype)


def batch_buffer(shape: tuple[int, ...], dtype: torch.dtype, field: str = "") -> torch.Tensor:
    """Memory for batch ``field`` about to be filled: a reused buffer in a worker that has a ring (ship
    the filled tensor with :func:`ship`), otherwise :func:`fresh_buffer`."""
    if _ACTIVE is not None:
        return _ACTIVE.acquire(shape, dtype, field)
    return fresh_buffer(shape, dtype)


def ship(view: torch.Tensor):
    """What to put in the batch for a tensor filled in :func:`batch_buffer` memory (a view of it)."""
    return _ACTIVE.ship(view) if _ACTIVE is not None else view


class WorkerPids:
    """The process ids of one DataLoader's workers, each recorded by the worker as it starts (pass
    :meth:`record` as ``worker_init_fn``). A loader that gave up on a stopped worker wakes it
    (:meth:`wake`) so that the DataLoader's shutdown can end it: a stopped process holds back the SIGTERM
    it is sent, and the interpreter would wait for it forever on exit."""

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


def _stalled(timeout: float) -> LoaderError:
    return LoaderError(f"no batch from the data-loader workers in {timeout:g} s (data.timeout): a worker is stopped "
                       f"or stuck (e.g. on a network file system read); raise data.timeout if the storage is this slow")


def _worker_error(e: Exception, timeout: float) -> Exception:
    """The error a consumer should see for what a DataLoader raised: a worker's own error as the worker
    raised it (the DataLoader wraps it in a message holding the worker's traceback), a dead or stalled
    worker as a :class:`LoaderError` that says so — also when it died with a batch still queued, whose
    shared memory this process then cannot fetch from it (``EOFError`` or a refused connection)."""
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
    """Raise :func:`_stalled` in the main thread if the block takes longer than ``seconds``. The
    DataLoader's own ``timeout`` covers waiting for a worker's message, but not what follows: receiving
    a batch's shared memory asks the worker that sent it for a file descriptor, and a stopped worker
    never answers. Only the main thread can take the alarm; elsewhere only the DataLoader's timeout holds."""
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
    """A DataLoader whose workers write into reused buffers (see the module notes), iterated as plain
    batches the consumer may keep as long as it likes, each passed through ``finish`` (when given) in
    this process as it is taken: the device decoding of ``mv2mae.data.device``. A worker's failure
    reaches the consumer as the worker's own one-line error (:func:`_worker_error`); a batch that takes
    longer than the loader's ``timeout`` is an error too (:func:`_deadline`). A loader whose workers died
    or stalled is done: a stopped worker is woken (``pids``) and the DataLoader and its iterator dropped
    at once (the frames of the error's traceback would otherwise keep the iterator, and with it the
    DataLoader's watch on its workers' exits, alive), so that its shutdown ends the workers (and the
    failing process can exit)."""

    def __init__(self, loader: torch.utils.data.DataLoader, ring: BatchRing | None, pids: WorkerPids | None = None,
                 finish: Callable[[dict], dict] | None = None):
        self.loader: torch.utils.data.DataLoader | None = loader
        self.ring, self.pids, self.finish = ring, pids, finish
        self.dataset, self.batch_size = loader.dataset, loader.batch_size

    def __iter__(self) -> Iterator:
        if self.loader is None:
            raise LoaderError("this loader's workers failed earlier; build a new loader")
        timeout = self.loader.timeout
        try:
            yield from self._batches(timeout)
        except Exception as e:
            error = _worker_error(e, timeout)
            if isinstance(error, LoaderError):
                if self.pids is not None:
                    self.pids.wake()
                self.loader = None
                traceback.clear_frames(e.__traceback__)
            if error is e:
                raise
            raise error from None

    def _batches(self, timeout: float) -> Iterator:
        if self.ring is not None:
            self.ring.reclaim()  # before the workers start their pass and retire what is still out
        batches = iter(self.loader)
        while True:
            with _deadline(timeout):
                batch = next(batches, _END)
            if batch is _END:
                return
            if self.ring is not None:
                self.ring.reclaim()
                batch = self.ring.hand_out(batch)
            yield batch if self.finish is None else self.finish(batch)


_END = object()
