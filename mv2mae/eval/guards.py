"""What ``eval``, ``probe`` and ``predict`` refuse because it cannot give a true answer.

A score is only true of a model whose weights are numbers and whose classes are the dataset's: NaN
weights turn every softmax into NaN, which argsort ranks first (25 % top-1 on four classes, 100 % top-5,
exit 0), and a 4-class head read against a 2-class dataset names the wrong classes. Each refusal is a
``ValueError`` of one line naming both sides.
"""

from __future__ import annotations

import numpy as np
from torch import nn


def require_finite_weights(model: nn.Module, source: str) -> None:
    """Refuse a model with a NaN or infinite parameter or buffer, naming the first one."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not tensor.isfinite().all():
            bad = int((~tensor.isfinite()).sum())
            raise ValueError(f"{source}: weight {name} holds {bad} non-finite value(s); the model cannot be scored")


def require_dataset_classes(checkpoint_classes: list[str] | None, head_classes: int, dataset_classes: list[str],
                            source: str, data_root: str) -> list[str]:
    """The class names to score with: the dataset's, once the checkpoint's head and recorded classes (if
    it records them) are shown to be the same; otherwise one line naming both."""
    if checkpoint_classes and len(checkpoint_classes) != head_classes:
        raise ValueError(f"{source}: its head has {head_classes} outputs but it records {len(checkpoint_classes)} "
                         f"class names")
    if head_classes != len(dataset_classes) or (checkpoint_classes and list(checkpoint_classes) != dataset_classes):
        ours = checkpoint_classes or f"{head_classes} unnamed"
        raise ValueError(f"{source} was finetuned on {head_classes} classes {_names(ours)}, but {data_root} has "
                         f"{len(dataset_classes)} {_names(dataset_classes)}: its scores would name the wrong classes")
    return list(dataset_classes)


def require_finite_scores(scores: np.ndarray, what: str) -> None:
    if not np.isfinite(scores).all():
        rows = int((~np.isfinite(scores)).any(axis=-1).sum()) if scores.ndim > 1 else 1
        raise ValueError(f"{what}: the model gave non-finite scores for {rows} clip(s); no accuracy is true of them")


def _names(names) -> str:
    if isinstance(names, str):
        return f"({names})"
    shown = ", ".join(map(str, names[:6]))
    return f"[{shown}{', …' if len(names) > 6 else ''}]"
