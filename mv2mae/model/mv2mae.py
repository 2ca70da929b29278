"""The MV2MAE pretraining model: shared encoder, self-view decoder on every view, cross-view decoder
on the target view (view 0) attending to the source views (1..K). A model without the cross-view decoder
(``cfg.cross_view`` false: single-view pretraining, or λ = 0) is a self-view MAE on every view."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mv2mae.model.config import ModelConfig
from mv2mae.model.decoders import CrossViewDecoder, SelfViewDecoder
from mv2mae.model.encoder import Encoder
from mv2mae.model.masking import sample_mask, split_indices
from mv2mae.model.objective import (
    denormalise,
    masked_input_clip,
    mv2mae_loss,
    pixel_targets,
    predictions_to_clip,
)


@dataclass
class PretrainOutput:
    """Everything one step produces; per-token tensors use the canonical token order."""

    loss: torch.Tensor  # scalar: loss_self + λ·loss_cross
    loss_self: torch.Tensor  # scalar: Σ over views of the batch-mean self-view loss
    loss_cross: torch.Tensor  # scalar: batch-mean cross-view loss of the target view (0 with one view or no cross decoder)
    mask: torch.Tensor  # [B, V, N] bool, True = masked
    ids_visible: torch.Tensor  # [B, V, n] visible token ids, increasing
    ids_masked: torch.Tensor  # [B, V, M] masked token ids, increasing (rows of the predictions)
    pred_self: torch.Tensor  # [B, V, M, P]
    pred_cross: torch.Tensor | None  # [B, M, P] for the target view, None with one view or no cross decoder
    target: torch.Tensor  # [B, V, N, P]
    weights: torch.Tensor  # [B, V, N] motion weights (0 on visible tokens)


class MV2MAE(nn.Module):
    def __init__(self, cfg: ModelConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg, drop_path=drop_path)
        self.self_decoder = SelfViewDecoder(cfg)
        self.cross_decoder = CrossViewDecoder(cfg) if cfg.cross_view else None

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters AdamW does not decay besides timm's 1-D rule (biases, norms): the decoders' mask
        tokens, as in VideoMAE. Position tables are fixed buffers, never parameters."""
        return {name for name, _ in self.named_parameters() if name.endswith(".mask_token")}

    def check_input(self, video: torch.Tensor) -> None:
        c, t, h, w = self.cfg.channels, self.cfg.frames, self.cfg.image_size, self.cfg.image_size
        if video.dim() != 6 or tuple(video.shape[2:]) != (c, t, h, w):
            raise ValueError(f"MV2MAE expects video [B, V, {c}, {t}, {h}, {w}], got {list(video.shape)}")

    def forward(self, video: torch.Tensor, motion: torch.Tensor | None = None,
                generator: torch.Generator | None = None, mask: torch.Tensor | None = None,
                tau: float | None = None) -> PretrainOutput:
        """video [B, V, C, T, H, W] uint8 pixels (or a normalised float clip), view 0 = target, 1..K =
        sources; motion [B, V, N] (None = plain MAE loss); mask [B, V, N] to impose one (else drawn per
        view); ``tau`` the softmax temperature in the motion's units (default ``cfg.tau``, for framediff's
        0-255 grey levels; flow motion takes ``cfg.tau_flow``, see ``RunConfig.motion_tau``)."""
        self.check_input(video)
        video = self.encoder.normalize(video)
        cfg = self.cfg
        b, v = video.shape[:2]
        if mask is None:
            mask = sample_mask(cfg, b * v, video.device, generator).view(b, v, -1)
        elif tuple(mask.shape) != (b, v, cfg.num_tokens) or bool((mask.sum(-1) != cfg.num_masked).any()):
            raise ValueError(f"mask must be [B, V, {cfg.num_tokens}] with {cfg.num_masked} masked tokens per view")
        if motion is not None and tuple(motion.shape) != (b, v, cfg.num_tokens):
            raise ValueError(f"motion must be [B, V, N] = {[b, v, cfg.num_tokens]}, got {list(motion.shape)}")
        ids_visible, ids_masked = split_indices(mask, cfg.num_visible)

        encoded = self.encoder(video.flatten(0, 1), ids_visible.flatten(0, 1))
        pred_self = self.self_decoder(encoded, ids_visible.flatten(0, 1), ids_masked.flatten(0, 1))
        pred_self = pred_self.view(b, v, *pred_self.shape[1:])
        pred_cross = None
        if v > 1 and self.cross_decoder is not None:
            encoded = encoded.view(b, v, *encoded.shape[1:])
            pred_cross = self.cross_decoder(encoded[:, 0], ids_visible[:, 0], ids_masked[:, 0],
                                            encoded[:, 1:], ids_visible[:, 1:])

        with torch.no_grad():
            target = pixel_targets(video, cfg)
        tau = cfg.tau if tau is None else tau
        terms = mv2mae_loss(pred_self, pred_cross, target, mask, ids_masked, motion, tau, cfg.lambda_cross)
        return PretrainOutput(terms.loss, terms.loss_self, terms.loss_cross, mask, ids_visible, ids_masked,
                              pred_self, pred_cross, target, terms.weights)

    @torch.no_grad()
    def reconstructions(self, video: torch.Tensor, out: PretrainOutput) -> dict[str, torch.Tensor]:
        """Pixel clips in [0, 1] for pictures: ``original``/``masked``/``self`` [B, V, C, T, H, W] and
        ``cross`` [B, C, T, H, W] (target view; absent for a single view)."""
        video = self.encoder.normalize(video)
        clips = {
            "original": denormalise(video.float(), self.cfg).clamp(0, 1),
            "masked": masked_input_clip(video, out.mask, self.cfg),
            "self": predictions_to_clip(out.pred_self, out.ids_masked, video, self.cfg),
        }
        if out.pred_cross is not None:
            clips["cross"] = predictions_to_clip(out.pred_cross, out.ids_masked[:, 0], video[:, 0], self.cfg)
        return clips
