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
