"""The ``mv2mae`` command line: one Typer app whose sub-commands are the verbs a user types.

Each verb lives in its own module under :mod:`mv2mae.commands`; modules import torch and friends
inside the command bodies so that ``mv2mae --help`` stays instant.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="mv2mae",
    help="MV2MAE: multi-view video masked autoencoders — synth, preprocess, pretrain, finetune, eval.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
bench_app = typer.Typer(help="Benchmarks: each prints a table and writes its figures with --json.",
                        no_args_is_help=True)
shards_app = typer.Typer(help="Inspect and maintain preprocessed shard directories.", no_args_is_help=True)

# Verb modules, in the order they appear in --help.
COMMAND_MODULES = [
    "mv2mae.commands.synth",
    "mv2mae.commands.model",
    "mv2mae.commands.preprocess",
    "mv2mae.commands.train",
    "mv2mae.commands.shards",
]


def _register_all() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app, bench_app, shards_app)
    # A group with no built command yet is simply absent from --help.
    if shards_app.registered_commands:
        app.add_typer(shards_app, name="shards")
    if bench_app.registered_commands:
        app.add_typer(bench_app, name="bench")


_register_all()


@app.callback(invoke_without_command=True)
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    if version:
        from mv2mae import __version__

        typer.echo(__version__)
        raise typer.Exit()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
