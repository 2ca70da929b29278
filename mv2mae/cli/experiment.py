"""``mv2mae experiment``: run a controlled study (a plan of arms × seeds) and write its report."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

from mv2mae.cli.errors import reported


def experiment(
    plan: str = typer.Option("transfer", "--plan", help="A shipped plan name (transfer, crossview) or a plan YAML file."),
    out: Path = typer.Option(..., "--out", help="Study folder: runs/, ledger.jsonl, RESULTS.md, results.json, plots."),
    scale: str = typer.Option("default", "--scale", help="A scale the plan defines (e.g. gpu): what it means is "
                                                           "written in the plan."),
    device: str = typer.Option("auto", "--device", help="auto (cuda if available), cpu, cuda or cuda:N."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the arms, seeds and stages (done or to do); run nothing."),
    verify: bool = typer.Option(False, "--verify", help="Re-run one stage of the finished study in --out from scratch "
                                "(in a temporary folder, with its dataset and pretraining) and compare its numbers and "
                                "data digests with the committed ones; exit 1 when they differ."),
    stage: str = typer.Option(None, "--stage", help="With --verify: runs/ARM/seedS/STAGE (default: the first probe "
                              "of the untrained encoder's arm, which needs no pretraining)."),
    compare: Path = typer.Option(None, "--compare", help="Another finished study (its folder or results.json): print "
                                 "where its data digests, per-seed numbers and fingerprint differ from --out's; exit 1 "
                                 "when digests or numbers differ."),
    tolerance: float = typer.Option(0.0, "--tolerance", min=0.0, help="With --verify or --compare: the largest absolute difference "
                                    "of a number (accuracy in [0, 1], loss) still called reproduced; 0 = bit-equal."),
) -> None:
    """Pretrain, probe (linear, k-NN) and finetune every arm of a plan under one budget and several seeds.

    Resumable: re-run the same command after an interruption; finished stages are not recomputed."""
    from mv2mae.config import ConfigError
    from mv2mae.experiment.plan import PlanError, load_plan
    from mv2mae.experiment.runner import StudyError

    with reported(PlanError, ConfigError, StudyError):
        the_plan = load_plan(plan, scale)
    if dry_run:
        _print_plan(the_plan, out)
        return
    if verify:
        _verify(the_plan, out, stage, tolerance, device)
        return
    if compare is not None:
        _compare(out, compare, tolerance)
        return
    from mv2mae.cli.train import _process_group, _run_errors
    from mv2mae.experiment.study import run_plan
    from mv2mae.preprocess.adapters import AdapterError
    from mv2mae.preprocess.pipeline import PreprocessError

    options = (["--plan", plan, "--out", str(out)] + (["--scale", scale] if scale != "default" else [])
               + (["--device", device] if device != "auto" else []))
    command = " ".join(shlex.quote(a) for a in ["mv2mae", "experiment", *options])
    with reported(PlanError, StudyError, PreprocessError, AdapterError, *_run_errors()), _process_group(device) as env:
        path = run_plan(the_plan, out, env, command, log=lambda line: typer.echo(f"experiment: {line}", err=True))
    typer.echo(f"report written to {path}")


def _verify(plan, out: Path, stage: str | None, tolerance: float, device: str) -> None:
    from mv2mae.cli.train import _process_group, _run_errors
    from mv2mae.experiment.runner import StudyError
    from mv2mae.experiment.verify import format_verification, verify
    from mv2mae.preprocess.adapters import AdapterError
    from mv2mae.preprocess.pipeline import PreprocessError

    with reported(StudyError, PreprocessError, AdapterError, *_run_errors()), _process_group(device) as env:
        result = verify(plan, out, env, stage, tolerance, log=lambda line: typer.echo(f"verify: {line}", err=True))
    typer.echo("\n".join(format_verification(result)))
    if not result.ok:
        raise typer.Exit(1)


def _compare(out: Path, other: Path, tolerance: float) -> None:
    from mv2mae.experiment.runner import StudyError
    from mv2mae.experiment.verify import compare_studies, format_verification

    with reported(StudyError):
        result = compare_studies(out, other, tolerance)
    typer.echo("\n".join(format_verification(result)))
    if not result.ok:
        raise typer.Exit(1)


def _print_plan(plan, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from mv2mae.experiment.runner import read_done, run_folder, stage_names

    table = Table(title=f"{plan.title} ({plan.source}, scale {plan.scale}): pretraining {plan.steps} steps")
    for col in ("arm", "group", "seeds", "evaluations", "pretraining overrides", "stages done"):
        table.add_column(col)
    for arm in plan.arms:
        stages = [(seed, s) for seed in arm.seeds for s in stage_names(plan, arm)]
        done = sum(read_done(run_folder(out, arm, seed) / s) is not None for seed, s in stages)
        sets = " ".join(arm.sets) if arm.pretrain else "no pretraining"
        table.add_row(arm.name, arm.group, ",".join(map(str, arm.seeds)), ",".join(arm.evals), sets,
                      f"{done}/{len(stages)}")
    Console().print(table)


def register(app: typer.Typer, bench_app: typer.Typer, shards_app: typer.Typer) -> None:
    app.command("experiment")(experiment)
