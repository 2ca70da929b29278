"""``mv2mae synth`` and ``mv2mae bench synth`` (filled in by the synth generator work)."""

from __future__ import annotations

import typer


def register(app: typer.Typer, bench_app: typer.Typer, shards_app: typer.Typer) -> None:
    pass
