"""DDP through a real ``torchrun --nproc_per_node 2`` on CPU (gloo)."""

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import typer
from fixtures_data import session_synth_data
from train_helpers import plan_arms
from typer.testing import CliRunner

from mv2mae.cli import app
from mv2mae.cli.train import _rank_named
from mv2mae.config import ConfigError
from mv2mae.shards.protocols import select
from mv2mae.shards.schema import read_index
from mv2mae.train import checkpoint as ckpt_io
from mv2mae.train.distributed import DistEnv, LaunchError, check_launch, pick_device
from mv2mae.train.logs import read_log

SCRIPT = Path(__file__).with_name("ddp_script.py")


ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parent.parent))


def command(args, nproc=None):
    if nproc:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                str(SCRIPT), *args]
    return [sys.executable, str(SCRIPT), *args]


def run(args, nproc=None):
    done = subprocess.run(command(args, nproc), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def wait_for(condition, seconds: float, what: str) -> float:
    """Poll ``condition`` until it holds; the time it took (fails the test after ``seconds``)."""
    t0 = time.monotonic()
    while not condition():
        assert time.monotonic() - t0 < seconds, f"no {what} after {seconds} s"
        time.sleep(0.2)
    return time.monotonic() - t0


def test_every_plan_arm_trains_under_two_ranks_as_one_process_with_the_same_global_batch(tmp_path):
    """Each arm of each shipped study plan (single-view, self-only and two-source pretraining, finetuning
    from scratch, …): 2 ranks × 2 micro-steps × batch 2 (gradients synchronised on the last micro-step
    only) give the losses and gradient norms of 1 process × 4 micro-steps × batch 2. An arm that builds
    a module its loss leaves out fails here (DDP, and the loop's own check)."""
    run(["arms", str(tmp_path / "ddp"), "2", "2"], nproc=2)
    run(["arms", str(tmp_path / "single"), "4", "2"])
    names = list(plan_arms("steps=3"))  # the arms the script trains (3 steps: step-sweep points are the same)
    assert {"crossview/scratch", "crossview/videomae", "crossview/selfonly", "crossview/tauinf", "crossview/mv2mae",
            "crossview/two"} <= set(names)
    for name in names:
        ddp, single = read_log(tmp_path / "ddp" / name), read_log(tmp_path / "single" / name)
        assert [r["step"] for r in ddp] == [r["step"] for r in single] == [1, 2, 3], name
        keys = {"loss", "grad_norm", "loss_self", "loss_cross", "train_acc"} & set(ddp[0])
        assert {"loss", "grad_norm"} < keys, (name, keys)
        for a, b in zip(ddp, single, strict=True):
            for key in keys:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-7), (name, a["step"], key, a[key], b[key])
        assert ddp[-1]["loss"] != ddp[0]["loss"], name  # the weights moved, identically in both runs
    # the single-view and self-only arms build no cross-view decoder: nothing of it in their checkpoints
    for name, cross in (("crossview/videomae", False), ("crossview/selfonly", False), ("crossview/mv2mae", True)):
        state = ckpt_io.load_run(ckpt_io.latest(tmp_path / "ddp" / name))["model"]
        assert any(k.startswith("cross_decoder.") for k in state) == cross, name


def test_an_error_on_a_rank_is_one_line_naming_the_rank_and_the_cause(capsys):
    """Under torchrun each rank that fails says so in one line (a bug keeps only its type and first line,
    with --debug for the traceback); a usage error keeps exit status 2; one process is left as it was."""
    rank1 = DistEnv(rank=1, world_size=2, local_rank=1, device=torch.device("cpu"))
    with pytest.raises(typer.Exit) as bug, _rank_named(rank1):
        raise RuntimeError("Expected to have finished reduction in the prior iteration\nmore lines of advice")
    assert bug.value.exit_code == 1
    assert capsys.readouterr().err == ("error: rank 1: RuntimeError: Expected to have finished reduction in the "
                                       "prior iteration (--debug shows where)\n")
    with pytest.raises(typer.Exit) as usage, _rank_named(rank1):
        raise ConfigError("model.frames=5 is not a multiple of tubelet=2")
    assert usage.value.exit_code == 2
    assert capsys.readouterr().err == "error: rank 1: model.frames=5 is not a multiple of tubelet=2\n"
    with pytest.raises(RuntimeError, match="alone"), _rank_named(DistEnv(0, 1, 0, torch.device("cpu"))):
        raise RuntimeError("alone")


def test_two_rank_evaluation_counts_every_clip_once(tmp_path_factory, tmp_path):
    data = session_synth_data(tmp_path_factory)
    out = tmp_path / "rows.json"
    run(["eval", str(data), str(out)], nproc=2)
    rows = json.loads(out.read_text())
    selection = select(read_index(data), "synth_xview", "test")
    expected = {f"{k}/c{c:03d}" for k in selection.keys for c in selection.cameras}
    counts = collections.Counter(rows["video_id"])
    assert set(counts) == expected and selection.cameras == [1]
    assert set(counts.values()) == {2 * 2}  # every video: 2 clips × 2 crops, no more, no less


def test_several_scheduler_tasks_without_torchrun_are_refused(tmp_path, monkeypatch):
    """srun -n 4 mv2mae pretrain … would start four worlds of one, each rank 0 writing the same run folder."""
    with pytest.raises(LaunchError, match="SLURM_STEP_NUM_TASKS=4.*torchrun"):
        check_launch({"SLURM_STEP_NUM_TASKS": "4", "SLURM_NTASKS": "4"})
    with pytest.raises(LaunchError, match="OMPI_COMM_WORLD_SIZE=2"):
        check_launch({"OMPI_COMM_WORLD_SIZE": "2"})
    check_launch({"SLURM_NTASKS": "4", "RANK": "3", "WORLD_SIZE": "8"})  # torchrun inside the allocation: fine
    check_launch({"SLURM_STEP_NUM_TASKS": "1", "SLURM_NTASKS": "8"})  # one task of a larger allocation: fine
    monkeypatch.setenv("SLURM_NTASKS", "2")
    for name in ("RANK", "WORLD_SIZE", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(app, ["pretrain", "--config", "tiny", "--data", str(tmp_path), "--out",
                                      str(tmp_path / "run"), "--set", "loop.device=cpu"])
    assert result.exit_code == 1 and "SLURM_NTASKS=2" in result.output and not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available() or torch.version.cuda is None, reason="needs a CUDA build of torch "
                    "on a machine without a visible GPU")
def test_device_auto_says_so_when_a_cuda_build_falls_back_to_the_cpu():
    with pytest.warns(RuntimeWarning, match=f"built for CUDA {torch.version.cuda} but sees no GPU"):
        assert pick_device("auto") == torch.device("cpu")


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["STOP", "KILL"])
def test_a_stopped_or_killed_rank_fails_the_run_in_bounded_time_and_the_checkpoint_resumes(tmp_path, sig):
    """Rank 1 stops (as on a stuck network read) or dies as step 3 begins, after the step-2 checkpoint.
    Rank 0 must not hang: its next collective fails after loop.collective_timeout (10 s here) with an
    error that says so, the launch fails, and the checkpoint resumes to the end of the run. (A killed rank
    is noticed at once by torchrun, which then ends the others.)"""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    mark, err = run_dir / "fault", tmp_path / "stderr.txt"
    with open(err, "w") as stderr:
        launch = subprocess.Popen(command(["fault", str(run_dir), sig], nproc=2), env=ENV, stderr=stderr,
                                  stdout=subprocess.DEVNULL)
    try:
        wait_for(mark.is_file, 240, "fault injected")
        if sig == "STOP":
            failed = wait_for(lambda: "a collective with the other ranks failed" in err.read_text(), 60,
                              "error from rank 0")
            assert failed < 30, f"rank 0 took {failed:.0f} s to give up on a 10 s collective timeout"
            os.kill(int((run_dir / "rank1.pid").read_text()), signal.SIGKILL)  # spare torchrun's 30 s grace
        assert launch.wait(timeout=90) != 0
    finally:  # whatever happened, no rank outlives the test (a stopped one would wait for torchrun's 30 s)
        for pid_file in run_dir.glob("rank*.pid"):
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
        launch.kill()
        launch.wait()
    assert "step-00000002.pt" in err.read_text() or sig == "KILL"  # the error names the checkpoint to resume
    assert ckpt_io.latest(run_dir).name == ckpt_io.step_name(2)
    if sig == "KILL":
        return  # resuming is the same as after a stop, below (each torchrun launch costs ~20 s on 2 cores)
    run(["fault", str(run_dir), "none"], nproc=2)
    assert ckpt_io.latest(run_dir).name == ckpt_io.step_name(4)
    assert [r["step"] for r in read_log(run_dir)][-2:] == [3, 4]
