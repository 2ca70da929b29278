"""Run configs: presets resolve for their stages, overrides are typed, errors name the key and list
what is valid, and a saved config rebuilds the same run."""

import pytest
import yaml

from mv2mae.config import ConfigError, RunConfig, load_config, preset_names, valid_keys
from mv2mae.data.config import DataConfig

PAPER = ["ntu60_xsub", "ntu60_xview", "ntu120_xsub", "ntu120_xset", "etri_xsub"]
TRANSFER = ["nucla_xview", "pkummd2_xsub", "rocog"]


def test_every_preset_resolves_for_its_stages():
    assert set(PAPER + TRANSFER + ["tiny"]) <= set(preset_names())
    for name in PAPER + ["tiny"]:
        for stage in ("pretrain", "finetune"):
            cfg = load_config(name, stage)
            assert cfg.stage == stage and cfg.data.protocol
    for name in TRANSFER:
        assert load_config(name, "finetune").data.protocol == name
        with pytest.raises(ConfigError, match="no 'pretrain' stage"):
            load_config(name, "pretrain")


def test_paper_recipe_values():
    pre, fin = load_config("ntu60_xview", "pretrain"), load_config("ntu60_xview", "finetune")
    assert pre.data.protocol == "ntu60_xview"  # the base preset's protocol is overridden
    assert (pre.model.embed_dim, pre.model.frames, pre.model.image_size, pre.model.num_tokens) == (384, 16, 128, 512)
    assert pre.model.mask_ratio == 0.7 and pre.model.tau == 60.0
    assert pre.optim.betas == (0.9, 0.95) and pre.optim.base_lr == 1.5e-4 and pre.schedule.epochs == 1600
    assert fin.optim.betas == (0.9, 0.999) and fin.optim.layer_decay == 0.75
    assert (fin.finetune.mixup, fin.finetune.cutmix, fin.finetune.label_smoothing) == (0.8, 1.0, 0.1)


def test_transfer_presets_do_what_their_comment_says():
    """Small target sets: more epochs, smaller batches, a steeper layer decay than the NTU recipe."""
    ntu = load_config("ntu60_xsub", "finetune")
    for name in TRANSFER:
        cfg = load_config(name, "finetune")
        assert cfg.schedule.epochs > ntu.schedule.epochs and cfg.optim.batch_size < ntu.optim.batch_size, name
        assert cfg.optim.layer_decay == 0.7 < ntu.optim.layer_decay, name


def test_overrides_are_typed_and_scale_the_lr():
    cfg = load_config("tiny", "pretrain", ["steps=7", "optim.base_lr=1e-3", "optim.batch_size=8",
                                           "optim.accum_steps=2", "model.tau=inf", "data.crop_scale=[0.3, 1]"])
    assert cfg.schedule.steps == 7 and cfg.model.tau == float("inf") and cfg.data.crop_scale == (0.3, 1.0)
    assert cfg.global_batch(world_size=4) == 64
    peak, low, _ = cfg.scaled_lr(world_size=4)
    assert peak == pytest.approx(1e-3 * 64 / 256) and low == pytest.approx(cfg.optim.min_lr * 64 / 256)


@pytest.mark.parametrize("word, value", [("off", "off"), ("on", "on"), ('"off"', "off")])
def test_on_off_words_reach_string_options(word, value):
    # YAML 1.1 reads a bare on/off as a boolean; the string options that take them must still accept them
    assert load_config("tiny", "finetune", [f"data.flip={word}"]).data.flip == value


@pytest.mark.parametrize("override, message", [
    ("optim.learning_rate=1", r"unknown config key\(s\) optim.learning_rate; valid keys: optim.batch_size"),
    ("bogus=1", r"unknown config key\(s\) bogus; valid keys: stage, preset, model.preset"),
    ("steps=many", r"schedule.steps: expected int, got 'many'"),
    ("loop.amp=1", r"loop.amp: expected bool"),
    ("optim.betas=[0.9]", r"optim.betas: expected 2 values"),
    ("model.frames=7", r"frames=7 is not a multiple of tubelet=2"),
    ("model.preset=vit_huge", r"unknown model preset 'vit_huge'"),
    ("loop.resume_data=sometimes", r"resume_data"),
    ("steps", r"must look like key=value"),
])
def test_bad_overrides_are_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", "pretrain", [override])


def test_unknown_preset_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="unknown config 'nope'.*presets: .*tiny"):
        load_config("nope", "pretrain")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {batch_size: 4}\nstages: {pretrain: {optim: {warmup: 3}}}\n")
    with pytest.raises(ConfigError, match="optim.warmup"):
        load_config(str(bad), "pretrain")


def test_a_user_yaml_can_extend_a_preset(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("base: tiny\ndata: {protocol: synth_xsub}\nstages: {pretrain: {schedule: {steps: 11}}}\n")
    cfg = load_config(str(mine), "pretrain")
    assert cfg.data.protocol == "synth_xsub" and cfg.schedule.steps == 11
    assert cfg.model == load_config("tiny", "pretrain").model


def test_saved_config_round_trips():
    cfg = load_config("ntu60_xsub", "finetune", ["model.tau=inf", "steps=5"])
    again = RunConfig.from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    assert "optim.base_lr" in valid_keys() and "model.frames" in valid_keys()


def test_the_old_spelling_online_reads_as_framediff_with_a_note(tmp_path):
    """``data.motion=online`` was a second name for framediff: a preset, ``--set`` or a saved run that holds
    it still reads for a release, as framediff with a one-line note, and the run saves ``framediff``; code
    that builds a DataConfig is held to the current names."""
    with pytest.warns(FutureWarning, match=r"data.motion=online is now spelled data.motion=framediff"):
        cfg = load_config("tiny", "pretrain", ["data.motion=online"])
    assert cfg.data.motion == "framediff" and cfg == load_config("tiny", "pretrain", ["data.motion=framediff"])
    saved = yaml.safe_load(cfg.to_yaml())
    assert saved["data"]["motion"] == "framediff"
    saved["data"]["motion"] = "online"  # a run saved before the rename
    with pytest.warns(FutureWarning, match="data.motion=online"):
        assert RunConfig.from_dict(saved) == cfg
    user = tmp_path / "old.yaml"
    user.write_text("base: tiny\ndata: {motion: online}\n")
    with pytest.warns(FutureWarning, match="data.motion=online"):
        assert load_config(str(user), "pretrain").data.motion == "framediff"
    with pytest.raises(ValueError, match="motion 'online' not in"):
        DataConfig(motion="online")
    with pytest.raises(ConfigError, match="motion 'optical' not in"):  # other values are still refused
        load_config("tiny", "pretrain", ["data.motion=optical"])
