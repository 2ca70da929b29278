"""The ``mv2mae`` command line: one Typer app whose sub-commands are the verbs a user types.

This package is the top floor of the project: it may import anything, and nothing imports it. Each
module here holds a few verbs and a ``register`` that adds them to the app; the command bodies import
torch and the heavy parts of the project when they run, so that ``mv2mae --help`` stays instant.
"""

from __future__ import annotations

import typer

from mv2mae import __version__
from mv2mae.cli import bench, errors, experiment, model, preprocess, shards, synth, train

app = typer.Typer(
    name="mv2mae",
    help="MV2MAE: multi-view video masked autoencoders — synth, preprocess, pretrain, finetune, eval.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_show_locals=False,
)
bench_app = typer.Typer(help="Benchmarks: each prints a table and writes its figures with --json.",
                        no_args_is_help=True)
shards_app = typer.Typer(help="Inspect and maintain preprocessed shard directories.", no_args_is_help=True)

# in the order the verbs appear in --help
for _module in (synth, model, preprocess, train, experiment, shards, bench):
    _module.register(app, bench_app, shards_app)
app.add_typer(shards_app, name="shards")
app.add_typer(bench_app, name="bench")


@app.callback(invoke_without_command=True)
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error."),
) -> None:
    errors.DEBUG = debug
    if version:
        typer.echo(__version__)
        raise typer.Exit()


def main() -> None:
    app()
