"""Tubelet embedding and fixed position embeddings.

Token order (everywhere in mv2mae): the Conv3d output [B, D, T', H', W'] flattened t-major, then h,
then w — index = t'·H'·W' + h'·W' + w'.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mv2mae.model.config import ModelConfig


class ToNormalizedClip(nn.Module):
    """A clip as the model takes it, normalised: uint8 pixels [..., C, T, H, W] -> float32
    ``(x - 255·mean) / (255·std)`` with the config's ``pixel_mean``/``pixel_std`` (the model's one input
    normalisation, on whatever device the model is); a float clip is returned as it is. Named for what it
    returns, not "PixelNormalize": it normalises only what is not normalised yet.

    Loaders hand out uint8 clips (a quarter of the bytes of floats through shared memory and across
    to the GPU) and the model normalises them here. A floating-point clip is taken as normalised
    already and passes unchanged (converted weights' parity tests and synthetic benchmarks feed those).
    The statistics are buffers so they follow ``.to(device)`` without a host copy per step; they are
    not saved (``persistent=False``): they are config, so checkpoints keep their keys and old ones load.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        shape = (cfg.channels, 1, 1, 1)
        self.register_buffer("shift", torch.tensor(cfg.pixel_mean).view(shape) * 255.0, persistent=False)
        self.register_buffer("scale", torch.tensor(cfg.pixel_std).view(shape) * 255.0, persistent=False)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.is_floating_point():
            return video
        if video.dtype != torch.uint8:
            raise TypeError(f"video must be uint8 pixels or a normalised float clip, got {video.dtype}")
        # one converting copy into contiguous memory (loader batches are channels-last views), then in place
        out = video.to(torch.float32, memory_format=torch.contiguous_format)
        return out.sub_(self.shift).div_(self.scale)


class TubeletEmbed(nn.Module):
    """Strided Conv3d: clip [B, C, T, H, W] -> tokens [B, N, D] in the canonical token order.

    With ``ids`` only those tokens are embedded: a stride-equals-kernel Conv3d is one linear map per
    tubelet, so the masked ~70% of a pretraining clip need not be projected at all (nor back-propagated).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.tubelet_size = cfg.tubelet_size
        self.proj = nn.Conv3d(cfg.channels, cfg.embed_dim, kernel_size=cfg.tubelet_size,
                              stride=cfg.tubelet_size)

    def forward(self, clip: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        if ids is None:
            return self.proj(clip).flatten(2).transpose(1, 2)
        b, c, t, h, w = clip.shape
        kt, kh, kw = self.tubelet_size
        # [B, N, C·kt·kh·kw] with each tubelet flattened in the conv weight's (C, kt, kh, kw) order
        tubes = clip.reshape(b, c, t // kt, kt, h // kh, kh, w // kw, kw).permute(0, 2, 4, 6, 1, 3, 5, 7)
        tubes = tubes.reshape(b, -1, c * kt * kh * kw)
        tubes = tubes.gather(1, ids[..., None].expand(*ids.shape, tubes.shape[-1]))
        return F.linear(tubes, self.proj.weight.flatten(1), self.proj.bias)


def _sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """[P] float positions -> [P, dim]: first half sin, second half cos (MAE's 2D convention)."""
    freqs = 1.0 / (10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2)))
    angles = positions.to(torch.float64)[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_3d(grid: tuple[int, int, int], dim: int) -> torch.Tensor:
    """Separable 3D sin-cos embedding [T'·H'·W', dim] in the canonical token order.

    Each axis gets an even share of the channels (h and w equal, t the remainder), so any even
    width works, including ViT-L's 1024.
    """
    t, h, w = grid
    d_hw = 2 * (dim // 6)
    d_t = dim - 2 * d_hw
    tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    emb = torch.cat([_sincos_1d(tt.flatten(), d_t), _sincos_1d(hh.flatten(), d_hw),
                     _sincos_1d(ww.flatten(), d_hw)], dim=1)
    return emb.float()


def sinusoid_1d_table(num: int, dim: int) -> torch.Tensor:
    """VideoMAE's table [num, dim]: angle pos/10000^(2⌊j/2⌋/dim), sin on even j, cos on odd j."""
    pos = torch.arange(num, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)[None]
    angles = pos / torch.pow(torch.tensor(10000.0, dtype=torch.float64), 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.empty_like(angles)
    table[:, 0::2] = angles[:, 0::2].sin()
    table[:, 1::2] = angles[:, 1::2].cos()
    return table.float()


def resample_token_grid(table: torch.Tensor, src: tuple[int, int, int], dst: tuple[int, int, int]) -> torch.Tensor:
    """Trilinearly resample a per-token table [N_src, D] laid out on ``src`` onto ``dst``."""
    if tuple(src) == tuple(dst):
        return table
    dim = table.shape[-1]
    vol = table.reshape(*src, dim).permute(3, 0, 1, 2)[None]
    vol = F.interpolate(vol, size=tuple(dst), mode="trilinear", align_corners=False)
    return vol[0].permute(1, 2, 3, 0).reshape(math.prod(dst), dim)


def build_pos_embed(cfg: ModelConfig, dim: int) -> torch.Tensor:
    """Fixed position embedding [1, N, dim] for ``cfg``'s token grid.

    ``sincos3d`` is a function of (t', h', w') and extends to any grid by construction;
    ``sinusoid1d`` (VideoMAE) indexes tokens linearly, so for another grid it is built on the
    reference grid and resampled — never silently re-indexed.
    """
    if cfg.pos_embed == "sincos3d":
        return sincos_3d(cfg.grid, dim)[None]
    ref = cfg.pos_embed_reference_grid or cfg.grid
    table = sinusoid_1d_table(math.prod(ref), dim)
    return resample_token_grid(table, ref, cfg.grid)[None]
