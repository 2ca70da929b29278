"""DDP through a real ``torchrun --nproc_per_node 2`` on CPU (gloo)."""

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_data import session_synth_data

from mv2mae.shards.protocols import select
from mv2mae.shards.schema import read_index
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
