"""The two decoders: self-view (plain VideoMAE decoder) and cross-view (CroCo-style blocks).

Both take encoded visible tokens plus the visible/masked token indices and return predictions for
the masked tokens, in increasing token order, as [B, M, patch_dim].
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from timm.models.vision_transformer import Attention
from torch import nn

from mv2mae.model.config import ModelConfig
from mv2mae.model.embed import build_pos_embed
from mv2mae.model.encoder import init_weights, make_blocks
from mv2mae.model.masking import gather_tokens


def _decoder_input(tokens: torch.Tensor, mask_token: torch.Tensor, pos: torch.Tensor,
                   ids_visible: torch.Tensor, ids_masked: torch.Tensor) -> torch.Tensor:
    """[visible tokens + their positions ; mask tokens + masked positions] -> [B, N, Dd]."""
    b = tokens.shape[0]
    pos = pos.to(tokens.dtype).expand(b, -1, -1)
    visible = tokens + gather_tokens(pos, ids_visible)
    masked = mask_token.to(tokens.dtype) + gather_tokens(pos, ids_masked)
    return torch.cat([visible, masked], dim=1)


class SelfViewDecoder(nn.Module):
    """VideoMAE decoder: reconstruct a view's masked tokens from its own visible tokens."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(cfg.embed_dim, cfg.decoder_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
        self.register_buffer("pos_embed", build_pos_embed(cfg, cfg.decoder_dim), persistent=False)
        self.blocks = make_blocks(cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads, cfg)
        self.norm = nn.LayerNorm(cfg.decoder_dim, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.decoder_dim, cfg.patch_dim)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, encoded: torch.Tensor, ids_visible: torch.Tensor, ids_masked: torch.Tensor) -> torch.Tensor:
        x = _decoder_input(self.proj(encoded), self.mask_token, self.pos_embed, ids_visible, ids_masked)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, ids_visible.shape[1]:]))


class CrossAttention(nn.Module):
    """Multi-head attention of queries x [B, Nq, D] over a memory [B, Nk, D] (fused SDPA)."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        b, nq, d = x.shape
        q = self.q(x).view(b, nq, self.heads, -1).transpose(1, 2)
        k, v = self.kv(memory).view(b, memory.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, nq, d))


class CrossViewBlock(nn.Module):
    """x = x + SelfAttn(LN x); x = x + CrossAttn(LN x, LN mem); x = x + MLP(LN x)."""

    def __init__(self, dim: int, heads: int, cfg: ModelConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        norm = partial(nn.LayerNorm, eps=cfg.norm_eps)
        self.norm1 = norm(dim)
        self.attn = Attention(dim, num_heads=heads, qkv_bias=cfg.qkv_bias)
        self.norm2 = norm(dim)
        self.norm_mem = norm(dim)
        self.cross_attn = CrossAttention(dim, heads, qkv_bias=cfg.qkv_bias)
        self.norm3 = norm(dim)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.cross_attn(self.norm2(x), self.norm_mem(memory)))
        return x + self.drop_path(self.mlp(self.norm3(x)))


class CrossViewDecoder(nn.Module):
    """Reconstruct the target view's masked tokens while attending to the source views' visible tokens."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.proj_target = nn.Linear(cfg.embed_dim, cfg.decoder_dim, bias=False)
        self.proj_source = nn.Linear(cfg.embed_dim, cfg.decoder_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
        self.register_buffer("pos_embed", build_pos_embed(cfg, cfg.decoder_dim), persistent=False)
        self.blocks = nn.ModuleList(CrossViewBlock(cfg.decoder_dim, cfg.decoder_heads, cfg)
                                    for _ in range(cfg.cross_decoder_depth))
        self.norm = nn.LayerNorm(cfg.decoder_dim, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.decoder_dim, cfg.patch_dim)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, target: torch.Tensor, ids_visible: torch.Tensor, ids_masked: torch.Tensor,
                sources: torch.Tensor, source_ids_visible: torch.Tensor) -> torch.Tensor:
        """target [B, n, D]; sources [B, K, n, D] with their visible ids [B, K, n]."""
        x = _decoder_input(self.proj_target(target), self.mask_token, self.pos_embed, ids_visible, ids_masked)
        b, k, n, _ = sources.shape
        pos = self.pos_embed.to(sources.dtype).expand(b * k, -1, -1)
        memory = self.proj_source(sources.flatten(0, 1)) + gather_tokens(pos, source_ids_visible.flatten(0, 1))
        memory = memory.view(b, k * n, -1)  # K sources attend as one concatenated memory
        for block in self.blocks:
            x = block(x, memory)
        return self.head(self.norm(x[:, ids_visible.shape[1]:]))
