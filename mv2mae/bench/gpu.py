"""``mv2mae bench gpu`` (``make gpu-check``): every path that only runs on CUDA, in one run of ~8 minutes.

Sections, cheapest and most telling first (a time budget skips what is left rather than overrun):

* ``checks``: a real batch of the ``decode_on=cpu`` loader is pinned and channels-last, keeps its
  strides across the copy to the device, and the model's normalisation runs there with the CPU's
  values; the ``decode_on=device`` batch of the same samples (nvJPEG) is within a stated distance of it;
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
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console
from rich.markdown import Markdown

from mv2mae.bench.loader import prepare
from mv2mae.bench.model import PEAK_BF16, ModelBenchSettings, gpu_rows_table, gpu_section
from mv2mae.config import resolve
from mv2mae.data import DataConfig, build_pretrain_loader
from mv2mae.data.pixels import channels_last
from mv2mae.model.config import ModelConfig
from mv2mae.model.embed import ToNormalizedClip
from mv2mae.train import checkpoint as ckpt_io
from mv2mae.train.distributed import setup
from mv2mae.train.logs import read_log
from mv2mae.train.loop import Trainer
from mv2mae.train.tasks import PretrainTask, ShardSource

NO_CUDA = "no CUDA device"
RESUME_RTOL = 1e-2  # CUDA, bf16 + compile: relative loss difference allowed after resuming; CPU: exact
# nvJPEG against libjpeg-turbo: both are exact JPEG decoders up to their IDCT and chroma upsampling,
# which may differ by a few levels at sharp colour edges; on average well under one level
NVJPEG_MEAN_LEVELS = 1.0
WARMUP_LOG_STEPS = 20  # loader runs: log windows up to this step (compilation, workers starting) not counted


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
    result["resume"] = kill_and_resume(data, s, device, work / "resume")
    result["loader"] = loader_runs(data, s, device, work / "loader", deadline)
    result["model"] = gpu_section(s.bench, device, compile_backend=s.compile_backend, deadline=deadline)
    result["seconds"] = round(time.monotonic() - t0, 1)
    result["passed"] = bool(result["checks"]["ok"] and result["resume"]["ok"])
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
            with _quiet(run_dir):
                Trainer(cfg, PretrainTask(cfg), ShardSource(cfg, env, "pretrain"), run_dir, env).fit()
            logged = read_log(run_dir)
            steady = [r for r in logged if r["step"] > WARMUP_LOG_STEPS] or logged
            rows.append(row | {"wall_s": round(time.monotonic() - start, 1),
                               "samples_per_s": statistics.median(r["samples_per_s"] for r in steady),
                               "data_wait": statistics.median(r["data_wait"] for r in steady),
                               "final_loss": logged[-1]["loss"]})
    return rows


@contextlib.contextmanager
def _quiet(run_dir: Path):
    """A run's console output (config, progress) into its folder rather than over the check's tables."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "console.txt", "w") as sink, contextlib.redirect_stdout(sink), \
            contextlib.redirect_stderr(sink):
        yield


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


def print_gpu_check(r: dict[str, Any]) -> None:
    console = Console()
    console.print(Markdown(markdown(r)))
    console.print(gpu_rows_table(r["model"]))
    console.print(f"gpu check {'passed' if r['passed'] else 'FAILED'} in {r['seconds']} s")
