"""Frozen-feature probes: the quick check of view invariance between pretraining and finetuning.

Features are :func:`mv2mae.model.checkpoint.load_feature_model`'s (a pretraining checkpoint: the
encoder's tokens with its final norm, mean-pooled; a finetuned one: its head's input), no masking,
averaged over each video's clips × crops.
Train features come from the protocol's train split (train cameras), test features from its test
split (test cameras), so a probe trained on cameras 2 and 3 is scored on the unseen camera 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from mv2mae.data.config import DataConfig
from mv2mae.eval.evaluate import EVAL_BATCH, eval_loader, gather_rows, predict
from mv2mae.eval.guards import require_finite_scores
from mv2mae.eval.metrics import aggregate
from mv2mae.train.distributed import DistEnv

METHODS = ("linear", "knn")


def video_features(model: nn.Module, data: DataConfig, env: DistEnv, split: str,
                   batch_size: int = EVAL_BATCH) -> dict[str, Any]:
    rows = gather_rows(predict(model, eval_loader(model.cfg, data, env, split, batch_size), env, features=True,
                               what=f"features of {split} {data.protocol}"))
    if not rows["out"]:
        raise ValueError(f"{data.root}: protocol {data.protocol} split {split} produced no clips")
    feats = np.asarray(rows["out"], dtype=np.float32)
    order: dict[str, list[int]] = {}
    for i, vid in enumerate(rows["video_id"]):
        order.setdefault(vid, []).append(i)
    vids = sorted(order)
    first = [order[v][0] for v in vids]
    return {"x": np.stack([feats[order[v]].mean(axis=0) for v in vids]), "video_id": vids,
            "key": [rows["key"][i] for i in first], "camera": [rows["camera"][i] for i in first],
            "label": np.asarray([rows["label"][i] for i in first])}


def standardise(train: np.ndarray, test: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-6
    return torch.from_numpy((train - mean) / std).float(), torch.from_numpy((test - mean) / std).float()


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, num_classes: int,
                 steps: int = 300, lr: float = 0.01, weight_decay: float = 1e-3, seed: int = 0) -> torch.Tensor:
    """Multinomial logistic regression, full batch (features are few); returns test softmax [n, C]."""
    gen = torch.Generator().manual_seed(seed)
    head = nn.Linear(train_x.shape[1], num_classes)
    nn.init.normal_(head.weight, std=0.01, generator=gen)
    nn.init.zeros_(head.bias)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(head(train_x), train_y).backward()
        opt.step()
    with torch.no_grad():
        return head(test_x).softmax(dim=-1)


def knn_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, num_classes: int,
              k: int = 20, temperature: float = 0.07) -> torch.Tensor:
    """Cosine k-NN with exp(sim/T)-weighted votes (the instance-discrimination convention)."""
    a = nn.functional.normalize(train_x, dim=1)
    b = nn.functional.normalize(test_x, dim=1)
    sim, idx = (b @ a.T).topk(min(k, len(a)), dim=1)
    votes = torch.zeros(len(b), num_classes)
    votes.scatter_add_(1, train_y[idx], (sim / temperature).exp())
    return votes / votes.sum(dim=1, keepdim=True)


def run_probe(model: nn.Module, data: DataConfig, env: DistEnv, methods: Sequence[str], num_classes: int,
              batch_size: int = EVAL_BATCH) -> dict[str, dict[str, Any]]:
    """Results per method (``linear``, ``knn``) on one extraction of the features: fit on one clip and crop
    per train video (``eval_clips = eval_crops = 1``: features are cheap to fit but slow to extract), score
    on the test split with the full clips × crops. The probe fits on the whole train split: it chooses no
    model, so no validation share (``data.val_by``) is held out of it."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"probe method(s) {unknown or 'none'}: choose from {METHODS}")
    train = video_features(model, replace(data, eval_clips=1, eval_crops=1, val_by="none"), env, "train", batch_size)
    test = video_features(model, data, env, "test", batch_size)
    tr_x, te_x = standardise(train["x"], test["x"])
    tr_y = torch.from_numpy(train["label"]).long()
    out = {}
    for method in methods:
        probs = (linear_probe(tr_x, tr_y, te_x, num_classes) if method == "linear"
                 else knn_probe(tr_x, tr_y, te_x, num_classes)).numpy()
        require_finite_scores(probs, f"{data.root} ({method} probe)")
        results = aggregate(probs, test["video_id"], test["key"], test["camera"], test["label"], num_classes)
        results.update(method=method, protocol=data.protocol, train_videos=len(train["video_id"]),
                       test_videos=len(test["video_id"]))
        out[method] = results
    return out

