"""Evaluation: softmax averaging over clips × crops, per-camera and fused accuracy, and the whole
pretrain → finetune → eval → probe → report chain through the CLI on real shards."""

import csv
import json

import numpy as np
import pytest
import torch
from fixtures_data import session_synth_data
from train_helpers import TINY_MODEL
from typer.testing import CliRunner

from mv2mae.cli import app
from mv2mae.data.fingerprint import FINGERPRINT_FILE, shards_digest
from mv2mae.data.splits import ShardSplit
from mv2mae.eval.metrics import aggregate, topk_correct, video_predictions
from mv2mae.eval.probe import knn_probe, linear_probe
from mv2mae.model.checkpoint import load_checkpoint
from mv2mae.shards.schema import read_index
from mv2mae.train.logs import read_log


def test_averaging_softmax_over_clips_changes_the_answer():
    # video A (label 0): two clips lean weakly to class 1, one clip is sure of class 0.
    # Majority of clip argmaxes says 1; the averaged softmax says 0 (0.617 vs 0.383).
    probs = np.array([[0.45, 0.55], [0.45, 0.55], [0.95, 0.05]])
    res = aggregate(probs, ["A"] * 3, ["g"] * 3, [1] * 3, [0] * 3, num_classes=2)
    assert res["clips"]["top1"] == pytest.approx(1 / 3)
    assert res["videos"]["top1"] == 1.0 and res["videos"]["count"] == 1
    assert res["confusion"] == [[1, 0], [0, 0]]


def test_per_camera_and_fused_accuracy():
    # group g1 (label 2): camera 1 is wrong but unsure, camera 2 right and sure -> fused right.
    # group g2 (label 0): both cameras right. Each video has two crops.
    rows = [  # video, group, camera, label, probs
        ("g1/c1", "g1", 1, 2, [0.1, 0.5, 0.4]), ("g1/c1", "g1", 1, 2, [0.1, 0.5, 0.4]),
        ("g1/c2", "g1", 2, 2, [0.0, 0.1, 0.9]), ("g1/c2", "g1", 2, 2, [0.0, 0.2, 0.8]),
        ("g2/c1", "g2", 1, 0, [0.8, 0.1, 0.1]), ("g2/c1", "g2", 1, 0, [0.6, 0.3, 0.1]),
        ("g2/c2", "g2", 2, 0, [0.5, 0.4, 0.1]), ("g2/c2", "g2", 2, 0, [0.7, 0.2, 0.1]),
    ]
    vid, key, cam, lab, p = zip(*rows, strict=True)
    res = aggregate(np.array(p), vid, key, cam, lab, num_classes=3)
    assert res["per_camera"][1] == {"top1": 0.5, "top5": 1.0, "count": 2}
    assert res["per_camera"][2]["top1"] == 1.0
    assert res["videos"]["top1"] == 0.75 and res["fused"] == {"top1": 1.0, "top5": 1.0, "count": 2}
    assert res["chance_top1"] == pytest.approx(1 / 3)
    assert np.array(res["confusion"]).sum() == 4
    # per class (rows = true class): class 0 both videos right, class 1 never shown, class 2 one of two
    assert res["per_class"] == [{"top1": 1.0, "count": 2}, {"top1": None, "count": 0}, {"top1": 0.5, "count": 2}]
    assert res["mean_class_top1"] == 0.75  # over the classes present
    videos = video_predictions(np.array(p), vid, key, cam, lab, ["a", "b", "c"], k=2)
    assert [(v["video_id"], v["label"], v["predicted"], v["correct"]) for v in videos] == [
        ("g1/c1", "c", "b", False), ("g1/c2", "c", "c", True), ("g2/c1", "a", "a", True), ("g2/c2", "a", "a", True)]
    assert videos[0]["top"] == ["b", "c"] and videos[0]["scores"] == [0.5, 0.4]


def test_inconsistent_rows_are_rejected():
    with pytest.raises(ValueError, match="disagree"):
        aggregate(np.ones((2, 2)) / 2, ["v", "v"], ["g", "g"], [1, 1], [0, 1], num_classes=2)


def test_topk_and_probes_on_separable_features():
    assert topk_correct(np.array([[0.1, 0.2, 0.7]]), np.array([1]), 2).tolist() == [True]
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=gen) * 4
    y = torch.arange(60) % 3
    x = centres[y] + torch.randn(60, 8, generator=gen)
    for probs in (linear_probe(x[:30], y[:30], x[30:], 3), knn_probe(x[:30], y[:30], x[30:], 3, k=5)):
        assert (probs.argmax(1) == y[30:]).float().mean() > 0.9
        assert torch.allclose(probs.sum(1), torch.ones(30))


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    return session_synth_data(tmp_path_factory)


def invoke(*args, code=0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    return result.output


def test_pretrain_finetune_eval_probe_report_on_real_shards(synth_data, tmp_path):
    sets = [x for item in [*TINY_MODEL, "model.image_size=32", "data.stride=2", "data.workers=1",
                           "optim.batch_size=4", "loop.log_every=1", "loop.ckpt_every=2", "loop.recon_every=2",
                           "schedule.warmup_steps=1"]
            for x in ("--set", item)]
    pre, fin, ev = tmp_path / "pre", tmp_path / "fin", tmp_path / "eval"
    stats = ["--set", "model.pixel_mean=[0.5, 0.4, 0.3]", "--set", "model.pixel_std=[0.2, 0.25, 0.3]"]
    invoke("pretrain", "--config", "tiny", "--data", synth_data, "--out", pre, *sets, *stats, "--set", "steps=2")
    # continuing the same run to 4 steps: --resume auto picks the step-2 checkpoint up
    invoke("pretrain", "--config", "tiny", "--data", synth_data, "--out", pre, *sets, *stats, "--set", "steps=4",
           "--resume", "auto")
    assert [json.loads(line)["step"] for line in (pre / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert (pre / "recon" / "step-00000004.png").is_file() and (pre / "config.yaml").is_file()
    assert list((pre / "tb").iterdir())
    # what the run computed on: its shards' digest and the machine, once per start on a different machine
    digest = shards_digest(synth_data)
    starts = json.loads((pre / FINGERPRINT_FILE).read_text())
    assert [s["step"] for s in starts] == [0] and starts[0]["data"]["shards"] == digest
    refused = CliRunner().invoke(app, ["pretrain", "--config", "tiny", "--data", str(synth_data), "--out", str(pre)])
    assert refused.exit_code == 1 and "--resume auto" in refused.output

    invoke("finetune", "--config", "tiny", "--data", synth_data, "--init", pre / "checkpoints" / "lowest-train-loss.pt",
           "--out", fin, *sets, "--set", "steps=3", "--set", "finetune.mixup=0.8", "--set", "finetune.cutmix=1.0",
           "--set", "finetune.val_every=1", "--set", "data.eval_clips=1", "--set", "data.eval_crops=1")
    # the finetuned checkpoint is chosen on the validation split (held-out training subjects), not on the loss
    scored = [r for r in read_log(fin) if "val_top1" in r]
    assert [r["step"] for r in scored] == [1, 2, 3]
    best = max(scored, key=lambda r: (r["val_top1"], -r["step"]))
    chosen = load_checkpoint(fin / "checkpoints" / "best-val-top1.pt")
    assert chosen["step"] == best["step"] and chosen["metrics"]["val_top1"] == best["val_top1"]
    assert chosen["classes"] == read_index(synth_data).classes
    assert not (fin / "checkpoints" / "lowest-train-loss.pt").exists()
    # finetuning normalises as the pretraining did (its pixel statistics come with the encoder)
    finetuned = load_checkpoint(fin / "checkpoints" / "step-00000003.pt")["config"]
    assert (finetuned["pixel_mean"], finetuned["pixel_std"]) == ([0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
    out = invoke("eval", "--checkpoint", fin / "checkpoints" / "step-00000003.pt", "--out", ev, "--clips", "1",
                 "--crops", "2", "--workers", "1")
    assert "camera 1" in out and "fused" in out and "mean over classes" in out
    res = json.loads((ev / "results.json").read_text())
    assert res["protocol"] == "synth_xview" and list(res["per_camera"]) == ["1"]
    # which protocol produced the number: tiny's held-out subjects, the last step of the run
    fit = ShardSplit.open(synth_data, "synth_xview", "train", "subject", 0.1).selection
    assert res["training"]["val_by"] == "subject" and res["training"]["train_videos"] == fit.videos
    assert res["training"]["tested_at"] == "the last step (3)" and "held out for validation" in res["training"]["summary"]
    assert "tested at the last step (3)" in out
    assert load_checkpoint(fin / "checkpoints" / "last-step.pt")["step"] == 3
    assert res["clips"]["count"] == 2 * res["videos"]["count"] and (ev / "confusion.png").is_file()
    assert sum(c["count"] for c in res["per_class"]) == res["videos"]["count"] == sum(map(sum, res["confusion"]))
    with (ev / "predictions.csv").open() as f:
        videos = list(csv.DictReader(f))
    assert len(videos) == res["videos"]["count"] and {v["video_id"][-4:] for v in videos} == {"c001"}
    assert sum(v["correct"] == "1" for v in videos) == round(res["videos"]["top1"] * len(videos))

    probe = tmp_path / "probe"
    invoke("probe", "--checkpoint", pre / "checkpoints" / "lowest-train-loss.pt", "--method", "knn", "--out", probe,
           "--clips", "1", "--crops", "1", "--workers", "1")
    assert json.loads((probe / "results.json").read_text())["method"] == "knn"
    assert res["fingerprint"]["data"]["shards"] == digest
    assert json.loads((probe / "results.json").read_text())["fingerprint"]["data"]["shards"] == digest

    timings = tmp_path / "timings.txt"
    timings.write_text("pretrain 1.5\nfinetune 2\n")
    invoke("report", "--pretrain", pre, "--finetune", fin, "--eval", ev, "--out", tmp_path / "r" / "report.md",
           "--timings", timings, "--probe", probe)
    report = (tmp_path / "r" / "report.md").read_text()
    assert f"The finetuned model was {res['training']['summary']}." in report
    assert "| camera 1 |" in report and "fused" in report and "![reconstruction](reconstruction.png)" in report
    assert "mean over classes" in report and f"best-val-top1.pt = step {best['step']}" in report
    assert f"Computed on: shards sha256 {digest['sha256'][:12]}" in report
    for png in ("reconstruction.png", "confusion.png", "pretrain_loss.png", "finetune_loss.png"):
        assert (tmp_path / "r" / png).is_file(), png
    assert "What pretraining contributed" not in report

    # beside the same finetune from scratch (its results: this eval's, with other accuracies), the report
    # says what pretraining added, pretrained minus scratch, row by row
    scratch = tmp_path / "scratch-eval"
    scratch.mkdir()
    other = dict(res, videos={**res["videos"], "top1": res["videos"]["top1"] - 0.25},
                 clips={**res["clips"], "top1": res["clips"]["top1"] - 0.125})
    (scratch / "results.json").write_text(json.dumps(other))
    invoke("report", "--pretrain", pre, "--finetune", fin, "--eval", ev, "--out", tmp_path / "r" / "report.md",
           "--scratch-eval", scratch)
    report = (tmp_path / "r" / "report.md").read_text()
    assert "## What pretraining contributed" in report
    rows = {line.split("|")[1].strip(): line for line in report.splitlines() if line.count("|") == 5}
    assert rows["all test videos (clips × crops averaged)"].split("|")[4].strip() == "+25.0"
    assert rows["single clip, single crop"].split("|")[4].strip() == "+12.5"
    (scratch / "results.json").write_text(json.dumps(dict(res, protocol="synth_xsub")))
    out = invoke("report", "--pretrain", pre, "--finetune", fin, "--eval", ev, "--out", tmp_path / "r2.md",
                 "--scratch-eval", scratch, code=1)
    assert "not comparable" in out


# Losses of a pretraining fed by either decoding path: the clips differ by at most one level on some
# pixels (test_loader.py), which moves a loss of ~1 by well under 0.1%.
DECODE_LOSS_RTOL = 1e-3


def test_decoding_on_the_device_gives_the_losses_of_decoding_in_the_workers(synth_data, tmp_path):
    """``data.decode_on=device`` (the CUDA default; the same code on the CPU here) decodes each batch's
    JPEGs in the training process: a short pretraining has the losses of worker-side decoding."""
    sets = [x for item in [*TINY_MODEL, "model.image_size=32", "data.stride=2", "data.workers=1",
                           "optim.batch_size=4", "loop.log_every=1", "steps=3", "schedule.warmup_steps=1"]
            for x in ("--set", item)]
    runs = {}
    for where in ("cpu", "device"):
        out = tmp_path / where
        invoke("pretrain", "--config", "tiny", "--data", synth_data, "--out", out, *sets,
               "--set", f"data.decode_on={where}")
        runs[where] = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(runs["device"]) == 3
    np.testing.assert_allclose(runs["device"], runs["cpu"], rtol=DECODE_LOSS_RTOL)
