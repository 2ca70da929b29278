"""The one training loop, shared by pretraining and finetuning. Read it top to bottom: set-up, the step,
then what happens every N steps.

A :class:`Task` says what is trained (model, loss, pictures) and a :class:`DataSource` where its batches
come from (:mod:`mv2mae.train.tasks` has both, for pretraining and finetuning; tests hand the loop their
own); the loop owns everything else: device and DDP, step-based warmup + cosine, fused AdamW, bf16
autocast on CUDA, gradient accumulation (DDP gradient sync only on the last micro-step), clipping,
non-finite step skipping, logs, and atomic checkpoints with exact resume. Batches come straight from the
source's iterator (a DataLoader prefetches and pins memory, or decodes on the device); the loop copies
what is not there yet to the device. Video arrives as uint8 pixels: the model normalises it.

Every micro-step reseeds the global RNGs and the masking generator from (seed, step, micro-shard),
where micro-shard = rank × accum_steps + micro. A step is therefore a function of the weights, the
batch and those three numbers only: resuming replays the same randomness, and a 2-rank run draws the
same masks and dropout as one process accumulating the same global batch in two micro-steps.

The host reads the device only on *read steps*: log steps (every ``loop.log_every``, the first and the
last), checkpoint steps and validation steps (:func:`scheduled`), and, on rank 0, picture steps
(``loop.recon_every``: the picture is drawn from the step's batch). Between them a step queues its work
and goes on, as nanoGPT's loop does; its scalars stay device tensors and are reduced over ranks with one stacked
all-reduce at the read. So:

- a step with a non-finite loss or gradient norm on any rank is skipped on every rank, exactly, without
  a host read: the flag is reduced (MAX) on the device and handed to the fused AdamW as ``found_inf``
  (the weights, moments and step count stay as they were) and masks the EMA's update;
- ``loop.max_bad_steps`` is enforced when the counters are read: the run stops at the first read step at
  or after the step where that many consecutive steps were skipped ("N consecutive non-finite steps by
  step S"); every checkpoint step is a read step, so no checkpoint is written past that point;
- a stop signal (:mod:`mv2mae.train.preemption`) takes effect after the step in progress: the ranks agree
  on it after every step host to host (one MAX of a CPU int over a gloo group, no device read), that step
  becomes a read step and is saved, and the run ends with :class:`Preempted`.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import yaml
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mv2mae.config import RunConfig
from mv2mae.data.fingerprint import record_run_fingerprint
from mv2mae.model.checkpoint import FORMAT, CheckpointError, load_state_strict, write_checkpoint
from mv2mae.shards.atomic import write_atomic
from mv2mae.train import checkpoint as ckpt_io
from mv2mae.train.distributed import (
    DistEnv,
    HostMax,
    RankLost,
    all_reduce_max,
    all_reduce_mean,
    barrier,
    lost_rank,
)
from mv2mae.train.logs import RunLogger
from mv2mae.train.optim import build_optimizer, build_scheduler, resolve_steps
from mv2mae.train.preemption import PREEMPTED_EXIT, Preempted, StopRequests, signal_name
from mv2mae.train.runlock import run_lock

# optimiser param-group entries that come from the run config (not from a resumed checkpoint)
_CONFIG_GROUP_KEYS = ("weight_decay", "betas", "lr_scale", "initial_lr")
# param-group entries that choose the optimiser's kernel: this run's, whatever the checkpoint says
_KERNEL_GROUP_KEYS = ("fused", "foreach", "capturable")


@dataclass
class StepResult:
    loss: torch.Tensor  # scalar to back-propagate (mean over the micro-batch)
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # extra scalars to log
    samples: int = 0


class Task(Protocol):
    """What is trained: the model, one micro-batch's loss, what a checkpoint carries besides the weights,
    and a picture of the model at work (or None)."""

    name: str

    def build_model(self) -> nn.Module: ...

    def train_step(self, model: nn.Module, batch: Any, generator: torch.Generator) -> StepResult: ...

    def checkpoint_extra(self) -> dict[str, Any]: ...

    def snapshot(self, model: nn.Module, batch: Any, step: int, run_dir: Path) -> Path | None: ...


class DataSource(Protocol):
    """This rank's endless stream of micro-batches, starting after ``start`` consumed ones (a resumed run)."""

    def batches(self, start: int) -> Iterator[Any]: ...

    def samples_per_epoch(self) -> int | None: ...

    def describe(self) -> str: ...


# validation: model -> metrics with at least "top1" (the same on every rank); see mv2mae.eval.evaluate.validator
Validate = Callable[[nn.Module], dict[str, float]]


class TrainingStopped(RuntimeError):
    """The run cannot go on (too many non-finite steps); the last good checkpoint is intact."""


def step_seed(seed: int, step: int, shard: int) -> int:
    """A well-mixed 63-bit seed for (seed, step, micro-shard) (splitmix64 finaliser)."""
    x = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + shard * 0x94D049BB133111EB) % 2**64
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) % 2**64
    return (x ^ (x >> 32)) % 2**63


def reseed(seed: int, device: torch.device) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


class Trainer:
    """With ``validate`` (finetuning), the run is scored on held-out data every ``finetune.val_every`` steps
    and ``best-val-top1.pt`` keeps the best; without it, ``lowest-train-loss.pt`` keeps the lowest loss. Either
    way ``last-step.pt`` is the last step."""

    def __init__(self, cfg: RunConfig, task: Task, data: DataSource, run_dir: str | Path,
                 env: DistEnv, resume: str | None = None, validate: Validate | None = None) -> None:
        self.cfg, self.task, self.data, self.env, self.validate = cfg, task, data, env, validate
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.resumed_from: Path | None = None
        self.steps, self.warmup = resolve_steps(cfg, data.samples_per_epoch(), env.world_size)
        self.amp_dtype = torch.bfloat16 if (cfg.loop.amp and env.device.type == "cuda") else None

    # ------------------------------------------------------------------ set-up
    def _build(self) -> None:
        cfg, env = self.cfg, self.env
        if cfg.loop.threads and env.device.type == "cpu":
            torch.set_num_threads(cfg.loop.threads)
        reseed(cfg.loop.seed, env.device)  # identical initial weights on every rank
        self.raw_model = self.task.build_model().to(env.device)
        model: nn.Module = self.raw_model
        if env.distributed:
            model = DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
        self.ddp = model if env.distributed else None
        self.model = torch.compile(model) if cfg.loop.compile else model
        self.optimizer = build_optimizer(self.raw_model, cfg, env.world_size)
        self.scheduler = build_scheduler(self.optimizer, cfg, env.world_size, self.steps, self.warmup)
        # bf16 needs no loss scaling; a (disabled) scaler's state is kept so checkpoints have one layout
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=False)
        # timm's EMA of the weights (finetuning with finetune.ema_decay > 0): updated after every applied step
        ema = cfg.finetune.ema_decay if cfg.stage == "finetune" else 0.0
        self.ema = ModelEmaV3(self.raw_model, decay=ema) if ema > 0 else None
        self.step, self.micro_batches, self.best_loss = 0, 0, math.inf
        self.any_rank_stop = HostMax(env.host_group)  # the stop signal any rank holds (0: none)
        self.best_val = {"top1": -math.inf, "ema_top1": -math.inf}

    def _restore(self) -> None:
        path = self._resume_path()
        if path is None:
            return
        state = ckpt_io.load_run(path, map_location=self.env.device)
        if state["stage"] != self.cfg.stage:
            raise CheckpointError(f"{path}: a {state['stage']} checkpoint cannot resume a {self.cfg.stage} run")
        try:
            load_state_strict(self.raw_model, state["model"], str(path))
        except CheckpointError:
            raise self._config_mismatch(path, state["config"]) from None
        # the checkpoint gives the optimiser its moments; the run's config keeps the hyper-parameters
        # (a resumed run may change them), and the schedule is rebuilt from the config rather than
        # loaded: it is a pure function of the step, so an unchanged config resumes exactly and a
        # longer --set steps=… gets its own cosine instead of the finished one's minimum lr
        fresh = [{k: g[k] for k in _CONFIG_GROUP_KEYS if k in g} for g in self.optimizer.param_groups]
        # and the kernel: a CPU checkpoint written before AdamW was fused everywhere says fused=False, and only
        # the fused kernel takes the loop's found_inf (set before loading, so the moments land where it wants)
        for saved, group in zip(state["optimizer"]["param_groups"], self.optimizer.param_groups, strict=True):
            saved.update({k: group[k] for k in _KERNEL_GROUP_KEYS if k in group})
        self.optimizer.load_state_dict(state["optimizer"])
        for group, values in zip(self.optimizer.param_groups, fresh, strict=True):
            group.update(values)
        self.scaler.load_state_dict(state["scaler"])
        ckpt_io.set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.micro_batches = int(state["data"]["micro_batches"])
        self.best_loss = float(state["metrics"].get("best_loss", math.inf))
        self.best_val = {k: float(state["metrics"].get(f"best_val_{k}", v)) for k, v in self.best_val.items()}
        if self.ema is not None:
            if "ema" not in state:
                raise CheckpointError(f"{path}: holds no EMA weights to resume finetune.ema_decay > 0 with")
            load_state_strict(self.ema.module, state["ema"], f"{path} (ema)")
        self.resumed_from = path

    def _config_mismatch(self, path: Path, saved: dict[str, Any]) -> CheckpointError:
        """The model keys in which this run's config differs from the checkpoint's (why its weights do
        not fit), as the error to show."""
        mine = self.raw_model.cfg.to_dict()
        diffs = [f"model.{k}: checkpoint {saved.get(k)!r}, config {v!r}" for k, v in mine.items() if saved.get(k) != v]
        return CheckpointError(f"{path}: its weights do not fit this run's model ({'; '.join(diffs) or 'same config'}); "
                               f"resume without --config to use the run's own config, or --set those keys")

    def _resume_path(self) -> Path | None:
        if not self.resume:
            return None
        if self.resume == "auto":
            return ckpt_io.latest(self.run_dir)
        return Path(self.resume)

    def describe(self) -> str:
        cfg, w = self.cfg, self.env.world_size
        peak, low, _ = cfg.scaled_lr(w)
        return (f"{cfg.stage} · {self.steps} steps ({self.warmup} warmup) · device {self.env.device} × {w} · "
                f"global batch {cfg.global_batch(w)} = {cfg.optim.batch_size} × accum {cfg.optim.accum_steps} "
                f"× world {w} · lr {peak:.3e} (= {cfg.optim.base_lr:g} × {cfg.global_batch(w)}/256), "
                f"min lr {low:.3e}")

    def fit(self) -> dict[str, Any]:
        """Train to the last step; a stop signal ends the run after a step is saved, as :class:`Preempted`.
        The run folder is locked by rank 0 from before its first write to the end."""
        self._build()
        self._restore()
        with run_lock(self.run_dir, self.env.is_main), StopRequests() as self.stops:
            log = self._open_log()
            # closing the stream ends the loader's workers, however the loop ends (an error, a stop)
            try:
                with contextlib.closing(self.data.batches(self.micro_batches)) as batches:
                    return self._loop(batches, log)
            except RuntimeError as e:
                lost = lost_rank(e, self.cfg.loop.collective_timeout)
                if lost is None:
                    raise
                raise RankLost(f"{lost}; last checkpoint: {ckpt_io.latest(self.run_dir) or 'none written yet'}") from None
            finally:
                log.close()

    def _open_log(self) -> RunLogger:
        """The run's log, after rank 0 has cleared a cut-short checkpoint write and recorded the config."""
        log = RunLogger(self.run_dir, self.env.is_main, self.steps, self.step, self.task.name)
        if self.env.is_main:
            for stale in ckpt_io.remove_stale(self.run_dir):
                log.print(f"removed {stale}, left by a checkpoint write that did not finish")
            write_atomic(self.run_dir / "config.yaml", self.cfg.to_yaml())
            record_run_fingerprint(self.run_dir, self.cfg.data.root, self.step)
            log.print(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False).rstrip())
            log.print(self.describe())
            log.print(self.data.describe())
            if self.resumed_from:
                log.print(f"resumed from {self.resumed_from} at step {self.step}")
        return log

    # ------------------------------------------------------------------ the step
    def _train_step(self, batches: Iterator[Any], window: _Window, first: bool) -> Any:
        """One optimiser step: forward and backward per micro-batch, clip, AdamW, schedule, EMA. Reads
        nothing back from the device. Returns the last micro-batch (for pictures)."""
        cfg, env, accum = self.cfg, self.env, self.cfg.optim.accum_steps
        self.scheduler.step_update(self.step)
        terms: dict[str, torch.Tensor] = {}
        samples, batch = 0, None
        for micro in range(accum):
            t_data = time.perf_counter()
            batch = to_device(_next(batches), env.device)
            window.wait += time.perf_counter() - t_data
            gen = reseed(step_seed(cfg.loop.seed, self.step, env.rank * accum + micro), env.device)
            sync = micro == accum - 1 or self.ddp is None
            with (contextlib.nullcontext() if sync else self.ddp.no_sync()), self._autocast():
                out = self.task.train_step(self.model, batch, gen)
            (out.loss / accum).backward()
            for k, v in {"loss": out.loss, **out.terms}.items():
                terms[k] = terms.get(k, 0.0) + v.detach().float() / accum
            samples += out.samples
        self.micro_batches += accum
        if first:
            self._check_every_parameter_learns()
        grad_norm = self._clip()
        # any rank's non-finite loss or gradient skips the step on every rank, decided on the device: the
        # fused AdamW leaves weights, moments and step count as they were where found_inf is 1
        bad = all_reduce_max((~(torch.isfinite(terms["loss"]) & torch.isfinite(grad_norm))).float())
        self.optimizer.found_inf = bad
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.ema is not None:
            ema_update_unless(self.ema, self.raw_model, self.step, bad)
        window.add(terms, grad_norm, bad, samples * env.world_size)
        return batch

    # ------------------------------------------------------------------ the loop
    def _loop(self, batches: Iterator[Any], log: RunLogger) -> dict[str, Any]:
        cfg, loop = self.cfg, self.cfg.loop
        val_every = cfg.finetune.val_every or loop.ckpt_every
        window, first_step = _Window(self.env.device), self.step
        self.raw_model.train()
        while self.step < self.steps:
            t0 = time.perf_counter()
            batch = self._train_step(batches, window, first=self.step == first_step)
            step, last = self.step, self.step == self.steps
            picture = loop.recon_every and (step % loop.recon_every == 0 or last) and self.env.is_main
            validate = self.validate is not None and (step % val_every == 0 or last)
            logged, checkpoint = scheduled(step, self.steps, loop.log_every, loop.ckpt_every)
            logged, checkpoint = logged or validate, checkpoint or validate
            # any rank's stop signal stops every rank after this step (a scheduler's grace period is short);
            # agreed host to host, so the device is not waited for
            stop = self.any_rank_stop(self.stops.signum)
            stopping = stop != 0 and not last
            # the one device read (every rank's scalars and skip counters), on read steps only: on the
            # others the host goes on to queue the next step at once
            seen = window.read() if logged or checkpoint or stopping else None
            window.time += time.perf_counter() - t0
            if seen is not None:
                self._check_bad_steps(seen, log)
            # a stopping run saves at once: validation and pictures wait
            val = self._validate() if validate and not stopping else {}
            if logged or stopping:
                log.log(window.pop_record(step, self.optimizer, seen) | {f"val_{k}": v for k, v in val.items()})
            if picture and not stopping:
                self._picture(batch)
            if checkpoint or stopping:
                self._save(window.pop_checkpoint_loss(seen), val, log)
            if stopping:
                raise Preempted(f"{signal_name(stop)}: stopped after step {step} of {self.steps} and saved "
                                f"{ckpt_io.latest(self.run_dir)}; --resume auto continues the run (exit status "
                                f"{PREEMPTED_EXIT})")
        return dict(steps=self.step, skipped=window.skipped_seen, best_loss=self.best_loss,
                    final_loss=window.last_loss, checkpoint=str(ckpt_io.latest(self.run_dir)),
                    resumed_from=str(self.resumed_from) if self.resumed_from else None)

    def _check_bad_steps(self, seen: _Reading, log: RunLogger) -> None:
        """Say how many steps were skipped since the last read; stop when a run of them reached the limit."""
        if seen.new_skipped:
            log.print(f"[yellow]step {self.step}: {seen.new_skipped} step(s) skipped since the last read for a "
                      f"non-finite loss or gradient ({seen.in_a_row} in a row now, {seen.skipped} in total)[/]")
        if seen.worst_run >= self.cfg.loop.max_bad_steps:
            last = ckpt_io.latest(self.run_dir)
            raise TrainingStopped(f"{seen.worst_run} consecutive non-finite steps by step {self.step} (counted at "
                                  f"log and checkpoint steps; loop.max_bad_steps={self.cfg.loop.max_bad_steps}); stopping. "
                                  f"Last good checkpoint: {last or 'none written yet'}")

    def _picture(self, batch: Any) -> None:
        self.raw_model.eval()
        self.task.snapshot(self.raw_model, batch, self.step, self.run_dir)
        self.raw_model.train()

    def _save(self, loss: float, val: dict[str, float], log: RunLogger) -> None:
        """Checkpoint this step (rank 0 writes, every rank waits): ``step-N.pt`` and the names it earns —
        ``lowest-train-loss.pt``, ``best-val-top1.pt`` (and the EMA's), ``last-step.pt``."""
        step, last = self.step, self.step == self.steps
        copies = [ckpt_io.LOWEST_TRAIN_LOSS] if self.validate is None and loss < self.best_loss else []
        copies += [ckpt_io.LAST_STEP] if last else []
        self.best_loss = min(self.best_loss, loss)
        ema_best = False
        for key, name in (("top1", ckpt_io.BEST_VAL_TOP1), ("ema_top1", ckpt_io.BEST_VAL_TOP1_EMA)):
            if key in val and val[key] > self.best_val[key]:
                self.best_val[key] = val[key]
                copies += [name] if key == "top1" else []
                ema_best = ema_best or key == "ema_top1"
        if self.env.is_main:
            state = self._state(loss, val)
            ckpt_io.save_step(self.run_dir, state, self.cfg.loop.keep_last, tuple(copies))
            if ema_best:  # the EMA weights as the checkpoint's model: eval, predict and export use them
                write_checkpoint(state | {"model": state["ema"], "weights": "ema"},
                                 self.run_dir / ckpt_io.CKPT_DIR / ckpt_io.BEST_VAL_TOP1_EMA)
            if val:
                scores = ", ".join(f"{k.replace('_', ' ')} {100 * v:.1f}% (best {100 * self.best_val[k]:.1f}%)"
                                   for k, v in val.items() if k in self.best_val)
                log.print(f"step {step}: validation {scores}")
        barrier()

    def _state(self, window_loss: float, val: dict[str, float]) -> dict[str, Any]:
        metrics = dict(best_loss=self.best_loss, window_loss=window_loss, **{f"val_{k}": v for k, v in val.items()},
                       **{f"best_val_{k}": v for k, v in self.best_val.items() if math.isfinite(v)})
        state = dict(format=FORMAT, model=self.raw_model.state_dict(), config=self.raw_model.cfg.to_dict(),
                     run_config=self.cfg.to_dict(), stage=self.cfg.stage, step=self.step, steps=self.steps,
                     optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                     scaler=self.scaler.state_dict(), data=dict(micro_batches=self.micro_batches),
                     rng=ckpt_io.rng_state(), metrics=metrics, world_size=self.env.world_size,
                     **self.task.checkpoint_extra())
        if self.ema is not None:
            state["ema"] = self.ema.module.state_dict()
        return state

    def _validate(self) -> dict[str, float]:
        """Validation metrics of the weights (``top1``, …) and of their EMA (``ema_top1``, …)."""
        models = [("", self.raw_model)] + ([("ema_", self.ema.module)] if self.ema is not None else [])
        out = {}
        for prefix, model in models:
            was_training = model.training
            model.eval()
            out |= {prefix + k: float(v) for k, v in self.validate(model).items()}
            model.train(was_training)
        return out

    def _check_every_parameter_learns(self) -> None:
        """After the first step's backward, every trainable parameter has a gradient. A configuration must
        not build what its loss leaves out: under DDP the next step would fail with an error that names
        none of them (alone, such weights only cost memory and time)."""
        idle = [n for n, p in self.raw_model.named_parameters() if p.requires_grad and p.grad is None]
        if idle:
            shown = ", ".join(idle[:4]) + (f", … ({len(idle)} in all)" if len(idle) > 4 else "")
            raise TrainingStopped(f"{self.cfg.stage}: parameters that take no part in the loss: {shown}; the model "
                                  f"builds a module this configuration does not train (a bug: please report it)")

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.env.device.type, dtype=self.amp_dtype)

    def _clip(self) -> torch.Tensor:
        max_norm = self.cfg.optim.clip_grad if self.cfg.optim.clip_grad > 0 else math.inf
        params = [p for p in self.raw_model.parameters() if p.grad is not None]
        return torch.nn.utils.clip_grad_norm_(params, max_norm).detach().float()


def scheduled(step: int, steps: int, log_every: int, ckpt_every: int) -> tuple[bool, bool]:
    """Whether ``step`` of ``steps`` is logged (every ``log_every``, the first and the last) and whether it
    is checkpointed (every ``ckpt_every`` and the last), validation aside: the read steps' rule."""
    last = step == steps
    return step % log_every == 0 or step == 1 or last, step % ckpt_every == 0 or last


@torch.no_grad()
def ema_update_unless(ema: ModelEmaV3, model: nn.Module, step: int, bad: torch.Tensor) -> None:
    """timm's ``ModelEmaV3.update(model, step)`` where ``bad`` (a device flag) is 0, nothing where it is 1,
    with no host read: the lerp weight 1 - decay becomes a device tensor, 0 on a skipped step (the lerp
    kernels compute the same float32 result with that weight as a tensor as with a Python float)."""
    weight = torch.where(bad > 0, 0.0, 1.0 - ema.get_decay(step))
    # one public lerp_ per tensor (timm batches them through the private torch._foreach_lerp_: same result)
    for e, m in zip(ema.module.state_dict().values(), model.state_dict().values(), strict=True):
        if e.is_floating_point():
            e.lerp_(m, weight)
        else:  # integer buffers are copied, as timm does, unless the step was skipped
            e.copy_(torch.where(bad > 0, e, m))


def _next(batches: Iterator[Any]) -> Any:
    try:
        return next(batches)
    except StopIteration:
        raise TrainingStopped("the training data stream ended before the last step "
                              "(training streams are meant to be infinite/resampled)") from None


@dataclass
class _Reading:
    """What one read step brought to the host (the same on every rank)."""

    terms: dict[str, float]  # the last step's loss terms, mean over ranks
    grad_norm: float
    loss_sum: float  # sum of the applied steps' losses since the last checkpoint, mean over ranks
    applied: int  # steps applied since the last checkpoint
    skipped: int  # skipped steps since the run (this process) started
    new_skipped: int  # of which since the last read
    in_a_row: int  # the current run of consecutive skipped steps
    worst_run: int  # the longest such run since the last read


class _Window:
    """The loop's running scalars between reads, kept on the device: the last step's loss terms and
    gradient norm, the applied steps' loss sum (float64) since the last checkpoint, the skipped-step
    counters; and, on the host, timings and samples since the last log line."""

    def __init__(self, device: torch.device) -> None:
        self.terms: dict[str, torch.Tensor] = {}
        self.grad_norm = torch.zeros((), device=device)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.applied, self.skipped, self.run, self.worst_run = (
            torch.zeros((), dtype=torch.int64, device=device) for _ in range(4))
        self.wait = self.time = 0.0
        self.samples = 0
        self.skipped_seen = 0
        self.last_loss = math.nan

    def add(self, terms: dict[str, torch.Tensor], grad_norm: torch.Tensor, bad: torch.Tensor, samples: int) -> None:
        applied = bad == 0
        self.terms, self.grad_norm = terms, grad_norm
        self.loss_sum += torch.where(applied, terms["loss"].double(), 0.0)
        self.applied += applied
        self.skipped += ~applied
        self.run = torch.where(applied, 0, self.run + 1)
        self.worst_run = torch.maximum(self.worst_run, self.run)
        self.samples += samples

    def read(self) -> _Reading:
        """One stacked all-reduce (mean) of what differs between ranks — the loss terms and the loss sum —
        and one host read of it with the counters, which the per-step MAX of the skip flag keeps equal on
        every rank."""
        names = list(self.terms)
        differ = all_reduce_mean(torch.stack([self.terms[k].double() for k in names] + [self.loss_sum]))
        same = torch.stack([t.double() for t in (self.grad_norm, self.applied, self.skipped, self.run, self.worst_run)])
        values = torch.cat([differ, same]).tolist()
        # a term is logged as the float32 the step computed (a mean over ranks rounded back to float32)
        terms = [float(np.float32(v)) for v in values[:len(names)]]
        loss_sum, grad_norm, applied, skipped, run, worst = values[len(names):]
        self.worst_run = self.run.clone()  # the longest run is counted afresh from here
        seen = _Reading(dict(zip(names, terms, strict=True)), grad_norm, loss_sum, int(applied), int(skipped),
                        int(skipped) - self.skipped_seen, int(run), int(worst))
        self.skipped_seen, self.last_loss = seen.skipped, seen.terms["loss"]
        return seen

    def pop_record(self, step: int, optimizer: torch.optim.Optimizer, seen: _Reading) -> dict[str, Any]:
        """The log record of ``step`` from its reading; starts a new timing window."""
        lr = max(g["lr"] for g in optimizer.param_groups)
        rec = dict(step=step, **seen.terms, lr=lr, grad_norm=seen.grad_norm,
                   samples_per_s=self.samples / max(self.time, 1e-9),
                   data_wait=min(1.0, self.wait / max(self.time, 1e-9)), skipped=seen.skipped, time=time.time())
        self.wait = self.time = 0.0
        self.samples = 0
        return rec

    def pop_checkpoint_loss(self, seen: _Reading) -> float:
        """The mean loss of the steps applied since the last checkpoint (inf if none); starts a new window."""
        self.loss_sum.zero_()
        self.applied.zero_()
        return seen.loss_sum / seen.applied if seen.applied else math.inf
