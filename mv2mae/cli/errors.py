"""How every command reports a failure the user can act on: one red line on stderr, exit status 1 (2 for
a usage error).

Commands name the error types they expect (imported where the command runs, so ``--help`` stays
light); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

# ``mv2mae --debug``: errors keep their traceback (set by the root command)
DEBUG = False


def parse_pair(text: str, sep: str, what: str) -> tuple[int, int]:
    """``"320x240"`` -> ``(320, 240)`` (``sep`` "x"), refused as a usage error naming option ``what``."""
    parts = text.lower().split(sep)
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise typer.BadParameter(f"{what} must look like A{sep}B with whole numbers, got {text!r}")
    return int(parts[0]), int(parts[1])


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
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj, indent=2) + "\n")
