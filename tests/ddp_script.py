"""Run under ``torchrun`` by test_ddp.py (and directly, as one process, for the reference run).

``arms RUN_DIR ACCUM BATCH`` trains every arm of every shipped study plan (``train_helpers.plan_arms``: tiny
pretraining configs, or finetuning from scratch) on the world-size-independent in-memory source, each
into RUN_DIR/<plan>/<arm>; ``eval DATA OUT.json`` makes one exact evaluation pass over real shards and writes, on rank 0,
the gathered rows; ``fault RUN_DIR SIGNAL`` trains 4 steps with a checkpoint every 2 and a 10-second
collective timeout, and rank 1 sends itself SIGNAL (STOP or KILL) as it asks for the batch of step 3
(writing RUN_DIR/fault first; every rank writes its pid to RUN_DIR/rank<r>.pid); ``fault RUN_DIR none``
resumes such a run; a last argument LOG_EVERY sets ``loop.log_every`` (default 1)."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import GlobalBatchSource, plan_arms, tiny_config  # noqa: E402

from mv2mae.data.config import DataConfig  # noqa: E402
from mv2mae.eval.evaluate import eval_loader, gather_rows, predict  # noqa: E402
from mv2mae.model.classifier import VideoClassifier  # noqa: E402
from mv2mae.train.distributed import cleanup, setup  # noqa: E402
from mv2mae.train.loop import Trainer  # noqa: E402
from mv2mae.train.tasks import FinetuneTask, PretrainTask  # noqa: E402

ARM_CLASSES = 3  # a finetuning arm's classes (in-memory labels)


def arms(run_dir: str, accum: int, batch: int) -> None:
    """Every plan arm in one process group (each torchrun launch costs ~20 s on 2 cores)."""
    env = setup("cpu")
    for name, cfg in plan_arms("steps=3", f"optim.accum_steps={accum}", f"optim.batch_size={batch}",
                               "loop.ckpt_every=100").items():
        finetune = cfg.stage == "finetune"
        source = GlobalBatchSource(cfg, rank=env.rank, world=env.world_size, views=cfg.data.views,
                                   classes=ARM_CLASSES if finetune else 0)
        task = FinetuneTask(cfg, ARM_CLASSES) if finetune else PretrainTask(cfg)
        Trainer(cfg, task, source, Path(run_dir, name), env).fit()
    cleanup()


class FaultySource(GlobalBatchSource):
    """Rank 1 sends itself a real signal when asked for micro-batch ``at`` (writing ``mark`` first)."""

    def __init__(self, cfg, rank, world, sig, at, mark):
        super().__init__(cfg, rank=rank, world=world)
        self.sig, self.at, self.mark = sig, at, mark

    def batches(self, start):
        for i, batch in enumerate(super().batches(start), start):
            if self.sig is not None and self.rank == 1 and i == self.at:
                self.mark.write_text(str(self.sig))
                os.kill(os.getpid(), self.sig)
            yield batch


def fault(run_dir: str, sig: str, log_every: str = "1") -> None:
    cfg = tiny_config("pretrain", "steps=4", "loop.ckpt_every=2", "loop.collective_timeout=10",
                      f"loop.log_every={log_every}")
    env = setup("cpu", cfg.loop.collective_timeout)
    Path(run_dir, f"rank{env.rank}.pid").write_text(str(os.getpid()))  # for the test to clean up after
    source = FaultySource(cfg, env.rank, env.world_size, None if sig == "none" else getattr(signal, f"SIG{sig}"),
                          at=2, mark=Path(run_dir, "fault"))
    Trainer(cfg, PretrainTask(cfg), source, run_dir, env, resume="auto").fit()
    cleanup()


def evaluate(data: str, out: str) -> None:
    env = setup("cpu")
    cfg = tiny_config("finetune")
    model = VideoClassifier(cfg.model, num_classes=3).eval()
    d = DataConfig(root=data, protocol="synth_xview", workers=1, eval_clips=2, eval_crops=2, stride=2)
    rows = gather_rows(predict(model, eval_loader(cfg.model, d, env, batch_size=4), env))
    if env.is_main:
        Path(out).write_text(json.dumps({k: rows[k] for k in ("video_id", "key", "camera")}))
    cleanup()


if __name__ == "__main__":
    torch.set_num_threads(1)
    {"arms": lambda: arms(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])),
     "eval": lambda: evaluate(sys.argv[2], sys.argv[3]),
     "fault": lambda: fault(*sys.argv[2:5])}[sys.argv[1]]()
