"""A training step reads nothing back from the device outside the read steps (log, checkpoint, validation;
pictures read their batch): every way a tensor becomes a host value is counted while the real loop
trains, step by step. And the skip of a non-finite step, decided on the device, is exact."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest
import torch
import torch.distributed as dist
from timm.utils import ModelEmaV3
from train_helpers import GlobalBatchSource, tiny_config

from mv2mae.train import checkpoint as ckpt_io
from mv2mae.train.distributed import setup
from mv2mae.train.logs import read_log
from mv2mae.train.loop import Trainer, TrainingStopped, ema_update_unless
from mv2mae.train.tasks import FinetuneTask, PretrainTask

torch.set_num_threads(1)
ENV = setup("cpu")

# what turns a tensor into a host value (on CUDA each waits for the device)
READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__", "__array__", "__format__",
         "nonzero", "masked_select", "unique")


# what builds a tensor on a device from host data (on CUDA a copy from pageable memory the host waits for)
COPIES = ("tensor", "as_tensor")


class Reads:
    """Counts calls of the tensor methods in READS, and of the COPIES given a ``device``, while active."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: Counter[str] = Counter()
        for name in READS:
            monkeypatch.setattr(torch.Tensor, name, self._counting(name, getattr(torch.Tensor, name)))
        for name in COPIES:
            monkeypatch.setattr(torch, name, self._counting_copies(name, getattr(torch, name)))

    def _counting_copies(self, name: str, make: Any) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            if kwargs.get("device") is not None:
                self.calls[f"torch.{name}(device=)"] += 1
            return make(*args, **kwargs)
        return counted

    def _counting(self, name: str, method: Any) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return method(*args, **kwargs)
        return counted


class PrebuiltBatches:
    """In-memory micro-batches built before the run; notes the reads counted so far at each hand-out."""

    def __init__(self, cfg, reads: Reads, classes: int = 0, poison: set[int] = frozenset()) -> None:
        source = GlobalBatchSource(cfg, classes=classes)
        stream = source.batches(0)
        self.items = [next(stream) for _ in range(cfg.schedule.steps * cfg.optim.accum_steps)]
        for i in poison:  # NaN pixels: a non-finite loss at that micro-batch
            self.items[i] = dict(self.items[i], video=torch.full_like(self.items[i]["video"], math.nan))
        self.reads, self.handed, self.source = reads, [], source

    def samples_per_epoch(self) -> int:
        return self.source.samples_per_epoch()

    def describe(self) -> str:
        return f"data: {len(self.items)} prebuilt micro-batches"

    def batches(self, start: int):
        for item in self.items[start:]:
            self.handed.append(sum(self.reads.calls.values()))
            yield item


def reads_per_step(stage: str, monkeypatch, tmp_path, *extra: str) -> dict[int, int]:
    """Host reads during each step of a real run (from a step's first batch to the next step's)."""
    cfg = tiny_config(stage, "steps=8", "loop.log_every=4", "loop.ckpt_every=6", *extra)
    reads = Reads(monkeypatch)
    data = PrebuiltBatches(cfg, reads, classes=4 if stage == "finetune" else 0)
    task = PretrainTask(cfg) if stage == "pretrain" else FinetuneTask(cfg, 4)
    reads.calls.clear()
    Trainer(cfg, task, data, tmp_path, ENV).fit()
    marks = data.handed + [sum(reads.calls.values())]
    return {step: marks[step] - marks[step - 1] for step in range(1, cfg.schedule.steps + 1)}


@pytest.mark.parametrize("stage, extra", [
    ("pretrain", []),
    ("finetune", ["finetune.ema_decay=0.5", "finetune.mixup=0.8", "finetune.cutmix=1.0", "finetune.drop_path=0.1"]),
])
def test_only_log_and_checkpoint_steps_read_the_device(stage, extra, monkeypatch, tmp_path):
    per_step = reads_per_step(stage, monkeypatch, tmp_path, *extra)
    read_steps = {1, 4, 6, 8}  # log_every=4 (and the first step), ckpt_every=6, the last step
    assert {s: n for s, n in per_step.items() if s not in read_steps} == {2: 0, 3: 0, 5: 0, 7: 0}
    assert all(per_step[s] > 0 for s in read_steps), per_step  # the counter sees the reads that happen
    assert [r["step"] for r in read_log(tmp_path)] == [1, 4, 8]


def test_the_stop_agreed_after_every_step_in_a_process_group_reads_nothing_back(monkeypatch, tmp_path):
    """In a process group (here gloo, one rank) every step all-reduces the stop flag host to host: the
    ordinary steps still read no tensor."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        per_step = reads_per_step("pretrain", monkeypatch, tmp_path / "run")
    finally:
        dist.destroy_process_group()
    assert {s: n for s, n in per_step.items() if s not in {1, 4, 6, 8}} == {2: 0, 3: 0, 5: 0, 7: 0}


def checkpoint(run, step):
    return ckpt_io.load_run(run / ckpt_io.CKPT_DIR / ckpt_io.step_name(step))


def test_a_non_finite_step_is_skipped_exactly_weights_moments_and_ema_unchanged(monkeypatch, tmp_path):
    cfg = tiny_config("finetune", "steps=6", "loop.log_every=2", "loop.ckpt_every=1", "loop.keep_last=10",
                      "finetune.ema_decay=0.5", "finetune.mixup=0", "finetune.cutmix=0")
    data = PrebuiltBatches(cfg, Reads(monkeypatch), classes=4, poison={3})  # the batch of step 4
    Trainer(cfg, FinetuneTask(cfg, 4), data, tmp_path, ENV).fit()
    before, after, later = checkpoint(tmp_path, 3), checkpoint(tmp_path, 4), checkpoint(tmp_path, 5)
    for part in ("model", "ema"):
        assert all(torch.equal(after[part][k], v) for k, v in before[part].items()), part
        assert not all(torch.equal(later[part][k], v) for k, v in after[part].items()), part  # step 5 moves them
    moments, moved = before["optimizer"]["state"], after["optimizer"]["state"]
    assert moments.keys() == moved.keys()
    for i, state in moments.items():
        assert all(torch.equal(moved[i][k], v) for k, v in state.items()), i  # exp_avg, exp_avg_sq, step
    assert [(r["step"], r["skipped"]) for r in read_log(tmp_path)] == [(1, 0), (2, 0), (4, 1), (6, 1)]


@pytest.mark.parametrize("log_every, message, logged", [
    (1, r"3 consecutive non-finite steps by step 7 ", [1, 2, 3, 4, 5, 6]),
    # read at steps 6 (a checkpoint: 2 in a row) and 8: the run of 3 at step 7 is seen at step 8, as 4
    (4, r"4 consecutive non-finite steps by step 8 ", [1, 4]),
])
def test_max_bad_steps_stops_the_run_at_the_first_read_after_the_limit(log_every, message, logged, monkeypatch,
                                                                      tmp_path):
    cfg = tiny_config("pretrain", "steps=12", "loop.ckpt_every=2", "loop.max_bad_steps=3",
                      f"loop.log_every={log_every}")
    data = PrebuiltBatches(cfg, Reads(monkeypatch), poison=set(range(4, 12)))  # steps 5, 6, 7, …
    with pytest.raises(TrainingStopped, match=message + r".*Last good checkpoint: .*step-00000006"):
        Trainer(cfg, PretrainTask(cfg), data, tmp_path, ENV).fit()
    assert [r["step"] for r in read_log(tmp_path)] == logged
    assert all(torch.equal(v, checkpoint(tmp_path, 4)["model"][k]) for k, v in checkpoint(tmp_path, 6)["model"].items())


@pytest.mark.parametrize("decay", [0.5, 0.9999])
def test_the_masked_ema_update_is_timms_when_the_step_is_applied_and_nothing_when_skipped(decay):
    cfg = tiny_config("finetune")
    model = FinetuneTask(cfg, 4).build_model()
    timm_ema, ours, skipped = (ModelEmaV3(model, decay=decay) for _ in range(3))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    before = {k: v.clone() for k, v in skipped.module.state_dict().items()}
    timm_ema.update(model, step=5)
    ema_update_unless(ours, model, 5, torch.tensor(0.0))
    ema_update_unless(skipped, model, 5, torch.tensor(1.0))
    theirs = timm_ema.module.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in ours.module.state_dict().items())
    assert not all(torch.equal(v, before[k]) for k, v in theirs.items())
    assert all(torch.equal(v, before[k]) for k, v in skipped.module.state_dict().items())
