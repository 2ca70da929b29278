"""``mv2mae bench gpu`` (``make gpu-check``): without CUDA it says so and succeeds; its tiny CPU version runs
every section end to end on real shards, so the first GPU run is not the code's first run."""

import json

import pytest
import torch
from fixtures_data import session_synth_data
from typer.testing import CliRunner

from mv2mae.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    return session_synth_data(tmp_path_factory)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the check would run")
def test_without_cuda_the_check_says_so_and_exits_0(tmp_path):
    out = tmp_path / "gpu.json"
    res = runner.invoke(app, ["bench", "gpu", "--json", str(out), "--work", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "no CUDA device" in res.output and not out.exists()  # no figures pretended


@pytest.mark.slow
def test_the_tiny_check_runs_every_section_on_the_cpu(synth_data, tmp_path):
    out, md = tmp_path / "gpu.json", tmp_path / "gpu.md"
    res = runner.invoke(app, ["bench", "gpu", "--device", "cpu", "--tiny", "--data", str(synth_data),
                              "--work", str(tmp_path / "work"), "--json", str(out), "--markdown", str(md)])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    checks = r["checks"]
    assert checks["ok"] and checks["channels_last"] and checks["normalised_on"] == "cpu"
    assert checks["device_decode"]["max_levels"] <= 1  # the same decoder on the CPU: rounding only
    resume = r["resume"]
    assert resume["ok"] and resume["killed"] and resume["max_rel_diff"] == 0.0  # exact on the CPU
    assert resume["killed_after_checkpoint"] == "step-00000002.pt" and resume["compared_steps"] == [3, 6]
    assert [(row["decode_on"], row["workers"]) for row in r["loader"]] == [("cpu", 1), ("device", 1)]
    assert all(row["samples_per_s"] > 0 and 0 <= row["data_wait"] <= 1 for row in r["loader"])
    rows = r["model"]["rows"]
    assert [(row["views"], row["compiled"]) for row in rows] == [(1, False), (1, True), (2, False), (2, True)]
    assert all(row["samples_per_s"] > 0 and row["mfu"] is None for row in rows)  # no GPU, no peak: no MFU
    assert r["passed"] and "| decode_on | workers |" in md.read_text()
