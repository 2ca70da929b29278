"""The one training loop, shared by pretraining and finetuning.

A task (:mod:`mv2mae.train.tasks`) says what is trained (model, loss, pictures) and a data source
where its batches come from; the loop owns everything else: device and DDP, step-based warmup +
cosine, AdamW, bf16 autocast on CUDA, gradient accumulation (DDP gradient sync only on the last
micro-step), clipping, non-finite step skipping, logs, and atomic checkpoints with exact resume.
Batches come straight from the data source's iterator (a DataLoader prefetches with its workers and
pins memory, and decodes on the device when ``data.decode_on`` says so); the loop copies what is not
there yet to the device. Video arrives as uint8 pixels: the model normalises it.

Every micro-step reseeds the global RNGs and the masking generator from (seed, step, micro-shard),
where micro-shard = rank × accum_steps + micro. A step is therefore a function of the weights, the
batch and those three numbers only: resuming replays the same randomness, and a 2-rank run draws the
same masks and dropout as one process accumulating the same global batch in two micro-steps.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from mv2mae.train.distributed import DistEnv, RankLost, all_reduce_max, all_reduce_mean, barrier, lost_rank
from mv2mae.train.logs import RunLogger
from mv2mae.train.optim import build_optimizer, build_scheduler, resolve_steps
from mv2mae.train.preemption import PREEMPTED_EXIT, Preempted, StopRequests, signal_name
from mv2mae.train.runlock import run_lock

if TYPE_CHECKING:  # tasks import the loop's StepResult and step_seed
    from mv2mae.train.tasks import FinetuneTask, PretrainTask, ShardSource

# optimiser param-group entries that come from the run config (not from a resumed checkpoint)
_CONFIG_GROUP_KEYS = ("weight_decay", "betas", "lr_scale", "initial_lr")


class TrainingStopped(RuntimeError):
    """The run cannot go on (too many non-finite steps); the last good checkpoint is intact."""


@dataclass
class StepResult:
    loss: torch.Tensor  # scalar to back-propagate (mean over the micro-batch)
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # extra scalars to log
    samples: int = 0


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


# validation: model -> metrics with at least "top1" (the same on every rank); see mv2mae.eval.evaluate.validator
Validate = Callable[[nn.Module], dict[str, float]]


class Trainer:
    """With ``validate`` (finetuning), the run is scored on held-out data every ``finetune.val_every`` steps
    and ``best-val-top1.pt`` keeps the best; without it, ``lowest-train-loss.pt`` keeps the lowest loss. Either
    way ``last-step.pt`` is the last step."""

    def __init__(self, cfg: RunConfig, task: PretrainTask | FinetuneTask, data: ShardSource, run_dir: str | Path,
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
        self.optimizer = build_optimizer(self.raw_model, cfg, env.world_size, env.device)
        self.scheduler = build_scheduler(self.optimizer, cfg, env.world_size, self.steps, self.warmup)
        # bf16 needs no loss scaling; the scaler is kept (disabled) so checkpoints have one layout
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=False)
        # timm's EMA of the weights (finetuning with finetune.ema_decay > 0): updated after every applied step
        ema = cfg.finetune.ema_decay if cfg.stage == "finetune" else 0.0
        self.ema = ModelEmaV3(self.raw_model, decay=ema) if ema > 0 else None
        self.step, self.micro_batches, self.best_loss = 0, 0, math.inf
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

    def describe(self) -> str:
        cfg, w = self.cfg, self.env.world_size
        peak, low, _ = cfg.scaled_lr(w)
        return (f"{cfg.stage} · {self.steps} steps ({self.warmup} warmup) · device {self.env.device} × {w} · "
                f"global batch {cfg.global_batch(w)} = {cfg.optim.batch_size} × accum {cfg.optim.accum_steps} "
                f"× world {w} · lr {peak:.3e} (= {cfg.optim.base_lr:g} × {cfg.global_batch(w)}/256), "
                f"min lr {low:.3e}")

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, Any]:
        """Train to the last step; a stop signal ends the run after its step is saved, as :class:`Preempted`.
        The run folder is locked by rank 0 from before its first write to the end."""
        self._build()
        self._restore()
        with run_lock(self.run_dir, self.env.is_main), StopRequests() as self.stops:
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        env = self.env
        log = RunLogger(self.run_dir, env.is_main, self.steps, self.step, self.task.name)
        if env.is_main:
            for stale in ckpt_io.remove_stale(self.run_dir):
                log.print(f"removed {stale}, left by a checkpoint write that did not finish")
            write_atomic(self.run_dir / "config.yaml", self.cfg.to_yaml())
            record_run_fingerprint(self.run_dir, self.cfg.data.root, self.step)
            log.print(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False).rstrip())
            log.print(self.describe())
            log.print(self.data.describe())
            if self.resumed_from:
                log.print(f"resumed from {self.resumed_from} at step {self.step}")
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

    def _loop(self, batches: Iterator[Any], log: RunLogger) -> dict[str, Any]:
        cfg, env = self.cfg, self.env
        accum = cfg.optim.accum_steps
        window = _Window()
        bad_in_row, skipped, batch, first_step, stop = 0, 0, None, self.step, 0
        self.raw_model.train()
        while self.step < self.steps:
            t0 = time.perf_counter()
            self.scheduler.step_update(self.step)
            terms_sum: dict[str, torch.Tensor] = {}
            samples = 0
            for micro in range(accum):
                t_data = time.perf_counter()
                batch = to_device(_next(batches), env.device)
                window.wait += time.perf_counter() - t_data
                gen = reseed(step_seed(cfg.loop.seed, self.step, env.rank * accum + micro), env.device)
                sync = micro == accum - 1 or self.ddp is None
                with (contextlib.nullcontext() if sync else self.ddp.no_sync()), self._autocast():
                    out = self.task.train_step(self.model, batch, gen)
                self.scaler.scale(out.loss / accum).backward()
                for k, v in {"loss": out.loss, **out.terms}.items():
                    terms_sum[k] = terms_sum.get(k, 0.0) + v.detach().float() / accum
                samples += out.samples
            self.micro_batches += accum
            if self.step == first_step:
                self._check_every_parameter_learns()
            grad_norm = self._clip()
            terms = {k: all_reduce_mean(v) for k, v in terms_sum.items()}
            # one reduction, one read: any rank's non-finite loss skips the step everywhere, any rank's stop
            # signal stops every rank after this step
            bad = float(not (torch.isfinite(terms["loss"]) and torch.isfinite(grad_norm)))
            flags = all_reduce_max(torch.tensor([bad, float(self.stops.signum)], device=env.device)).tolist()
            finite, stop = flags[0] == 0, int(flags[1])
            self.step += 1
            if finite:
                self.scaler.step(self.optimizer)
                self.scaler.update()
                if self.ema is not None:
                    self.ema.update(self.raw_model, step=self.step)
                bad_in_row = 0
            else:
                bad_in_row, skipped = bad_in_row + 1, skipped + 1
                log.print(f"[yellow]step {self.step}: non-finite loss or gradient — step skipped "
                          f"({bad_in_row} in a row, {skipped} in total)[/]")
            self.optimizer.zero_grad(set_to_none=True)
            if bad_in_row >= cfg.loop.max_bad_steps:
                last = ckpt_io.latest(self.run_dir)
                raise TrainingStopped(f"{bad_in_row} consecutive non-finite steps (up to step {self.step}); "
                                      f"stopping. Last good checkpoint: {last or 'none written yet'}")
            window.add(terms, grad_norm, samples * env.world_size, time.perf_counter() - t0, finite)
            stopping = bool(stop) and self.step < self.steps
            self._after_step(window, log, batch, skipped, stopping)
            if stopping:
                raise Preempted(f"{signal_name(stop)}: stopped after step {self.step} of {self.steps} and saved "
                                f"{ckpt_io.latest(self.run_dir)}; --resume auto continues the run (exit status "
                                f"{PREEMPTED_EXIT})")
        return dict(steps=self.step, skipped=skipped, best_loss=self.best_loss,
                    final_loss=window.last_loss, checkpoint=str(ckpt_io.latest(self.run_dir)),
                    resumed_from=str(self.resumed_from) if self.resumed_from else None)

    def _after_step(self, window: _Window, log: RunLogger, batch: Any, skipped: int, stopping: bool = False) -> None:
        """Validation, log line, picture and checkpoint of the step just taken (a stopping run's last step
        is logged and checkpointed like the final one)."""
        cfg, step, last = self.cfg, self.step, self.step == self.steps
        val_every = cfg.finetune.val_every or cfg.loop.ckpt_every
        # a stopping run saves at once (a scheduler's grace period is short): validation and pictures wait
        val = self._validate() if self.validate is not None and (step % val_every == 0 or last) and not stopping else {}
        if step % cfg.loop.log_every == 0 or last or stopping or step == 1 or val:
            log.log(window.record(step, self.optimizer, skipped) | {f"val_{k}": v for k, v in val.items()})
        if cfg.loop.recon_every and (step % cfg.loop.recon_every == 0 or last) and not stopping and self.env.is_main:
            self.raw_model.eval()
            self.task.snapshot(self.raw_model, batch, step, self.run_dir)
            self.raw_model.train()
        if step % cfg.loop.ckpt_every == 0 or last or stopping or val:
            loss = window.checkpoint_loss()
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
                ckpt_io.save_step(self.run_dir, state, cfg.loop.keep_last, tuple(copies))
                if ema_best:  # the EMA weights as the checkpoint's model: eval, predict and export use them
                    write_checkpoint(state | {"model": state["ema"], "weights": "ema"},
                                     self.run_dir / ckpt_io.CKPT_DIR / ckpt_io.BEST_VAL_TOP1_EMA)
                if val:
                    scores = ", ".join(f"{k.replace('_', ' ')} {100 * v:.1f}% (best {100 * self.best_val[k]:.1f}%)"
                                       for k, v in val.items() if k in self.best_val)
                    log.print(f"step {step}: validation {scores}")
            barrier()

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
        self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.optim.clip_grad if self.cfg.optim.clip_grad > 0 else math.inf
        params = [p for p in self.raw_model.parameters() if p.grad is not None]
        return torch.nn.utils.clip_grad_norm_(params, max_norm).detach().float()


def _next(batches: Iterator[Any]) -> Any:
    try:
        return next(batches)
    except StopIteration:
        raise TrainingStopped("the training data stream ended before the last step "
                              "(training streams are meant to be infinite/resampled)") from None


class _Window:
    """Accumulates timings and losses between log lines and between checkpoints."""

    def __init__(self) -> None:
        self.wait = 0.0
        self.time = 0.0
        self.samples = 0
        self.ckpt_losses: list[float] = []
        self.last: dict[str, float] = {}
        self.last_loss = math.nan
        self.grad_norm = math.nan

    def add(self, terms: dict[str, torch.Tensor], grad_norm: torch.Tensor, samples: int, seconds: float,
            finite: bool) -> None:
        self.last = {k: float(v) for k, v in terms.items()}
        self.last_loss = self.last["loss"]
        self.grad_norm = float(grad_norm)
        self.samples += samples
        self.time += seconds
        if finite:
            self.ckpt_losses.append(self.last_loss)

    def record(self, step: int, optimizer: torch.optim.Optimizer, skipped: int) -> dict[str, Any]:
        lr = max(g["lr"] for g in optimizer.param_groups)
        rec = dict(step=step, **self.last, lr=lr, grad_norm=self.grad_norm,
                   samples_per_s=self.samples / max(self.time, 1e-9),
                   data_wait=min(1.0, self.wait / max(self.time, 1e-9)), skipped=skipped, time=time.time())
        self.wait = self.time = 0.0
        self.samples = 0
        return rec

    def checkpoint_loss(self) -> float:
        loss = float(np.mean(self.ckpt_losses)) if self.ckpt_losses else math.inf
        self.ckpt_losses = []
        return loss
