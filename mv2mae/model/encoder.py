"""The ViT encoder shared by every view: tubelet embedding, fixed positions, timm blocks (fused SDPA)."""

from __future__ import annotations

from functools import partial

import torch
from timm.models.vision_transformer import Block
from torch import nn

from mv2mae.model.config import ModelConfig
from mv2mae.model.embed import ToNormalizedClip, TubeletEmbed, build_pos_embed
from mv2mae.model.masking import gather_tokens


def init_weights(module: nn.Module) -> None:
    """MAE/VideoMAE initialisation: xavier-uniform linears and patch projection, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv3d):
        # treat the tubelet projection as the linear layer it is
        nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def make_blocks(dim: int, depth: int, heads: int, cfg: ModelConfig, drop_path: float = 0.0) -> nn.ModuleList:
    rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
    return nn.ModuleList(
        Block(dim, heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, drop_path=rate,
              norm_layer=partial(nn.LayerNorm, eps=cfg.norm_eps))
        for rate in rates
    )


class Encoder(nn.Module):
    """Clip [B, C, T, H, W] (+ visible ids [B, n]) -> encoded tokens [B, n, D] (n = N when ids is None).

    The clip is uint8 pixels (normalised here, :class:`ToNormalizedClip`) or an already normalised float clip."""

    def __init__(self, cfg: ModelConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        self.cfg = cfg
        self.normalize = ToNormalizedClip(cfg)
        self.patch_embed = TubeletEmbed(cfg)
        # fixed, recomputed from the config: never stored in checkpoints, adapts to the geometry
        self.register_buffer("pos_embed", build_pos_embed(cfg, cfg.embed_dim), persistent=False)
        self.blocks = make_blocks(cfg.embed_dim, cfg.depth, cfg.num_heads, cfg, drop_path)
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps) if cfg.encoder_final_norm else nn.Identity()
        self.apply(init_weights)

    def forward(self, clip: torch.Tensor, ids_visible: torch.Tensor | None = None) -> torch.Tensor:
        x = self.patch_embed(self.normalize(clip), ids_visible)
        pos = self.pos_embed.to(x.dtype)
        if ids_visible is not None:
            pos = gather_tokens(pos.expand(x.shape[0], -1, -1), ids_visible)
        x = x + pos
        for block in self.blocks:
            x = block(x)
        return self.norm(x)
