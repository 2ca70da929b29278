"""Evaluation of a finetuned checkpoint: one exact pass over a protocol's test split (split across
ranks), clip softmax gathered on rank 0, aggregated, written as ``results.json`` (per camera, fused and
per class), ``predictions.csv`` (one row per video) and a confusion PNG. The same pass over the
validation split scores finetuning runs as they train (:func:`validator`)."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import track
from torch import nn

from mv2mae.config import RunConfig
from mv2mae.data.config import DataConfig
from mv2mae.data.loaders import build_eval_loader
from mv2mae.eval.guards import require_finite_scores
from mv2mae.eval.metrics import aggregate, video_predictions
from mv2mae.model.config import ModelConfig
from mv2mae.shards.atomic import holds_only, publish_dir, write_atomic
from mv2mae.train.checkpoint import BEST_VAL_TOP1, BEST_VAL_TOP1_EMA
from mv2mae.train.distributed import DistEnv, gather_objects

RESULTS_FILE = "results.json"
PREDICTIONS_FILE = "predictions.csv"
CONFUSION_FILE = "confusion.png"
EVAL_FILES = (RESULTS_FILE, PREDICTIONS_FILE, CONFUSION_FILE)  # what an eval folder holds


EVAL_BATCH = 16  # clips per evaluation batch (``--batch-size``)


def data_from_checkpoint(ckpt: dict[str, Any], root: str | None = None, protocol: str | None = None,
                         **overrides: Any) -> DataConfig:
    """The checkpoint's own ``data`` section (root, protocol, stride, test clips × crops, workers), so a model
    is tested the way it was trained; arguments that are not None override it (``eval_clips=…``)."""
    data = RunConfig.from_dict(ckpt["run_config"]).data if "run_config" in ckpt else DataConfig(protocol="")
    changes = {k: v for k, v in dict(root=root, protocol=protocol, **overrides).items() if v is not None}
    data = replace(data, **changes)
    if not data.root or not data.protocol:
        raise ValueError("the checkpoint does not name its dataset: pass --data DIR and --protocol NAME")
    return data


def eval_loader(model_cfg: ModelConfig, data: DataConfig, env: DistEnv, split: str = "test",
                batch_size: int = EVAL_BATCH) -> Iterable[dict]:
    """The exact pass over ``split`` (this rank's share), decoded where ``data.decode_on`` says for this
    rank's device; :func:`predict` feeds the uint8 clips to the model, which normalises them. Test
    clips need no motion weights."""
    data = replace(data, motion="none")
    return build_eval_loader(model_cfg, data, split, batch_size=batch_size, rank=env.rank,
                             world_size=env.world_size, pin_memory=env.device.type == "cuda", device=env.device)


def _with_progress(loader: Iterable[dict], env: DistEnv, what: str) -> Iterable[dict]:
    """``loader`` with a progress bar on rank 0, in batches of this rank's estimated share of the clips."""
    dataset = getattr(loader, "dataset", None)
    if dataset is None or not env.is_main:
        return loader
    clips = dataset.split.selection.videos * dataset.data.eval_clips * dataset.data.eval_crops
    total = math.ceil(clips / env.world_size / loader.batch_size)
    return track(loader, description=what, total=total, console=Console(stderr=True), transient=True)


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable[dict], env: DistEnv, features: bool = False,
            what: str = "evaluating") -> dict[str, list]:
    """This rank's rows: softmax probabilities (or pooled features) with their ids."""
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if env.device.type == "cuda" else contextlib.nullcontext()
    rows: dict[str, list] = {"out": [], "video_id": [], "key": [], "camera": [], "label": []}
    for batch in _with_progress(loader, env, what):
        video = batch["video"].to(env.device, non_blocking=True)
        with amp:
            out = model.forward_features(video) if features else model(video).float().softmax(dim=-1)
        rows["out"].extend(out.float().cpu().numpy().tolist())
        rows["video_id"].extend(batch["video_id"])
        rows["key"].extend(batch["key"])
        rows["camera"].extend(int(c) for c in batch["camera"])
        rows["label"].extend(int(c) for c in batch["label"])
    return rows


def gather_rows(rows: dict[str, list]) -> dict[str, list]:
    """Every rank's rows, concatenated in rank order (on every rank)."""
    parts = gather_objects(rows)
    return {k: [x for p in parts for x in p[k]] for k in rows}


def evaluate(model: nn.Module, data: DataConfig, env: DistEnv, class_names: list[str], split: str = "test",
             batch_size: int = EVAL_BATCH) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(metrics, one prediction row per video) of ``model`` on ``split``, the same on every rank."""
    t0 = time.perf_counter()
    rows = gather_rows(predict(model, eval_loader(model.cfg, data, env, split, batch_size), env,
                               what=f"{split} {data.protocol}"))
    if not rows["out"]:
        raise ValueError(f"{data.root}: protocol {data.protocol} split {split} produced no test clips")
    probs = np.asarray(rows["out"])
    require_finite_scores(probs, f"{data.root} ({data.protocol} {split})")
    ids = (rows["video_id"], rows["key"], rows["camera"], rows["label"])
    results = aggregate(probs, *ids, num_classes=len(class_names))
    results.update(protocol=data.protocol, split=split, data=str(data.root), clips_per_video=data.eval_clips,
                   crops_per_clip=data.eval_crops, classes=class_names, world_size=env.world_size,
                   seconds=time.perf_counter() - t0)
    return results, video_predictions(probs, *ids, class_names)


def validator(data: DataConfig, env: DistEnv, class_names: list[str],
              batch_size: int = EVAL_BATCH) -> Callable[[nn.Module], dict[str, float]]:
    """What finetuning calls to score a model on the validation split (``data.val_by``): video top-1,
    top-5 and mean-class top-1, tested as ``eval`` tests (``data.eval_clips`` × ``data.eval_crops``)."""

    def validate(model: nn.Module) -> dict[str, float]:
        results, _ = evaluate(model, data, env, class_names, split="val", batch_size=batch_size)
        return {"top1": results["videos"]["top1"], "top5": results["videos"]["top5"],
                "mean_class_top1": results["mean_class_top1"]}

    return validate


def training_protocol(ckpt: dict[str, Any], path: Path) -> dict[str, Any]:
    """What produced a number (results.json ``training``): the split the finetuning trained on and how many
    videos it held, as the run recorded them, and the step tested — the last (the paper's protocol), or
    the best on the validation split — with the two in one sentence (``summary``)."""
    record = dict(ckpt.get("training") or {})
    step, steps = ckpt.get("step"), ckpt.get("steps")
    if step is None:
        tested = "a checkpoint that records no step"
    elif Path(path).name in (BEST_VAL_TOP1, BEST_VAL_TOP1_EMA):
        tested = f"the best validation step (step {step}{f' of {steps}' if steps else ''}, {Path(path).name})"
    elif step == steps:
        tested = f"the last step ({step})"
    else:
        tested = f"step {step}{f' of {steps}' if steps else ''}"
    trained = (f"trained on {record['split']}: {record['train_videos']:,} videos" if "split" in record else
               "trained on a split the checkpoint does not record")
    return record | {"step": step, "steps": steps, "tested_at": tested, "summary": f"{trained}; tested at {tested}"}


def write_results(results: dict[str, Any], videos: list[dict[str, Any]], out_dir: Path,
                  overwrite: bool = False) -> tuple[Path, Path, Path]:
    """``results.json``, ``predictions.csv`` (a row per video: true class, top classes and their scores)
    and the confusion matrix PNG in ``out_dir``, published together (:func:`publish_dir`): a failed or
    killed write leaves the earlier evaluation's files as they were, never some of each."""
    def fill(folder: Path) -> None:
        (folder / RESULTS_FILE).write_text(json.dumps(results, indent=1))
        with (folder / PREDICTIONS_FILE).open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["video_id", "key", "camera", "label", "predicted", "correct", "top", "scores"])
            for v in videos:
                writer.writerow([v["video_id"], v["key"], v["camera"], v["label"], v["predicted"],
                                 int(v["correct"]), "|".join(v["top"]), "|".join(f"{p:.4f}" for p in v["scores"])])
        plot_confusion(np.asarray(results["confusion"]), results["classes"], folder / CONFUSION_FILE,
                       title=f"{results['protocol']} ({results['split']}): video top-1 "
                             f"{100 * results['videos']['top1']:.1f}%")

    publish_dir(out_dir, fill, holds_only(EVAL_FILES), overwrite)
    return out_dir / RESULTS_FILE, out_dir / PREDICTIONS_FILE, out_dir / CONFUSION_FILE


def plot_confusion(confusion: np.ndarray, names: list[str], path: Path, title: str = "") -> Path:
    import matplotlib  # imported here: slow to import, and only pictures need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(names)
    rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    side = min(18.0, 2.5 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        ax.set_xticks(range(n), names, rotation=90, fontsize=8)
        ax.set_yticks(range(n), names, fontsize=8)
        for i in range(n):
            for j in range(n):
                if confusion[i, j]:
                    ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".") or "png"))
    finally:
        plt.close(fig)
    return path
