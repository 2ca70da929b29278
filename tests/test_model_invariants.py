"""Behaviour checks of the method's invariants (METHOD.md), each on the real modules with a tiny model.

Each test was seen to fail when the invariant it names was broken by hand in the code: views or
samples sharing one mask; targets normalised over all channels together, over the whole clip, with the
channel layout misread, or not at all; weights normalised over all tokens, without the |Ω| factor,
across views, with the sign flipped, or the cross loss taking a source's weights; the forward pass
ignoring τ; the cross-view decoder attending to the sources' mask tokens too, to the target's own
tokens, to un-encoded embeddings, or to detached sources; an encoder that sees masked tubelets.
The objective's own checks on plain tensors (loss only on masked tokens, uniform weights = plain MAE)
are in test_model.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from model_helpers import tiny_cfg, tubelet_slice

from mv2mae.model import MV2MAE, ModelConfig, patchify, unpatchify
from mv2mae.model.masking import sample_mask

torch.set_num_threads(2)


def _video(cfg: ModelConfig, b: int, v: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, v, cfg.channels, cfg.frames, cfg.image_size, cfg.image_size, generator=g)


def _mask(cfg: ModelConfig, b: int, v: int, seed: int = 0) -> torch.Tensor:
    return sample_mask(cfg, b * v, "cpu", torch.Generator().manual_seed(seed)).view(b, v, -1)


def _model(cfg: ModelConfig, seed: int = 0) -> MV2MAE:
    torch.manual_seed(seed)
    return MV2MAE(cfg).eval()


# ----------------------------------------------------------------------------- masking
@pytest.mark.parametrize("mask_type", ["random", "tube"])
def test_every_view_of_every_sample_draws_its_own_mask(mask_type):
    cfg = tiny_cfg(mask_type=mask_type)
    b, v = 32, 2
    with torch.no_grad():
        mask = _model(cfg)(_video(cfg, b, v), generator=torch.Generator().manual_seed(1)).mask.float()
    # two independent masks of M among N tokens share M²/N masked tokens on average (8 of 16 here);
    # views (or samples) drawing one shared mask would share all M
    expected = cfg.num_masked ** 2 / cfg.num_tokens
    across_views = (mask[:, 0] * mask[:, 1]).sum(-1).mean().item()
    across_samples = (mask[:-1] * mask[1:]).sum(-1).mean().item()
    assert abs(across_views - expected) < 1.5, (across_views, expected)
    assert abs(across_samples - expected) < 1.5, (across_samples, expected)


# ----------------------------------------------------------------------------- targets
def test_targets_are_normalised_per_tubelet_and_per_channel():
    cfg = tiny_cfg()
    b, v = 1, 2
    g = torch.Generator().manual_seed(0)
    # pixels in [0, 1] whose level and contrast differ strongly between tubelets, channels and views
    pixels = torch.empty(b, v, cfg.channels, cfg.frames, cfg.image_size, cfg.image_size)
    for view in range(v):
        for i in range(cfg.num_tokens):
            for c in range(cfg.channels):
                level = 0.15 + 0.7 * torch.rand((), generator=g)
                contrast = 0.005 * 20 ** torch.rand((), generator=g)  # 0.005 .. 0.1
                noise = torch.randn(cfg.tubelet, cfg.patch, cfg.patch, generator=g)
                pixels[(0, view, c, *tubelet_slice(cfg, i))] = level + contrast * noise
    mean = torch.tensor(cfg.pixel_mean).view(-1, 1, 1, 1)
    std = torch.tensor(cfg.pixel_std).view(-1, 1, 1, 1)
    with torch.no_grad():
        out = _model(cfg)(((pixels - mean) / std), mask=_mask(cfg, b, v))
    normalised = unpatchify(out.target, cfg.grid, cfg.tubelet, cfg.patch, cfg.channels)  # back to [.., C, T, H, W]
    for view in range(v):
        for i in range(cfg.num_tokens):
            for c in range(cfg.channels):
                where = (0, view, c, *tubelet_slice(cfg, i))
                got, src = normalised[where].flatten(), pixels[where].flatten()
                assert abs(got.mean().item()) < 1e-4, (view, i, c, got.mean().item())
                assert got.std().item() == pytest.approx(1.0, abs=1e-3), (view, i, c)
                # an increasing affine map of the tubelet's own pixels in that channel: shape is kept
                assert torch.corrcoef(torch.stack([got, src]))[0, 1] > 0.9999, (view, i, c)


# ----------------------------------------------------------------------------- motion weights
def test_each_view_weighs_its_masked_tokens_by_its_own_motion_averaging_one():
    cfg = tiny_cfg()
    b, v = 2, 3
    model, video, mask = _model(cfg), _video(cfg, b, v), _mask(cfg, b, v)
    motion = torch.rand(b, v, cfg.num_tokens, generator=torch.Generator().manual_seed(3)) * 200
    with torch.no_grad():
        out = model(video, motion=motion, mask=mask)
    w = out.weights
    assert (w[~mask] == 0).all()
    masked_mean = (w * mask).sum(-1) / mask.sum(-1)
    assert torch.allclose(masked_mean, torch.ones(b, v), atol=1e-5)  # uniform-equivalent scale, per view
    assert w.max() > 1.5 and w[mask].min() < 0.5  # τ = 60 on 0..200 grey levels does re-weight
    for bi in range(b):
        for vi in range(v):  # more motion, more weight, within each view's masked set
            m, ww = motion[bi, vi][mask[bi, vi]], w[bi, vi][mask[bi, vi]]
            assert torch.equal(m.argsort(), ww.argsort())
    with torch.no_grad():
        visible_moved = model(video, motion=motion.masked_fill(~mask, 1e4), mask=mask)
        source_moved = model(video, motion=torch.cat([motion[:, :1], motion[:, 1:].flip(-1)], 1), mask=mask)
        target_moved = model(video, motion=torch.cat([motion[:, :1].flip(-1), motion[:, 1:]], 1), mask=mask)
    assert torch.equal(visible_moved.weights, w) and torch.equal(visible_moved.loss, out.loss)
    # a view's weights come from its own motion only; the cross loss uses the target view's (view 0)
    assert torch.equal(source_moved.weights[:, 0], w[:, 0]) and not torch.equal(source_moved.weights[:, 1:], w[:, 1:])
    assert torch.equal(source_moved.loss_cross, out.loss_cross)
    assert not torch.allclose(source_moved.loss_self, out.loss_self)
    assert torch.equal(target_moved.weights[:, 1:], w[:, 1:])
    assert not torch.allclose(target_moved.loss_cross, out.loss_cross)


def test_model_loss_is_plain_mae_when_tau_is_infinite_or_motion_uniform():
    cfg = tiny_cfg()
    b, v = 2, 2
    model, video, mask = _model(cfg), _video(cfg, b, v), _mask(cfg, b, v)
    unweighted = MV2MAE(cfg.with_(tau=math.inf)).eval()
    unweighted.load_state_dict(model.state_dict())
    motion = torch.rand(b, v, cfg.num_tokens, generator=torch.Generator().manual_seed(3)) * 200
    with torch.no_grad():
        plain = model(video, mask=mask)
        uniform = model(video, motion=torch.full_like(motion, 77.0), mask=mask)
        weighted = model(video, motion=motion, mask=mask)
        infinite = unweighted(video, motion=motion, mask=mask)
    assert torch.allclose(uniform.loss_self, plain.loss_self, rtol=1e-6)
    assert torch.allclose(uniform.loss_cross, plain.loss_cross, rtol=1e-6)
    assert torch.equal(infinite.loss, plain.loss)
    assert not torch.allclose(weighted.loss, plain.loss, rtol=1e-5)  # τ = 60 does change it (by ~0.2% here)


# ----------------------------------------------------------------------------- what each decoder sees
def _token_gradient(loss: torch.Tensor, video: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """|∂loss/∂pixels| summed over each token's tubelet: [B, V, N]."""
    (grad,) = torch.autograd.grad(loss, video, retain_graph=True)
    return patchify(grad.abs(), cfg.tubelet, cfg.patch).sum(-1)


def test_losses_reach_exactly_the_visible_pixels_of_the_views_they_read():
    cfg = tiny_cfg()
    b, v = 1, 3  # target + two sources
    model, mask = _model(cfg), _mask(cfg, b, v)
    video = _video(cfg, b, v).requires_grad_()
    out = model(video, mask=mask)
    cross = _token_gradient(out.loss_cross, video, cfg)
    self_ = _token_gradient(out.loss_self, video, cfg)
    own_view = _token_gradient(out.pred_self[:, 0].sum(), video, cfg)
    # masked pixels never enter an encoder; the cross loss reads the target's and every source's
    # visible tokens (through the encoder: the sources are not detached)
    assert (cross[mask] == 0).all() and (cross[~mask] > 0).all()
    assert (self_[mask] == 0).all() and (self_[~mask] > 0).all()
    # the self-view decoder reconstructs a view from that view alone
    assert (own_view[:, 1:] == 0).all() and (own_view[:, 0][~mask[:, 0]] > 0).all()


def test_cross_decoder_memory_is_the_sources_encoded_visible_tokens():
    cfg = tiny_cfg()
    b, v = 2, 3
    model, video, mask = _model(cfg), _video(cfg, b, v), _mask(cfg, b, v)
    memories = []
    # what every cross-attention attends to: the input of the memory's LayerNorm in the first block
    model.cross_decoder.blocks[0].norm_mem.register_forward_hook(lambda _m, args, _out: memories.append(args[0]))

    def memory(clip: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            model(clip, mask=mask)
        return memories[-1]

    base = memory(video)
    assert base.shape == (b, (v - 1) * cfg.num_visible, cfg.decoder_dim)  # one row per visible source token
    other_target = video.clone()
    other_target[:, 0] = torch.randn_like(video[:, 0])
    assert torch.equal(memory(other_target), base)  # the target view is not memory
    hidden = video.clone()
    for bi, vi, i in mask.nonzero().tolist():  # rewrite every masked tubelet
        if vi > 0:
            hidden[(bi, vi, slice(None), *tubelet_slice(cfg, i))] += 5.0
    assert torch.equal(memory(hidden), base)  # the sources' masked tokens are not memory
    shown = video.clone()
    for bi, vi, i in (~mask).nonzero().tolist():
        if vi > 0:
            shown[(bi, vi, slice(None), *tubelet_slice(cfg, i))] += 1.0
    assert not torch.allclose(memory(shown), base, atol=1e-3)  # the sources' visible tokens are
    with torch.no_grad():
        model.encoder.blocks[-1].mlp.fc2.weight.mul_(2.0)
    assert not torch.allclose(memory(video), base, atol=1e-3)  # encoded, not merely embedded
