"""The finetuning model: the encoder on all tokens, mean pool, LayerNorm, dropout, linear head.

Its encoder has no final LayerNorm: the pooled features are normalised once, by ``fc_norm`` after the
mean, as in VideoMAE's mean-pooling classifier (and transformers' ``VideoMAEForVideoClassification``
with ``use_mean_pooling``); a pretraining encoder's final norm is dropped when it initialises one
(:func:`mv2mae.model.checkpoint.init_classifier`). [ours, VideoMAE convention]
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mv2mae.model.config import ModelConfig
from mv2mae.model.encoder import Encoder

HEAD_INIT_STD = 2e-5  # a near-zero head: the first steps do not disturb the pretrained encoder


class VideoClassifier(nn.Module):
    def __init__(self, cfg: ModelConfig, num_classes: int, drop_path: float = 0.0,
                 head_dropout: float = 0.0) -> None:
        super().__init__()
        self.cfg = cfg.with_(encoder_final_norm=False)  # what its checkpoints record
        self.num_classes = num_classes
        self.encoder = Encoder(self.cfg, drop_path=drop_path)
        self.fc_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.head_drop = nn.Dropout(head_dropout)
        self.head = nn.Linear(cfg.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=HEAD_INIT_STD)
        nn.init.zeros_(self.head.bias)

    def check_input(self, video: torch.Tensor) -> None:
        c, t, h, w = self.cfg.channels, self.cfg.frames, self.cfg.image_size, self.cfg.image_size
        if video.dim() != 5 or tuple(video.shape[1:]) != (c, t, h, w):
            raise ValueError(f"VideoClassifier expects video [B, {c}, {t}, {h}, {w}], got {list(video.shape)}")

    def forward_tokens(self, video: torch.Tensor) -> torch.Tensor:
        """Every token, no masking and no final norm: [B, C, T, H, W] -> [B, N, D]."""
        self.check_input(video)
        return self.encoder(video)

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        """Pooled, normalised clip features [B, D]: what the head reads (and what ``mv2mae embed`` and
        ``mv2mae probe`` return for a finetuned checkpoint)."""
        return self.fc_norm(self.forward_tokens(video).mean(dim=1))

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(feats))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(video))

    # ------------------------------------------------------------------ timm optimiser helpers
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        # position embeddings are fixed buffers; 1-D params are excluded by timm already
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Layer groups for :func:`timm.optim.param_groups_layer_decay`: stem, one per block, then
        ``fc_norm`` and the head (unmatched names fall into the last, undecayed layer)."""
        return dict(stem=r"^encoder\.patch_embed", blocks=r"^encoder\.blocks\.(\d+)")


class PooledEncoder(nn.Module):
    """A pretraining encoder as a feature extractor, with :class:`VideoClassifier`'s feature interface:
    every token (the encoder's final norm included where it has one), mean-pooled."""

    def __init__(self, encoder: Encoder, cfg: ModelConfig) -> None:
        super().__init__()
        self.encoder, self.cfg = encoder, cfg

    def forward_tokens(self, video: torch.Tensor) -> torch.Tensor:
        return self.encoder(video)

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(video).mean(dim=1)
