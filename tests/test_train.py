"""The training loop: exact resume, non-finite step skipping, layer-decay parameter groups."""

import dataclasses
import math

import pytest
import torch
from train_helpers import GlobalBatchSource, SimulatedCrash, tiny_config

from mv2mae.model.checkpoint import load_checkpoint, load_encoder, save_model_state, write_checkpoint
from mv2mae.model.classifier import VideoClassifier
from mv2mae.model.mv2mae import MV2MAE
from mv2mae.train import checkpoint as ckpt_io
from mv2mae.train.distributed import setup
from mv2mae.train.logs import read_log
from mv2mae.train.loop import Trainer, TrainingStopped
from mv2mae.train.optim import build_optimizer, param_groups
from mv2mae.train.tasks import FinetuneTask, PretrainTask, finetune_model_config

torch.set_num_threads(1)
ENV = setup("cpu")


def fit(cfg, source, run_dir, resume=None, task_cls=PretrainTask):
    task = task_cls(cfg) if task_cls is PretrainTask else task_cls(cfg, source.classes)
    return Trainer(cfg, task, source, run_dir, ENV, resume=resume).fit()


def losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_log(run_dir)]


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_resume_after_a_crash_continues_the_same_loss_curve(tmp_path, stage):
    extra = ["finetune.mixup=0.8", "finetune.cutmix=1.0", "finetune.drop_path=0.1",
             "finetune.ema_decay=0.5"] if stage == "finetune" else []
    cfg = tiny_config(stage, "optim.accum_steps=2", *extra)
    task_cls, classes = (PretrainTask, 0) if stage == "pretrain" else (FinetuneTask, 4)
    fit(cfg, GlobalBatchSource(cfg, classes=classes), tmp_path / "straight", task_cls=task_cls)

    crashed = tmp_path / "crashed"
    with pytest.raises(SimulatedCrash):  # dies inside step 5, after the step-3 checkpoint
        fit(cfg, GlobalBatchSource(cfg, classes=classes, crash_after=9), crashed, task_cls=task_cls)
    assert ckpt_io.latest(crashed).name == ckpt_io.step_name(3)
    assert [s for s, _ in losses(crashed)] == [1, 2, 3, 4]
    fit(cfg, GlobalBatchSource(cfg, classes=classes), crashed, resume="auto", task_cls=task_cls)

    straight, resumed = losses(tmp_path / "straight"), losses(crashed)
    assert [s for s, _ in resumed] == list(range(1, 7))
    assert len({round(v, 6) for _, v in straight}) > 1  # the loss actually moves
    for (s1, a), (s2, b) in zip(straight, resumed, strict=True):
        assert s1 == s2 and a == pytest.approx(b, rel=1e-6, abs=1e-7), f"step {s1}: {a} vs {b}"
    state = ckpt_io.load_run(ckpt_io.latest(crashed))
    assert state["step"] == 6 and state["data"]["micro_batches"] == 12
    assert state["run_config"]["stage"] == stage and state["config"]["embed_dim"] == cfg.model.embed_dim
    if stage == "finetune":  # the EMA of the weights resumes too
        ema = ckpt_io.load_run(ckpt_io.latest(tmp_path / "straight"))["ema"]
        assert all(torch.allclose(state["ema"][k], v, rtol=1e-5, atol=1e-7) for k, v in ema.items())
        assert not all(torch.equal(state["ema"][k], state["model"][k]) for k in ema)


def test_a_checkpoint_of_the_unfused_cpu_optimiser_resumes_with_the_same_losses(tmp_path):
    """Before the loop skipped non-finite steps on the device, CPU runs saved AdamW with ``fused: False``;
    the resumed run keeps its own (fused) kernel, which alone takes ``found_inf``, and continues the curve."""
    cfg = tiny_config("pretrain")
    fit(cfg, GlobalBatchSource(cfg), tmp_path / "straight")
    crashed = tmp_path / "crashed"
    with pytest.raises(SimulatedCrash):
        fit(cfg, GlobalBatchSource(cfg, crash_after=4), crashed)
    path = ckpt_io.latest(crashed)
    state = ckpt_io.load_run(path)
    for group in state["optimizer"]["param_groups"]:  # as 56fd118 wrote it on the CPU
        group.update(fused=False, foreach=None)
    write_checkpoint(state, path)
    fit(cfg, GlobalBatchSource(cfg), crashed, resume="auto")
    assert ckpt_io.load_run(ckpt_io.latest(crashed))["optimizer"]["param_groups"][0]["fused"] is True
    for (s1, a), (s2, b) in zip(losses(tmp_path / "straight"), losses(crashed), strict=True):
        assert s1 == s2 and a == pytest.approx(b, rel=1e-6, abs=1e-7), f"step {s1}: {a} vs {b}"


def test_finetuning_keeps_the_best_validation_top1_not_the_lowest_loss(tmp_path):
    """With a validation split the loop scores the weights and their EMA every finetune.val_every steps;
    best-val-top1.pt is the step whose weights scored best, best-val-top1-ema.pt holds the EMA weights of
    the step where they scored best, and nothing is named after the training loss."""
    cfg = tiny_config("finetune", "finetune.val_every=2", "finetune.ema_decay=0.5", "finetune.mixup=0",
                      "finetune.cutmix=0")
    scores = iter([0.2, 0.2, 0.6, 0.5, 0.4, 0.7])  # (weights, EMA) at steps 2, 4 and 6
    scored = []

    def validate(model):
        scored.append((model, model.training))
        return {"top1": next(scores)}

    task = FinetuneTask(cfg, 4, ["a", "b", "c", "d"])
    Trainer(cfg, task, GlobalBatchSource(cfg, classes=4), tmp_path, ENV, validate=validate).fit()
    folder = tmp_path / "checkpoints"
    best, best_ema = load_checkpoint(folder / ckpt_io.BEST_VAL_TOP1), load_checkpoint(folder / ckpt_io.BEST_VAL_TOP1_EMA)
    assert best["step"] == 4 and best["metrics"]["val_top1"] == 0.6 and best["classes"] == ["a", "b", "c", "d"]
    last = ckpt_io.load_run(folder / ckpt_io.step_name(6))
    assert best_ema["step"] == 6 and all(torch.equal(best_ema["model"][k], v) for k, v in last["ema"].items())
    assert not (folder / ckpt_io.LOWEST_TRAIN_LOSS).exists()
    assert [(r["step"], r["val_top1"]) for r in read_log(tmp_path) if "val_top1" in r] == [(2, 0.2), (4, 0.6), (6, 0.4)]
    assert scored[0][0] is not scored[1][0] and not any(training for _, training in scored)


class PoisonedSource(GlobalBatchSource):
    """Clean batches, then NaN pixels from micro-batch ``poison_from`` on."""

    def __init__(self, cfg, poison_from):
        super().__init__(cfg)
        self.poison_from = poison_from

    def batches(self, start):
        for i, batch in enumerate(super().batches(start), start):
            if i >= self.poison_from:
                batch = dict(batch, video=torch.full_like(batch["video"], math.nan))
            yield batch


def test_non_finite_steps_are_skipped_then_the_run_stops_with_a_good_checkpoint(tmp_path):
    cfg = tiny_config("pretrain", "steps=12", "loop.ckpt_every=2", "loop.max_bad_steps=3")
    with pytest.raises(TrainingStopped, match=r"3 consecutive non-finite steps by step 7 .*step-00000006"):
        fit(cfg, PoisonedSource(cfg, poison_from=4), tmp_path)
    log = read_log(tmp_path)
    assert [r["skipped"] for r in log] == [0, 0, 0, 0, 1, 2]  # steps 1..6 logged; step 7 raised
    good, last = ckpt_io.load_run(tmp_path / "checkpoints" / "step-00000004.pt"), ckpt_io.load_run(ckpt_io.latest(tmp_path))
    for key, value in last["model"].items():  # skipped steps never touched the weights
        assert torch.isfinite(value).all() and torch.equal(value, good["model"][key]), key


def test_layer_decay_groups_cover_every_parameter_exactly_once():
    cfg = tiny_config("finetune")
    model = VideoClassifier(cfg.model, num_classes=5)
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.75)
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    assert len(seen) == len(set(seen))
    scale = {n: g["lr_scale"] for g in groups for n, p in model.named_parameters() if any(p is q for q in g["params"])}
    depth = cfg.model.depth
    assert scale["head.weight"] == 1.0
    assert scale["encoder.blocks.0.attn.qkv.weight"] == pytest.approx(0.75 ** depth)
    assert scale["encoder.patch_embed.proj.weight"] == pytest.approx(0.75 ** (depth + 1))
    decay = {n: g["weight_decay"] for g in groups for n, p in model.named_parameters() if any(p is q for q in g["params"])}
    assert decay["head.bias"] == 0.0 and decay["head.weight"] == 0.05
    # the optimiser keeps the groups and the scheduler applies lr_scale on top of the scaled lr
    opt = build_optimizer(model, cfg, world_size=1)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(seen)


def decay_by_name(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    group_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    return {name: group_of[id(p)] for name, p in model.named_parameters()}


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_weight_decay_skips_mask_tokens_biases_and_norms_by_name(stage):
    """AdamW's groups as VideoMAE sets them: decay on weight matrices only — never on the decoders'
    mask tokens, biases or norms; position tables are fixed buffers, not parameters at all."""
    cfg = tiny_config(stage, "optim.weight_decay=0.05")
    model = MV2MAE(cfg.model) if stage == "pretrain" else VideoClassifier(cfg.model, num_classes=5)
    decay = decay_by_name(model, build_optimizer(model, cfg, world_size=1))
    assert not any("pos_embed" in name for name in decay)
    undecayed = {n for n, wd in decay.items() if wd == 0.0}
    expected = {n for n in decay if n.endswith((".bias", "mask_token")) or ".norm" in n or "norm." in n}
    assert undecayed == expected
    assert {wd for n, wd in decay.items() if n not in expected} == {0.05}
    if stage == "pretrain":
        assert {"self_decoder.mask_token", "cross_decoder.mask_token"} <= undecayed


def test_pretrain_init_anchors_a_1d_position_table_where_the_checkpoint_was_trained(tmp_path):
    """--init from a VideoMAE-style (1D table) checkpoint at another clip length resamples positions,
    as finetuning does, instead of re-indexing a table for the new grid; weights load strictly."""
    src = tiny_config("pretrain", "model.pos_embed=sinusoid1d", "model.frames=8").model
    path = save_model_state(tmp_path / "v.pt", MV2MAE(src), src)
    cfg = tiny_config("pretrain", "model.pos_embed=sinusoid1d")  # 4 frames: a different token grid
    model = PretrainTask(cfg, init=str(path)).build_model()
    assert model.cfg.pos_embed_reference_grid == src.grid
    encoder, _ = load_encoder(path, frames=4)
    assert torch.equal(model.encoder.pos_embed, encoder.pos_embed)
    assert torch.equal(model.encoder.blocks[0].attn.qkv.weight, encoder.blocks[0].attn.qkv.weight)


def test_a_resumed_run_follows_its_own_config_schedule_and_hyperparameters(tmp_path):
    """Extending a finished run with --set steps=… resumes on the longer cosine (not at the old run's
    min lr), and a changed weight decay is applied: the checkpoint gives state, the config the recipe."""
    fit(tiny_config("pretrain", "steps=12"), GlobalBatchSource(tiny_config()), tmp_path / "straight")
    fit(tiny_config("pretrain", "steps=6"), GlobalBatchSource(tiny_config()), tmp_path / "short")
    longer = tiny_config("pretrain", "steps=12", "optim.weight_decay=0.2")
    trainer = Trainer(longer, PretrainTask(longer), GlobalBatchSource(longer), tmp_path / "short", ENV, resume="auto")
    trainer.fit()
    straight = {r["step"]: r["lr"] for r in read_log(tmp_path / "straight")}
    resumed = {r["step"]: r["lr"] for r in read_log(tmp_path / "short")}
    assert sorted(resumed) == list(range(1, 13))
    for step in range(7, 13):
        assert resumed[step] == pytest.approx(straight[step], rel=1e-9), step
    assert resumed[7] > 10 * resumed[12]  # still decaying, not parked at the minimum
    assert {g["weight_decay"] for g in trainer.optimizer.param_groups} == {0.0, 0.2}


def test_finetuning_takes_weight_tied_fields_and_pixel_statistics_from_the_pretrained_checkpoint(tmp_path):
    """Encoder weights are tied to the pixel statistics they were trained on: a classifier started
    from a checkpoint normalises as its pretraining did, and then loads strictly."""
    src = tiny_config("pretrain", "model.pixel_mean=[0.5, 0.4, 0.3]", "model.pixel_std=[0.2, 0.25, 0.3]").model
    path = save_model_state(tmp_path / "pre.pt", MV2MAE(src), src)
    cfg = tiny_config("finetune")
    model_cfg, notes = finetune_model_config(cfg, path)
    assert (model_cfg.pixel_mean, model_cfg.pixel_std) == ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    assert any(n.startswith("model.pixel_mean") for n in notes)
    cfg = dataclasses.replace(cfg, model=model_cfg, finetune=dataclasses.replace(cfg.finetune, init=str(path)))
    model = FinetuneTask(cfg, num_classes=3).build_model()
    assert model.cfg.pixel_mean == (0.5, 0.4, 0.3)


class _IdleCrossDecoder(PretrainTask):
    """A single-view pretraining whose model still builds a cross-view decoder (what a configuration
    that leaves a module out of the loss used to get)."""

    def build_model(self) -> MV2MAE:
        return MV2MAE(self.cfg.model.with_(cross_view=True))


def test_a_module_the_loss_does_not_use_stops_the_run_after_its_first_step_naming_it(tmp_path):
    """Under DDP such weights fail the second step with an error that names none of them: the loop checks
    after its first step that every trainable parameter has a gradient."""
    cfg = tiny_config("pretrain", "data.num_sources=0", "steps=2")
    assert not cfg.model.cross_view  # the config builds no cross-view decoder for one view
    with pytest.raises(TrainingStopped, match=r"no part in the loss: cross_decoder\.mask_token, .* in all\)"):
        Trainer(cfg, _IdleCrossDecoder(cfg), GlobalBatchSource(cfg, views=1), tmp_path, ENV).fit()
    assert not read_log(tmp_path)  # refused before the first step is logged or checkpointed
    fit(cfg, GlobalBatchSource(cfg, views=1), tmp_path / "built-as-configured")
    assert [r["loss_cross"] for r in read_log(tmp_path / "built-as-configured")] == [0.0, 0.0]
    # the run's last step is also last-step.pt: another name of the step file, no second copy of its bytes
    folder = tmp_path / "built-as-configured" / ckpt_io.CKPT_DIR
    assert (folder / ckpt_io.LAST_STEP).stat().st_ino == (folder / ckpt_io.step_name(2)).stat().st_ino
