"""Run logs: ``log.jsonl`` (one line per logged step), TensorBoard events, a rich progress bar."""

from __future__ import annotations

import json
import math
import os
import sys
import threading
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from mv2mae.shards.atomic import WriteError, write_atomic, writing

LOG_FILE = "log.jsonl"


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_log(run_dir: str | Path, last_step: int) -> None:
    """Drop lines past ``last_step`` (written by a run that died after its last checkpoint)."""
    path = Path(run_dir) / LOG_FILE
    if path.is_file():
        keep = [json.dumps(r) for r in read_log(run_dir) if r.get("step", 0) <= last_step]
        write_atomic(path, "".join(line + "\n" for line in keep))


def _quiet_event_writer(args: threading.ExceptHookArgs) -> None:
    """TensorBoard's writer thread dies on a failed write (a full disk) and hands the error to the next
    ``add_scalar`` in the training thread, which reports it in one line: its traceback is not printed."""
    if isinstance(args.exc_value, OSError) and type(args.thread).__module__.startswith("tensorboard."):
        return
    threading.__excepthook__(args)


class RunLogger:
    """Rank 0 writes; other ranks get a logger that does nothing (so the loop has no ``if rank``)."""

    def __init__(self, run_dir: Path, enabled: bool, total_steps: int, start_step: int, title: str) -> None:
        self.enabled = enabled
        self.console = Console(stderr=True)
        self.tb = None
        self.progress = None
        if not enabled:
            return
        self.path, self.tb_dir = run_dir / LOG_FILE, run_dir / "tb"
        with writing(self.path):
            run_dir.mkdir(parents=True, exist_ok=True)
            truncate_log(run_dir, start_step)
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:  # imported here: it takes seconds to load, and only the main rank writes events
            from torch.utils.tensorboard import SummaryWriter

            with writing(self.tb_dir):
                self.tb = SummaryWriter(str(self.tb_dir), purge_step=start_step + 1)
            self._excepthook, threading.excepthook = threading.excepthook, _quiet_event_writer
        except ImportError:  # tensorboard is a dependency; a broken install must not stop training
            self.console.print("[yellow]tensorboard unavailable: no event files will be written[/]")
        self.progress = Progress(TextColumn(f"[bold]{title}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=self.console, disable=not sys.stderr.isatty())
        self.task = self.progress.add_task(title, total=total_steps, completed=start_step, info="")
        self.progress.start()

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._append(json.dumps(record) + "\n")
        if self.tb is not None:
            with writing(self.tb_dir, "TensorBoard's event file there ends at the last record it could write"):
                for key, value in record.items():
                    if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                        tag = f"val/{key[4:]}" if key.startswith("val_") else f"train/{key}"
                        self.tb.add_scalar(tag, value, record["step"])
        info = f"loss {record['loss']:.4f} lr {record['lr']:.2e} {record['samples_per_s']:.1f} samples/s"
        self.progress.update(self.task, completed=record["step"], info=info)
        if self.progress.disable:  # no live bar (a log file, CI): one plain line per logged step
            self.console.print(f"step {record['step']}/{self.progress.tasks[0].total}  {info}  "
                               f"data wait {100 * record['data_wait']:.0f}%", highlight=False, soft_wrap=True)

    def _append(self, line: str) -> None:
        """One whole line or none: a write cut short (a full disk) is taken back before the error."""
        size = os.fstat(self.fd).st_size
        with writing(self.path, "the log keeps its complete lines"):
            try:
                rest = memoryview(line.encode())
                while rest:  # a short write is followed by one that says why
                    rest = rest[os.write(self.fd, rest):]
            except OSError:
                os.ftruncate(self.fd, size)
                raise

    def print(self, text: str) -> None:
        if self.enabled:
            self.console.print(text, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if not self.enabled:
            return
        self.progress.stop()
        os.close(self.fd)
        if self.tb is not None:
            try:  # a warning, not an error: the run's own error (if any) is the one to show
                with writing(self.tb_dir, "its last events are lost"):
                    self.tb.close()
            except WriteError as e:
                self.console.print(f"[yellow]warning: {e}[/]", highlight=False, soft_wrap=True)
            threading.excepthook = self._excepthook
