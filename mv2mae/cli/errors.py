"""How every command reports a failure the user can act on: one red line on stderr, exit status 1 (2 for
a usage error).

Commands name the error types they expect (imported where the command runs, so ``--help`` stays
light); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from mv2mae.shards.atomic import write_atomic

# ``mv2mae --debug``: errors keep their traceback (set by the root command)
DEBUG = False


def parse_pair(text: str, sep: str, what: str) -> tuple[int, int]:
    """``"320x240"`` -> ``(320, 240)`` (``sep`` "x"), refused as a usage error naming option ``what``."""
    parts = text.lower().split(sep)
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise typer.BadParameter(f"{what} must look like A{sep}B with whole numbers, got {text!r}")
    return int(parts[0]), int(parts[1])


def check_output(path: Path, folder: bool = True, option: str = "--out") -> None:
    """Refuse, before any work (exit status 2), an output that cannot be written: a file where a folder goes
    (or the reverse), a parent that is a file, a place this process may not write (probed by creating
    and removing a file in the nearest folder that exists)."""
    if path.exists() and path.is_dir() != folder:
        fail(f"{option} {path} is a {'file' if folder else 'folder'}; it must name a "
             f"{'folder' if folder else 'file'}", 2)
    place = path if folder and path.is_dir() else path.parent
    while not place.exists() and place != place.parent:
        place = place.parent
    if not place.is_dir():
        fail(f"{option} {path}: {place} is a file, so nothing can be written under it", 2)
    try:
        with tempfile.TemporaryFile(dir=place, prefix=".mv2mae-write-check"):
            pass
    except OSError as e:
        fail(f"{option} {path}: cannot write in {place} ({e.strerror or e})", 2)


def fail(message: str, code: int = 1) -> NoReturn:
    # escaped: a message quotes paths and values, whose brackets rich would otherwise read as markup
    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def reported(*errors: type[BaseException]) -> Iterator[None]:
    """Turn ``errors`` raised inside the block into :func:`fail` (a KeyError shows its key's message), with
    exit status 2 for usage errors (an error class whose ``exit_code`` is 2: a config key, an option, a
    protocol the data cannot satisfy) and 1 for the rest; with ``--debug`` they keep their traceback."""
    try:
        yield
    except errors as e:
        if DEBUG:
            raise
        fail(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e), getattr(e, "exit_code", 1))


def write_json(path: Path | None, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` (creating its folder); nothing when ``path`` is None."""
    if path is not None:
        write_atomic(path, json.dumps(obj, indent=2) + "\n")
