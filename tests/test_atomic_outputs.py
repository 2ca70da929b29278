"""Outputs are complete or absent, and one writer owns a folder: a full disk (a file-size limit) while
writing the run config, the log, an evaluation or an export is one line naming the file and leaves no
partial file that looks complete; export replaces only what an export wrote; a merge copies, indexes and
only then removes its sources, so a merge cut short runs again (on one file system or across two); a
second training process in a run folder is refused, and a dead one's lock is taken over."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import session_synth_data
from model_helpers import tiny_cfg
from test_faults import file_size_limit
from train_helpers import TINY_MODEL
from typer.testing import CliRunner

from mv2mae.cli import app
from mv2mae.eval.evaluate import write_results
from mv2mae.model.checkpoint import save_model_state
from mv2mae.model.mv2mae import MV2MAE
from mv2mae.preprocess.merge import merge
from mv2mae.shards.atomic import WriteError
from mv2mae.shards.schema import DatasetIndex, ShardEntry, read_index
from mv2mae.train.logs import read_log
from mv2mae.train.runlock import LOCK_FILE, RunLocked, run_lock

HERE = Path(__file__).parent
CHILD_ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parent))
# a child that trains the tiny config in memory into argv[1] and prints a WriteError as one line
TRAIN = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
from train_helpers import GlobalBatchSource, tiny_config
from mv2mae.shards.atomic import WriteError
from mv2mae.train.distributed import setup
from mv2mae.train.loop import Trainer
from mv2mae.train.tasks import PretrainTask
cfg = tiny_config("pretrain", "steps=40", "loop.ckpt_every=1000", "loop.log_every=1")
try:
    Trainer(cfg, PretrainTask(cfg), GlobalBatchSource(cfg), sys.argv[1], setup("cpu")).fit()
except WriteError as e:
    sys.exit(f"error: {{e}}")
"""


def python(code: str, *args, limit: int | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], env=CHILD_ENV, capture_output=True,
                          text=True, timeout=300, preexec_fn=file_size_limit(limit) if limit else None)


def one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])


@contextlib.contextmanager
def file_size_limit_here(limit: int):
    """This process may write no file beyond ``limit`` bytes inside the block (as on a full disk)."""
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name or ".old" in p.name]


def test_a_full_disk_while_writing_the_run_config_leaves_no_config(tmp_path):
    run = tmp_path / "run"
    one_error_line(python(TRAIN, run, limit=1500), f"{run / 'config.yaml'}: cannot write (File too large)")
    assert not (run / "config.yaml").exists() and not leftovers(run)


LOG = """
import sys
from pathlib import Path
from mv2mae.shards.atomic import WriteError
from mv2mae.train.logs import RunLogger
log = RunLogger(Path(sys.argv[1]), True, 100, 0, "pretrain")
try:
    for step in range(1, 101):  # lines of ~1 kB: the log reaches the limit before TensorBoard's events do
        log.log(dict(step=step, loss=1.0 / step, lr=1e-3, samples_per_s=10.0, data_wait=0.0, note="x" * 1000))
except WriteError as e:
    sys.exit(f"error: {e}")
finally:
    log.close()
"""


def test_a_full_disk_while_logging_keeps_every_log_line_whole(tmp_path):
    run = tmp_path / "run"
    one_error_line(python(LOG, run, limit=20_000), f"{run / 'log.jsonl'}: cannot write (File too large)")
    records = read_log(run)  # every line parses: the cut-off one was taken back
    assert 3 < len(records) < 100 and [r["step"] for r in records] == list(range(1, len(records) + 1))
    assert (run / "log.jsonl").read_text().endswith("}\n")


def test_a_full_disk_while_writing_tensorboard_events_is_one_line(tmp_path):
    run = tmp_path / "run"
    one_error_line(python(TRAIN, run, limit=8000), "cannot write (File too large)")


def write_eval(out: Path, rows: int) -> None:
    videos = [dict(video_id=i, key=f"G{i:06d}", camera=1, label=i % 3, predicted=0, correct=i % 3 == 0,
                   top=["a", "b", "c"], scores=[0.5, 0.3, 0.2]) for i in range(rows)]
    results = dict(confusion=np.eye(3, dtype=int).tolist(), classes=["a", "b", "c"], protocol="p", split="test",
                   videos=dict(top1=float(rows)))
    write_results(results, videos, out)


def test_an_evaluation_cut_short_leaves_the_earlier_one_whole(tmp_path):
    out = tmp_path / "eval"
    write_eval(out, 10)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["confusion.png", "predictions.csv", "results.json"]
    with file_size_limit_here(50_000), pytest.raises(WriteError) as cut:  # 2000 rows of predictions are more
        write_eval(out, 2000)
    assert str(cut.value).startswith(f"{out / 'predictions.csv'}: cannot write (File too large)")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and not leftovers(tmp_path)
    write_eval(out, 20)  # a re-run replaces every file
    assert json.loads((out / "results.json").read_text())["videos"]["top1"] == 20.0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    cfg = tiny_cfg()
    return save_model_state(tmp_path_factory.mktemp("ckpt") / "pre.pt", MV2MAE(cfg), cfg)


def export(*args) -> object:
    return CliRunner().invoke(app, ["export", *map(str, args)])


def test_export_replaces_an_earlier_export_but_not_a_folder_it_did_not_write(checkpoint, tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "config.json").write_text('{"model_type": "vit"}')
    refused = export(checkpoint, theirs)
    assert refused.exit_code == 2 and "did not write" in refused.output and "--overwrite" in refused.output
    assert (theirs / "config.json").read_text() == '{"model_type": "vit"}'
    assert export(checkpoint, theirs, "--overwrite").exit_code == 0
    assert sorted(p.name for p in theirs.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    again = export(checkpoint, theirs)  # now an export of ours: replaced without asking
    assert again.exit_code == 0, again.output
    assert not leftovers(tmp_path)


def test_an_export_cut_short_leaves_the_earlier_export_whole(checkpoint, tmp_path):
    out = tmp_path / "hf"
    assert export(checkpoint, out).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with file_size_limit_here(20_000):  # the weights are larger
        cut = export(checkpoint, out)
    assert cut.exit_code == 1 and f"{out / 'model.safetensors'}: cannot write" in " ".join(cut.output.split())
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and not leftovers(tmp_path)


def _part(folder: Path, part: int, shard: str) -> None:
    """A part as ``--part i --parts 2`` leaves it: a shard, its motion sub-group and state, an index."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / shard).write_bytes(bytes(range(256)) * 64)
    (folder / "motion.zarr" / shard[:-4]).mkdir(parents=True)
    (folder / "motion.zarr" / shard[:-4] / "zarr.json").write_text("{}")
    (folder / ".state").mkdir()
    (folder / ".state" / f"{shard}.json").write_text("{}")
    entry = ShardEntry(name=shard, partition=shard[:-11], samples=1, bytes=16384, sha256="0" * 64, subjects=[part + 1],
                       setups=[1], cameras=[1, 2], camera_sets={"1,2": 1}, keys=[f"K{part}"])
    ix = DatasetIndex(dataset="synth", classes=["wave"], fps=30.0, short_side=72, cell=8, motion=["framediff"],
                      shards=[entry], args={"part": part, "parts": 2})
    (folder / f"index.part-{part:03d}-of-002.json").write_text(ix.to_json())


SHARDS = ("P001-S1-000000.tar", "P002-S1-000000.tar")


@pytest.mark.parametrize("across", [False, True], ids=["one-file-system", "across-file-systems"])
def test_a_merge_cut_short_keeps_every_source_and_runs_again(tmp_path, across):
    with tempfile.TemporaryDirectory(dir="/dev/shm" if across else tmp_path) as scratch:
        sources = [Path(scratch) / "a", Path(scratch) / "b"]
        for part, (src, shard) in enumerate(zip(sources, SHARDS, strict=True)):
            _part(src, part, shard)
        dest = tmp_path / "merged"
        (dest / "index.json").mkdir(parents=True)  # the index cannot be written: the merge stops there
        refused = CliRunner().invoke(app, ["shards", "merge", *map(str, sources), "--out", str(dest)])
        assert refused.exit_code == 1 and "index.json: cannot write" in refused.output, refused.output
        for src, shard in zip(sources, SHARDS, strict=True):  # nothing left a source before the index was written
            assert (src / shard).is_file() and (src / "motion.zarr" / shard[:-4] / "zarr.json").is_file()
        (dest / "index.json").rmdir()
        merged = merge(sources, dest)  # the same merge again finishes, keeping what the first one copied
        assert [s.name for s in merged.shards] == list(SHARDS) and read_index(dest).groups == 2
        for src, shard in zip(sources, SHARDS, strict=True):
            assert (dest / shard).read_bytes() == bytes(range(256)) * 64 and not (src / shard).exists()
            assert (dest / ".state" / f"{shard}.json").is_file() and (dest / "motion.zarr" / shard[:-4]).is_dir()
        assert not leftovers(dest)


def test_a_merge_whose_clean_up_was_cut_short_runs_again(tmp_path):
    sources = [tmp_path / "a", tmp_path / "b"]
    for part, (src, shard) in enumerate(zip(sources, SHARDS, strict=True)):
        _part(src, part, shard)
    merge(sources, tmp_path / "dest", keep_sources=True)  # as if killed before removing the sources
    (sources[0] / SHARDS[0]).unlink()  # ... and after removing one of them
    assert [s.name for s in merge(sources, tmp_path / "dest").shards] == list(SHARDS)
    assert not (sources[1] / SHARDS[1]).exists() and (tmp_path / "dest" / SHARDS[1]).is_file()


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory) -> Path:
    return session_synth_data(tmp_path_factory)


HOLD = "import sys, time; from mv2mae.train.runlock import run_lock\nwith run_lock(sys.argv[1]):\n" \
       "    print('held', flush=True); time.sleep(300)"


def test_a_second_training_in_a_run_folder_is_refused_naming_the_holder_until_it_dies(synth_data, tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], env=CHILD_ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        sets = [*TINY_MODEL, "optim.batch_size=2", "steps=1", "schedule.warmup_steps=1", "data.workers=0",
                "data.stride=2", "data.shuffle_buffer=4"]
        second = CliRunner().invoke(app, ["pretrain", "--config", "tiny", "--data", str(synth_data), "--out", str(run),
                                          *(a for s in sets for a in ("--set", s))])
        text = " ".join(second.output.split())
        assert second.exit_code == 2 and f"pid {holder.pid} on" in text and "is in use" in text, second.output
        assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]  # the refused run wrote nothing
        with pytest.raises(RunLocked):
            with run_lock(run):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with run_lock(run):  # the dead holder's lock is taken over
        assert f"pid {os.getpid()} on" in (run / LOCK_FILE).read_text()
    shutil.rmtree(run)
