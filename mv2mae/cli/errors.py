"""How every command reports a failure the user can act on: one red line on stderr, exit status 1.

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


def fail(message: str) -> NoReturn:
    # escaped: a message quotes paths and values, whose brackets rich would otherwise read as markup
    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


@contextlib.contextmanager
def reported(*errors: type[BaseException]) -> Iterator[None]:
    """Turn ``errors`` raised inside the block into :func:`fail` (a KeyError shows its key's message)."""
    try:
        yield
    except errors as e:
        fail(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e))


def write_json(path: Path | None, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` (creating its folder); nothing when ``path`` is None."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj, indent=2) + "\n")
