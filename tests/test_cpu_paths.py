"""The GPU code paths that run on a CPU too: bf16 autocast and ``torch.compile`` through the real training
step, so that the first GPU run is not their first run."""

import shutil

import pytest
import torch
from train_helpers import GlobalBatchSource, tiny_config

from mv2mae.train.distributed import setup
from mv2mae.train.logs import read_log
from mv2mae.train.loop import Trainer
from mv2mae.train.tasks import FinetuneTask, PretrainTask

ENV = setup("cpu")


def losses(cfg, run_dir, task, classes=0, amp=False):
    trainer = Trainer(cfg, task, GlobalBatchSource(cfg, classes=classes), run_dir, ENV)
    if amp:  # the loop enables autocast on CUDA only (loop.amp); the CPU runs the same path with bf16
        trainer.amp_dtype = torch.bfloat16
    trainer.fit()
    return [r["loss"] for r in read_log(run_dir)]


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_a_bf16_autocast_step_trains_like_float32(tmp_path, stage):
    cfg = tiny_config(stage, "steps=3", "finetune.mixup=0.0", "finetune.cutmix=0.0")
    task = (lambda: PretrainTask(cfg)) if stage == "pretrain" else (lambda: FinetuneTask(cfg, 4))
    classes = 0 if stage == "pretrain" else 4
    full = losses(cfg, tmp_path / "fp32", task(), classes)
    half = losses(cfg, tmp_path / "bf16", task(), classes, amp=True)
    assert all(torch.isfinite(torch.tensor(half)))
    assert half != full  # autocast really ran in bf16 ...
    assert half == pytest.approx(full, rel=0.05)  # ... and trains the same model


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile on the CPU (inductor) needs a C++ compiler, and none is installed")
def test_a_compiled_training_step_matches_eager(tmp_path):
    torch._dynamo.reset()
    eager = losses(tiny_config("pretrain", "steps=2"), tmp_path / "eager", PretrainTask(tiny_config("pretrain")))
    cfg = tiny_config("pretrain", "steps=2", "loop.compile=true")
    compiled = losses(cfg, tmp_path / "compiled", PretrainTask(cfg))
    assert compiled == pytest.approx(eager, rel=1e-3, abs=1e-4)
