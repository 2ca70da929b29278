"""Pure aggregation of clip-level softmax outputs into video, camera and fused (multi-view) accuracy.

Testing follows VideoMAE: every test video is seen as several temporal clips × spatial crops and the
softmax probabilities are averaged before the argmax. A *video* is one camera of one group; the
*fused* prediction of a group averages its videos' probabilities over every test camera.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np


def topk_correct(probs: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Bool [n]: is the label among the k most probable classes (ties broken by class index)."""
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return (top == labels[:, None]).any(axis=1)


def _mean_by(ids: Sequence[str], probs: np.ndarray) -> tuple[list[str], np.ndarray]:
    rows: dict[str, list[int]] = defaultdict(list)
    for i, vid in enumerate(ids):
        rows[vid].append(i)
    order = sorted(rows)
    return order, np.stack([probs[rows[v]].mean(axis=0) for v in order])


def _accuracy(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"top1": float(topk_correct(probs, labels, 1).mean()), "top5": float(topk_correct(probs, labels, 5).mean()),
            "count": int(len(labels))}


def aggregate(probs: np.ndarray, video_ids: Sequence[str], keys: Sequence[str], cameras: Sequence[int],
              labels: Sequence[int], num_classes: int) -> dict[str, Any]:
    """Clip rows (softmax ``probs`` [M, C] with their video id, group key, camera and label) -> metrics.

    Returns clip-level accuracy (no averaging, for reference), video-level accuracy overall, per camera
    and per class (``per_class[c]``, and their mean over the classes present: ``mean_class_top1``), fused
    group-level accuracy, and the video-level confusion matrix (rows = true class).
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len({len(video_ids), len(keys), len(cameras), len(labels), len(probs)}) != 1:
        raise ValueError("aggregate: probs, video_ids, keys, cameras and labels must have one row per clip")
    outside = labels[(labels < 0) | (labels >= num_classes)]
    if len(outside):  # np.add.at would count label -1 as the last class
        raise ValueError(f"aggregate: label {int(outside[0])} is none of the {num_classes} classes")
    meta = {}
    for vid, key, cam, lab in zip(video_ids, keys, cameras, labels, strict=True):
        if meta.setdefault(vid, (key, int(cam), int(lab))) != (key, int(cam), int(lab)):
            raise ValueError(f"aggregate: clips of video {vid} disagree on group, camera or label")
    vids, vprobs = _mean_by(video_ids, probs)
    vkeys = [meta[v][0] for v in vids]
    vcams = np.array([meta[v][1] for v in vids])
    vlabels = np.array([meta[v][2] for v in vids])

    groups, gprobs = _mean_by(vkeys, vprobs)
    group_label = {meta[v][0]: meta[v][2] for v in vids}
    glabels = np.array([group_label[g] for g in groups])

    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (vlabels, vprobs.argmax(axis=1)), 1)
    counts = confusion.sum(axis=1)
    per_class = [{"top1": float(confusion[c, c] / counts[c]) if counts[c] else None, "count": int(counts[c])}
                 for c in range(num_classes)]
    return {
        "clips": _accuracy(probs, labels),
        "videos": _accuracy(vprobs, vlabels),
        "per_camera": {int(c): _accuracy(vprobs[vcams == c], vlabels[vcams == c]) for c in sorted(set(vcams.tolist()))},
        "per_class": per_class,
        "mean_class_top1": float(np.mean([p["top1"] for p in per_class if p["count"]])),
        "fused": _accuracy(gprobs, glabels),
        "chance_top1": 1.0 / num_classes,
        "confusion": confusion.tolist(),
    }


def video_predictions(probs: np.ndarray, video_ids: Sequence[str], keys: Sequence[str], cameras: Sequence[int],
                      labels: Sequence[int], class_names: Sequence[str], k: int = 5) -> list[dict[str, Any]]:
    """One row per video (clip softmax averaged, as :func:`aggregate` scores it): its ids, true class and the
    ``k`` most probable classes with their probabilities."""
    meta = {vid: (key, int(cam), int(lab)) for vid, key, cam, lab in zip(video_ids, keys, cameras, labels, strict=True)}
    vids, vprobs = _mean_by(video_ids, np.asarray(probs, dtype=np.float64))
    top = np.argsort(-vprobs, axis=1, kind="stable")[:, :min(k, vprobs.shape[1])]
    rows = []
    for vid, p, best in zip(vids, vprobs, top, strict=True):
        key, cam, lab = meta[vid]
        rows.append({"video_id": vid, "key": key, "camera": cam, "label": class_names[lab],
                     "predicted": class_names[best[0]], "correct": bool(best[0] == lab),
                     "top": [class_names[c] for c in best], "scores": [round(float(p[c]), 6) for c in best]})
    return rows
