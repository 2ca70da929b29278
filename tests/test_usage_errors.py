"""Usage errors exit 2 in one line, before anything is written: config keys that describe no run (counts
and sizes below one, no steps, a mask ratio outside (0, 1), a warm-up longer than the run, more views
than the protocol's groups have), options that mean nothing (--limit 0, a frame rate of 0, a cell larger
than the frame), an --out that cannot be written, and a resumed run pointed at another dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fixtures_data import session_synth_data
from train_helpers import TINY_MODEL
from typer.testing import CliRunner

from mv2mae.cli import app
from mv2mae.config import ConfigError, load_config


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory) -> Path:
    return session_synth_data(tmp_path_factory)


def invoke(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_usage_error(result, *needles: str) -> None:
    """Exit status 2, exactly one ``error:`` line, no traceback, each needle in the message."""
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert sum(line.startswith("error:") for line in result.output.splitlines()) == 1, result.output
    for needle in needles:
        assert needle in text, (needle, result.output)


def sets(*items: str) -> list[str]:
    return [a for item in items for a in ("--set", item)]


TINY_RUN = [*TINY_MODEL, "optim.batch_size=2", "data.workers=0", "data.stride=2", "data.shuffle_buffer=4",
            "schedule.warmup_steps=1"]


@pytest.mark.parametrize("override, needle", [
    ("model.frames=0", "frames=0 must be a whole number >= 1"),
    ("model.patch=0", "patch=0 must be a whole number >= 1"),
    ("model.tubelet=0", "tubelet=0 must be a whole number >= 1"),
    ("model.image_size=-8", "image_size=-8"),
    ("model.depth=0", "depth=0"),
    ("model.decoder_heads=0", "decoder_heads=0"),
    ("steps=0", "schedule.steps must be >= 1"),
    ("steps=-1", "schedule.steps must be >= 1"),
    ("schedule.epochs=-1", "schedule.epochs and warmup_epochs must be finite and >= 0"),
    ("model.mask_ratio=0", "mask_ratio=0.0 must be in (0, 1)"),
    ("model.mask_ratio=1", "mask_ratio=1.0 must be in (0, 1)"),
    ("model.mask_ratio=0.001", "masks 0 of the"),
    ("optim.batch_size=0", "optim.batch_size and optim.accum_steps must be >= 1"),
    ("optim.accum_steps=-2", "optim.batch_size and optim.accum_steps must be >= 1"),
    ("optim.base_lr=-1", "optim.base_lr=-1.0"),
    ("data.crop_scale=[0, 1]", "crop_scale must be [low, high]"),
    ("data.shuffle_buffer=0", "shuffle_buffer must be >= 1"),
])
def test_a_config_key_that_describes_no_run_is_refused(override, needle):
    with pytest.raises(ConfigError) as refused:
        load_config("tiny", "pretrain", [override])
    assert needle in str(refused.value)


def test_a_refused_config_key_is_a_usage_error_before_the_run_folder_exists(tmp_path):
    out = tmp_path / "run"
    result = invoke("pretrain", "--config", "tiny", "--data", tmp_path, "--out", out, *sets("model.frames=0"))
    assert_usage_error(result, "frames=0")
    assert not out.exists()


def test_a_warmup_longer_than_the_run_is_refused_before_anything_is_written(synth_data, tmp_path):
    out = tmp_path / "run"
    result = invoke("pretrain", "--config", "tiny", "--data", synth_data, "--out", out,
                    *sets(*TINY_RUN, "steps=2", "schedule.warmup_steps=5"))
    assert_usage_error(result, "schedule.steps=2, schedule.warmup_steps=5", "warm-up is longer than the run")
    assert not out.exists()


def test_more_views_than_the_protocol_has_are_refused_before_the_config_is_printed(synth_data, tmp_path):
    out = tmp_path / "run"
    result = invoke("pretrain", "--config", "tiny", "--data", synth_data, "--out", out,
                    *sets(*TINY_RUN, "data.num_sources=3"))
    assert_usage_error(result, "pretraining needs 4 views", "lower data.num_sources")
    assert not out.exists() and "stage: pretrain" not in result.output


@pytest.mark.parametrize("option, needle", [
    (["--limit", "0"], "--limit 0: give at least 1 group"),
    (["--limit", "-1"], "--limit -1"),
    (["--fps", "0"], "--fps 0.0: a frame rate must be > 0"),
    (["--fps", "inf"], "--fps inf"),
    (["--image-fps", "-30"], "--image-fps -30.0"),
    (["--size", "0"], "--size 0: the stored short side must be in"),
    (["--size", "100000"], "--size 100000"),
    (["--cell", "0"], "--cell 0: a motion cell must be"),
    (["--cell", "500"], "--cell 500"),
])
def test_a_preprocess_option_that_means_nothing_is_a_usage_error(synth_data, tmp_path, option, needle):
    raw = synth_data.parent / "raw"
    result = invoke("preprocess", "synth", "--root", raw, "--out", tmp_path / "out", "--no-progress", *option)
    assert_usage_error(result, needle)
    assert not (tmp_path / "out").exists()


def test_an_out_that_is_a_file_or_cannot_be_written_is_refused_before_any_work(synth_data, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    raw = synth_data.parent / "raw"
    commands = {
        "pretrain": ["pretrain", "--config", "tiny", "--data", synth_data],
        "finetune": ["finetune", "--config", "tiny", "--data", synth_data],
        "synth": ["synth"],
        "preprocess": ["preprocess", "synth", "--root", raw, "--no-progress"],
    }
    for name, args in commands.items():
        assert_usage_error(invoke(*args, "--out", a_file), f"--out {a_file} is a file")
        assert_usage_error(invoke(*args, "--out", a_file / "under"), f"{a_file} is a file, so nothing")
        # /sys refuses new files even to root (a read-only place the tests can count on)
        assert_usage_error(invoke(*args, "--out", "/sys/mv2mae-run"), "cannot write in /sys")
        assert a_file.read_text() == "mine", name
    for export_to in (a_file, Path("/sys/mv2mae-export")):  # checked before the checkpoint is read
        result = invoke("export", tmp_path / "no-such.pt", export_to)
        assert result.exit_code == 2 and "no-such.pt" not in result.output, result.output


def test_resuming_on_another_dataset_names_both_and_needs_switch_data(synth_data, tmp_path):
    out, other = tmp_path / "run", tmp_path / "copy"
    shutil.copytree(synth_data, other)
    first = invoke("pretrain", "--config", "tiny", "--data", synth_data, "--out", out, *sets(*TINY_RUN, "steps=1"))
    assert first.exit_code == 0, first.output
    config_before = (out / "config.yaml").read_text()
    again = invoke("pretrain", "--data", other, "--out", out, "--resume", "auto", *sets("steps=2"))
    assert_usage_error(again, f"trained on {synth_data}", f"names {other}", "--switch-data")
    assert (out / "config.yaml").read_text() == config_before  # nothing rewritten
    switched = invoke("pretrain", "--data", other, "--out", out, "--resume", "auto", "--switch-data",
                      *sets("steps=2"))
    assert switched.exit_code == 0, switched.output
    assert f"root: {other}" in (out / "config.yaml").read_text()


@pytest.mark.parametrize("place", [{"azimuth": "90"}, {"azimuth": float("inf")}, {"angle": 90}, "left"])
def test_a_camera_layout_that_is_not_numbers_is_one_line_naming_the_index(synth_data, tmp_path, place):
    index = json.loads((synth_data / "index.json").read_text())
    index["layout"] = {"1": place}
    (tmp_path / "index.json").write_text(json.dumps(index))
    result = invoke("pretrain", "--config", "tiny", "--data", tmp_path, "--out", tmp_path / "run",
                    *sets(*TINY_RUN, "data.source_policy=adjacent"))
    text = " ".join(result.output.split())
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"{tmp_path / 'index.json'}" in text and "layout must map camera ids to finite azimuth/height" in text
    assert not (tmp_path / "run").exists()
