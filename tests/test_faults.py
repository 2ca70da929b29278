"""Faults injected into real runs: a full disk (a file-size limit) while preprocessing and while writing a
checkpoint, a SIGKILL in the middle of a checkpoint write, loader workers stopped or killed, a shared-memory
batch that cannot be allocated, an unreadable input. Each ends in one clear line (or a recorded failure),
leaves nothing half-written that looks complete, and a re-run finishes the job."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures_data import SHORT_SIDE, session_synth_data
from train_helpers import TINY_MODEL, tiny_config

from mv2mae.data.config import DataConfig
from mv2mae.data.loaders import build_pretrain_loader
from mv2mae.data.workers import LoaderError
from mv2mae.shards.schema import read_index
from mv2mae.train import checkpoint as ckpt_io
from mv2mae.train.logs import read_log


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory) -> Path:
    return session_synth_data(tmp_path_factory)


def file_size_limit(limit: int):
    """``preexec_fn`` for a child that may write no file beyond ``limit`` bytes (``ulimit -f``); with SIGXFSZ
    ignored, a write past it fails with EFBIG as on a full disk, instead of killing the process."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def cli(*args: str, limit: int | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mv2mae.cli", *args], capture_output=True, text=True, timeout=300,
                          preexec_fn=file_size_limit(limit) if limit else None, **kwargs)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    for needle in needles:
        assert needle in proc.stderr.replace("\n", ""), (needle, proc.stderr[-2000:])


def test_a_full_disk_while_preprocessing_names_the_file_and_a_rerun_completes(synth_data, tmp_path):
    raw, out = synth_data.parent / "raw", tmp_path / "out"
    args = ["preprocess", "synth", "--root", str(raw), "--out", str(out), "--size", str(SHORT_SIDE), "--workers", "1",
            "--no-progress"]
    full = cli(*args, limit=100_000)  # every shard is larger than this
    assert_one_line_error(full, ".tar.partial: cannot write (File too large)", "re-run the same command")
    assert not list(out.glob("*.tar")) and not (out / "index.json").exists()  # nothing looks complete
    assert list(out.glob("*.partial"))  # the cut-off shard (the next run deletes it)
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    assert not list(out.glob("*.partial")) and not [p for p in out.rglob("*.tmp*") if p.is_file()]
    for name in sorted(p.name for p in synth_data.glob("*.tar")):  # exactly what a clean run writes
        assert (out / name).read_bytes() == (synth_data / name).read_bytes()
    assert read_index(out).groups == read_index(synth_data).groups


def test_an_unreadable_video_is_recorded_as_a_permission_problem(synth_data, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(synth_data.parent / "raw", raw)
    for video in (raw / "nturgb+d_rgb").glob("S*C002P*_rgb.avi"):  # camera 2 of every group
        video.chmod(0)
    cmd = [sys.executable, "-m", "mv2mae.cli", "preprocess", "synth", "--root", str(raw), "--out",
           str(tmp_path / "out"), "--size", "32", "--workers", "1", "--limit", "1", "--no-progress"]
    if os.geteuid() == 0:  # root reads anything: run without the capabilities that bypass file modes
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: a mode-000 file stays readable")
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    failures = [json.loads(line) for line in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert len(failures) == 1 and "C002" in Path(failures[0]["file"]).name
    assert failures[0]["reason"] == "permission denied: the file is not readable by this user"


def test_a_killed_loader_worker_fails_the_stream_at_once(synth_data):
    cfg = tiny_config("pretrain")
    data = DataConfig(root=str(synth_data), protocol="synth_xview", stride=2, workers=1, shuffle_buffer=4, timeout=60)
    batches = build_pretrain_loader(cfg.model, data, batch_size=2, seed=0)
    stream = iter(batches)
    next(stream)
    os.kill(batches.pids.pids[0], signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(LoaderError, match="a data-loader worker died"):
        for _ in range(100):
            next(stream)
    assert time.monotonic() - t0 < 30  # noticed by the DataLoader itself, long before data.timeout


def test_a_batch_that_cannot_get_shared_memory_is_one_clear_error(synth_data, tmp_path):
    script = tmp_path / "load.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from train_helpers import tiny_config\n"
        "from mv2mae.data.config import DataConfig\n"
        "from mv2mae.data.loaders import build_pretrain_loader\n"
        "if __name__ == '__main__':\n"
        "    cfg = tiny_config('pretrain')\n"
        f"    d = DataConfig(root={str(synth_data)!r}, protocol='synth_xview', stride=2, workers=int(sys.argv[1]),\n"
        "                   shuffle_buffer=4)\n"
        "    next(iter(build_pretrain_loader(cfg.model, d, batch_size=2, seed=0)))\n"
        "    print('batch ok')\n")
    limited = subprocess.run([sys.executable, str(script), "1"], capture_output=True, text=True, timeout=300,
                             preexec_fn=file_size_limit(20_000))
    assert limited.returncode != 0
    last = limited.stderr.strip().splitlines()[-1]
    assert last.startswith("mv2mae.data.workers.LoaderError: a loader worker cannot allocate") and \
        "data.workers=0" in last


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(c) for c in (task / "children").read_text().split()]
    return kids


@pytest.mark.slow
def test_pretraining_survives_a_full_disk_a_kill_mid_checkpoint_and_a_stopped_worker(synth_data, tmp_path):
    """One run directory through four launches of ``mv2mae pretrain``: (1) a file-size limit makes the
    first checkpoint write fail: one line, nothing half-written; (2) a SIGKILL lands while a checkpoint
    is being written: the previous one still loads; (3) resumed, its loader worker is stopped (SIGSTOP):
    the run fails within data.timeout instead of hanging; (4) resumed again, it finishes."""
    run_dir = tmp_path / "run"
    ckpts = run_dir / "checkpoints"
    # a wide model: its checkpoint (~45 MB with the optimiser state) takes long enough to write to be hit
    sets = [*TINY_MODEL, "model.embed_dim=384", "model.num_heads=6", "optim.batch_size=2", "steps=12",
            "schedule.warmup_steps=2", "loop.log_every=1", "loop.ckpt_every=2", "loop.keep_last=3", "data.workers=1",
            "data.stride=2", "data.shuffle_buffer=4", "data.timeout=5"]
    base = ["pretrain", "--data", str(synth_data), "--out", str(run_dir)]  # resumed runs: the run's own config
    args = [*base, "--config", "tiny", *(a for s in sets for a in ("--set", s))]

    full = cli(*args, limit=1_000_000)
    assert_one_line_error(full, "step-00000002.pt: could not write the checkpoint", "file-size limit")
    assert not list(ckpts.iterdir())  # no checkpoint, and no temporary file left behind

    launch = subprocess.Popen([sys.executable, "-m", "mv2mae.cli", *args], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (ckpts / ckpt_io.step_name(2)).exists():
            assert launch.poll() is None and time.monotonic() < deadline, "no first checkpoint"
            time.sleep(0.05)
        while not (writing := list(ckpts.glob(f".{ckpt_io.step_name(4)}.tmp*"))):
            assert launch.poll() is None and time.monotonic() < deadline, "the step-4 write was never seen"
            time.sleep(0.001)
        os.kill(launch.pid, signal.SIGKILL)
    finally:
        launch.kill()
        launch.wait()
    assert writing[0].exists() and not (ckpts / ckpt_io.step_name(4)).exists()  # killed mid-write
    assert ckpt_io.latest(run_dir).name == ckpt_io.step_name(2)
    assert ckpt_io.load_run(ckpt_io.latest(run_dir))["step"] == 2  # the previous checkpoint is whole

    launch = subprocess.Popen([sys.executable, "-m", "mv2mae.cli", *base, "--resume", "auto"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (ckpts / ckpt_io.step_name(4)).exists():
            assert launch.poll() is None and time.monotonic() < deadline, "no step-4 checkpoint after resuming"
            time.sleep(0.05)
        worker = _children(launch.pid)
        assert len(worker) == 1
        os.kill(worker[0], signal.SIGSTOP)
        stopped = time.monotonic()
        out, err = launch.communicate(timeout=120)
        waited = time.monotonic() - stopped
    finally:  # whatever happened, neither the run nor its stopped worker outlives the test
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launch.pid, signal.SIGKILL)
        launch.wait()
    flat = err.replace("\n", "")
    assert "removed" in flat and writing[0].name in flat and not writing[0].exists()  # the stale write went
    assert_one_line_error(subprocess.CompletedProcess([], launch.returncode, out, err),
                          "no batch from the data-loader workers in 5 s (data.timeout)")
    assert waited < 60, f"{waited:.0f} s to give up on a 5 s data.timeout"

    done = cli(*base, "--resume", "auto")
    assert done.returncode == 0, done.stderr[-2000:]
    assert ckpt_io.latest(run_dir).name == ckpt_io.step_name(12)
    assert [r["step"] for r in read_log(run_dir)][-1] == 12


def _kill_when(cmd: list[str], out: Path, pattern: str, new: int = 1) -> bool:
    """Run ``cmd`` and SIGKILL it as soon as ``new`` paths matching ``pattern`` in ``out`` appeared that
    were not there when it started; whether it was killed (rather than finished first)."""
    before = set(out.glob(pattern))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if len(set(out.glob(pattern)) - before) >= new:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.002)
        return False
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_preprocessing_killed_at_five_moments_resumes_to_the_clean_result(synth_data, tmp_path):
    """SIGKILL while a shard is half-written, while its motion cache is being written, right after a
    shard's state record, and after one and after three more finished shards; each re-run resumes, and
    the last one ends with exactly the shards of an uninterrupted run, byte for byte."""
    out, reference = tmp_path / "out", tmp_path / "reference"

    def args(dest: Path) -> list[str]:
        return ["preprocess", "synth", "--root", str(synth_data.parent / "raw"), "--out", str(dest), "--size",
                str(SHORT_SIDE), "--shard-size", "100kB", "--workers", "1", "--no-progress"]

    assert cli(*args(reference)).returncode == 0
    cmd = [sys.executable, "-m", "mv2mae.cli", *args(out)]
    moments = [("*.tar.partial", 1), (".tmp/motion-*", 1), (".state/*.tar.json", 1), ("*.tar", 1), ("*.tar", 3)]
    killed = [_kill_when(cmd, out, pattern, new) for pattern, new in moments]
    assert sum(killed) >= 3, killed  # most kills landed mid-run (a few windows are milliseconds wide)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    ref = {p.name: p.read_bytes() for p in reference.glob("*.tar")}
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == ref
    keys = [k for e in read_index(out).shards for k in e.keys]
    assert len(keys) == len(set(keys)) == read_index(reference).groups
    assert not list(out.glob("*.partial")) and not list((out / ".tmp").iterdir())
