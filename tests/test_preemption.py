"""Preemption: SIGTERM, SIGINT or SIGUSR1 (what schedulers and users send) finish the step in progress,
write its checkpoint, say so in one line and exit with status 75; ``--resume auto`` then continues
with the losses of a run that was never stopped. The stop is checked after every step, also between log
steps (host to host: the device is read only at log and checkpoint steps). Under torchrun a signal to
one rank stops every rank after the same step, rank 0 writing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fixtures_data import session_synth_data
from train_helpers import TINY_MODEL, GlobalBatchSource, tiny_config

from mv2mae.train import checkpoint as ckpt_io
from mv2mae.train.distributed import setup
from mv2mae.train.logs import read_log
from mv2mae.train.loop import Trainer
from mv2mae.train.preemption import PREEMPTED_EXIT, Preempted
from mv2mae.train.tasks import PretrainTask

torch.set_num_threads(1)
ENV = setup("cpu")
HERE = Path(__file__).parent
CHILD_ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parent))


class SignalledSource(GlobalBatchSource):
    """Sends this process ``signum`` as it hands out micro-batch ``at`` (a real signal, mid-step)."""

    def __init__(self, cfg, signum: int, at: int):
        super().__init__(cfg)
        self.signum, self.at = signum, at

    def batches(self, start):
        for i, batch in enumerate(super().batches(start), start):
            if i == self.at:
                os.kill(os.getpid(), self.signum)
            yield batch


def losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_log(run_dir)]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_a_stop_signal_saves_the_step_reached_and_resuming_continues_the_same_loss_curve(tmp_path, signum):
    cfg = tiny_config("pretrain", "steps=24", "loop.ckpt_every=7", "loop.keep_last=1")
    Trainer(cfg, PretrainTask(cfg), GlobalBatchSource(cfg), tmp_path / "straight", ENV).fit()

    run = tmp_path / "stopped"
    before = signal.getsignal(signum)
    with pytest.raises(Preempted, match=rf"^{signal.Signals(signum).name}: stopped after step 20 of 24 and saved "):
        Trainer(cfg, PretrainTask(cfg), SignalledSource(cfg, signum, at=19), run, ENV).fit()  # in step 20
    assert ckpt_io.latest(run).name == ckpt_io.step_name(20)  # not a multiple of ckpt_every: saved for the stop
    assert ckpt_io.load_run(ckpt_io.latest(run))["data"]["micro_batches"] == 20
    assert signal.getsignal(signum) is before  # the run's handler is gone with the run

    resumed = Trainer(cfg, PretrainTask(cfg), GlobalBatchSource(cfg), run, ENV, resume="auto").fit()
    assert resumed["steps"] == 24
    straight, again = losses(tmp_path / "straight"), losses(run)
    assert [s for s, _ in again] == list(range(1, 25))
    for (step, a), (_, b) in zip(straight, again, strict=True):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-7), f"step {step}: {a} vs {b}"


def test_a_stop_between_log_steps_takes_effect_after_the_step_in_progress_and_the_curve_continues(tmp_path):
    """The loop reads the device only at log and checkpoint steps, the stop flag after every step: a signal
    during step 5 with loop.log_every=4 stops the run after step 5, saved (and logged), and resuming from
    there continues the curve of a run never stopped."""
    cfg = tiny_config("pretrain", "steps=12", "loop.log_every=4", "loop.ckpt_every=100")
    every_step = tiny_config("pretrain", "steps=12", "loop.ckpt_every=100")  # the same run, every loss logged
    Trainer(every_step, PretrainTask(every_step), GlobalBatchSource(every_step), tmp_path / "straight", ENV).fit()
    run = tmp_path / "stopped"
    with pytest.raises(Preempted, match=r"^SIGTERM: stopped after step 5 of 12 and saved "):
        Trainer(cfg, PretrainTask(cfg), SignalledSource(cfg, signal.SIGTERM, at=4), run, ENV).fit()
    assert ckpt_io.latest(run).name == ckpt_io.step_name(5)
    assert [s for s, _ in losses(run)] == [1, 4, 5]
    Trainer(cfg, PretrainTask(cfg), GlobalBatchSource(cfg), run, ENV, resume="auto").fit()
    straight = dict(losses(tmp_path / "straight"))
    assert [s for s, _ in losses(run)] == [1, 4, 5, 8, 12]
    assert losses(run) == [(s, straight[s]) for s, _ in losses(run)]


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory) -> Path:
    return session_synth_data(tmp_path_factory)


@pytest.mark.slow
def test_sigterm_to_the_whole_process_group_saves_exits_75_and_the_run_resumes(synth_data, tmp_path):
    """As SLURM does it: SIGTERM to the training process and its loader worker at once. The worker waits
    for the trainer, which finishes its step, saves it and exits 75 with one line saying so."""
    run = tmp_path / "run"
    sets = [*TINY_MODEL, "optim.batch_size=2", "steps=500", "schedule.warmup_steps=1", "loop.log_every=1",
            "loop.ckpt_every=1000", "data.workers=1", "data.stride=2", "data.shuffle_buffer=4"]
    args = [sys.executable, "-m", "mv2mae.cli", "pretrain", "--config", "tiny", "--data", str(synth_data),
            "--out", str(run), *(a for s in sets for a in ("--set", s))]
    proc = subprocess.Popen(args, env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        t0 = time.monotonic()
        while len(read_log(run)) < 3:
            assert proc.poll() is None and time.monotonic() - t0 < 240, proc.communicate()[1][-3000:]
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == PREEMPTED_EXIT, err[-3000:]
    assert "Traceback" not in err
    step = read_log(run)[-1]["step"]
    assert f"SIGTERM: stopped after step {step} of 500" in " ".join(err.split())
    assert ckpt_io.latest(run).name == ckpt_io.step_name(step)
    resumed = subprocess.run([*args[:4], "--out", str(run), "--resume", "auto", "--set", f"steps={step + 1}"],
                             env=CHILD_ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["step"] for r in read_log(run)] == list(range(1, step + 2))


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_both_ranks_after_the_same_step_and_rank_0_saves_it(tmp_path):
    """Rank 1 alone gets SIGTERM while it fetches the batch of step 3 (ddp_script.py ``fault``, logging every
    4 steps): both ranks finish step 3 (no log or checkpoint step: the ranks agree on the stop after every
    step), its checkpoint is written, and the run resumes from it."""
    def torchrun(run_dir: Path, sig: str) -> subprocess.CompletedProcess:
        run_dir.mkdir(exist_ok=True)  # the script writes each rank's pid there first
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               str(HERE / "ddp_script.py"), "fault", str(run_dir), sig, "4"], env=CHILD_ENV,
                              capture_output=True, text=True, timeout=300)

    stopped = torchrun(tmp_path / "run", "TERM")  # both ranks raise Preempted (the CLI makes it exit status 75)
    assert stopped.returncode != 0 and "Preempted: SIGTERM: stopped after step 3 of 4" in stopped.stderr, \
        stopped.stderr[-3000:]
    assert ckpt_io.latest(tmp_path / "run").name == ckpt_io.step_name(3)
    resumed = torchrun(tmp_path / "run", "none")  # exact resume itself: the in-process test above
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["step"] for r in read_log(tmp_path / "run")] == [1, 3, 4]  # 3: the stop's


FAKE_SLURM = {  # just enough of SLURM and torchrun on PATH to run the cluster recipe on one machine
    "srun": '#!/usr/bin/env bash\nexec "$@"\n',
    "scontrol": '#!/usr/bin/env bash\nif [ "$1" = show ]; then echo localhost; else echo "$@" >> "$SCONTROL_LOG"; fi\n',
    # torchrun's own options dropped: one process, as torchrun's single worker would run
    "torchrun": '#!/usr/bin/env bash\nwhile [ "$1" != -m ]; do shift; done\nexec "$PYTHON" "$@"\n',
}


@pytest.mark.slow
def test_the_cluster_recipe_saves_on_the_time_limit_signal_and_requeues_itself(synth_data, tmp_path):
    """tools/cluster/train_multinode.sbatch with SLURM's time-limit warning (SIGUSR1 to the batch script):
    the run saves the step it reached and exits 75, and the script requeues the job."""
    fake = tmp_path / "bin"
    fake.mkdir()
    for name, text in FAKE_SLURM.items():
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)
    run, log = tmp_path / "run", tmp_path / "scontrol.log"
    env = dict(CHILD_ENV, PATH=f"{fake}:{os.environ['PATH']}", PYTHON=sys.executable, SCONTROL_LOG=str(log),
               SLURM_JOB_NODELIST="localhost", SLURM_NNODES="1", SLURM_JOB_ID="42", GPUS_PER_NODE="1")
    sets = [*TINY_MODEL, "optim.batch_size=2", "steps=500", "schedule.warmup_steps=1", "loop.log_every=1",
            "data.workers=0", "data.stride=2", "data.shuffle_buffer=4"]
    script = HERE.parent / "tools" / "cluster" / "train_multinode.sbatch"
    job = subprocess.Popen(["bash", str(script), "pretrain", "tiny", str(synth_data), str(run),
                            *(a for s in sets for a in ("--set", s))], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        while len(read_log(run)) < 2:
            assert job.poll() is None and time.monotonic() - t0 < 240, job.communicate()[1][-3000:]
            time.sleep(0.2)
        job.send_signal(signal.SIGUSR1)
        _, err = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == PREEMPTED_EXIT, err[-3000:]
    assert log.read_text().split() == ["requeue", "42"]
    assert ckpt_io.latest(run).name == ckpt_io.step_name(read_log(run)[-1]["step"])
