"""``mv2mae bench train``: the real pretraining from shards beside the same loop on a batch held in memory."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from mv2mae.cli import app
from mv2mae.train.logs import read_log

# a model small enough for a few steps in seconds (tiny.yaml's shape, shrunk)
SMALL = ["model.frames=4", "model.image_size=32", "model.patch=8", "model.depth=1", "model.embed_dim=48",
         "model.num_heads=3", "model.decoder_dim=48", "model.decoder_heads=3", "model.decoder_depth=1",
         "model.cross_decoder_depth=1", "optim.batch_size=2", "loop.threads=1", "loop.device=cpu"]


def test_one_round_trains_from_the_shards_and_from_a_held_batch(tmp_path):
    """One paired round: the end-to-end run is `mv2mae pretrain`'s training on the loader (its saved config
    names the shards, the worker count and decode_on asked for), the compute-only run trains the same steps
    with no data wait, and the reported figures are those of the two runs' logs."""
    out = tmp_path / "train.json"
    sets = [arg for s in SMALL for arg in ("--set", s)]
    result = CliRunner().invoke(app, ["bench", "train", "--work", str(tmp_path), "--steps", "4", "--warmup", "1",
                                      "--rounds", "1", "--workers", "1", "--decode-on", "cpu", "--groups", "2",
                                      "--raw-size", "96x72", "--short-side", "48", "--json", str(out), *sets])
    assert result.exit_code == 0, result.output
    r = json.loads(out.read_text())
    (row,) = r["rounds"]
    runs = {kind: tmp_path / "runs" / f"round1-{kind}" for kind in ("end_to_end", "compute_only")}
    saved = yaml.safe_load((runs["end_to_end"] / "config.yaml").read_text())
    assert saved["data"]["root"] == r["data"]["shards"]
    assert (saved["data"]["workers"], saved["data"]["decode_on"], saved["schedule"]["steps"]) == (1, "cpu", 4)
    for kind, run_dir in runs.items():
        logged = read_log(run_dir)
        assert [x["step"] for x in logged] == [1, 4]  # step 1 ends the warm-up; the window is steps 2-4
        rate = 3 * 2 / (logged[1]["time"] - logged[0]["time"])
        assert row[kind]["samples_per_s"] == pytest.approx(rate, rel=0.01) and r[kind]["samples_per_s"] > 0
        assert row[kind]["data_wait"] == pytest.approx(logged[1]["data_wait"], abs=1e-4)
    assert row["compute_only"]["data_wait"] < 0.01  # the held batch is there at once, and no worker decodes
    assert row["compute_only"]["worker_cpu_ms_per_sample"] < row["end_to_end"]["worker_cpu_ms_per_sample"]
    assert r["ratio"] == pytest.approx(row["end_to_end"]["samples_per_s"] / row["compute_only"]["samples_per_s"],
                                       rel=0.01)
    assert r["cpu"] and r["load_average_before"] and "ratio" in result.output
