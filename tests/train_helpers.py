"""Shared pieces of the training tests: a small config and an in-memory batch source whose global batch
order does not depend on the world size (so 1 process × 2 micro-steps and 2 ranks × 1 micro-step see
the same samples), with an optional crash after N micro-batches (a run killed mid-way)."""

from __future__ import annotations

import torch

from mv2mae.config import RunConfig, load_config
from mv2mae.experiment.plan import PLAN_DIR, load_plan

TINY_MODEL = ["model.frames=4", "model.image_size=32", "model.patch=8", "model.embed_dim=48", "model.depth=2",
              "model.num_heads=3", "model.decoder_dim=32", "model.decoder_heads=2", "model.decoder_depth=1",
              "model.cross_decoder_depth=1", "loop.threads=1"]


def tiny_config(stage: str = "pretrain", *extra: str) -> RunConfig:
    return load_config("tiny", stage, [*TINY_MODEL, "optim.batch_size=2", "steps=6", "schedule.warmup_steps=2",
                                       "optim.base_lr=0.5", "loop.log_every=1", "loop.ckpt_every=3", *extra])


def plan_arms(*extra: str) -> dict[str, RunConfig]:
    """Every distinct arm of every shipped study plan (sweeps and step sweeps included) as a tiny config
    with ``extra`` last, by ``plan/arm`` name; an arm without pretraining is its finetune from scratch.
    Arms that come out the same (a step sweep point once ``steps`` is overridden) are kept once."""
    arms: dict[str, RunConfig] = {}
    for path in sorted(PLAN_DIR.glob("*.yaml")):
        plan = load_plan(str(path))
        for arm in plan.arms:
            cfg = tiny_config("pretrain" if arm.pretrain else "finetune", *arm.sets, *extra)
            if cfg.to_dict() not in [c.to_dict() for c in arms.values()]:
                arms[f"{plan.name}/{arm.name}"] = cfg
    return arms


class SimulatedCrash(RuntimeError):
    pass


class GlobalBatchSource:
    """Rows ``[g·G + j·B, g·G + (j+1)·B)`` of a fixed pool for global step g and micro-shard
    j = rank·accum + micro, G = B·accum·world — exactly what the loop's seeding assumes."""

    def __init__(self, cfg: RunConfig, rank: int = 0, world: int = 1, views: int = 2, pool: int = 48,
                 crash_after: int | None = None, classes: int = 0, seed: int = 0) -> None:
        m = cfg.model
        gen = torch.Generator().manual_seed(seed)
        self.video = torch.randn(pool, views, m.channels, m.frames, m.image_size, m.image_size, generator=gen)
        self.motion = torch.rand(pool, views, m.num_tokens, generator=gen) * 40
        self.label = torch.randint(0, max(classes, 1), (pool,), generator=gen)
        self.cfg, self.rank, self.world, self.crash_after, self.classes = cfg, rank, world, crash_after, classes

    def samples_per_epoch(self) -> int:
        return len(self.video)

    def describe(self) -> str:
        return f"data: {len(self.video)} in-memory samples"

    def batches(self, start: int):
        b, accum = self.cfg.optim.batch_size, self.cfg.optim.accum_steps
        i = start
        while True:
            if self.crash_after is not None and i >= self.crash_after:
                raise SimulatedCrash(f"simulated crash after {i} micro-batches")
            step, micro = divmod(i, accum)
            first = step * b * accum * self.world + (self.rank * accum + micro) * b
            rows = torch.arange(first, first + b) % len(self.video)
            if self.classes:  # finetuning: one camera per sample
                yield {"video": self.video[rows, 0], "label": self.label[rows]}
            else:
                yield {"video": self.video[rows], "motion": self.motion[rows]}
            i += 1
