"""Tiny model geometry shared by the model tests, and where each token's tubelet lies in a clip."""

from __future__ import annotations

from mv2mae.model import ModelConfig


def tiny_cfg(**overrides) -> ModelConfig:
    """4 frames of 32², tubelet 2×8×8: a 2×4×4 grid of 32 tokens, half of them masked."""
    base = dict(frames=4, image_size=32, tubelet=2, patch=8, embed_dim=48, depth=2, num_heads=3,
                decoder_dim=48, decoder_depth=1, decoder_heads=3, cross_decoder_depth=1, mask_ratio=0.5)
    return ModelConfig(**{**base, **overrides})


def token_coords(cfg: ModelConfig, index: int) -> tuple[int, int, int]:
    _, h, w = cfg.grid
    return index // (h * w), (index // w) % h, index % w


def tubelet_slice(cfg: ModelConfig, index: int):
    """(time, height, width) slices of token ``index``'s tubelet in a [..., C, T, H, W] clip."""
    t, h, w = token_coords(cfg, index)
    return (slice(t * cfg.tubelet, (t + 1) * cfg.tubelet), slice(h * cfg.patch, (h + 1) * cfg.patch),
            slice(w * cfg.patch, (w + 1) * cfg.patch))
