"""The two things the loop trains — MV2MAE pretraining and classifier finetuning — and their data.

A task builds its model and turns one batch on the device into a loss (``train_step``); a
:class:`ShardSource` is the stream of training batches of one protocol's train split. They implement the
loop's :class:`~mv2mae.train.loop.Task` and :class:`~mv2mae.train.loop.DataSource` protocols (the loop
imports nothing from here); tests hand the loop their own.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn

from mv2mae.config import ConfigError, RunConfig
from mv2mae.data.loaders import build_finetune_loader, build_pretrain_loader
from mv2mae.data.splits import ShardSplit, check_pretrain_views
from mv2mae.model.checkpoint import WEIGHT_GEOMETRY, config_of, init_classifier, init_mv2mae, load_checkpoint
from mv2mae.model.classifier import VideoClassifier
from mv2mae.model.config import ModelConfig
from mv2mae.model.embed import ToNormalizedClip
from mv2mae.model.mv2mae import MV2MAE
from mv2mae.train.checkpoint import BEST_VAL_TOP1
from mv2mae.train.distributed import DistEnv
from mv2mae.train.loop import StepResult, Trainer, step_seed
from mv2mae.train.recon import save_reconstruction

# (data, env, class names) -> a function scoring a model on the validation split: what fit_stage is given
MakeValidator = Callable[[Any, DistEnv, list[str]], Callable[[nn.Module], dict[str, float]]]
log = logging.getLogger(__name__)


class ShardSource:
    """Training batches of one protocol's train split, from a preprocessed dataset directory."""

    def __init__(self, cfg: RunConfig, env: DistEnv, kind: str) -> None:
        if not cfg.data.root:
            raise ValueError("no dataset directory: pass --data DIR (or set data.root)")
        self.cfg, self.env, self.kind = cfg, env, kind
        # finetuning trains on the train split less its validation share; pretraining on all of it
        held_out = (cfg.data.val_by, cfg.data.val_fraction) if kind == "finetune" else ("none", 0.0)
        self.split = ShardSplit.open(cfg.data.root, cfg.data.protocol, "train", *held_out,
                                     train_subjects=cfg.data.train_subjects)
        check_crop(cfg, self.split.index.short_side)
        if kind == "pretrain":  # here, before the loop prints the config or makes the run folder
            check_pretrain_views(self.split, cfg.data)
        self.training = self._training_split() if kind == "finetune" else {}

    def _training_split(self) -> dict[str, Any]:
        """What finetuning trains on, as its checkpoints record it (``mv2mae eval`` copies it into results.json):
        the protocol's whole official training split (the paper's protocol), or that split less the subjects
        (shards) held out for validation, and how many training videos that is."""
        d, videos = self.cfg.data, self.split.selection.videos
        record: dict[str, Any] = {"protocol": d.protocol, "val_by": d.val_by, "train_videos": videos}
        if d.val_by == "none":
            return record | {"split": "the whole official training split"}
        val = ShardSplit.open(d.root, d.protocol, "val", d.val_by, d.val_fraction,
                              train_subjects=d.train_subjects).selection
        units = len({v for s in val.shards for v in s.subjects}) if d.val_by == "subject" else len(val.shards)
        return record | {"held_out_videos": val.videos,
                         "split": f"the official training split less {units} {d.val_by}(s) held out for "
                                  f"validation ({val.videos:,} videos)"}

    @property
    def num_classes(self) -> int:
        return self.split.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self.split.index.classes)

    def samples_per_epoch(self) -> int:
        """Pretraining: one multi-view sample per group that holds enough of the allowed cameras (with
        ``data.repeats`` = r, an epoch still counts that many samples, cut from 1/r of the groups: MAE-ST's
        effective epochs). Finetuning: an epoch is a pass over the videos (each allowed camera of a group
        is one; a stream sample draws one of them at random)."""
        if self.kind == "pretrain":
            return self.split.selection.groups_with_views(self.cfg.data.views)
        return self.split.selection.videos

    def describe(self) -> str:
        """One line on what the train split holds, and what pretraining leaves out for want of views."""
        sel = self.split.selection
        line = (f"data: {self.split.root} · protocol {sel.protocol}/train · {sel.groups} groups in "
                f"{len(sel.shards)} shards · cameras {sel.cameras}")
        if self.kind == "pretrain":
            skipped = sel.groups - sel.groups_with_views(self.cfg.data.views)
            line += f" · {skipped} group(s) with fewer than {self.cfg.data.views} of those cameras skipped"
        else:
            kept = ("tested at the last step" if self.cfg.data.val_by == "none" else
                    f"the best validation step kept as {BEST_VAL_TOP1}")
            line += f"\nfinetuning on {self.training['split']}: {self.training['train_videos']:,} videos; {kept}"
        return line

    def batches(self, start: int) -> Iterator[dict[str, Any]]:
        """This rank's micro-batches, starting after ``start`` already-consumed ones (a resumed run); with
        ``data.decode_on`` device (the default on CUDA) their video is decoded on this rank's device."""
        seed, skip = self.cfg.loop.seed, start
        if start and self.cfg.loop.resume_data == "reseed":
            seed, skip = step_seed(seed, start, 0) % 2**31, 0
        build = build_pretrain_loader if self.kind == "pretrain" else build_finetune_loader
        # exact resume: the stream replays the sampling of the ``skip`` consumed batches, without decoding them
        yield from build(self.cfg.model, self.cfg.data, "train", batch_size=self.cfg.optim.batch_size, seed=seed,
                         rank=self.env.rank, world_size=self.env.world_size, pin_memory=self.env.device.type == "cuda",
                         start=skip, device=self.env.device)


def check_crop(cfg: RunConfig, short_side: int) -> None:
    """Refuse a crop the stored frames cannot give without upscaling every sample (a huge
    ``model.image_size`` would otherwise run until the loader's memory runs out), and warn when a typical
    random crop (the mean area of ``data.crop_scale``) is upscaled."""
    size = cfg.model.image_size
    if size > short_side:
        raise ConfigError(f"model.image_size={size} is larger than the stored frames of {cfg.data.root} (short side "
                          f"{short_side}): use model.image_size <= {short_side}, or preprocess with --size {size}")
    typical = short_side * math.sqrt(sum(cfg.data.crop_scale) / 2)
    if size > typical:
        log.warning("model.image_size=%d upscales a typical crop (%.0f px of the stored %d-px short side at "
                    "data.crop_scale=%s): consider preprocessing with a larger --size", size, typical, short_side,
                    list(cfg.data.crop_scale))


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
        out = model(batch["video"], motion, generator=generator, tau=self.cfg.motion_tau)
        return StepResult(out.loss, {"loss_self": out.loss_self, "loss_cross": out.loss_cross},
                          samples=batch["video"].shape[0])

    def checkpoint_extra(self) -> dict[str, Any]:
        return {}

    def snapshot(self, model: nn.Module, batch: dict[str, Any], step: int, run_dir: Path) -> Path | None:
        """A picture of the model's reconstructions of ``batch``."""
        return save_reconstruction(model, batch, run_dir / "recon" / f"step-{step:08d}.png",
                                   title=f"step {step}", seed=self.cfg.loop.seed)


class FinetuneTask:
    name = "finetune"

    def __init__(self, cfg: RunConfig, num_classes: int, class_names: list[str] | None = None,
                 fps: float | None = None, training: dict[str, Any] | None = None) -> None:
        self.cfg, self.num_classes, self.fps, self.training = cfg, num_classes, fps, training or {}
        self.class_names = class_names or [f"class_{i}" for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for finetune.num_classes={num_classes}")
        ft = cfg.finetune
        self.mixup = None
        if ft.mixup > 0 or ft.cutmix > 0:
            if cfg.optim.batch_size % 2:
                raise ValueError(f"mixup/cutmix pair samples within a batch: optim.batch_size must be even, "
                                 f"got {cfg.optim.batch_size}")
            self.mixup = Mixup(mixup_alpha=ft.mixup, cutmix_alpha=ft.cutmix, prob=ft.mixup_prob,
                               switch_prob=ft.switch_prob, mode="batch", label_smoothing=ft.label_smoothing,
                               num_classes=num_classes)
            # mixing needs floats: the model's own normalisation first (the model takes float clips as they are)
            self.normalize = ToNormalizedClip(cfg.model)
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

    def checkpoint_extra(self) -> dict[str, Any]:
        """The class names and the stored frame rate travel with the classifier: predict and export need no
        dataset directory; and what it was trained on (``ShardSource.training``), which eval reports."""
        return {"classes": self.class_names, "fps": self.fps, "training": self.training}

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


def with_init(cfg: RunConfig, init: str | Path | None) -> tuple[RunConfig, list[str]]:
    """``cfg`` ready to run: a finetuning run starting from ``init`` (or ``finetune.init``) records it and
    takes the checkpoint's weight-tied model fields; returns what was changed."""
    init = str(init or (cfg.finetune.init if cfg.stage == "finetune" else ""))
    if cfg.stage != "finetune" or not init:
        return cfg, []
    model_cfg, notes = finetune_model_config(cfg, init)
    return replace(cfg, model=model_cfg, finetune=replace(cfg.finetune, init=init)), notes


def fit_stage(cfg: RunConfig, run_dir: str | Path, env: DistEnv, resume: str | None = None,
              pretrain_init: str | Path | None = None, make_validator: MakeValidator | None = None) -> dict[str, Any]:
    """Train ``cfg`` (a pretraining or, after :func:`with_init`, a finetuning run) into ``run_dir`` on this
    process group's share of its protocol's train split: what ``mv2mae pretrain|finetune`` run.
    ``pretrain_init`` starts pretraining from a checkpoint's weights; a finetuning run with a validation
    split (``data.val_by``) is scored by what ``make_validator(data, env, class_names)`` returns
    (``mv2mae.eval.evaluate.validator``; evaluation sits above training); returns the loop's summary."""
    source = ShardSource(cfg, env, cfg.stage)
    validate = None
    if cfg.stage == "pretrain":
        task: PretrainTask | FinetuneTask = PretrainTask(cfg, init=str(pretrain_init) if pretrain_init else "")
    else:
        classes = cfg.finetune.num_classes or source.num_classes
        task = FinetuneTask(cfg, classes, source.class_names if classes == source.num_classes else None,
                            fps=source.split.index.fps, training=source.training)
        if cfg.data.val_by != "none":
            if make_validator is None:
                raise ValueError(f"data.val_by={cfg.data.val_by} needs a validator; set data.val_by=none to "
                                 f"finetune without a validation split")
            validate = make_validator(cfg.data, env, task.class_names)
    return Trainer(cfg, task, source, run_dir, env, resume=resume, validate=validate).fit()
