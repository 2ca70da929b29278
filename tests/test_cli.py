"""The command line lists its verbs and answers --version."""

import subprocess
import sys

from typer.testing import CliRunner

from mv2mae import __version__
from mv2mae.cli import app


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
