"""``mv2mae bench gpu`` (``make gpu-check``): every path that only runs on CUDA, in one run of ~8 minutes.

Sections, cheapest and most telling first (a time budget skips what is left rather than overrun):

* ``checks``: a real batch of the ``decode_on=cpu`` loader is pinned and channels-last, keeps its
  strides across the copy to the device, and the model's normalisation runs there with the CPU's
  values; the ``decode_on=device`` batch of the same samples (nvJPEG) is within a stated distance of it;
* ``syncs``: a short pretraining per ``decode_on`` under ``torch.cuda.set_sync_debug_mode("warn")``: the
  synchronising calls torch reports, counted per step, must all fall on read steps (log, checkpoint: the
  loop's module notes); those of the data path (fetching a step's batch, decoding it on the device) are
  reported beside them (:class:`SyncLog` says how each is attributed). Not measurable on the CPU, where
  ``tests/test_host_sync.py`` counts the host reads instead: there the same runs train and report so;
* ``resume``: a short bf16 + ``torch.compile`` pretraining killed (SIGKILL) after a checkpoint and resumed
  continues the uninterrupted run's losses, within :data:`RESUME_RTOL` on CUDA (bf16 rounding and the
  non-deterministic atomics of some backward kernels), exactly on the CPU;
* ``loader``: a 200-step vit_small pretraining for each ``decode_on`` × 2, 4, 8 workers on synthetic shards
  made on the spot: samples/s and the share of the step spent waiting for data;
* ``model``: ``bench model``'s GPU rows: bf16 autocast, eager and compiled, vit_small and vit_base, 1 and 2
  views, batch 32: step time, samples/s, MFU against the dense bf16 peak of :data:`PEAK_BF16`, memory.

Figures go to JSON and a Markdown table. Without CUDA it says "no CUDA device" and exits 0;
``--device cpu --tiny`` runs the same code at toy sizes on the CPU (the tests do), so the first run on a
GPU is not the first run of this code. On the CPU there is no bf16 autocast in training and the
resumed run is not compiled (inductor's C++ build is minutes on a small box); the model rows compile
with the ``eager`` backend.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console
from rich.markdown import Markdown

from mv2mae.bench.loader import prepare
from mv2mae.bench.model import PEAK_BF16, ModelBenchSettings, gpu_rows_table, gpu_section
from mv2mae.bench.train import console_into
from mv2mae.config import resolve
from mv2mae.data import DataConfig, build_pretrain_loader
from mv2mae.data.pixels import channels_last
from mv2mae.model.config import ModelConfig
from mv2mae.model.embed import ToNormalizedClip
from mv2mae.train import checkpoint as ckpt_io
from mv2mae.train.distributed import DistEnv, setup
from mv2mae.train.logs import read_log
from mv2mae.train.loop import DataSource, Trainer, scheduled
from mv2mae.train.tasks import PretrainTask, ShardSource

NO_CUDA = "no CUDA device"
RESUME_RTOL = 1e-2  # CUDA, bf16 + compile: relative loss difference allowed after resuming; CPU: exact
# nvJPEG against libjpeg-turbo: both are exact JPEG decoders up to their IDCT and chroma upsampling,
# which may differ by a few levels at sharp colour edges; on average well under one level
NVJPEG_MEAN_LEVELS = 1.0
WARMUP_LOG_STEPS = 20  # loader runs: log windows up to this step (compilation, workers starting) not counted
SYNC_WARNING = "called a synchronizing CUDA operation"  # torch's warning under set_sync_debug_mode("warn")
NOT_MEASURABLE = "not measurable on CPU (tests/test_host_sync.py counts the host reads there)"


@dataclass
class GpuCheckSettings:
    """What each section runs; :meth:`tiny` is the CPU smoke version of the same."""

    model: dict[str, Any] = field(default_factory=lambda: {"preset": "vit_small"})  # loader runs' model
    resume_model: dict[str, Any] = field(default_factory=lambda: dict(
        preset="vit_tiny", frames=8, image_size=64, patch=16, embed_dim=128, depth=4, num_heads=4,
        decoder_dim=64, decoder_depth=2, decoder_heads=2, cross_decoder_depth=2))  # tiny.yaml's model
    raw_size: tuple[int, int] = (320, 240)
    groups: int = 12
    short_side: int = 160
    stride: int = 4
    batch: int = 32
    loader_steps: int = 200
    workers: tuple[int, ...] = (2, 4, 8)
    resume_steps: int = 30
    resume_kill_after: int = 15  # checkpoint step after which the run is killed
    sync_steps: int = 12  # syncs runs (resume_model): read steps 1, 5, 8, 10, 12; the other 7 must not sync
    sync_log_every: int = 5
    sync_ckpt_every: int = 8
    bench: ModelBenchSettings = field(default_factory=lambda: ModelBenchSettings(warmup=3, steps=10))
    compile_backend: str = "inductor"
    budget_s: float = 420.0  # sections not started by then are skipped; a started one finishes (<= ~8 min in all)

    @classmethod
    def tiny(cls) -> GpuCheckSettings:
        model = dict(preset="vit_tiny", frames=4, image_size=32, patch=8, depth=1, decoder_depth=1,
                     cross_decoder_depth=1, embed_dim=48, num_heads=3, decoder_dim=48, decoder_heads=3)
        overrides = {k: v for k, v in model.items() if k != "preset"}
        return cls(model=model, resume_model=model, raw_size=(96, 72), groups=2, short_side=48, stride=2,
                   batch=2, loader_steps=4, workers=(1,), resume_steps=6, resume_kill_after=2,
                   bench=ModelBenchSettings(gpu_batch=2, warmup=0, steps=1, gpu_presets=("vit_tiny",),
                                            overrides=overrides),
                   compile_backend="eager", budget_s=600.0)


def run_gpu_check(s: GpuCheckSettings, device: torch.device, work: Path, data: Path | None = None) -> dict[str, Any]:
    """Every section on ``device``; ``data`` is a preprocessed dataset to use instead of making one."""
    deadline = time.monotonic() + s.budget_s
    work.mkdir(parents=True, exist_ok=True)
    cuda = device.type == "cuda"
    if data is None:
        data = Path(prepare(work, s.raw_size, s.groups, min(os.cpu_count() or 1, 8), s.short_side)["shards"])
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if cuda else str(device), "torch": torch.__version__,
        "cpus": os.cpu_count(), "data": str(data), "budget_s": s.budget_s,
        "peak_bf16_table_tflop_per_s": {k: v / 1e12 for k, v in PEAK_BF16.items()}}
    t0 = time.monotonic()
    model = ModelConfig.preset(s.model["preset"], **{k: v for k, v in s.model.items() if k != "preset"})
    result["checks"] = device_checks(data, model, s.batch, s.stride, device)
    result["syncs"] = sync_runs(data, s, device, work / "syncs")
    result["resume"] = kill_and_resume(data, s, device, work / "resume")
    result["loader"] = loader_runs(data, s, device, work / "loader", deadline)
    result["model"] = gpu_section(s.bench, device, compile_backend=s.compile_backend, deadline=deadline)
    result["seconds"] = round(time.monotonic() - t0, 1)
    result["passed"] = bool(result["checks"]["ok"] and result["syncs"]["ok"] and result["resume"]["ok"])
    return result


def device_checks(data: Path, model: ModelConfig, batch: int, stride: int, device: torch.device) -> dict[str, Any]:
    """Pinned channels-last uint8 batches, their copy to the device, the model's normalisation there, and
    device decoding of the same samples against the workers'."""
    cuda = device.type == "cuda"
    options = DataConfig(root=str(data), protocol="all", stride=stride, workers=2)
    cpu_batch = next(iter(build_pretrain_loader(model, replace(options, decode_on="cpu"), batch_size=batch,
                                                seed=0, pin_memory=cuda, device=device)))
    video = cpu_batch["video"]
    moved = video.to(device, non_blocking=True)
    normalize = ToNormalizedClip(model)
    on_device = normalize.to(device)(moved)
    normalised_diff = float((on_device.cpu() - normalize.cpu()(video)).abs().max())
    dev_batch = next(iter(build_pretrain_loader(model, replace(options, decode_on="device"), batch_size=batch,
                                                seed=0, pin_memory=cuda, device=device)))
    levels = (dev_batch["video"].cpu().int() - video.int()).abs().float()
    out = {"pinned": video.is_pinned() if cuda else None,
           "channels_last": channels_last(video) is not None,
           "channels_last_on_device": channels_last(moved) is not None,
           "normalised_on": str(on_device.device), "normalised_max_diff_vs_cpu": normalised_diff,
           "device_decode": {"video_on": str(dev_batch["video"].device), "same_keys": cpu_batch["key"] == dev_batch["key"],
                             "max_levels": float(levels.max()), "mean_levels": float(levels.mean()),
                             "mean_levels_allowed": NVJPEG_MEAN_LEVELS}}
    decode = out["device_decode"]
    out["ok"] = bool((out["pinned"] is not False) and out["channels_last"] and out["channels_last_on_device"]
                     and on_device.device.type == device.type and normalised_diff <= 1e-5
                     and decode["video_on"].startswith(device.type) and decode["same_keys"]
                     and decode["mean_levels"] <= NVJPEG_MEAN_LEVELS)
    return out


class SyncLog:
    """The synchronising calls torch reports while :meth:`watching` (``set_sync_debug_mode("warn")``), each
    attributed to the phase in progress when torch emits it, as ``(phase, step)``:

    * ``("setup", 0)``: before the first batch is asked for (building the model, the optimiser, the log);
    * ``("data", k)``: while the source fetches step k's batch (:class:`PhasedSource`): the DataLoader's
      hand-over and, with ``decode_on=device``, nvJPEG decoding and clip motion in this process. The loop
      asks for step k's batch at the start of step k, so this comes after step k-1's work and reads;
    * ``("step", k)``: from the moment step k has its batch until step k+1's is asked for: the copy to the
      device, forward, backward, clip, AdamW, EMA, then the loop's reads, log line and checkpoint of step k
      (the last step's phase runs to the end of the run).

    A warning raised in another thread (the DataLoader's pin-memory thread) counts in the phase the main
    thread is in; its site names the thread. A site is the Python line that made the call (``file:line``)."""

    def __init__(self) -> None:
        self.phase: tuple[str, int] = ("setup", 0)
        self.events: list[tuple[str, int, str]] = []  # (phase, step, site)
        self.forward = warnings.showwarning  # where other warnings go (taken again on entering recording)

    def record(self, message: Warning | str, category: type[Warning], filename: str, lineno: int, *rest: Any) -> None:
        if SYNC_WARNING not in str(message):
            self.forward(message, category, filename, lineno, *rest)
            return
        thread = threading.current_thread()
        where = "" if thread is threading.main_thread() else f" ({thread.name})"
        self.events.append((*self.phase, f"{Path(filename).name}:{lineno}{where}"))

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Sync debug mode "warn" on (CUDA), its warnings recorded, then off."""
        with self.recording():
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield
            finally:
                torch.cuda.set_sync_debug_mode("default")

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Every warning that says :data:`SYNC_WARNING` recorded (not only the first of each line, as by
        default); other warnings go where they went."""
        with warnings.catch_warnings():
            warnings.filterwarnings("always", message=SYNC_WARNING)
            self.forward, warnings.showwarning = warnings.showwarning, self.record
            yield

    def count(self, phase: str, step: int) -> int:
        return sum(1 for p, k, _ in self.events if (p, k) == (phase, step))

    def sites(self, phase: str, steps: set[int]) -> dict[str, int]:
        return dict(Counter(site for p, k, site in self.events if p == phase and k in steps).most_common())


class PhasedSource:
    """A training data source that tells ``log`` which step's batch it is fetching and when the step has it
    (``accum`` micro-batches a step)."""

    def __init__(self, source: DataSource, log: SyncLog, accum: int) -> None:
        self.source, self.log, self.accum = source, log, accum

    def samples_per_epoch(self) -> int | None:
        return self.source.samples_per_epoch()

    def describe(self) -> str:
        return self.source.describe()

    def batches(self, start: int) -> Iterator[Any]:
        with contextlib.closing(self.source.batches(start)) as inner:
            for n in itertools.count(start):
                step = n // self.accum + 1
                self.log.phase = ("data", step)
                batch = next(inner, None)
                if batch is None:
                    return
                self.log.phase = ("step", step)
                yield batch


def read_steps(steps: int, log_every: int, ckpt_every: int) -> tuple[list[int], list[int]]:
    """The steps a pretraining run (no validation, no stop) logs, and all those it reads the device on
    (logged or checkpointed): the rule of the loop's module notes."""
    marks = {k: scheduled(k, steps, log_every, ckpt_every) for k in range(1, steps + 1)}
    return [k for k, (logged, _) in marks.items() if logged], [k for k, m in marks.items() if any(m)]


def sync_runs(data: Path, s: GpuCheckSettings, device: torch.device, work: Path) -> dict[str, Any]:
    """A ``sync_steps`` pretraining of ``resume_model`` per ``decode_on`` (bf16 on CUDA, not compiled): on
    CUDA, the synchronising calls of every step (:class:`SyncLog`); the section fails if a step that is not
    a read step synchronised, or if a read step showed none (the count would then prove nothing). The data
    path's calls are reported, not failed: the claim checked is the loop's (the issue's "a training step"),
    and a decoder that hands its images back after a stream sync costs the host its head start on the
    device however the loop is written; the figure and its sites say whether it does. torch flags only the
    syncs it makes itself (a tensor read, a copy to the host, ``nonzero`` and the like, a synchronize call):
    one inside another library's CUDA code (torchvision's nvJPEG) or in ``torch.distributed`` goes unseen.
    On the CPU the same runs train and must log on the same steps."""
    cuda = device.type == "cuda"
    logged, reads = read_steps(s.sync_steps, s.sync_log_every, s.sync_ckpt_every)
    env = setup(str(device))
    runs = [_sync_run(data, s, device, env, work / decode_on, decode_on, logged, reads)
            for decode_on in ("cpu", "device")]
    return {"measured": cuda, "syncs": None if cuda else NOT_MEASURABLE, "steps": s.sync_steps,
            "read_steps": reads, "runs": runs, "ok": all(run["ok"] for run in runs)}


def _sync_run(data: Path, s: GpuCheckSettings, device: torch.device, env: DistEnv, run_dir: Path, decode_on: str,
              logged: list[int], reads: list[int]) -> dict[str, Any]:
    cuda = device.type == "cuda"
    cfg = resolve(_run_config(data, s, s.resume_model, s.sync_steps, device,
                              data={"workers": s.workers[0], "decode_on": decode_on},
                              loop={"log_every": s.sync_log_every, "ckpt_every": s.sync_ckpt_every}))
    log = SyncLog()
    source = PhasedSource(ShardSource(cfg, env, "pretrain"), log, cfg.optim.accum_steps)
    start = time.monotonic()
    with console_into(run_dir), (log.watching() if cuda else contextlib.nullcontext()):
        Trainer(cfg, PretrainTask(cfg), source, run_dir, env).fit()
    records = read_log(run_dir)
    out: dict[str, Any] = {"decode_on": decode_on, "wall_s": round(time.monotonic() - start, 1),
                           "final_loss": records[-1]["loss"], "logged_steps": [r["step"] for r in records]}
    problems = [] if out["logged_steps"] == logged else [f"logged steps {out['logged_steps']}, expected {logged}"]
    if not cuda:
        per_step = [{"step": k, "read": k in reads, "step_syncs": None, "data_syncs": None}
                    for k in range(1, s.sync_steps + 1)]
        return out | {"per_step": per_step, "problems": problems, "ok": not problems}
    report = sync_report(log, s.sync_steps, reads)
    problems += report["problems"]
    return out | report | {"problems": problems, "ok": not problems}


def sync_report(log: SyncLog, steps: int, reads: list[int]) -> dict[str, Any]:
    """Each step's synchronising calls, in the step and in its data path; the problems: a step that is not
    in ``reads`` synchronised (named with the sites), or a read step showed none (nothing was seen)."""
    per_step = [{"step": k, "read": k in reads, "step_syncs": log.count("step", k), "data_syncs": log.count("data", k)}
                for k in range(1, steps + 1)]
    unread = set(range(1, steps + 1)) - set(reads)
    synced = [row["step"] for row in per_step if row["step"] in unread and row["step_syncs"]]
    problems = [f"steps {synced} synchronised though they read nothing, at {log.sites('step', unread)}"] if synced else []
    if not all(row["step_syncs"] for row in per_step if row["read"]):
        problems.append("a read step showed no synchronising call: the warnings were not seen, nothing is proven")
    return {"per_step": per_step, "setup_syncs": log.count("setup", 0), "unread_steps_that_synced": synced,
            "data_syncs_on_unread_steps": sum(row["data_syncs"] for row in per_step if row["step"] in unread),
            "data_sites": log.sites("data", set(range(1, steps + 1))), "problems": problems}


def _run_config(root: Path, s: GpuCheckSettings, model: dict[str, Any], steps: int, device: torch.device,
                **sections: dict[str, Any]) -> dict[str, Any]:
    """A pretraining run config as a plain dict (what ``--config`` YAML holds, minus ``stages``); ``sections``
    update its sections."""
    raw = {"stage": "pretrain", "model": dict(model),
           "data": {"root": str(root), "protocol": "all", "stride": s.stride},
           "optim": {"batch_size": s.batch}, "schedule": {"steps": steps, "warmup_steps": max(1, steps // 10)},
           "loop": {"device": str(device), "log_every": 1, "ckpt_every": steps, "amp": True}}
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return raw


def loader_runs(data: Path, s: GpuCheckSettings, device: torch.device, work: Path, deadline: float) -> list[dict]:
    """A short pretraining per ``decode_on`` × worker count: median samples/s and data-wait share of the
    log windows after the first :data:`WARMUP_LOG_STEPS` steps."""
    env = setup(str(device))
    rows = []
    for workers in s.workers:
        for decode_on in ("cpu", "device"):
            row: dict[str, Any] = {"decode_on": decode_on, "workers": workers, "steps": s.loader_steps}
            if time.monotonic() > deadline:
                rows.append(row | {"skipped": "time budget"})
                continue
            run_dir = work / f"{decode_on}-w{workers}"
            cfg = resolve(_run_config(data, s, s.model, s.loader_steps, device,
                                      data={"workers": workers, "decode_on": decode_on},
                                      loop={"log_every": 10, "ckpt_every": 10 * s.loader_steps}))
            start = time.monotonic()
            with console_into(run_dir):
                Trainer(cfg, PretrainTask(cfg), ShardSource(cfg, env, "pretrain"), run_dir, env).fit()
            logged = read_log(run_dir)
            steady = [r for r in logged if r["step"] > WARMUP_LOG_STEPS] or logged
            rows.append(row | {"wall_s": round(time.monotonic() - start, 1),
                               "samples_per_s": statistics.median(r["samples_per_s"] for r in steady),
                               "data_wait": statistics.median(r["data_wait"] for r in steady),
                               "final_loss": logged[-1]["loss"]})
    return rows


def kill_and_resume(data: Path, s: GpuCheckSettings, device: torch.device, work: Path) -> dict[str, Any]:
    """An uninterrupted run beside one killed with SIGKILL once its checkpoint at ``resume_kill_after`` is
    written and then resumed (``--resume auto``), both ``mv2mae pretrain`` processes: the resumed losses
    must continue the uninterrupted ones (bf16 + compile on CUDA)."""
    cuda = device.type == "cuda"
    raw = _run_config(data, s, s.resume_model, s.resume_steps, device,
                      loop={"ckpt_every": s.resume_kill_after, "compile": cuda, "keep_last": 3,
                            "threads": 0 if cuda else 1})
    work.mkdir(parents=True, exist_ok=True)
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump({**raw, "stages": {"pretrain": {}}}, sort_keys=False))
    reference = work / "reference"

    def launch(out: Path, *extra: str) -> subprocess.Popen:
        out.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "mv2mae.cli", "pretrain", "--config", str(config), "--out", str(out), *extra]
        return subprocess.Popen(cmd, stdout=open(out / "console.txt", "a"), stderr=subprocess.STDOUT,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})

    start = time.monotonic()
    ref, victim = launch(reference), launch(work / "killed")
    while victim.poll() is None and ckpt_io.latest(work / "killed") is None:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    killed = victim.wait() == -signal.SIGKILL
    killed_at = ckpt_io.latest(work / "killed")
    resumed = launch(work / "killed", "--resume", "auto")
    codes = (ref.wait(), resumed.wait())
    out: dict[str, Any] = {"steps": s.resume_steps, "compiled": cuda, "bf16": cuda,
                           "killed": killed, "killed_after_checkpoint": killed_at.name if killed_at else None,
                           "exit_codes": list(codes), "wall_s": round(time.monotonic() - start, 1),
                           "rtol": RESUME_RTOL if cuda else 0.0}
    a = {r["step"]: r["loss"] for r in read_log(reference)}
    b = {r["step"]: r["loss"] for r in read_log(work / "killed")}
    after = sorted(k for k in a if k > s.resume_kill_after)
    if codes != (0, 0) or not after or any(k not in b for k in after):
        return out | {"ok": False, "error": f"runs failed or logs incomplete (see {work}/*/console.txt)"}
    if not killed or killed_at is None or killed_at.name != ckpt_io.step_name(s.resume_kill_after):
        return out | {"ok": False, "error": "the run was not killed right after its first checkpoint"}
    rel = max(abs(b[k] - a[k]) / max(abs(a[k]), 1e-12) for k in after)
    return out | {"compared_steps": [after[0], after[-1]], "max_rel_diff": rel, "ok": rel <= out["rtol"],
                  "losses_reference": [a[k] for k in after], "losses_resumed": [b[k] for k in after]}


def markdown(r: dict[str, Any]) -> str:
    """The short Markdown summary written beside the JSON."""
    lines = [f"# `mv2mae bench gpu` on {r['device']} (torch {r['torch']}, {r['cpus']} CPUs, {r['seconds']} s)", ""]
    c = r["checks"]
    d = c["device_decode"]
    lines += ["| check | result |", "|---|---|",
              f"| pinned batch / channels-last / kept on the device | {c['pinned']} / {c['channels_last']} / "
              f"{c['channels_last_on_device']} |",
              f"| normalised on | {c['normalised_on']} (max diff vs CPU {c['normalised_max_diff_vs_cpu']:.1e}) |",
              f"| decode_on=device vs cpu (video on {d['video_on']}) | max {d['max_levels']:.0f}, mean "
              f"{d['mean_levels']:.3f} levels (allowed mean {d['mean_levels_allowed']}) |"]
    lines += syncs_markdown(r["syncs"])
    rs = r["resume"]
    detail = (f"max relative loss difference {rs['max_rel_diff']:.2e} over steps {rs['compared_steps']} "
              f"(allowed {rs['rtol']})" if "max_rel_diff" in rs else rs.get("error", ""))
    lines.append(f"| kill -9 + resume (bf16 {rs['bf16']}, compile {rs['compiled']}) | "
                 f"{'ok' if rs['ok'] else 'FAILED'}: {detail} |")
    lines += ["", "| decode_on | workers | samples/s | data wait |", "|---|---|---|---|"]
    for row in r["loader"]:
        if "samples_per_s" in row:
            lines.append(f"| {row['decode_on']} | {row['workers']} | {row['samples_per_s']:.1f} | {row['data_wait']:.1%} |")
        else:
            lines.append(f"| {row['decode_on']} | {row['workers']} | {row['skipped']} | |")
    m = r["model"]
    peak = m["peak"]
    lines += ["", f"Model, bf16 autocast, uint8 input, batch {m['batch']}; MFU against "
              + (f"{peak['tflop_per_s']:.0f} TFLOP/s ({peak['entry']}: {peak['kind']})" if peak else "an unknown peak"),
              "", "| preset | views | compile | step ms | samples/s | MFU | peak GiB |", "|---|---|---|---|---|---|---|"]
    for row in m["rows"]:
        head = f"| {row['preset']} | {row['views']} | {'yes' if row['compiled'] else 'no'} |"
        if "step_s" not in row:
            lines.append(f"{head} {row.get('skipped') or row.get('error')} | | | |")
            continue
        mfu = f"{row['mfu']:.1%}" if row["mfu"] else "n/a"
        mem = f"{row['peak_memory_gib']:.1f}" if row["peak_memory_gib"] is not None else "n/a"
        lines.append(f"{head} {1e3 * row['step_s']:.1f} | {row['samples_per_s']:.1f} | {mfu} | {mem} |")
    return "\n".join(lines) + "\n"


def syncs_markdown(sy: dict[str, Any]) -> list[str]:
    """The ``syncs`` rows: per run, the synchronising calls of each step (``*``: a read step) and of the data
    path, and the steps that synchronised though they read nothing (must be none)."""
    lines = []
    for run in sy["runs"]:
        head = f"| host-device syncs, decode_on={run['decode_on']}, {sy['steps']} steps |"
        if not sy["measured"]:
            lines.append(f"{head} {'; '.join(run['problems']) or 'ran'}: {sy['syncs']} |")
            continue
        steps = " ".join(f"{row['step']}{'*' if row['read'] else ''}:{row['step_syncs']}" for row in run["per_step"])
        data = " ".join(str(row["data_syncs"]) for row in run["per_step"])
        verdict = "FAILED: " + "; ".join(run["problems"]) if run["problems"] else "ok: only read steps (*) synchronised"
        sites = f"; data path sites {run['data_sites']}" if run["data_sites"] else ""
        lines.append(f"{head} {verdict}; per step (step:calls) {steps}; data path per step {data}{sites} |")
    return lines


def print_gpu_check(r: dict[str, Any]) -> None:
    console = Console()
    console.print(Markdown(markdown(r)))
    console.print(gpu_rows_table(r["model"]))
    console.print(f"gpu check {'passed' if r['passed'] else 'FAILED'} in {r['seconds']} s")
