"""Analytic FLOPs of a pretraining or finetuning step (matmul and attention terms, 2 FLOPs per MAC).

Used for MFU in the training logs and the model benchmark. Norms, softmax, GELU and the loss are
ignored (a few percent). A backward pass costs twice its forward, so a training step is 3×.
"""

from __future__ import annotations

from mv2mae.model.config import ModelConfig


def _block(tokens: int, dim: int, mlp_ratio: float, memory: int = 0) -> float:
    """One transformer block on ``tokens`` tokens; ``memory`` > 0 adds a cross-attention layer."""
    attn = 2 * tokens * dim * 3 * dim + 2 * 2 * tokens * tokens * dim + 2 * tokens * dim * dim
    mlp = 2 * 2 * tokens * dim * int(dim * mlp_ratio)
    cross = 0.0
    if memory:
        cross = (2 * tokens * dim * dim + 2 * memory * dim * 2 * dim + 2 * 2 * tokens * memory * dim
                 + 2 * tokens * dim * dim)
    return attn + mlp + cross


def pretrain_forward_flops(cfg: ModelConfig, views: int) -> dict[str, float]:
    """Forward FLOPs of one multi-view sample, by component (cross decoder only when views > 1)."""
    n_all, n_vis, n_mask = cfg.num_tokens, cfg.num_visible, cfg.num_masked
    d, dd = cfg.embed_dim, cfg.decoder_dim
    embed = 2 * n_all * cfg.patch_dim * d
    encoder = cfg.depth * _block(n_vis, d, cfg.mlp_ratio)
    self_dec = 2 * n_vis * d * dd + cfg.decoder_depth * _block(n_all, dd, cfg.mlp_ratio) + 2 * n_mask * dd * cfg.patch_dim
    out = {"embed": views * embed, "encoder": views * encoder, "self_decoder": views * self_dec, "cross_decoder": 0.0}
    if views > 1:
        sources = views - 1
        memory = sources * n_vis
        out["cross_decoder"] = (2 * (1 + sources) * n_vis * d * dd
                                + cfg.cross_decoder_depth * _block(n_all, dd, cfg.mlp_ratio, memory)
                                + 2 * n_mask * dd * cfg.patch_dim)
    out["total"] = sum(out.values())
    return out


def pretrain_step_flops(cfg: ModelConfig, views: int, batch: int) -> float:
    """Forward + backward FLOPs of one pretraining step on ``batch`` multi-view samples."""
    return 3.0 * batch * pretrain_forward_flops(cfg, views)["total"]
