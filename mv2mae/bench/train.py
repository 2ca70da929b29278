"""``mv2mae bench train``: pretraining samples/s end to end, beside the same steps with no data path at all.

A loader mechanism (a transport, a worker count, ``data.decode_on``) pays only as far as it moves training,
so this measures training. It makes synthetic shards (:func:`mv2mae.bench.loader.prepare`) and, round after
round, runs two pretrainings of ``--steps`` steps with the same config (the tiny preset's geometry unless
told otherwise):

* **end to end**: :func:`mv2mae.train.tasks.fit_stage`, what ``mv2mae pretrain`` runs: the loader's
  workers read the shards, decode, crop and compute the motion weights while the loop trains;
* **compute only**: the same loop (:class:`mv2mae.train.loop.Trainer`, the same task and steps: forward,
  backward, clipping, optimizer, schedule, logging) fed one real batch of that loader held in memory.

Both rates come from the runs' ``log.jsonl`` the same way: samples over the wall time between the log line
that ends the warm-up (workers starting, first allocations) and the last one. The ratio end to end /
compute only is the share of the model's speed the data path lets through (1.0: training never waits);
``data_wait`` is the loop's share of step time spent waiting for the next batch, over the same windows.
The rounds alternate which run goes first, so that a change in the machine's load falls on both; the
figures are medians over rounds. The load average and CPU model are recorded beside them, and the CPU time
per trained sample of the training process and of the loader's workers (whole runs), which a busy machine
distorts less than the wall-clock rates.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from mv2mae.bench.loader import prepare
from mv2mae.bench.model import load_average
from mv2mae.config import RunConfig, load_config
from mv2mae.data.fingerprint import cpu
from mv2mae.train.distributed import DistEnv, setup
from mv2mae.train.logs import read_log
from mv2mae.train.loop import Trainer
from mv2mae.train.tasks import PretrainTask, ShardSource, fit_stage


@dataclass
class TrainBenchSettings:
    config: str = "tiny"  # preset or YAML of the pretraining stage
    sets: tuple[str, ...] = ()  # --set overrides, applied after the benchmark's own
    workers: int | None = None  # loader processes (None: the config's data.workers)
    decode_on: str | None = None  # cpu | device | auto (None: the config's data.decode_on)
    steps: int = 40
    warmup_steps: int = 10  # steps before the measured window (it starts at the first log line from there)
    log_every: int = 5
    rounds: int = 2
    raw_size: tuple[int, int] = (160, 120)  # `make demo`'s rendering
    groups: int = 6
    short_side: int = 80  # `make demo`'s --size

    def __post_init__(self) -> None:
        if not 0 < self.warmup_steps < self.steps or min(self.rounds, self.log_every) < 1:
            raise ValueError(f"need 0 < warm-up steps ({self.warmup_steps}) < steps ({self.steps}) and at least one "
                             f"round (got {self.rounds})")


class HeldBatch:
    """The compute-only run's data: one batch, handed to the loop again at every step (what ``Trainer``
    asks of a source: ``batches``, ``samples_per_epoch``, ``describe``)."""

    def __init__(self, batch: dict[str, Any], samples_per_epoch: int) -> None:
        self.batch, self.samples = batch, samples_per_epoch

    def batches(self, start: int) -> Iterator[dict[str, Any]]:
        while True:
            yield self.batch

    def samples_per_epoch(self) -> int:
        return self.samples

    def describe(self) -> str:
        return f"data: one batch of {len(self.batch['video'])} held in memory (compute only)"


def bench_config(s: TrainBenchSettings, shards: Path) -> RunConfig:
    """The pretraining config both runs use: ``s.config`` on ``shards`` (every camera, every group), ``s.steps``
    steps, one checkpoint and picture at the end (outside the measured window), then ``s.sets``."""
    sets = [f"data.root={shards}", "data.protocol=all", f"schedule.steps={s.steps}",
            f"schedule.warmup_steps={s.warmup_steps}", f"loop.log_every={s.log_every}", f"loop.ckpt_every={s.steps}",
            "loop.recon_every=0"]
    if s.workers is not None:
        sets.append(f"data.workers={s.workers}")
    if s.decode_on is not None:
        sets.append(f"data.decode_on={s.decode_on}")
    return load_config(s.config, "pretrain", [*sets, *s.sets])


def held_batch(cfg: RunConfig, env: DistEnv) -> HeldBatch:
    """The first batch of the run's own training stream (decoded where ``data.decode_on`` decodes it)."""
    source = ShardSource(cfg, env, "pretrain")
    with contextlib.closing(source.batches(0)) as stream:
        return HeldBatch(next(stream), source.samples_per_epoch())


def measured(run_dir: Path, s: TrainBenchSettings, batch: int, wall_s: float) -> dict[str, Any]:
    """samples/s and data wait of a finished run, from its log.jsonl, over the steps after the warm-up."""
    logged = {r["step"]: r for r in read_log(run_dir)}  # step 1, every log_every-th and the last one
    first, last = logged[min(step for step in logged if step >= s.warmup_steps)], logged[s.steps]
    windows = [r for step, r in logged.items() if step > first["step"]]
    return {"samples_per_s": round((last["step"] - first["step"]) * batch / (last["time"] - first["time"]), 2),
            "data_wait": round(statistics.fmean(r["data_wait"] for r in windows), 4),
            "final_loss": last["loss"], "wall_s": round(wall_s, 1)}


@contextlib.contextmanager
def console_into(run_dir: Path) -> Iterator[None]:
    """A run's own output (its config, progress lines) into ``run_dir/console.txt``, not over a benchmark's
    tables (``bench train`` and ``bench gpu``)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "console.txt", "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def one_run(kind: str, cfg: RunConfig, env: DistEnv, run_dir: Path, s: TrainBenchSettings,
            held: HeldBatch) -> dict[str, Any]:
    """``kind`` "end_to_end" (fit_stage from the shards) or "compute_only" (the loop on ``held``), with the
    CPU time of this process and of the loader's workers (reaped when the run ends) per trained sample:
    what a busy machine distorts less than the wall clock."""
    shutil.rmtree(run_dir, ignore_errors=True)
    start, cpu_before = time.monotonic(), _cpu_seconds()
    with console_into(run_dir):
        if kind == "end_to_end":
            fit_stage(cfg, run_dir, env)
        else:
            Trainer(cfg, PretrainTask(cfg), held, run_dir, env).fit()
    batch = cfg.global_batch(env.world_size)
    used = [after - before for before, after in zip(cpu_before, _cpu_seconds(), strict=True)]
    return measured(run_dir, s, batch, time.monotonic() - start) | {
        "process_cpu_ms_per_sample": round(1e3 * used[0] / (s.steps * batch), 2),
        "worker_cpu_ms_per_sample": round(1e3 * used[1] / (s.steps * batch), 2)}


def _cpu_seconds() -> tuple[float, float]:
    """User + system CPU seconds of this process and of its reaped children so far."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def run_bench(work: Path, s: TrainBenchSettings) -> dict[str, Any]:
    """Paired rounds of the end-to-end and compute-only runs in ``work``; the figures as a dict."""
    work.mkdir(parents=True, exist_ok=True)
    data = prepare(work, s.raw_size, s.groups, min(os.cpu_count() or 1, 8), s.short_side)
    cfg = bench_config(s, Path(data["shards"]))
    env = setup(cfg.loop.device)
    held = held_batch(cfg, env)
    result: dict[str, Any] = {
        "benchmark": "train", "settings": asdict(s), "data": data, "device": str(env.device),
        "cpu": cpu().get("model"), "cpus": os.cpu_count(), "torch": torch.__version__,
        "torch_threads": cfg.loop.threads or torch.get_num_threads(), "batch_size": cfg.optim.batch_size,
        "workers": cfg.data.workers, "decode_on": cfg.data.decode_on,
        "decodes_on_device": cfg.data.decodes_on_device(env.device.type), "load_average_before": load_average()}
    rounds = []
    for i in range(s.rounds):
        order = ("end_to_end", "compute_only") if i % 2 == 0 else ("compute_only", "end_to_end")
        row: dict[str, Any] = {"round": i + 1, "first": order[0]}
        for kind in order:
            row[kind] = one_run(kind, cfg, env, work / "runs" / f"round{i + 1}-{kind}", s, held)
        row["ratio"] = round(row["end_to_end"]["samples_per_s"] / row["compute_only"]["samples_per_s"], 3)
        rounds.append(row)
    result["rounds"] = rounds
    result["load_average_after"] = load_average()
    figures = ("samples_per_s", "data_wait", "process_cpu_ms_per_sample", "worker_cpu_ms_per_sample")
    for kind in ("end_to_end", "compute_only"):
        result[kind] = {key: statistics.median(r[kind][key] for r in rounds) for key in figures}
    result["ratio"] = statistics.median(r["ratio"] for r in rounds)
    return result


def print_report(r: dict[str, Any]) -> None:
    s = r["settings"]
    table = Table(title=f"mv2mae bench train — {s['config']}, batch {r['batch_size']}, {s['steps']} steps "
                        f"({s['warmup_steps']} warm-up), {r['workers']} worker(s), decode_on={r['decode_on']} "
                        f"({'device' if r['decodes_on_device'] else 'workers'}), "
                        f"{r['device']} ({r['torch_threads']} threads)",
                  caption=f"e2e: end to end (workers + loop), compute: one batch held in memory; CPU ms: per "
                          f"sample, training process + workers. {r['cpu']} × {r['cpus']}; load average before "
                          f"{r['load_average_before']}, after {r['load_average_after']}")
    # end to end, then compute only: samples/s, data wait, CPU-ms per sample (training process + workers)
    for col in ("round", "e2e /s", "wait", "e2e CPU ms", "compute /s", "CPU ms", "ratio"):
        table.add_column(col, justify="right")
    for name, e2e, comp, ratio in [(str(row["round"]), row["end_to_end"], row["compute_only"], row["ratio"])
                                   for row in r["rounds"]] + [("median", r["end_to_end"], r["compute_only"], r["ratio"])]:
        table.add_row(name, f"{e2e['samples_per_s']:.1f}", f"{e2e['data_wait']:.1%}",
                      f"{e2e['process_cpu_ms_per_sample']:.0f}+{e2e['worker_cpu_ms_per_sample']:.0f}",
                      f"{comp['samples_per_s']:.1f}", f"{comp['process_cpu_ms_per_sample']:.0f}", f"{ratio:.3f}")
    Console().print(table)
