"""Checkpoints load strictly or fail loudly; finetuning initialises the encoder from pretraining."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mv2mae.model import MV2MAE, ModelConfig, VideoClassifier
from mv2mae.model.checkpoint import (
    CheckpointError,
    init_classifier,
    init_mv2mae,
    load_checkpoint,
    load_classifier,
    load_encoder,
    load_feature_model,
    load_mv2mae,
    save_model_state,
)
from mv2mae.model.flops import pretrain_forward_flops, pretrain_step_flops

torch.set_num_threads(2)


def tiny_cfg(**overrides) -> ModelConfig:
    base = dict(frames=4, image_size=32, tubelet=2, patch=8, embed_dim=48, depth=2, num_heads=3,
                decoder_dim=48, decoder_depth=1, decoder_heads=3, cross_decoder_depth=1)
    return ModelConfig(**{**base, **overrides})


@pytest.fixture()
def pretrained(tmp_path):
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = MV2MAE(cfg)
    path = save_model_state(tmp_path / "pre.pt", model, cfg, step=7)
    return model, cfg, path


def test_finetuned_classifier_rebuilds_exactly_and_a_pretraining_checkpoint_is_refused_by_name(pretrained, tmp_path):
    _, cfg, pre_path = pretrained
    clf = VideoClassifier(cfg, num_classes=5)
    path = save_model_state(tmp_path / "clf.pt", clf, cfg)
    rebuilt = load_classifier(path)
    assert rebuilt.head.weight.shape[0] == 5
    assert all(torch.equal(v, rebuilt.state_dict()[k]) for k, v in clf.state_dict().items())
    with pytest.raises(CheckpointError, match=rf"{pre_path}: not a finetuned classifier"):
        load_classifier(pre_path)


def test_a_classifier_with_the_encoder_final_norm_is_refused_in_one_line(pretrained, tmp_path):
    """The layout before the VideoMAE head (final norm per token, then mean and fc_norm) has no exact
    conversion: evaluating such a checkpoint fails naming the file, never silently drops the norm."""
    model, cfg, _ = pretrained
    clf = VideoClassifier(cfg, num_classes=5)
    old = {**clf.state_dict(), **{f"encoder.{k}": v for k, v in model.encoder.state_dict().items()
                                  if k.startswith("norm.")}}
    torch.save({"model": old, "config": cfg.to_dict()}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match=r"old\.pt: a classifier of the old layout") as err:
        load_classifier(tmp_path / "old.pt")
    assert "\n" not in str(err.value)
    # as the start of a new finetune, it is one more pretrained encoder: the norm is dropped by name
    assert not init_classifier(tmp_path / "old.pt", cfg, 3).cfg.encoder_final_norm


def test_features_are_what_the_checkpoints_next_stage_reads(pretrained, tmp_path):
    model, cfg, path = pretrained
    clf = init_classifier(path, cfg, 4)
    clf_path = save_model_state(tmp_path / "clf.pt", clf, clf.cfg)
    video = torch.randn(2, 3, cfg.frames, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        pooled = load_feature_model(path).eval().forward_features(video)
        assert torch.allclose(pooled, model.encoder.eval()(video).mean(dim=1), atol=1e-6)  # final norm in
        head_input = load_feature_model(clf_path).eval().forward_features(video)
        assert torch.allclose(head_input, clf.eval().forward_features(video), atol=1e-6)  # fc_norm of the mean


def test_round_trip_is_exact(pretrained):
    model, cfg, path = pretrained
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 7 and ckpt["config"] == cfg.to_dict()
    again = load_mv2mae(path)
    video = torch.randn(1, 2, 3, cfg.frames, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        a = model(video, generator=torch.Generator().manual_seed(0))
        b = again(video, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.loss, b.loss) and torch.equal(a.pred_cross, b.pred_cross)


def test_classifier_initialised_strictly_from_pretraining_without_the_final_norm(pretrained):
    """VideoMAE's mean-pooling classifier: encoder (its final norm dropped) -> mean -> fc_norm -> head."""
    model, cfg, path = pretrained
    clf = init_classifier(path, cfg, 3)
    assert not clf.cfg.encoder_final_norm and "norm.weight" not in clf.encoder.state_dict()
    for name, tensor in clf.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[name], tensor), name
    unnormed = copy.deepcopy(model.encoder).eval()
    unnormed.norm = nn.Identity()
    video = torch.randn(2, 3, cfg.frames, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        tokens = unnormed(video)
        assert torch.allclose(clf.eval().forward_tokens(video), tokens, atol=1e-6)
        assert torch.allclose(clf.forward_features(video), clf.fc_norm(tokens.mean(dim=1)), atol=1e-6)


def test_missing_unexpected_and_misshaped_keys_are_named(pretrained, tmp_path):
    model, cfg, path = pretrained
    ckpt = load_checkpoint(path)
    state = dict(ckpt["model"])
    del state["encoder.blocks.1.mlp.fc2.weight"]
    torch.save({**ckpt, "model": state}, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.1\.mlp\.fc2\.weight"):
        init_classifier(tmp_path / "missing.pt", cfg, 3)
    with pytest.raises(CheckpointError, match=r"missing keys: encoder\.blocks\.1\.mlp\.fc2\.weight"):
        load_mv2mae(tmp_path / "missing.pt")
    torch.save({**ckpt, "model": {**ckpt["model"], "encoder.extra.weight": torch.zeros(2)}}, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match=r"unexpected keys: extra\.weight"):
        init_classifier(tmp_path / "extra.pt", cfg, 3)
    torch.save({**ckpt, "model": {**ckpt["model"], "mystery.weight": torch.zeros(2)}}, tmp_path / "stray.pt")
    with pytest.raises(CheckpointError, match=r"no place in the encoder: mystery\.weight"):
        init_classifier(tmp_path / "stray.pt", cfg, 3)
    wide = dict(ckpt["model"])
    wide["encoder.blocks.0.norm1.weight"] = torch.ones(50)
    torch.save({**ckpt, "model": wide}, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match=r"shape mismatches: blocks\.0\.norm1\.weight"):
        init_classifier(tmp_path / "shape.pt", cfg, 3)


def test_geometry_mismatch_fails_and_frames_adapt(pretrained):
    _, cfg, path = pretrained
    with pytest.raises(CheckpointError, match="patch: checkpoint 8 vs model 16"):
        init_classifier(path, cfg.with_(patch=16), 3)
    with pytest.raises(CheckpointError, match="pixel_std: checkpoint"):  # weights are tied to their pixel statistics
        init_classifier(path, cfg.with_(pixel_std=(0.5, 0.5, 0.5)), 3)
    longer = init_classifier(path, cfg.with_(frames=8, image_size=48), 3)
    with torch.no_grad():
        assert longer(torch.randn(1, 3, 8, 48, 48)).shape == (1, 3)


def test_videomae_positions_are_resampled_not_reindexed(tmp_path):
    cfg = tiny_cfg(pos_embed="sinusoid1d")
    path = save_model_state(tmp_path / "v.pt", MV2MAE(cfg), cfg)
    clf = init_classifier(path, cfg.with_(frames=8), 3)
    assert clf.cfg.pos_embed_reference_grid == cfg.grid
    same_grid = init_classifier(path, cfg, 3)
    assert same_grid.cfg.pos_embed_reference_grid is None
    # the time-resampled table keeps the spatial layout of the original at each time step
    orig = MV2MAE(cfg).encoder.pos_embed[0].view(*cfg.grid, -1)
    moved = clf.encoder.pos_embed[0].view(*clf.cfg.grid, -1)
    assert torch.allclose(moved[0].mean(0), orig[0].mean(0), atol=0.5)
    encoder, enc_cfg = load_encoder(path, frames=8)
    assert enc_cfg.pos_embed_reference_grid == cfg.grid and torch.equal(encoder.pos_embed, clf.encoder.pos_embed)


def test_unreadable_checkpoint_is_one_clear_error(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="bad.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="needs 'model' and 'config'"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")


def test_analytic_flops_scale_as_expected():
    cfg = ModelConfig.preset("vit_small")
    one, two = pretrain_forward_flops(cfg, 1), pretrain_forward_flops(cfg, 2)
    assert one["cross_decoder"] == 0 and two["cross_decoder"] > 0
    assert two["encoder"] == 2 * one["encoder"]
    # the encoder dominates and is ≈ 2·params·tokens for ViT-S on 154 visible tokens
    params = sum(p.numel() for p in MV2MAE(cfg).encoder.blocks.parameters())
    assert one["encoder"] == pytest.approx(2 * params * cfg.num_visible, rel=0.1)
    assert pretrain_step_flops(cfg, 2, 4) == 3 * 4 * two["total"]


def test_mv2mae_initialised_from_full_or_encoder_only_checkpoints(pretrained, tmp_path):
    model, cfg, path = pretrained
    full = init_mv2mae(path, cfg)
    assert torch.equal(full.cross_decoder.head.weight, model.cross_decoder.head.weight)
    clf = VideoClassifier(cfg, 3)
    clf_path = save_model_state(tmp_path / "clf.pt", clf, cfg)
    torch.manual_seed(1)
    before = MV2MAE(cfg).self_decoder.head.weight
    torch.manual_seed(1)
    from_clf = init_mv2mae(clf_path, cfg)
    assert torch.equal(from_clf.encoder.blocks[0].attn.qkv.weight, clf.encoder.blocks[0].attn.qkv.weight)
    assert torch.equal(from_clf.self_decoder.head.weight, before)
    assert torch.equal(from_clf.encoder.norm.weight, torch.ones(cfg.embed_dim))  # a classifier has none: fresh
    one_d = tiny_cfg(pos_embed="sinusoid1d")
    src = save_model_state(tmp_path / "1d.pt", MV2MAE(one_d), one_d)
    longer = init_mv2mae(src, one_d.with_(frames=8))
    assert longer.cfg.pos_embed_reference_grid == one_d.grid
    assert longer.cross_decoder.pos_embed.shape == (1, 4 * 4 * 4, one_d.decoder_dim)
    with torch.no_grad():
        assert torch.isfinite(longer(torch.randn(1, 2, 3, 8, 32, 32)).loss)


def test_the_model_normalises_uint8_pixels_with_its_config_statistics(pretrained):
    """Loaders hand out uint8: the model's one normalisation gives exactly what a float clip normalised
    with the config's pixel statistics gives (and a float clip passes through unchanged)."""
    model, cfg, _ = pretrained
    cfg = cfg.with_(pixel_mean=(0.5, 0.4, 0.3), pixel_std=(0.2, 0.25, 0.3))
    model = MV2MAE(cfg)
    pixels = torch.randint(0, 256, (2, 2, 3, cfg.frames, cfg.image_size, cfg.image_size), dtype=torch.uint8)
    shape = (3, 1, 1, 1)
    mean, std = torch.tensor(cfg.pixel_mean).view(shape), torch.tensor(cfg.pixel_std).view(shape)
    normalised = (pixels.float() / 255 - mean) / std
    assert torch.allclose(model.encoder.normalize(pixels), normalised, atol=1e-5)
    with torch.no_grad():
        a = model(pixels, generator=torch.Generator().manual_seed(0))
        b = model(model.encoder.normalize(pixels), generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.loss, b.loss)
    clf = VideoClassifier(cfg, num_classes=3).eval()
    with torch.no_grad():
        assert torch.equal(clf(pixels[:, 0]), clf(clf.encoder.normalize(pixels[:, 0])))
    with pytest.raises(TypeError, match="uint8 pixels or a normalised float clip"):
        model.encoder.normalize(pixels.short())


def test_pixel_statistics_are_not_checkpoint_keys(pretrained):
    """The normalisation's buffers are config, not weights: checkpoints written before they existed load
    strictly, and a saved state has no key for them."""
    model, cfg, path = pretrained
    assert not [k for k in model.state_dict() if "normalize" in k]
    assert dict(model.encoder.normalize.named_buffers())  # they exist and follow .to(device)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in load_mv2mae(path).state_dict().items())


def test_a_model_without_cross_view_decoder_has_no_such_weights_and_its_checkpoints_load_strictly(pretrained, tmp_path):
    """A single-view (or λ = 0) configuration builds no cross-view decoder: its checkpoint holds none, loads
    back exactly, and refuses to fill a model that has one; continuing pretraining across the two kinds
    gives a fresh cross-view decoder, or leaves the checkpoint's out, by name."""
    full_model, cfg, full_path = pretrained
    single_cfg = cfg.with_(cross_view=False)
    torch.manual_seed(2)
    single = MV2MAE(single_cfg)
    assert single.cross_decoder is None and not [k for k in single.state_dict() if k.startswith("cross_decoder.")]
    path = save_model_state(tmp_path / "single.pt", single, single_cfg)
    again = load_mv2mae(path)
    assert again.cross_decoder is None
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in single.state_dict().items())
    with torch.no_grad():
        out = again(torch.randn(2, 2, 3, 4, 32, 32))  # two views, no cross decoder: a self-view MAE on each
    assert out.pred_cross is None and float(out.loss_cross) == 0 and torch.equal(out.loss, out.loss_self)
    with pytest.raises(CheckpointError, match="missing keys: cross_decoder"):
        load_mv2mae(path, cross_view=True)
    grown = init_mv2mae(path, cfg)
    assert grown.cross_decoder is not None
    assert torch.equal(grown.self_decoder.head.weight, single.self_decoder.head.weight)
    shrunk = init_mv2mae(full_path, single_cfg)
    assert shrunk.cross_decoder is None
    assert torch.equal(shrunk.encoder.blocks[0].attn.qkv.weight, full_model.encoder.blocks[0].attn.qkv.weight)
