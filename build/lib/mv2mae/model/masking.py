"""Per-view token masking with a fixed visible count, so views and samples batch together."""

from __future__ import annotations

import torch

from mv2mae.model.config import ModelConfig


def sample_mask(cfg: ModelConfig, batch: int, device: torch.device | str,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool mask [batch, N] (True = masked), exactly ``cfg.num_masked`` True per row.

    ``random`` draws tokens uniformly; ``tube`` masks the same spatial positions in every
    temporal slot (VideoMAE's tube masking). Noise is drawn on ``device`` from ``generator``.
    """
    t, h, w = cfg.grid
    per_row = cfg.num_tokens if cfg.mask_type == "random" else h * w
    n_mask = cfg.num_masked if cfg.mask_type == "random" else cfg.num_masked // t
    # a CPU generator may drive a GPU model: draw where the generator lives, then move
    noise_device = generator.device if generator is not None else device
    noise = torch.rand(batch, per_row, device=noise_device, generator=generator).to(device)
    ranks = noise.argsort(dim=1)
    mask = torch.zeros(batch, per_row, dtype=torch.bool, device=device)
    mask.scatter_(1, ranks[:, :n_mask], True)
    if cfg.mask_type == "tube":
        mask = mask[:, None, :].expand(batch, t, per_row).reshape(batch, t * per_row)
    return mask


def split_indices(mask: torch.Tensor, num_visible: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of visible and masked tokens, each in increasing token order.

    A stable sort of the 0/1 mask puts visible tokens first and masked tokens after, both keeping
    their canonical order — so predictions, targets and weights line up without a restore step.
    """
    order = mask.to(torch.uint8).argsort(dim=-1, stable=True)
    return order[..., :num_visible], order[..., num_visible:]


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x [..., N, D] (or [..., N]), ids [..., M] -> [..., M, D] (or [..., M])."""
    dim = ids.dim() - 1
    if x.dim() == ids.dim():
        return x.gather(dim, ids)
    return x.gather(dim, ids[..., None].expand(*ids.shape, x.shape[-1]))
