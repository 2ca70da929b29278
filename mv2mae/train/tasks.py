"""The two things the loop trains — MV2MAE pretraining and classifier finetuning — and their data.

A task builds its model and turns one batch on the device into a loss (``train_step``); a
:class:`ShardSource` is the stream of training batches of one protocol's train split. The loop
(:mod:`mv2mae.train.loop`) takes one of each; tests hand it any other object with ``batches(start)``
and ``samples_per_epoch()``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn

from mv2mae.config import RunConfig
from mv2mae.data.datasets import ShardSplit
from mv2mae.data.loaders import build_finetune_loader, build_pretrain_loader
from mv2mae.model.checkpoint import WEIGHT_GEOMETRY, config_of, init_classifier, init_mv2mae, load_checkpoint
from mv2mae.model.classifier import VideoClassifier
from mv2mae.model.config import ModelConfig
from mv2mae.model.embed import PixelNormalize
from mv2mae.model.mv2mae import MV2MAE
from mv2mae.train.distributed import DistEnv
from mv2mae.train.loop import StepResult, step_seed
from mv2mae.train.recon import save_reconstruction


class ShardSource:
    """Training batches of one protocol's train split, from a preprocessed dataset directory."""

    def __init__(self, cfg: RunConfig, env: DistEnv, kind: str) -> None:
        if not cfg.data.root:
            raise ValueError("no dataset directory: pass --data DIR (or set data.root)")
        self.cfg, self.env, self.kind = cfg, env, kind
        self.split = ShardSplit.open(cfg.data.root, cfg.data.protocol, "train")

    @property
    def num_classes(self) -> int:
        return self.split.num_classes

    def samples_per_epoch(self) -> int:
        """Pretraining: one multi-view sample per group (with ``data.repeats`` = r, an epoch still counts
        that many samples, cut from 1/r of the groups: MAE-ST's effective epochs). Finetuning: an epoch
        is a pass over the videos (each allowed camera of a group is one; a stream sample draws one of
        them at random)."""
        if self.kind == "pretrain":
            return self.split.selection.groups
        allowed = set(self.split.selection.cameras)
        return sum(s.samples * len(allowed.intersection(s.cameras)) for s in self.split.selection.shards)

    def batches(self, start: int) -> Iterator[dict[str, Any]]:
        """This rank's micro-batches, starting after ``start`` already-consumed ones (a resumed run); with
        ``data.decode_on`` device (the default on CUDA) their video is decoded on this rank's device."""
        seed, skip = self.cfg.loop.seed, start
        if start and self.cfg.loop.resume_data == "reseed":
            seed, skip = step_seed(seed, start, 0) % 2**31, 0
        build = build_pretrain_loader if self.kind == "pretrain" else build_finetune_loader
        loader = build(self.cfg.model, self.cfg.data, "train", batch_size=self.cfg.optim.batch_size, seed=seed,
                       rank=self.env.rank, world_size=self.env.world_size, pin_memory=self.env.device.type == "cuda",
                       device=self.env.device)
        it = iter(loader)
        for _ in range(skip):  # exact resume: replay the stream up to where the checkpoint was taken
            next(it)
        yield from it


class PretrainTask:
    name = "pretrain"

    def __init__(self, cfg: RunConfig, init: str = "") -> None:
        self.cfg, self.init = cfg, init

    def build_model(self) -> MV2MAE:
        if self.init:  # full MV2MAE weights, or an encoder alone (e.g. converted VideoMAE) with fresh decoders;
            # the reader also anchors a 1D position table where the checkpoint's was trained
            return init_mv2mae(self.init, self.cfg.model)
        return MV2MAE(self.cfg.model)

    def train_step(self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator) -> StepResult:
        motion = batch.get("motion") if self.cfg.data.motion != "none" else None
        out = model(batch["video"], motion, generator=generator)
        return StepResult(out.loss, {"loss_self": out.loss_self, "loss_cross": out.loss_cross},
                          samples=batch["video"].shape[0])

    def snapshot(self, model: nn.Module, batch: dict[str, Any], step: int, run_dir: Path) -> Path | None:
        """A picture of the model's reconstructions of ``batch``."""
        return save_reconstruction(model, batch, run_dir / "recon" / f"step-{step:08d}.png",
                                   title=f"step {step}", seed=self.cfg.loop.seed)


class FinetuneTask:
    name = "finetune"

    def __init__(self, cfg: RunConfig, num_classes: int) -> None:
        self.cfg, self.num_classes = cfg, num_classes
        ft = cfg.finetune
        self.mixup = None
        if ft.mixup > 0 or ft.cutmix > 0:
            if cfg.optim.batch_size % 2:
                raise ValueError(f"mixup/cutmix pair samples within a batch: optim.batch_size must be even, "
                                 f"got {cfg.optim.batch_size}")
            self.mixup = Mixup(mixup_alpha=ft.mixup, cutmix_alpha=ft.cutmix, prob=ft.mixup_prob,
                               switch_prob=ft.switch_prob, mode="batch", label_smoothing=ft.label_smoothing,
                               num_classes=num_classes)
            # mixing needs floats: the model's own normalisation first (it passes float clips through)
            self.normalize = PixelNormalize(cfg.model)
            self.criterion: nn.Module = SoftTargetCrossEntropy()
        elif ft.label_smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=ft.label_smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()

    def build_model(self) -> VideoClassifier:
        ft = self.cfg.finetune
        args = dict(drop_path=ft.drop_path, head_dropout=ft.head_dropout)
        if ft.init:  # the encoder from the checkpoint, a fresh head
            return init_classifier(ft.init, self.cfg.model, self.num_classes, **args)
        return VideoClassifier(self.cfg.model, self.num_classes, **args)

    def train_step(self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator) -> StepResult:
        video, label = batch["video"], batch["label"]
        terms = {}
        if self.mixup is not None:
            video, target = self._mix(video, label)
        else:
            target = label
        logits = model(video)
        if self.mixup is None:
            terms["train_acc"] = (logits.argmax(-1) == label).float().mean()
        return StepResult(self.criterion(logits, target), terms, samples=video.shape[0])

    def _mix(self, video: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # timm cuts boxes out of the last two dims: fold time into channels so a CutMix box covers
        # the same region of every frame (on [B, C, T, H, W] it would cut along T and H instead)
        b, c, t, h, w = video.shape
        video = self.normalize.to(video.device)(video)
        mixed, target = self.mixup(video.reshape(b, c * t, h, w), label)
        return mixed.reshape(b, c, t, h, w), target

    def snapshot(self, model: nn.Module, batch: dict[str, Any], step: int, run_dir: Path) -> Path | None:
        return None  # nothing to picture


def finetune_model_config(cfg: RunConfig, init: str | Path) -> tuple[ModelConfig, list[str]]:
    """The classifier's ModelConfig: the run's, with the weight-tied fields taken from the pretrained
    checkpoint (so a pretraining ``--set model.…``, pixel statistics included, carries over); returns
    what was changed."""
    src = config_of(load_checkpoint(init))
    changed = {f: getattr(src, f) for f in WEIGHT_GEOMETRY if getattr(src, f) != getattr(cfg.model, f)}
    notes = [f"model.{k}: {getattr(cfg.model, k)!r} -> {v!r} (from {init})" for k, v in changed.items()]
    return (cfg.model.with_(**changed) if changed else cfg.model), notes
