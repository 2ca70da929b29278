"""``mv2mae pretrain``, ``finetune``, ``eval``, ``probe`` and ``report``: the training-side verbs.

Every verb runs unchanged under ``torchrun`` (one process per GPU, or gloo processes on CPU).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from mv2mae.cli import errors
from mv2mae.cli.choices import ProbeMethod, Protocol, Split
from mv2mae.cli.errors import check_output, fail, reported, write_json

if TYPE_CHECKING:
    from mv2mae.train.distributed import DistEnv

CONFIG_HELP = "Preset name (tiny, ntu60_xsub, …) or a YAML file. Optional with --resume (the run's own config)."
SET_HELP = "Override a config key: --set steps=200 --set optim.base_lr=1e-3 (repeatable)."
RESUME_HELP = "'auto' (newest checkpoint in --out, or a fresh start) or a checkpoint path."


def _run_errors() -> tuple[type[BaseException], ...]:
    """What a run raises that the user can act on (imported when a command runs: torch stays out of
    ``--help``)."""
    from mv2mae.config import ConfigError
    from mv2mae.data.workers import LoaderError
    from mv2mae.model.checkpoint import CheckpointError
    from mv2mae.shards.schema import ContractError
    from mv2mae.train.distributed import RankLost
    from mv2mae.train.loop import TrainingStopped
    from mv2mae.train.preemption import Preempted

    # Preempted: a stop signal, the step saved (exit status 75, for a requeue script)
    return (ConfigError, ContractError, CheckpointError, TrainingStopped, Preempted, LoaderError, RankLost, ValueError,
            FileNotFoundError)


@contextlib.contextmanager
def _process_group(device: str, timeout: float | None = None) -> Iterator[DistEnv]:
    """This process's device (and, under torchrun, its process group), torn down however the block ends."""
    from mv2mae.train.distributed import cleanup, setup

    env = setup(device, timeout)
    try:
        yield env
    finally:
        cleanup()


def _saved_run_config(out: Path, resume: str | None) -> tuple[Path | None, dict | None]:
    """The checkpoint a run resumes from and the run config saved in it (None, None for a fresh start)."""
    from mv2mae.train import checkpoint as ckpt_io

    path = (ckpt_io.latest(out) if resume == "auto" else Path(resume)) if resume else None
    return (path, ckpt_io.load_run(path)["run_config"]) if path is not None else (None, None)


@contextlib.contextmanager
def _rank_named(env: DistEnv) -> Iterator[None]:
    """Under torchrun, whatever ends a rank is one line naming the rank and the cause (one traceback per
    rank, interleaved, hides both); the errors a user can act on keep their exit status. With one process,
    or ``--debug``, errors pass through to :func:`reported` (and bugs keep their traceback)."""
    try:
        yield
    except Exception as e:
        if not env.distributed or errors.DEBUG or isinstance(e, typer.Exit):
            raise
        known = isinstance(e, _run_errors())
        lines = str(e).strip().splitlines()
        cause = str(e) if known else f"{type(e).__name__}: {lines[0] if lines else ''} (--debug shows where)"
        named = cause if cause.startswith(f"rank {env.rank}:") else f"rank {env.rank}: {cause}"
        fail(named, getattr(e, "exit_code", 1))


def _resolve_config(stage: str, config: str | None, sets: list[str], saved: dict | None, out: Path,
                    resume: str | None):
    """The run config: a preset/YAML, or (resuming without --config) the run's saved config."""
    from mv2mae.config import ConfigError, load_config, resolve

    if config:
        return load_config(config, stage, sets)
    if not resume:
        raise ConfigError("--config is required (a preset name or a YAML file) unless resuming a run")
    if saved is None:
        raise ConfigError(f"--resume auto: {out} holds no checkpoint to take the config from; pass --config")
    return resolve(saved, sets)


def _check_same_data(cfg, saved: dict | None, resumed: Path | None, switch_data: bool) -> None:
    """A resumed run trains on the data it started on, unless told to switch (``--switch-data``)."""
    from mv2mae.config import ConfigError

    before = (saved or {}).get("data", {}).get("root")
    if before is None or switch_data or Path(before).resolve() == Path(cfg.data.root).resolve():
        return
    raise ConfigError(f"--resume: {resumed} was trained on {before}, and this command names {cfg.data.root}; "
                      f"pass --switch-data to continue on the new data on purpose, or another --out for a new run")


def _check_fresh(out: Path, resume: str | None) -> None:
    from mv2mae.train import checkpoint as ckpt_io

    if not resume and ckpt_io.latest(out) is not None:
        raise ValueError(f"{out} already holds checkpoints of a run: pass --resume auto to continue it, "
                         f"or choose another --out")


def _run(stage: str, config: str | None, data: Path | None, out: Path, sets: list[str], resume: str | None,
         init: Path | None, switch_data: bool = False) -> None:
    import dataclasses

    from mv2mae.eval.evaluate import validator
    from mv2mae.train.tasks import fit_stage, with_init

    check_output(out)
    with reported(*_run_errors()):
        _check_fresh(out, resume)
        resumed, saved = _saved_run_config(out, resume)
        cfg = _resolve_config(stage, config, sets, saved, out, resume)
        if data is not None:
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(data)))
        _check_same_data(cfg, saved, resumed, switch_data)
        cfg, notes = with_init(cfg, init)
        with _process_group(cfg.loop.device, cfg.loop.collective_timeout) as env, _rank_named(env):
            if env.is_main:
                for note in notes:
                    typer.echo(f"note: {note}", err=True)
            summary = fit_stage(cfg, out, env, resume=resume, pretrain_init=init if stage == "pretrain" else None,
                                make_validator=validator)
            if env.is_main:
                typer.echo(f"{stage} done: {summary['steps']} steps, final loss {summary['final_loss']:.4f}, "
                           f"{summary['skipped']} skipped; checkpoint {summary['checkpoint']}")


SWITCH_DATA = typer.Option(False, "--switch-data", help="Resume on another --data than the run was trained on.")


def pretrain(
    config: str = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    data: Path = typer.Option(None, "--data", help="Preprocessed dataset directory (else data.root)."),
    out: Path = typer.Option(..., "--out", help="Run directory (logs, checkpoints, pictures)."),
    sets: list[str] = typer.Option([], "--set", help=SET_HELP),
    resume: str = typer.Option(None, "--resume", help=RESUME_HELP),
    init: Path = typer.Option(None, "--init", help="Start from this checkpoint's weights (e.g. a converted VideoMAE)."),
    switch_data: bool = SWITCH_DATA,
) -> None:
    """Self-supervised MV2MAE pretraining (self-view + cross-view reconstruction)."""
    _run("pretrain", config, data, out, sets, resume, init, switch_data)


def finetune(
    config: str = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    data: Path = typer.Option(None, "--data", help="Preprocessed dataset directory (else data.root)."),
    init: Path = typer.Option(None, "--init", help="Pretraining checkpoint whose encoder starts the classifier."),
    out: Path = typer.Option(..., "--out", help="Run directory."),
    sets: list[str] = typer.Option([], "--set", help=SET_HELP),
    resume: str = typer.Option(None, "--resume", help=RESUME_HELP),
    switch_data: bool = SWITCH_DATA,
) -> None:
    """Supervised finetuning of the encoder with a classification head."""
    _run("finetune", config, data, out, sets, resume, init, switch_data)


# the test-time options eval and probe share (defaults: what the checkpoint's run was trained with)
TEST_DATA = typer.Option(None, "--data", help="Dataset directory (default: the one it was trained on).")
TEST_PROTOCOL = typer.Option(None, "--protocol", help="Protocol (default: the one it was trained on).")
SPLIT_HELP = "Which split to score: test, val (the validation share held out of train) or train."
TEST_CLIPS = typer.Option(None, "--clips", help="Temporal clips per video (default: the run's data.eval_clips).")
TEST_CROPS = typer.Option(None, "--crops", help="Spatial crops per clip (default: data.eval_crops).")
TEST_BATCH = typer.Option(16, "--batch-size", help="Clips per batch.")
TEST_WORKERS = typer.Option(None, "--workers", help="Loader processes (default: data.workers).")
TEST_DEVICE = typer.Option("auto", "--device", help="auto (cuda if available), cpu, cuda or cuda:N.")


def eval_(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A finetuning checkpoint."),
    data: Path = TEST_DATA,
    protocol: Protocol = TEST_PROTOCOL,
    split: Split = typer.Option(Split.test, "--split", help=SPLIT_HELP),
    out: Path = typer.Option(None, "--out", help="Where results.json and confusion.png go (default: RUN/eval-PROTOCOL)."),
    clips: int = TEST_CLIPS,
    crops: int = TEST_CROPS,
    batch_size: int = TEST_BATCH,
    workers: int = TEST_WORKERS,
    device: str = TEST_DEVICE,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out even when it holds files an evaluation "
                                                              "did not write."),
) -> None:
    """Multi-clip × multi-crop testing: accuracy per camera and fused, top-1/5, confusion matrix. The results are
    written beside --out and put in its place when complete."""
    _eval(checkpoint, data, protocol and protocol.value, split.value, out, clips, crops, batch_size, workers, device,
          overwrite)


def probe(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Any checkpoint (pretraining or finetuning)."),
    data: Path = TEST_DATA,
    protocol: Protocol = TEST_PROTOCOL,
    method: ProbeMethod = typer.Option(ProbeMethod.knn, "--method", help="Linear classifier or k nearest "
                                                                         "neighbours on the frozen features."),
    out: Path = typer.Option(None, "--out", help="Default: RUN/probe-METHOD-PROTOCOL."),
    clips: int = TEST_CLIPS,
    crops: int = TEST_CROPS,
    batch_size: int = TEST_BATCH,
    workers: int = TEST_WORKERS,
    device: str = TEST_DEVICE,
) -> None:
    """Frozen-feature linear probe or k-NN: train on the train cameras, score the test cameras."""
    _probe(checkpoint, data, protocol and protocol.value, method.value, out, clips, crops, batch_size, workers, device)


def report(
    pretrain_run: Path = typer.Option(..., "--pretrain", help="Pretraining run directory."),
    finetune_run: Path = typer.Option(..., "--finetune", help="Finetuning run directory."),
    eval_dir: Path = typer.Option(..., "--eval", help="Directory holding results.json and confusion.png."),
    out: Path = typer.Option(..., "--out", help="Markdown report to write (pictures go beside it)."),
    timings: Path = typer.Option(None, "--timings", help="'stage seconds' lines (written by make demo)."),
    probe_dir: list[Path] = typer.Option([], "--probe", help="Probe result directories to include."),
    scratch_eval: Path = typer.Option(None, "--scratch-eval", help="Eval directory of the same finetune "
                                      "from a random encoder: the report then says what pretraining added."),
) -> None:
    """Write a Markdown report: loss curves, a reconstruction, accuracy per camera and fused."""
    from mv2mae.eval.report import write_report

    with reported(FileNotFoundError, ValueError, KeyError):
        path = write_report(pretrain_run, finetune_run, eval_dir, out, timings, probe_dir, scratch_eval)
    typer.echo(f"report written to {path}")


def _test_data(ckpt: dict, data: Path | None, protocol: str | None, clips: int | None, crops: int | None,
               workers: int | None):
    """The checkpoint's own data settings (dataset, protocol, stride, test clips × crops), overridden by the
    options the user gave."""
    from mv2mae.eval.evaluate import data_from_checkpoint

    return data_from_checkpoint(ckpt, str(data) if data else None, protocol, eval_clips=clips, eval_crops=crops,
                                workers=workers)


def _eval(checkpoint: Path, data: Path | None, protocol: str | None, split: str, out: Path | None,
          clips: int | None, crops: int | None, batch_size: int, workers: int | None, device: str,
          overwrite: bool = False) -> None:
    from mv2mae.data.fingerprint import fingerprint
    from mv2mae.eval.evaluate import EVAL_FILES, evaluate, training_protocol, write_results
    from mv2mae.eval.guards import require_dataset_classes, require_finite_weights
    from mv2mae.model.checkpoint import load_checkpoint, load_classifier
    from mv2mae.shards.atomic import check_publishable, holds_only
    from mv2mae.shards.schema import read_index

    with reported(*_run_errors()), _process_group(device) as env, _rank_named(env):
        ckpt = load_checkpoint(checkpoint)
        model = load_classifier(ckpt, str(checkpoint)).to(env.device).eval()
        require_finite_weights(model, str(checkpoint))
        d = _test_data(ckpt, data, protocol, clips, crops, workers)
        out = out or checkpoint.parent.parent / f"eval-{d.protocol}"
        if env.is_main:
            check_output(out)
            check_publishable(out, holds_only(EVAL_FILES), overwrite)
        classes = require_dataset_classes(ckpt.get("classes"), model.num_classes, read_index(d.root).classes,
                                          str(checkpoint), d.root)
        results, videos = evaluate(model, d, env, classes, split=split, batch_size=batch_size)
        results["training"] = training_protocol(ckpt, checkpoint)
        if env.is_main:
            results["fingerprint"] = fingerprint(d.root)
            path, table, png = write_results(results, videos, out, overwrite)
            _print_results(results, f"{checkpoint} on {d.protocol}/{split}")
            typer.echo(f"the model was {results['training']['summary']}")
            typer.echo(f"results: {path}  per-video predictions: {table}  confusion matrix: {png}")


def _probe(checkpoint: Path, data: Path | None, protocol: str | None, method: str, out: Path | None,
           clips: int | None, crops: int | None, batch_size: int, workers: int | None, device: str) -> None:
    from mv2mae.data.fingerprint import fingerprint
    from mv2mae.eval.guards import require_finite_weights
    from mv2mae.eval.probe import run_probe
    from mv2mae.model.checkpoint import load_checkpoint, load_feature_model
    from mv2mae.shards.schema import read_index

    with reported(*_run_errors()), _process_group(device) as env, _rank_named(env):
        ckpt = load_checkpoint(checkpoint)
        model = load_feature_model(ckpt, str(checkpoint)).to(env.device).eval()
        require_finite_weights(model, str(checkpoint))  # a probe fits its own head: the classes are the data's
        d = _test_data(ckpt, data, protocol, clips, crops, workers)
        out = out or checkpoint.parent.parent / f"probe-{method}-{d.protocol}"
        if env.is_main:
            check_output(out)
        classes = read_index(d.root).classes
        results = run_probe(model, d, env, [method], len(classes), batch_size=batch_size)[method]
        results["classes"] = classes
        if env.is_main:
            results["fingerprint"] = fingerprint(d.root)
            write_json(out / "results.json", results)
            _print_results(results, f"{method} probe of {checkpoint} on {d.protocol}")
            typer.echo(f"results: {out / 'results.json'}")


def _print_results(results: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("videos of", "count", "top-1 %", "top-5 %"):
        table.add_column(col, justify="right" if col != "videos of" else "left")
    for cam, acc in results["per_camera"].items():
        table.add_row(f"camera {cam}", str(acc["count"]), f"{100 * acc['top1']:.1f}", f"{100 * acc['top5']:.1f}")
    table.add_row("all test videos", str(results["videos"]["count"]), f"{100 * results['videos']['top1']:.1f}",
                  f"{100 * results['videos']['top5']:.1f}")
    table.add_row("fused (groups)", str(results["fused"]["count"]), f"{100 * results['fused']['top1']:.1f}",
                  f"{100 * results['fused']['top5']:.1f}")
    if "mean_class_top1" in results:
        table.add_row("mean over classes", "", f"{100 * results['mean_class_top1']:.1f}", "")
    table.add_row("chance", "", f"{100 * results['chance_top1']:.1f}", "")
    console = Console()
    console.print(table)
    if "per_class" in results and "classes" in results:
        per_class = Table(title="per class (videos)")
        for col in ("class", "count", "top-1 %"):
            per_class.add_column(col, justify="left" if col == "class" else "right")
        for name, acc in zip(results["classes"], results["per_class"], strict=True):
            per_class.add_row(name, str(acc["count"]), "-" if acc["top1"] is None else f"{100 * acc['top1']:.1f}")
        console.print(per_class)


def register(app: typer.Typer, bench_app: typer.Typer, shards_app: typer.Typer) -> None:
    app.command("pretrain")(pretrain)
    app.command("finetune")(finetune)
    app.command("eval")(eval_)
    app.command("probe")(probe)
    app.command("report")(report)
