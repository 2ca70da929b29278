"""Stopping a run on a scheduler's signal with a checkpoint of the step it reached.

Cluster schedulers end jobs with SIGTERM (SLURM: at the time limit and on preemption, SIGKILL after a grace
period) and can send SIGUSR1 ahead of the time limit (``#SBATCH --signal``); a user presses Ctrl-C (SIGINT).
While :class:`StopRequests` is installed those signals only record that a stop was asked for: the loop
finishes the step it is in, all ranks agree on the stop after every step host to host (a CPU all-reduce,
:mod:`mv2mae.train.loop`), rank 0 writes the checkpoint of that step, and the command exits with :data:`PREEMPTED_EXIT`,
which a requeue script reads as "saved, run me again with ``--resume auto``". A second Ctrl-C stops at
once (the last checkpoint written is intact).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
# sysexits' EX_TEMPFAIL: a temporary failure, the user is invited to retry (what a requeue script looks for)
PREEMPTED_EXIT = 75


class Preempted(Exception):  # noqa: N818 - the name says what happened, not that it is an error
    """The run stopped on a signal after saving the step it reached (raised, so that no caller takes a
    stopped run for a finished one); the message is the one line to show."""

    exit_code = PREEMPTED_EXIT


class StopRequests:
    """A context that records the stop signals (:attr:`signum`, 0 = none) instead of letting them end the
    process; outside the main thread (where Python cannot install handlers) it records nothing."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._record) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # pressed twice: stop now
        self.signum = signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name
