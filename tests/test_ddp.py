"""DDP through a real ``torchrun --nproc_per_node 2`` on CPU (gloo)."""

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures_data import session_synth_data
from typer.testing import CliRunner

from mv2mae.cli import app
from mv2mae.shards.protocols import select
from mv2mae.shards.schema import read_index
from mv2mae.train.distributed import LaunchError, check_launch, pick_device
from mv2mae.train.logs import read_log

SCRIPT = Path(__file__).with_name("ddp_script.py")


def run(args, nproc=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parent.parent))
    cmd = [sys.executable, str(SCRIPT), *args]
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               str(SCRIPT), *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_ranks_match_one_process_with_the_same_global_batch(tmp_path):
    # 2 ranks × 2 micro-steps × batch 2 (gradients synchronised on the last micro-step only)
    run(["train", str(tmp_path / "ddp"), "2", "2"], nproc=2)
    run(["train", str(tmp_path / "single"), "4", "2"])  # 1 process × 4 micro-steps × batch 2
    ddp, single = read_log(tmp_path / "ddp"), read_log(tmp_path / "single")
    assert [r["step"] for r in ddp] == [r["step"] for r in single] == [1, 2, 3]
    for a, b in zip(ddp, single, strict=True):
        for key in ("loss", "loss_self", "loss_cross", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), (a["step"], key, a[key], b[key])
    assert ddp[-1]["loss"] != ddp[0]["loss"]  # the weights moved, identically in both runs


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
