"""AdamW over timm parameter groups (weight decay split, layer-wise lr decay) and the step schedule."""

from __future__ import annotations

import math

import torch
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from torch import nn

from mv2mae.config import ConfigError, RunConfig


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """timm's groups: no decay on 1-D parameters and the model's ``no_weight_decay()`` names; with
    ``layer_decay`` < 1 each layer's lr is scaled by ``layer_decay ** (depth from the head)``
    (the model's ``group_matcher`` says which layer a parameter belongs to)."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    if layer_decay < 1.0:
        return param_groups_layer_decay(model, weight_decay=weight_decay, no_weight_decay_list=skip,
                                        layer_decay=layer_decay)
    return param_groups_weight_decay(model, weight_decay=weight_decay, no_weight_decay_list=skip)


def build_optimizer(model: nn.Module, cfg: RunConfig, world_size: int) -> torch.optim.Optimizer:
    """AdamW, fused on every device: the loop skips a non-finite step through its ``found_inf``, which only
    the fused kernels honour (CPU and CUDA have one each), so a CPU run (CI) exercises that skip."""
    peak, _, _ = cfg.scaled_lr(world_size)
    groups = param_groups(model, cfg.optim.weight_decay, cfg.optim.layer_decay)
    return torch.optim.AdamW(groups, lr=peak, betas=cfg.optim.betas, fused=True)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: RunConfig, world_size: int,
                    steps: int, warmup: int) -> CosineLRScheduler:
    """Linear warmup for ``warmup`` steps, then cosine to the (scaled) min lr at ``steps``.

    timm multiplies each group's lr by its ``lr_scale`` (layer decay) on every update.
    """
    _, low, start = cfg.scaled_lr(world_size)
    warmup = min(warmup, max(0, steps - 1))
    return CosineLRScheduler(optimizer, t_initial=max(1, steps - warmup), lr_min=low, warmup_t=warmup,
                             warmup_lr_init=start, warmup_prefix=True, t_in_epochs=False)


def resolve_steps(cfg: RunConfig, samples_per_epoch: int | None, world_size: int) -> tuple[int, int]:
    """(steps, warmup steps): given directly, or from ``epochs`` over the training set size. A warm-up longer
    than the run is refused: its learning rate would never reach the peak the config asks for."""
    sched = cfg.schedule
    if sched.epochs <= 0:
        steps, warmup, unit = sched.steps, sched.warmup_steps, "schedule.steps={}, schedule.warmup_steps={}"
    elif not samples_per_epoch:
        raise ConfigError("schedule.epochs needs the training set size, which this data source does not report; "
                          "set schedule.steps instead")
    else:
        per_epoch = samples_per_epoch / cfg.global_batch(world_size)
        steps, warmup = max(1, math.ceil(sched.epochs * per_epoch)), math.ceil(sched.warmup_epochs * per_epoch)
        unit = (f"schedule.epochs={sched.epochs:g} ({{}} steps), schedule.warmup_epochs={sched.warmup_epochs:g} "
                f"({{}} steps) at {samples_per_epoch} samples per epoch")
    if warmup > steps:
        raise ConfigError(f"{unit.format(steps, warmup)}: the warm-up is longer than the run; lower the warm-up "
                          f"or train longer")
    return steps, warmup
