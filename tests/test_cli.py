"""The command line lists its verbs and answers --version."""

import os
import subprocess
import sys
from pathlib import Path

import typer
from typer.testing import CliRunner

from mv2mae import __version__
from mv2mae.cli import app, choices


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
    assert result.exit_code == 1
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
    assert sorted(values(choices.StoredMotion)) == sorted(MOTION_CHOICES)
    assert values(choices.Overlay) == ["auto", *MOTION_SOURCES, "none"]
    assert values(choices.ProbeMethod) == list(METHODS)
    assert values(choices.ModelPreset) == list(ModelConfig.preset_names())
    result = CliRunner().invoke(app, ["preprocess", "ntu61", "--root", ".", "--out", "x"])
    assert result.exit_code == 2 and "ntu61" in result.output  # Typer refuses it before any work
    script = Path(sys.executable).parent / "mv2mae"  # the console script shells complete (COMP_WORDS[0])
    completion = subprocess.run([str(script)], capture_output=True, text=True, env={
        **os.environ, "_MV2MAE_COMPLETE": "complete_bash", "COMP_WORDS": "mv2mae eval --protocol ntu60",
        "COMP_CWORD": "3"}).stdout
    assert completion.split() == ["ntu60_xsub", "ntu60_xview"]
