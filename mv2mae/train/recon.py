"""Reconstruction pictures: for every view, the original clip, what the encoder saw (masked input) and
the self-view reconstruction; for the target view also the cross-view reconstruction. One column per
tubelet (its first frame), pixels de-normalised to what a person would see."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mv2mae.shards.atomic import write_atomic


@torch.no_grad()
def reconstruction_rows(model: nn.Module, batch: dict[str, Any], seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """(label, frames [T', H, W, C] in [0, 1]) rows for the first sample of ``batch``."""
    video = batch["video"][:1]  # uint8 pixels, or a normalised float clip: the model takes either
    motion = batch.get("motion")
    motion = motion[:1].float() if motion is not None else None
    gen = torch.Generator(device=video.device)
    gen.manual_seed(seed)
    out = model(video, motion, generator=gen)
    clips = model.reconstructions(video, out)
    step = model.cfg.tubelet
    cams = batch.get("cameras")

    def frames(clip: torch.Tensor) -> np.ndarray:  # [C, T, H, W] -> [T', H, W, C]
        return clip[:, ::step].permute(1, 2, 3, 0).float().cpu().numpy()

    rows = []
    for v in range(video.shape[1]):
        role = "target" if v == 0 else f"source {v}"
        name = f"{role} (cam {int(cams[0, v])})" if cams is not None else role
        rows.append((f"{name}\noriginal", frames(clips["original"][0, v])))
        rows.append((f"{name}\nmasked input", frames(clips["masked"][0, v])))
        rows.append((f"{name}\nself-view recon", frames(clips["self"][0, v])))
        if v == 0 and "cross" in clips:
            rows.append((f"{name}\ncross-view recon", frames(clips["cross"][0])))
    return rows


def save_reconstruction(model: nn.Module, batch: dict[str, Any], path: Path, title: str = "",
                        seed: int = 0) -> Path:
    import matplotlib  # imported here: slow to load, and only needed when a picture is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = reconstruction_rows(model, batch, seed)
    n_rows, n_cols = len(rows), rows[0][1].shape[0]
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.3 * n_cols + 1.2, 1.3 * n_rows + 0.4), squeeze=False)
    for r, (label, frames) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.imshow(np.clip(frames[c], 0, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
            if r == 0:
                ax.set_title(f"t{c}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".") or "png"))
    finally:
        plt.close(fig)
    return path
