"""The MV2MAE objective, in one pure module (no parameters, no state).

* targets: per-tubelet normalised pixels (per channel; VideoMAE convention), switchable;
* per-token motion m_i (an input, computed by :mod:`mv2mae.data.motion`): mean absolute difference of
  consecutive sampled frames inside token i's tubelet, in 0-255 units (the first frame reuses the next
  one); or, with ``data.motion=flow``, optical flow in stored-frame pixels per stored frame;
* weights: w = softmax(m / τ) over the masked tokens Ω of a view, times |Ω| (uniform ⇒ 1), with τ in
  the motion's units (``tau`` = 60 for framediff, ``tau_flow`` = 4.2 for flow, measured to spread the
  weights alike); τ = ∞ (or no motion) is exactly the plain MAE loss;
* loss per view: mean_{i∈Ω} w_i · MSE_i;  total L = Σ_views L_self + λ · L_cross.

Every per-token tensor here uses the canonical token order (see :mod:`mv2mae.model.embed`), and a
tubelet's values are laid out (tubelet, patch, patch, channel) as in VideoMAE and transformers.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from mv2mae.model.config import ModelConfig
from mv2mae.model.masking import gather_tokens

NORM_EPS = 1e-6  # VideoMAE's epsilon on the tubelet standard deviation


# ----------------------------------------------------------------------------- pixels <-> tokens
def patchify(clip: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """[..., C, T, H, W] -> [..., N, tubelet·patch·patch·C] in token order."""
    *lead, c, t, h, w = clip.shape
    x = clip.reshape(*lead, c, t // tubelet, tubelet, h // patch, patch, w // patch, patch)
    k = len(lead)
    # -> [..., T', H', W', tubelet, patch, patch, C]
    x = x.permute(*range(k), k + 1, k + 3, k + 5, k + 2, k + 4, k + 6, k)
    return x.reshape(*lead, (t // tubelet) * (h // patch) * (w // patch), tubelet * patch * patch * c)


def unpatchify(patches: torch.Tensor, grid: tuple[int, int, int], tubelet: int, patch: int,
               channels: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: [..., N, P] -> [..., C, T, H, W]."""
    *lead, _, _ = patches.shape
    gt, gh, gw = grid
    k = len(lead)
    x = patches.reshape(*lead, gt, gh, gw, tubelet, patch, patch, channels)
    # -> [..., C, T', tubelet, H', patch, W', patch]
    x = x.permute(*range(k), k + 6, k, k + 3, k + 1, k + 4, k + 2, k + 5)
    return x.reshape(*lead, channels, gt * tubelet, gh * patch, gw * patch)


def denormalise(video: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Undo the mean/std input normalisation: [..., C, T, H, W] -> pixels in [0, 1]."""
    mean, std = _pixel_stats(tuple(cfg.pixel_mean), tuple(cfg.pixel_std), video.device, video.dtype)
    return video * std + mean


@functools.lru_cache(maxsize=16)
def _pixel_stats(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The [C, 1, 1, 1] statistics on ``device``, made once: a tensor built from Python numbers on a GPU is a
    copy the host waits for, which every training step would otherwise make."""
    shape = (len(mean), 1, 1, 1)
    return (torch.tensor(mean, device=device, dtype=dtype).view(shape),
            torch.tensor(std, device=device, dtype=dtype).view(shape))


def tubelet_stats(patches: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token, per-channel mean and std (unbiased, + eps) of [..., N, P] -> two [..., N, 1, C]."""
    x = patches.unflatten(-1, (-1, channels))
    return x.mean(dim=-2, keepdim=True), x.var(dim=-2, unbiased=True, keepdim=True).sqrt() + NORM_EPS


def pixel_targets(video: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Reconstruction targets [..., N, P] of a normalised clip [..., C, T, H, W] (float32)."""
    patches = patchify(denormalise(video.float(), cfg), cfg.tubelet, cfg.patch)
    if not cfg.norm_pix:
        return patches
    mean, std = tubelet_stats(patches, cfg.channels)
    return ((patches.unflatten(-1, (-1, cfg.channels)) - mean) / std).flatten(-2)


# ----------------------------------------------------------------------------- motion and weights
def motion_weights(motion: torch.Tensor | None, mask: torch.Tensor, tau: float) -> torch.Tensor:
    """Weights [..., N]: softmax(m/τ) over the masked tokens, times their count; 0 on visible tokens.

    ``motion=None`` or ``τ = ∞`` gives exactly 1 on every masked token (the plain MAE loss).
    """
    if motion is None or math.isinf(tau):
        return mask.float()
    logits = (motion.float() / tau).masked_fill(~mask, float("-inf"))
    return logits.softmax(dim=-1) * mask.sum(dim=-1, keepdim=True).float()


def weighted_masked_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor,
                        ids_masked: torch.Tensor) -> torch.Tensor:
    """Per-view loss [...]: mean over masked tokens of w_i · MSE_i.

    pred [..., M, P] (masked tokens in token order), target [..., N, P], weights [..., N],
    ids_masked [..., M]. Visible tokens never enter: only masked targets and weights are gathered.
    """
    per_token = (pred.float() - gather_tokens(target, ids_masked)).pow(2).mean(dim=-1)
    return (gather_tokens(weights, ids_masked) * per_token).mean(dim=-1)


@dataclass
class ObjectiveTerms:
    loss: torch.Tensor
    loss_self: torch.Tensor
    loss_cross: torch.Tensor
    weights: torch.Tensor  # [B, V, N]


def mv2mae_loss(pred_self: torch.Tensor, pred_cross: torch.Tensor | None, target: torch.Tensor,
                mask: torch.Tensor, ids_masked: torch.Tensor, motion: torch.Tensor | None,
                tau: float, lambda_cross: float) -> ObjectiveTerms:
    """L = Σ_views mean_batch L_self(view) + λ · mean_batch L_cross(target view = view 0).

    pred_self [B, V, M, P]; pred_cross [B, M, P] or None (single view); target [B, V, N, P];
    mask [B, V, N]; ids_masked [B, V, M]; motion [B, V, N] or None.
    """
    weights = motion_weights(motion, mask, tau)
    loss_self = weighted_masked_mse(pred_self, target, weights, ids_masked).mean(dim=0).sum()
    if pred_cross is None:
        loss_cross = torch.zeros((), device=loss_self.device)
    else:
        loss_cross = weighted_masked_mse(pred_cross, target[:, 0], weights[:, 0], ids_masked[:, 0]).mean()
    return ObjectiveTerms(loss_self + lambda_cross * loss_cross, loss_self, loss_cross, weights)


# ----------------------------------------------------------------------------- back to pixels
def predictions_to_clip(pred: torch.Tensor, ids_masked: torch.Tensor, video: torch.Tensor,
                        cfg: ModelConfig) -> torch.Tensor:
    """Paste predictions of the masked tokens into the original clip -> pixels in [0, 1].

    pred [..., M, P], ids_masked [..., M], video [..., C, T, H, W] (normalised). With normalised
    targets the prediction is mapped back with the original tubelet's own mean/std (as VideoMAE's
    visualisation does): the network predicts shape, not brightness.
    """
    patches = patchify(denormalise(video.float(), cfg), cfg.tubelet, cfg.patch)
    guess = pred.float()
    if cfg.norm_pix:
        mean, std = tubelet_stats(gather_tokens(patches, ids_masked), cfg.channels)
        guess = (guess.unflatten(-1, (-1, cfg.channels)) * std + mean).flatten(-2)
    index = ids_masked[..., None].expand_as(guess)
    patches = patches.scatter(ids_masked.dim() - 1, index, guess)
    return unpatchify(patches, cfg.grid, cfg.tubelet, cfg.patch, cfg.channels).clamp(0, 1)


def masked_input_clip(video: torch.Tensor, mask: torch.Tensor, cfg: ModelConfig, fill: float = 0.5) -> torch.Tensor:
    """What the encoder saw: the clip in [0, 1] with masked tubelets painted ``fill`` (grey)."""
    patches = patchify(denormalise(video.float(), cfg), cfg.tubelet, cfg.patch)
    patches = patches.masked_fill(mask[..., None], fill)
    return unpatchify(patches, cfg.grid, cfg.tubelet, cfg.patch, cfg.channels).clamp(0, 1)
