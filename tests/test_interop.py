"""Interop with transformers and MCG-NJU VideoMAE: parity of features, export round trip, CLI verbs."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from fixtures_data import session_synth_data
from train_helpers import TINY_MODEL
from typer.testing import CliRunner

from mv2mae import interop
from mv2mae.cli import app
from mv2mae.eval.embed import embed_video, read_video_clips
from mv2mae.model import MV2MAE, ModelConfig, VideoClassifier
from mv2mae.model.checkpoint import (
    CheckpointError,
    init_classifier,
    load_checkpoint,
    load_classifier,
    load_mv2mae,
    save_model_state,
)
from mv2mae.shards.schema import read_index

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    VideoMAEConfig,
    VideoMAEForPreTraining,
    VideoMAEForVideoClassification,
    VideoMAEModel,
    pipeline,
)

torch.set_num_threads(2)
FRAMES, SIZE = 4, 32


def hf_config(**overrides) -> VideoMAEConfig:
    base = dict(image_size=SIZE, patch_size=16, num_frames=FRAMES, tubelet_size=2, hidden_size=48,
                num_hidden_layers=2, num_attention_heads=4, intermediate_size=192, decoder_hidden_size=24,
                decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=96)
    return VideoMAEConfig(**{**base, **overrides})


def random_hf(cls, **overrides):
    torch.manual_seed(0)
    model = cls(hf_config(**overrides)).eval()
    with torch.no_grad():  # move biases/norms off their init so that a dropped key would show
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def hf_features(model, x: torch.Tensor) -> torch.Tensor:
    base = model if isinstance(model, VideoMAEModel) else model.videomae
    with torch.no_grad():
        return base(x).last_hidden_state


@pytest.fixture(scope="module")
def clip_batch() -> torch.Tensor:
    return torch.randn(2, FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))  # HF layout


@pytest.mark.parametrize("mean_pooling", [True, False])
def test_hf_model_parity_and_export_round_trip(tmp_path, clip_batch, mean_pooling):
    hf = random_hf(VideoMAEModel, use_mean_pooling=mean_pooling)
    hf.save_pretrained(tmp_path / "hf")
    _, parts = interop.convert("hf", tmp_path / "hf", tmp_path / "ck.pt")
    assert parts == ["encoder"]
    ours = load_mv2mae(tmp_path / "ck.pt").eval()
    assert ours.cfg.encoder_final_norm is (not mean_pooling) and ours.cfg.pos_embed == "sinusoid1d"
    ref = hf_features(hf, clip_batch)
    with torch.no_grad():
        feats = ours.encoder(clip_batch.transpose(1, 2))
    assert (feats - ref).abs().max() < 1e-4
    interop.export_hf(ours, tmp_path / "back")
    again = VideoMAEModel.from_pretrained(tmp_path / "back").eval()
    assert (hf_features(again, clip_batch) - ref).abs().max() < 1e-5


def test_hf_pretraining_parity_with_decoder(tmp_path, clip_batch):
    hf = random_hf(VideoMAEForPreTraining, use_mean_pooling=False)
    hf.save_pretrained(tmp_path / "hf")
    _, parts = interop.convert("hf", tmp_path / "hf", tmp_path / "ck.pt")
    assert parts == ["encoder", "self_decoder"]
    ours = load_mv2mae(tmp_path / "ck.pt").eval()
    mask = torch.zeros(2, ours.cfg.num_tokens, dtype=torch.bool)
    mask[:, torch.randperm(ours.cfg.num_tokens)[: ours.cfg.num_masked]] = True
    with torch.no_grad():
        theirs = hf(clip_batch, bool_masked_pos=mask)
        mine = ours(clip_batch.transpose(1, 2)[:, None], mask=mask[:, None])
    # transformers' decoder LayerNorm uses eps 1e-5 where ours follows layer_norm_eps: tiny difference
    assert (mine.pred_self[:, 0] - theirs.logits).abs().max() < 1e-4
    assert torch.allclose(mine.loss, theirs.loss, rtol=1e-4)
    interop.export_hf(ours, tmp_path / "back", with_decoder=True)
    again = VideoMAEForPreTraining.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        assert torch.allclose(again(clip_batch, bool_masked_pos=mask).logits, theirs.logits, atol=1e-6)


def test_classifier_is_transformers_mean_pooling_classifier(tmp_path, clip_batch):
    """Finetuning starts as VideoMAE's does: a pretrained encoder (with a final norm) becomes a classifier
    whose logits equal ``VideoMAEForVideoClassification(use_mean_pooling=True)`` on the same weights —
    the encoder without its final norm, mean pool, ``fc_norm``, linear head."""
    pre = random_hf(VideoMAEForPreTraining, use_mean_pooling=False)
    pre.save_pretrained(tmp_path / "pre")
    interop.convert("hf", tmp_path / "pre", tmp_path / "ck.pt")
    ours = init_classifier(tmp_path / "ck.pt", load_mv2mae(tmp_path / "ck.pt").cfg, num_classes=5).eval()
    with torch.no_grad():
        for p in (*ours.fc_norm.parameters(), *ours.head.parameters()):
            p.copy_(torch.randn_like(p))
    theirs = VideoMAEForVideoClassification(hf_config(use_mean_pooling=True, num_labels=5)).eval()
    encoder = {k.removeprefix("videomae."): v for k, v in pre.state_dict().items()
               if k.startswith("videomae.") and not k.startswith("videomae.layernorm.")}
    theirs.videomae.load_state_dict(encoder, strict=True)
    theirs.fc_norm.load_state_dict(ours.fc_norm.state_dict())
    theirs.classifier.load_state_dict(ours.head.state_dict())
    with torch.no_grad():
        # transformers' fc_norm uses eps 1e-5 where ours follows layer_norm_eps: tiny difference
        assert (ours(clip_batch.transpose(1, 2)) - theirs(clip_batch).logits).abs().max() < 1e-4


def mcg_layout(hf: VideoMAEForPreTraining) -> dict[str, torch.Tensor]:
    """The MCG-NJU pretraining checkpoint layout of an HF model (fused qkv, separate q/v biases)."""
    sd = hf.state_dict()
    out = {"encoder.patch_embed.proj.weight": sd["videomae.embeddings.patch_embeddings.projection.weight"],
           "encoder.patch_embed.proj.bias": sd["videomae.embeddings.patch_embeddings.projection.bias"],
           "encoder.norm.weight": sd["videomae.layernorm.weight"], "encoder.norm.bias": sd["videomae.layernorm.bias"],
           "encoder_to_decoder.weight": sd["encoder_to_decoder.weight"], "mask_token": sd["mask_token"]}
    for prefix, theirs, count in (("encoder.blocks", "videomae.encoder.layer", hf.config.num_hidden_layers),
                                  ("decoder.blocks", "decoder.decoder_layers", hf.config.decoder_num_hidden_layers)):
        for i in range(count):
            t, o = f"{theirs}.{i}.", f"{prefix}.{i}."
            att = t + "attention.attention."
            out[o + "attn.qkv.weight"] = torch.cat([sd[att + n + ".weight"] for n in ("query", "key", "value")])
            out[o + "attn.q_bias"], out[o + "attn.v_bias"] = sd[att + "query.bias"], sd[att + "value.bias"]
            for ours_name, hf_name in (("norm1", "layernorm_before"), ("norm2", "layernorm_after"),
                                       ("attn.proj", "attention.output.dense"), ("mlp.fc1", "intermediate.dense"),
                                       ("mlp.fc2", "output.dense")):
                for p in ("weight", "bias"):
                    out[f"{o}{ours_name}.{p}"] = sd[f"{t}{hf_name}.{p}"]
    for name in ("norm", "head"):
        for p in ("weight", "bias"):
            out[f"decoder.{name}.{p}"] = sd[f"decoder.{name}.{p}"]
    return out


def test_mcg_nju_videomae_checkpoint_import(tmp_path, clip_batch):
    hf = random_hf(VideoMAEForPreTraining, use_mean_pooling=False, layer_norm_eps=1e-6)
    state = mcg_layout(hf)
    torch.save({"model": state}, tmp_path / "videomae.pth")
    model, parts = interop.convert("videomae", tmp_path / "videomae.pth", tmp_path / "ck.pt", frames=FRAMES,
                                   image_size=SIZE, num_heads=4, decoder_heads=2)
    assert parts == ["encoder", "self_decoder"] and model.cfg.depth == 2 and model.cfg.decoder_dim == 24
    with torch.no_grad():
        feats = load_mv2mae(tmp_path / "ck.pt").eval().encoder(clip_batch.transpose(1, 2))
    assert (feats - hf_features(hf, clip_batch)).abs().max() < 1e-4
    # finetuned layout: top-level blocks, no encoder norm, a classification head that is not imported
    finetuned = {k[len("encoder."):]: v for k, v in state.items()
                 if k.startswith("encoder.") and not k.startswith("encoder.norm.")}
    finetuned |= {"fc_norm.weight": torch.ones(48), "fc_norm.bias": torch.zeros(48), "head.weight": torch.zeros(5, 48),
                  "head.bias": torch.zeros(5)}
    torch.save(finetuned, tmp_path / "finetuned.pth")
    model, parts = interop.convert("videomae", tmp_path / "finetuned.pth", tmp_path / "ck2.pt", frames=FRAMES,
                                   image_size=SIZE, num_heads=4)
    assert parts == ["encoder"] and not model.cfg.encoder_final_norm
    # a key the map does not know is an error naming it
    torch.save({"model": {**state, "encoder.blocks.0.attn.relative_bias": torch.zeros(3)}}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="encoder.blocks.0.attn.relative_bias"):
        interop.convert("videomae", tmp_path / "odd.pth", tmp_path / "ck3.pt", frames=FRAMES, image_size=SIZE)


def test_export_refuses_positions_transformers_cannot_represent(tmp_path):
    cfg = ModelConfig(frames=FRAMES, image_size=SIZE, embed_dim=48, depth=1, num_heads=4, decoder_dim=24,
                      decoder_depth=1, decoder_heads=2, cross_decoder_depth=1, pos_embed="sincos3d")
    with pytest.raises(CheckpointError, match="sincos3d"):
        interop.export_hf(MV2MAE(cfg), tmp_path / "out")


def test_convert_rejects_non_videomae_directory(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "vit"}')
    with pytest.raises(CheckpointError, match="model_type is 'vit'"):
        interop.convert("hf", tmp_path, tmp_path / "ck.pt")


def write_video(path, frames: int = 20, size: tuple[int, int] = (48, 64)) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (size[1], size[0]))
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size[0], size[1], 3), dtype=np.uint8)
    for t in range(frames):
        writer.write(np.roll(base, 2 * t, axis=1))
    writer.release()


def test_cli_convert_export_embed(tmp_path):
    hf = random_hf(VideoMAEModel, use_mean_pooling=False)
    hf.save_pretrained(tmp_path / "hf")
    runner = CliRunner()
    res = runner.invoke(app, ["convert", "--from", "hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ck.pt")])
    assert res.exit_code == 0, res.output
    assert "imported encoder" in res.output and load_checkpoint(tmp_path / "ck.pt")["imported_from"]["kind"] == "hf"
    res = runner.invoke(app, ["export", "--to", "hf", str(tmp_path / "ck.pt"), str(tmp_path / "back")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "back" / "model.safetensors").is_file()

    write_video(tmp_path / "clip.avi")
    args = ["embed", "--checkpoint", str(tmp_path / "ck.pt"), "--video", str(tmp_path / "clip.avi"),
            "--stride", "2", "--clips", "2"]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "f.npy")])
    assert res.exit_code == 0, res.output
    feats = np.load(tmp_path / "f.npy")
    assert feats.shape == (2, 48) and np.isfinite(feats).all()
    assert not np.allclose(feats[0], feats[1])  # the two clips show different frames
    # other frame counts / sizes adapt the position table; every token comes back with --tokens
    res = runner.invoke(app, [*args, "--frames", "8", "--size", "48", "--tokens", "--out", str(tmp_path / "t.npy")])
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "t.npy").shape == (2, 4 * 3 * 3, 48)
    # a clip longer than the video repeats the last frame instead of failing
    res = runner.invoke(app, [*args[:-4], "--stride", "4", "--frames", "8", "--out", str(tmp_path / "s.npy")])
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "s.npy").shape == (1, 48)
    res = runner.invoke(app, ["embed", "--checkpoint", str(tmp_path / "ck.pt"), "--video", str(tmp_path / "nope.avi"),
                              "--out", str(tmp_path / "x.npy")])
    assert res.exit_code == 1 and "nope.avi" in res.output


def test_cli_convert_names_bad_checkpoint(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    res = CliRunner().invoke(app, ["convert", "--from", "videomae", str(tmp_path / "junk.pth"), "--out",
                                   str(tmp_path / "ck.pt")])
    assert res.exit_code == 1 and "junk.pth" in res.output


def test_embed_matches_encoder_on_the_same_pixels(tmp_path):
    cfg = ModelConfig(frames=FRAMES, image_size=SIZE, embed_dim=48, depth=1, num_heads=4, decoder_dim=24,
                      decoder_depth=1, decoder_heads=2, cross_decoder_depth=1)
    model = MV2MAE(cfg).eval()
    save_model_state(tmp_path / "ck.pt", model, cfg)
    write_video(tmp_path / "clip.avi", frames=FRAMES, size=(SIZE, SIZE))
    feats = embed_video(tmp_path / "ck.pt", tmp_path / "clip.avi", None, 1, None, 1, True, "cpu")
    rgb = torch.from_numpy(read_video_clips(tmp_path / "clip.avi", FRAMES, 1, SIZE, 1)).float() / 255
    x = (rgb.permute(0, 4, 1, 2, 3) - torch.tensor(cfg.pixel_mean).view(1, 3, 1, 1, 1)) / torch.tensor(
        cfg.pixel_std).view(1, 3, 1, 1, 1)
    with torch.no_grad():
        expected = model.encoder(x).mean(dim=1)
    assert np.allclose(feats, expected.numpy(), atol=1e-5)


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    return session_synth_data(tmp_path_factory)


def test_a_finetuned_classifier_exports_to_a_transformers_video_classification_pipeline(synth_data, tmp_path):
    """What a user trains exports: a finetuned classifier becomes VideoMAEForVideoClassification with the
    dataset's class names, checked against transformers right after export, and transformers' own
    video-classification pipeline loads the directory and predicts what our model predicts."""
    sets = [x for item in [*TINY_MODEL, "model.image_size=32", "data.stride=2",
                           "data.workers=0", "optim.batch_size=4", "steps=2", "schedule.warmup_steps=1", "data.val_by=none"] for x in ("--set", item)]
    runner = CliRunner()
    res = runner.invoke(app, ["finetune", "--config", "tiny", "--data", str(synth_data), "--out", str(tmp_path / "ft"),
                              *sets])
    assert res.exit_code == 0, res.output
    ck, out = tmp_path / "ft" / "checkpoints" / "lowest-train-loss.pt", tmp_path / "hf"
    res = runner.invoke(app, ["export", str(ck), str(out)])
    assert res.exit_code == 0, res.output
    assert "checked: transformers reproduces our outputs within" in res.output

    classes = read_index(synth_data).classes
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["VideoMAEForVideoClassification"] and config["use_mean_pooling"]
    assert [config["id2label"][str(i)] for i in range(len(classes))] == classes
    ours = load_classifier(ck).eval()
    pre = json.loads((out / "preprocessor_config.json").read_text())
    assert pre["image_mean"] == list(ours.cfg.pixel_mean) and pre["crop_size"]["height"] == ours.cfg.image_size

    pipe = pipeline("video-classification", model=str(out))
    video = synth_data.parent / "raw" / "nturgb+d_rgb" / "S001C001P001R001A001_rgb.avi"
    frames = read_video_clips(video, ours.cfg.frames, 2, 48, 1)[0]  # [T, H, W, 3] RGB, decoded by us
    answer = pipe(frames, top_k=len(classes))  # transformers 5 decodes file paths only with torchcodec + FFmpeg
    assert sorted(a["label"] for a in answer) == sorted(classes)
    pixels = pipe.video_processor(list(frames), return_tensors="pt")["pixel_values"]  # what the pipeline fed
    with torch.no_grad():
        probs = ours(pixels.transpose(1, 2)).softmax(-1)[0]
    assert answer[0]["label"] == classes[int(probs.argmax())]
    assert answer[0]["score"] == pytest.approx(float(probs.max()), abs=1e-4)


def test_classifier_export_round_trip_and_the_check_that_catches_a_wrong_reading(tmp_path):
    cfg = ModelConfig(frames=FRAMES, image_size=SIZE, embed_dim=48, depth=2, num_heads=4, decoder_dim=24,
                      decoder_depth=1, decoder_heads=2, cross_decoder_depth=1, encoder_final_norm=False)
    torch.manual_seed(0)
    ours = VideoClassifier(cfg, 3).eval()
    with torch.no_grad():  # every norm, bias and the head off its initialisation: a dropped key would show
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    out = interop.export_hf(ours, tmp_path / "hf", class_names=["a", "b", "c"])
    assert interop.check_export(ours, out) < 1e-4
    clip = torch.randn(2, 3, FRAMES, SIZE, SIZE)
    theirs = transformers.VideoMAEForVideoClassification.from_pretrained(out).eval()
    with torch.no_grad():
        assert (theirs(clip.transpose(1, 2)).logits - ours(clip)).abs().max() < 1e-4
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(config | {"layer_norm_eps": 0.5}))  # read differently
    with pytest.raises(CheckpointError, match="computes outputs .* away from ours"):
        interop.check_export(ours, out)
