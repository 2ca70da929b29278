"""``mv2mae bench gpu`` (``make gpu-check``): without CUDA it says so and succeeds; its tiny CPU version runs
every section end to end on real shards, so the first GPU run is not the code's first run."""

import json
import warnings

import pytest
import torch
from fixtures_data import session_synth_data
from train_helpers import GlobalBatchSource, tiny_config
from typer.testing import CliRunner

from mv2mae.bench.gpu import (
    NOT_MEASURABLE,
    SYNC_WARNING,
    PhasedSource,
    SyncLog,
    read_steps,
    sync_report,
    syncs_markdown,
)
from mv2mae.cli import app
from mv2mae.train.distributed import setup
from mv2mae.train.loop import Trainer
from mv2mae.train.tasks import PretrainTask

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
    syncs = r["syncs"]  # the same training runs, their syncs not measurable without CUDA
    assert list(r).index("syncs") == list(r).index("checks") + 1
    assert syncs["ok"] and not syncs["measured"] and syncs["syncs"] == NOT_MEASURABLE
    assert syncs["read_steps"] == [1, 5, 8, 10, 12] and [run["decode_on"] for run in syncs["runs"]] == ["cpu", "device"]
    for run in syncs["runs"]:
        assert run["logged_steps"] == [1, 5, 10, 12] and run["problems"] == [] and run["final_loss"] > 0
        assert [(row["step"], row["step_syncs"]) for row in run["per_step"]] == [(k, None) for k in range(1, 13)]
    assert [(row["decode_on"], row["workers"]) for row in r["loader"]] == [("cpu", 1), ("device", 1)]
    assert all(row["samples_per_s"] > 0 and 0 <= row["data_wait"] <= 1 for row in r["loader"])
    rows = r["model"]["rows"]
    assert [(row["views"], row["compiled"]) for row in rows] == [(1, False), (1, True), (2, False), (2, True)]
    assert all(row["samples_per_s"] > 0 and row["mfu"] is None for row in rows)  # no GPU, no peak: no MFU
    assert r["passed"] and "| decode_on | workers |" in md.read_text()
    assert f"host-device syncs, decode_on=device, 12 steps | ran: {NOT_MEASURABLE}" in md.read_text()


class SyncWarningTask(PretrainTask):
    """Pretraining that warns as torch's sync debug mode does, ``at[n]`` times in its n-th step."""

    def __init__(self, cfg, at: dict[int, int]) -> None:
        super().__init__(cfg)
        self.at, self.calls = at, 0

    def train_step(self, model, batch, generator):
        self.calls += 1
        for _ in range(self.at.get(self.calls, 0)):
            warnings.warn(SYNC_WARNING, stacklevel=1)  # the same line each time: all of them must count
        return super().train_step(model, batch, generator)


class SyncWarningSource(GlobalBatchSource):
    """Batches whose fetch warns as a synchronising decode would, for the steps in ``at``; and an unrelated
    warning with the first batch."""

    def __init__(self, cfg, at: set[int]) -> None:
        super().__init__(cfg)
        self.at = at

    def batches(self, start):
        for n, batch in enumerate(super().batches(start), start + 1):
            if n == 1:
                warnings.warn("an unrelated warning", stacklevel=1)
            if n in self.at:
                warnings.warn(SYNC_WARNING, stacklevel=1)
            yield batch


def test_sync_warnings_count_in_the_step_or_the_fetch_in_progress(tmp_path):
    """What the GPU section counts, checked with the real loop on the CPU: a warning in step k's work counts
    for step k, one while step k's batch is fetched for step k's data path, every one of them; other
    warnings are not swallowed."""
    cfg = tiny_config("pretrain", "steps=6", "loop.log_every=4", "loop.ckpt_every=6")
    log = SyncLog()
    source = PhasedSource(SyncWarningSource(cfg, at={2, 5}), log, cfg.optim.accum_steps)
    with pytest.warns(UserWarning, match="an unrelated warning"):
        warnings.simplefilter("default")  # Python's own: once per line (pytest.warns shows every one)
        with log.recording():
            Trainer(cfg, SyncWarningTask(cfg, at={3: 2, 6: 1}), source, tmp_path, setup("cpu")).fit()
    assert [log.count("step", k) for k in range(1, 7)] == [0, 0, 2, 0, 0, 1]
    assert [log.count("data", k) for k in range(1, 7)] == [0, 1, 0, 0, 1, 0]
    assert log.count("setup", 0) == 0 and len(log.events) == 5
    [(site, n)] = log.sites("step", {3, 6}).items()  # one line of this file, three calls
    assert site.startswith("test_gpu_check.py:") and n == 3
    assert read_steps(12, 5, 8) == ([1, 5, 10, 12], [1, 5, 8, 10, 12])
    # judged as on CUDA: step 3 is not a read step (read steps 1, 4, 6) and synced; 1 and 4 showed nothing
    report = sync_report(log, 6, [1, 4, 6])
    assert report["unread_steps_that_synced"] == [3] and report["data_syncs_on_unread_steps"] == 2
    assert [p.split(" ")[:3] for p in report["problems"]] == [["steps", "[3]", "synchronised"], ["a", "read", "step"]]
    [row] = syncs_markdown({"measured": True, "steps": 6, "runs": [report | {"decode_on": "device"}]})
    assert "FAILED: steps [3] synchronised" in row and "per step (step:calls) 1*:0 2:0 3:2 4*:0 5:0 6*:1" in row
