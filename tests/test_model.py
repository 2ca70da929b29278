"""MV2MAE model and objective: shapes, masking, token order, and the invariants of METHOD.md."""

from __future__ import annotations

import math

import pytest
import torch
from model_helpers import tiny_cfg, tubelet_slice
from timm.optim import param_groups_layer_decay

from mv2mae.data.motion import clip_token_motion
from mv2mae.model import MV2MAE, ModelConfig, VideoClassifier, patchify, unpatchify
from mv2mae.model.embed import build_pos_embed, sincos_3d
from mv2mae.model.masking import sample_mask, split_indices
from mv2mae.model.objective import (
    denormalise,
    masked_input_clip,
    motion_weights,
    mv2mae_loss,
    pixel_targets,
    predictions_to_clip,
)

torch.set_num_threads(2)


# ----------------------------------------------------------------------------- config and shapes
def test_paper_geometry_is_512_tokens():
    cfg = ModelConfig.preset("vit_small")
    assert cfg.grid == (8, 8, 8) and cfg.num_tokens == 512
    assert cfg.num_masked == int(0.7 * 512) and cfg.num_visible == 512 - cfg.num_masked
    assert cfg.patch_dim == 2 * 16 * 16 * 3


def test_config_rejects_bad_geometry_and_round_trips():
    with pytest.raises(ValueError, match="not a multiple of tubelet"):
        ModelConfig(frames=15)
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig.preset("vit_huge")
    cfg = tiny_cfg(pos_embed="sinusoid1d", pos_embed_reference_grid=(4, 4, 4))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown ModelConfig fields: bogus"):
        ModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})


@pytest.mark.parametrize("name", ModelConfig.preset_names())
def test_preset_shapes(name):
    # real widths/heads/geometry of each preset; depth cut to 1 to stay fast on CPU
    cfg = ModelConfig.preset(name, depth=1, decoder_depth=1, cross_decoder_depth=1)
    model = MV2MAE(cfg)
    video = torch.randn(1, 2, cfg.channels, cfg.frames, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        out = model(video, generator=torch.Generator().manual_seed(0))
    n, m, p = cfg.num_tokens, cfg.num_masked, cfg.patch_dim
    assert out.mask.shape == (1, 2, n) and out.ids_visible.shape == (1, 2, n - m)
    assert out.pred_self.shape == (1, 2, m, p) and out.pred_cross.shape == (1, m, p)
    assert out.target.shape == (1, 2, n, p) and out.weights.shape == (1, 2, n)
    assert torch.isfinite(out.loss) and out.loss_cross > 0


def test_wrong_input_shape_is_a_clear_error():
    model = MV2MAE(tiny_cfg())
    with pytest.raises(ValueError, match=r"expects video \[B, V, 3, 4, 32, 32\]"):
        model(torch.randn(1, 2, 3, 8, 32, 32))
    video = torch.randn(1, 2, 3, 4, 32, 32)
    with pytest.raises(ValueError, match="motion must be"):
        model(video, motion=torch.rand(1, 2, 7))
    with pytest.raises(ValueError, match="masked tokens per view"):
        model(video, mask=torch.zeros(1, 2, model.cfg.num_tokens, dtype=torch.bool))


def test_position_embeddings():
    cfg = tiny_cfg()
    emb = sincos_3d(cfg.grid, 48)
    assert emb.shape == (cfg.num_tokens, 48)
    assert torch.unique(emb, dim=0).shape[0] == cfg.num_tokens  # every token has its own position
    assert sincos_3d((3, 5, 7), 1024).shape == (105, 1024)  # ViT-L width works
    # a 1D table anchored on its own grid is the plain table; anchored elsewhere it is resampled
    one_d = tiny_cfg(pos_embed="sinusoid1d")
    assert torch.equal(build_pos_embed(one_d, 48), build_pos_embed(one_d.with_(pos_embed_reference_grid=one_d.grid), 48))
    moved = build_pos_embed(one_d.with_(frames=8, pos_embed_reference_grid=one_d.grid), 48)
    assert moved.shape == (1, 64, 48)


# ----------------------------------------------------------------------------- masking
@pytest.mark.parametrize("mask_type", ["random", "tube"])
@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.7, 0.9])
def test_masking_visible_counts_exact(mask_type, ratio):
    cfg = tiny_cfg(frames=8, mask_type=mask_type, mask_ratio=ratio)
    mask = sample_mask(cfg, 64, "cpu", torch.Generator().manual_seed(1))
    assert mask.shape == (64, cfg.num_tokens)
    assert (mask.sum(dim=1) == cfg.num_masked).all()
    visible, masked = split_indices(mask, cfg.num_visible)
    assert (~mask.gather(1, visible)).all() and mask.gather(1, masked).all()
    assert (visible.diff(dim=1) > 0).all() and (masked.diff(dim=1) > 0).all()  # token order kept
    if mask_type == "tube":
        t, h, w = cfg.grid
        grid = mask.view(64, t, h * w)
        assert (grid == grid[:, :1]).all()


def test_masking_is_seeded_and_independent_per_view():
    cfg = tiny_cfg()
    a = sample_mask(cfg, 8, "cpu", torch.Generator().manual_seed(3))
    b = sample_mask(cfg, 8, "cpu", torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert len({tuple(row.tolist()) for row in a}) > 1


# ----------------------------------------------------------------------------- token order
def test_token_order_is_shared_by_embedding_targets_motion_and_mask():
    cfg = tiny_cfg(norm_pix=False, pixel_mean=(0.0, 0.0, 0.0), pixel_std=(1.0, 1.0, 1.0))
    n = cfg.num_tokens
    clip = torch.zeros(cfg.channels, cfg.frames, cfg.image_size, cfg.image_size)
    for i in range(n):  # tubelet i holds the value i everywhere
        clip[(slice(None), *tubelet_slice(cfg, i))] = float(i)
    # Conv3d embedding: a projection that averages its tubelet returns i at token i
    model = MV2MAE(cfg)
    proj = model.encoder.patch_embed.proj
    with torch.no_grad():
        proj.weight.fill_(1.0 / (cfg.patch_dim))
        proj.bias.zero_()
        tokens = model.encoder.patch_embed(clip[None])[0, :, 0]
    assert torch.allclose(tokens, torch.arange(n).float(), atol=1e-3)
    # targets (un-normalised pixels with identity mean/std) and patchify
    targets = pixel_targets(clip[None], cfg)[0]
    assert torch.equal(targets.mean(dim=1), torch.arange(n).float())
    assert torch.equal(unpatchify(patchify(clip, cfg.tubelet, cfg.patch), cfg.grid, cfg.tubelet, cfg.patch, 3), clip)
    # motion: only token k moves, so only entry k of the motion is non-zero
    k = n - 3
    moving = torch.zeros_like(clip)
    moving[(slice(None), *tubelet_slice(cfg, k))] = torch.arange(cfg.tubelet).float().view(-1, 1, 1) * 10
    motion = clip_token_motion(moving, cfg.tubelet, cfg.patch)
    assert motion.argmax().item() == k and motion.count_nonzero().item() == 1
    masked_half = torch.zeros(n, dtype=torch.bool)
    masked_half[k // 2:] = True  # token k among the masked ones: its weight is the largest
    weights = motion_weights(motion, masked_half, tau=5.0)
    assert weights.argmax().item() == k and (weights[:k // 2] == 0).all()
    # mask: masking token k paints exactly tubelet k
    mask = torch.zeros(n, dtype=torch.bool)
    mask[k] = True
    painted = masked_input_clip(clip[None] * 0, mask[None], cfg, fill=1.0)[0]
    expected = torch.zeros_like(clip)
    expected[(slice(None), *tubelet_slice(cfg, k))] = 1.0
    assert torch.equal(painted, expected)


def test_visible_only_embedding_equals_the_convolution_at_those_tokens():
    cfg = tiny_cfg()
    model = MV2MAE(cfg)
    clip = torch.randn(3, 3, cfg.frames, cfg.image_size, cfg.image_size)
    visible, _ = split_indices(sample_mask(cfg, 3, "cpu", torch.Generator().manual_seed(2)), cfg.num_visible)
    with torch.no_grad():
        full = model.encoder.patch_embed(clip)
        part = model.encoder.patch_embed(clip, visible)
    assert torch.allclose(part, full.gather(1, visible[..., None].expand(-1, -1, full.shape[-1])), atol=1e-5)


def test_online_token_motion_units_and_first_frame():
    clip = torch.zeros(3, 4, 16, 16)
    clip[:, 1] = 30.0  # frames 0→1 differ by 30, 1→2 by 30, 2→3 by 0
    clip[:, 3] = 30.0
    clip[:, 2] = 0.0
    motion = clip_token_motion(clip, tubelet=2, patch=8)
    # per-frame differences: [d1 (reused for frame 0), 30, 30, 30] -> tubelets average [30, 30]
    assert torch.allclose(motion, torch.full((8,), 30.0))
    as_uint8 = clip_token_motion(clip.to(torch.uint8).flip(1), tubelet=2, patch=8)  # no wrap-around
    assert torch.allclose(as_uint8, torch.full((8,), 30.0))
    static = clip_token_motion(torch.full((2, 3, 4, 16, 16), 100.0), 2, 8)
    assert static.shape == (2, 8) and static.abs().max() == 0
    with pytest.raises(ValueError, match="at least 2 frames"):
        clip_token_motion(torch.zeros(3, 1, 16, 16), 1, 8)


# ----------------------------------------------------------------------------- objective invariants
def _objective_inputs(cfg: ModelConfig, b: int = 2, v: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mask = sample_mask(cfg, b * v, "cpu", g).view(b, v, -1)
    _, ids_masked = split_indices(mask, cfg.num_visible)
    target = torch.randn(b, v, cfg.num_tokens, cfg.patch_dim, generator=g)
    pred_self = torch.randn(b, v, cfg.num_masked, cfg.patch_dim, generator=g)
    pred_cross = torch.randn(b, cfg.num_masked, cfg.patch_dim, generator=g)
    motion = torch.rand(b, v, cfg.num_tokens, generator=g) * 120
    return pred_self, pred_cross, target, mask, ids_masked, motion


def test_weighted_loss_equals_plain_mae_when_motion_is_uniform_or_tau_infinite():
    cfg = tiny_cfg()
    pred_self, pred_cross, target, mask, ids_masked, motion = _objective_inputs(cfg)
    plain = mv2mae_loss(pred_self, pred_cross, target, mask, ids_masked, None, 60.0, 1.0)
    # the plain MAE loss by hand: mean squared error over masked tokens, summed over views
    masked_t = target.gather(2, ids_masked[..., None].expand(-1, -1, -1, cfg.patch_dim))
    by_hand = (pred_self - masked_t).pow(2).mean(dim=(0, 2, 3)).sum()
    assert torch.allclose(plain.loss_self, by_hand, rtol=1e-6)
    uniform = mv2mae_loss(pred_self, pred_cross, target, mask, ids_masked, torch.full_like(motion, 37.0), 60.0, 1.0)
    assert torch.allclose(uniform.loss, plain.loss, rtol=1e-6)
    infinite = mv2mae_loss(pred_self, pred_cross, target, mask, ids_masked, motion, math.inf, 1.0)
    assert torch.equal(infinite.loss, plain.loss)
    weighted = mv2mae_loss(pred_self, pred_cross, target, mask, ids_masked, motion, 60.0, 1.0)
    assert not torch.allclose(weighted.loss, plain.loss)
    assert torch.allclose(plain.loss, plain.loss_self + plain.loss_cross)
    half = mv2mae_loss(pred_self, pred_cross, target, mask, ids_masked, None, 60.0, 0.5)
    assert torch.allclose(half.loss, plain.loss_self + 0.5 * plain.loss_cross)


def test_motion_weights_softmax_over_masked_tokens():
    cfg = tiny_cfg()
    _, _, _, mask, _, motion = _objective_inputs(cfg)
    w = motion_weights(motion, mask, 60.0)
    assert (w[~mask] == 0).all()
    assert torch.allclose(w.sum(dim=-1), mask.sum(dim=-1).float())  # uniform-equivalent scale |Ω|
    row_w, row_m, row_mask = w[0, 0], motion[0, 0], mask[0, 0]
    hi, lo = row_m.masked_fill(~row_mask, -1).argmax(), row_m.masked_fill(~row_mask, 1e9).argmin()
    assert row_w[hi] > 1 > row_w[lo]
    assert torch.allclose(row_w[hi] / row_w[lo], torch.exp((row_m[hi] - row_m[lo]) / 60.0), rtol=1e-4)
    assert torch.equal(motion_weights(motion, mask, math.inf), mask.float())


def test_loss_ignores_visible_tokens():
    cfg = tiny_cfg()
    pred_self, pred_cross, target, mask, ids_masked, motion = _objective_inputs(cfg)
    base = mv2mae_loss(pred_self, pred_cross, target, mask, ids_masked, motion, 60.0, 1.0)
    visible = ~mask
    target2 = target.clone()
    target2[visible] += 100.0
    motion2 = motion.clone()
    motion2[visible] = 1e4
    moved = mv2mae_loss(pred_self, pred_cross, target2, mask, ids_masked, motion2, 60.0, 1.0)
    assert torch.equal(base.loss, moved.loss)
    target3 = target.clone()
    target3[mask] += 1.0  # the masked tokens do count
    assert not torch.equal(base.loss, mv2mae_loss(pred_self, pred_cross, target3, mask, ids_masked, motion, 60.0,
                                                  1.0).loss)


def test_perfect_prediction_reconstructs_the_clip():
    cfg = tiny_cfg()
    video = torch.randn(2, 2, 3, cfg.frames, cfg.image_size, cfg.image_size)
    mask = sample_mask(cfg, 4, "cpu", torch.Generator().manual_seed(0)).view(2, 2, -1)
    _, ids_masked = split_indices(mask, cfg.num_visible)
    target = pixel_targets(video, cfg)
    perfect = target.gather(2, ids_masked[..., None].expand(-1, -1, -1, cfg.patch_dim))
    clip = predictions_to_clip(perfect, ids_masked, video, cfg)
    model = MV2MAE(cfg)
    assert torch.allclose(clip, denormalise(video, cfg).clamp(0, 1), atol=1e-4)
    wrong = predictions_to_clip(torch.zeros_like(perfect), ids_masked, video, cfg)
    assert not torch.allclose(wrong, clip, atol=1e-2)
    with torch.no_grad():
        out = model(video, mask=mask)
    pictures = model.reconstructions(video, out)
    assert set(pictures) == {"original", "masked", "self", "cross"}
    assert pictures["self"].shape == video.shape and pictures["cross"].shape == video[:, 0].shape


# ----------------------------------------------------------------------------- model invariants
def test_gradients_reach_encoder_from_both_decoders():
    cfg = tiny_cfg()
    model = MV2MAE(cfg)
    video = torch.randn(2, 2, 3, cfg.frames, cfg.image_size, cfg.image_size)
    for term, other in (("loss_self", "cross_decoder"), ("loss_cross", "self_decoder")):
        model.zero_grad(set_to_none=True)
        out = model(video, motion=torch.rand(2, 2, cfg.num_tokens) * 50, generator=torch.Generator().manual_seed(0))
        getattr(out, term).backward()
        enc = [p.grad for p in model.encoder.parameters()]
        assert all(g is not None for g in enc) and sum(g.abs().sum() for g in enc) > 0, term
        assert all(p.grad is None for p in getattr(model, other).parameters()), term


def test_cross_view_prediction_depends_on_source_not_on_masked_target_pixels():
    cfg = tiny_cfg()
    model = MV2MAE(cfg).eval()
    video = torch.randn(1, 2, 3, cfg.frames, cfg.image_size, cfg.image_size)
    mask = sample_mask(cfg, 2, "cpu", torch.Generator().manual_seed(5)).view(1, 2, -1)
    with torch.no_grad():
        base = model(video, mask=mask)
        hidden = video.clone()  # rewrite every masked tubelet of the target view
        for i in mask[0, 0].nonzero().flatten().tolist():
            hidden[(0, 0, slice(None), *tubelet_slice(cfg, i))] = torch.randn(3, cfg.tubelet, cfg.patch, cfg.patch)
        after_hidden = model(hidden, mask=mask)
        source = video.clone()
        source[0, 1] += torch.randn_like(source[0, 1])
        after_source = model(source, mask=mask)
    assert torch.allclose(after_hidden.pred_cross, base.pred_cross, atol=1e-6)
    assert torch.allclose(after_hidden.pred_self[:, 0], base.pred_self[:, 0], atol=1e-6)
    assert not torch.allclose(after_source.pred_cross, base.pred_cross, atol=1e-3)
    assert torch.allclose(after_source.pred_self[:, 0], base.pred_self[:, 0], atol=1e-6)


@pytest.mark.parametrize("views", [1, 2, 4])
def test_views_and_sources(views):
    cfg = tiny_cfg()
    model = MV2MAE(cfg)
    out = model(torch.randn(2, views, 3, cfg.frames, cfg.image_size, cfg.image_size))
    assert out.pred_self.shape[:2] == (2, views)
    if views == 1:
        assert out.pred_cross is None and out.loss_cross == 0 and torch.equal(out.loss, out.loss_self)
    else:
        assert out.pred_cross.shape == (2, cfg.num_masked, cfg.patch_dim)


def test_classifier_sees_every_token():
    cfg = tiny_cfg()
    clf = VideoClassifier(cfg, num_classes=5, drop_path=0.1, head_dropout=0.5).eval()
    video = torch.randn(2, 3, cfg.frames, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        tokens = clf.forward_tokens(video)
        feats = clf.forward_features(video)
        logits = clf(video)
        assert tokens.shape == (2, cfg.num_tokens, cfg.embed_dim)
        assert feats.shape == (2, cfg.embed_dim) and logits.shape == (2, 5)
        for i in (0, cfg.num_tokens // 2, cfg.num_tokens - 1):  # every tubelet reaches the features
            poked = video.clone()
            poked[(0, slice(None), *tubelet_slice(cfg, i))] += 1.0
            assert not torch.allclose(clf.forward_features(poked)[0], feats[0], atol=1e-5), i
    assert clf.head.weight.abs().max() < 1e-3  # small head init


def test_layer_decay_groups_cover_every_parameter():
    cfg = tiny_cfg(depth=3)
    clf = VideoClassifier(cfg, num_classes=4)
    groups = param_groups_layer_decay(clf, weight_decay=0.05, layer_decay=0.75,
                                      no_weight_decay_list=clf.no_weight_decay())
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len(list(clf.parameters()))
    assert {id(p) for p in grouped} == {id(p) for p in clf.parameters()}
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert scale_of[id(clf.head.weight)] == 1.0
    assert scale_of[id(clf.encoder.patch_embed.proj.weight)] == pytest.approx(0.75 ** (cfg.depth + 1))
    assert scale_of[id(clf.encoder.blocks[0].attn.qkv.weight)] < scale_of[id(clf.encoder.blocks[2].attn.qkv.weight)]


def test_tiny_model_overfits_one_two_view_batch():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = MV2MAE(cfg)
    video = torch.randn(2, 2, 3, cfg.frames, cfg.image_size, cfg.image_size)
    motion = clip_token_motion(torch.rand(2, 2, 3, cfg.frames, cfg.image_size, cfg.image_size) * 255,
                                 cfg.tubelet, cfg.patch)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    first = None
    for _ in range(400):
        out = model(video, motion=motion, generator=torch.Generator().manual_seed(0))
        first = first if first is not None else out.loss.item()
        if out.loss.item() < first / 10:
            break
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert out.loss.item() < first / 10, (first, out.loss.item())
