"""The command line lists its verbs, answers --version, and reports a wrong command in one line: exit
status 2 for a usage error (config key, type, geometry, protocol), 1 for the rest, a traceback only with
--debug."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from fixtures_data import SHORT_SIDE, session_synth_data
from train_helpers import TINY_MODEL, tiny_config
from typer.testing import CliRunner

from mv2mae import __version__
from mv2mae.cli import app, choices
from mv2mae.config import ConfigError
from mv2mae.train.tasks import check_crop


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == __version__


def test_console_script_help_lists_verbs():
    out = subprocess.run([sys.executable, "-m", "mv2mae.cli", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for verb in ("synth", "bench"):
        assert verb in out


def test_an_error_message_is_printed_whole_brackets_included(tmp_path):
    # the config error quotes "[target, 1 source(s)]", which rich would read as markup and drop
    result = CliRunner().invoke(app, ["pretrain", "--config", "tiny", "--data", str(tmp_path), "--out",
                                      str(tmp_path / "run"), "--set", "data.source_policy=fixed"])
    assert result.exit_code == 2  # a usage error
    assert "error:" in result.output and "fixed_pairs of [target, 1 source(s)]" in result.output


def _commands(command, path=()):
    """Every leaf command of the app with its path of names."""
    if hasattr(command, "commands"):  # a group (Typer's own, not a click.Group)
        for name, sub in command.commands.items():
            yield from _commands(sub, (*path, name))
    else:
        yield path, command


def test_every_option_has_help_and_help_shows_it_whole():
    """Help text is rich markup to Typer: '[clips, D]' would vanish from --help. Every parameter has help,
    and each help text appears whole in its command's rendered --help."""
    root = typer.main.get_command(app)
    missing, dropped = [], []
    for path, command in _commands(root):
        rendered = CliRunner().invoke(app, [*path, "--help"], env={"TERMINAL_WIDTH": "1000"}).output
        flat = " ".join(rendered.replace("│", " ").split())
        for param in command.params:
            text = getattr(param, "help", None)
            if not text:
                missing.append(f"{' '.join(path)} {param.name}")
            elif " ".join(text.split()) not in flat:
                dropped.append(f"{' '.join(path)} {param.name}: {text!r}")
    assert not missing, f"parameters without help: {missing}"
    assert not dropped, f"help text not shown whole: {dropped}"


def test_options_with_fixed_values_are_the_owners_values_and_complete_in_the_shell():
    from mv2mae.data.config import DECODE_ON
    from mv2mae.eval.probe import METHODS
    from mv2mae.model.config import ModelConfig
    from mv2mae.preprocess.adapters import ADAPTERS
    from mv2mae.preprocess.crop import CROP_MODES
    from mv2mae.preprocess.decode import BACKENDS
    from mv2mae.preprocess.pipeline import MOTION_CHOICES
    from mv2mae.shards.schema import MOTION_SOURCES

    def values(enum):
        return [m.value for m in enum]

    assert sorted(values(choices.Dataset)) == sorted(ADAPTERS)
    assert values(choices.Crop) == list(CROP_MODES) and values(choices.Backend) == list(BACKENDS)
    # preprocess --motion: each name stores one of the pipeline's sources; each old spelling, the source it named
    assert sorted(choices.MOTION_CACHES.values()) == sorted(MOTION_CHOICES)
    assert all(choices.MOTION_CACHES[new] == old for old, new in choices.MotionCache.old.items())
    assert values(choices.Overlay) == ["auto", *MOTION_SOURCES, "none"]
    assert values(choices.ProbeMethod) == list(METHODS)
    assert values(choices.DecodeOn) == list(DECODE_ON)
    assert values(choices.ModelPreset) == list(ModelConfig.preset_names())
    result = CliRunner().invoke(app, ["preprocess", "ntu61", "--root", ".", "--out", "x"])
    assert result.exit_code == 2 and "ntu61" in result.output  # Typer refuses it before any work
    script = Path(sys.executable).parent / "mv2mae"  # the console script shells complete (COMP_WORDS[0])
    completion = subprocess.run([str(script)], capture_output=True, text=True, env={
        **os.environ, "_MV2MAE_COMPLETE": "complete_bash", "COMP_WORDS": "mv2mae eval --protocol ntu60",
        "COMP_CWORD": "3"}).stdout
    assert completion.split() == ["ntu60_xsub", "ntu60_xview"]
    completion = subprocess.run([str(script)], capture_output=True, text=True, env={
        **os.environ, "_MV2MAE_COMPLETE": "complete_bash", "COMP_WORDS": "mv2mae preprocess synth --motion ",
        "COMP_CWORD": "4"}).stdout
    assert completion.split() == list(choices.MOTION_CACHES)  # the current names, not the old spellings


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    return session_synth_data(tmp_path_factory)


@pytest.mark.parametrize("sets, code, message", [
    (["optim.learning_rate=1"], 2, "unknown config key(s) optim.learning_rate; valid keys: optim.batch_size"),
    (["steps=many"], 2, "schedule.steps: expected int, got 'many'"),
    (["model.frames=7"], 2, "frames=7 is not a multiple of tubelet=2"),
    (["model.image_size=4096"], 2, f"model.image_size=4096 is larger than the stored frames of DATA (short side "
                                   f"{SHORT_SIDE}): use model.image_size <= {SHORT_SIDE}, or preprocess with --size 4096"),
    (["data.protocol=ntu60_xsub"], 2, "protocol ntu60_xsub is for ntu60 data; this directory holds 'synth'"),
    (["data.protocol=nope"], 2, "unknown protocol 'nope'; known: all,"),
    (["data.num_sources=2", "data.workers=0"], 2, "pretraining needs 3 views (1 target + 2 source(s))"),
])
def test_a_wrong_command_is_one_line_with_a_usage_exit_status(synth_data, tmp_path, sets, code, message):
    args = ["pretrain", "--config", "tiny", "--data", str(synth_data), "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(app, [*args, *(a for s in sets for a in ("--set", s))])
    assert result.exit_code == code, result.output
    output = " ".join(result.output.split())  # rich may wrap the line
    assert output.count("error: ") == 1 and message.replace("DATA", str(synth_data)) in output.split("error: ")[1]
    assert "Traceback" not in result.output and not (tmp_path / "run" / "checkpoints").exists()


def test_a_missing_data_folder_is_named_and_debug_shows_the_traceback(tmp_path):
    args = ["pretrain", "--config", "tiny", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "nowhere/index.json: no index" in result.output
    debug = CliRunner().invoke(app, ["--debug", *args])
    assert debug.exit_code != 0 and "no index" in str(debug.exception)  # raised as is, traceback and all


def test_a_crop_larger_than_the_stored_frames_is_refused_and_an_upscaling_one_warned(caplog):
    cfg = tiny_config("pretrain", "model.image_size=64", "model.patch=16")
    with pytest.raises(ConfigError, match="model.image_size=64 is larger than the stored frames"):
        check_crop(cfg, short_side=48)
    with caplog.at_level(logging.WARNING, logger="mv2mae.train.tasks"):
        check_crop(cfg, short_side=64)  # the typical crop (~57 px at crop_scale 0.6-1) is upscaled
        assert "model.image_size=64 upscales a typical crop" in caplog.text
        caplog.clear()
        check_crop(cfg, short_side=160)
        assert not caplog.text


def test_resuming_with_a_config_of_another_model_names_the_keys(synth_data, tmp_path):
    run = ["pretrain", "--data", str(synth_data), "--out", str(tmp_path / "run")]
    sets = [*TINY_MODEL, "schedule.warmup_steps=1", "optim.batch_size=2", "steps=1", "data.workers=0", "data.stride=2",
            "data.shuffle_buffer=4"]
    first = CliRunner().invoke(app, [*run, "--config", "tiny", *(a for s in sets for a in ("--set", s))])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(app, [*run, "--config", "tiny", "--resume", "auto", "--set", "steps=2",
                                     *(a for s in sets[:-4] for a in ("--set", s)), "--set", "model.depth=1"])
    output = " ".join(again.output.split())
    assert again.exit_code == 1 and "its weights do not fit this run's model (model.depth: checkpoint 2, config 1)" \
        in output and "resume without --config" in output
