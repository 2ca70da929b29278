"""The run report (``runs/demo/report.md``): stage times, loss curves, a reconstruction, accuracy per
camera and fused against chance, the confusion matrix. Pictures are copied beside the Markdown so the
folder can be moved or published as is."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

import yaml

from mv2mae.config import RunConfig
from mv2mae.data.fingerprint import summary
from mv2mae.shards.atomic import write_atomic
from mv2mae.train.logs import read_log


def plot_losses(records: list[dict[str, Any]], keys: list[str], path: Path, title: str) -> Path:
    import matplotlib  # imported here: slow to import, and only pictures need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    steps = [r["step"] for r in records]
    for key in keys:
        if any(key in r for r in records):
            ax.plot(steps, [r.get(key, float("nan")) for r in records], label=key.replace("_", " "))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".") or "png"))
    finally:
        plt.close(fig)
    return path


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _accuracy_table(results: dict[str, Any]) -> list[str]:
    lines = ["| test videos | count | top-1 % | top-5 % |", "|---|---:|---:|---:|"]
    for cam, acc in results["per_camera"].items():
        lines.append(f"| camera {cam} | {acc['count']} | {_pct(acc['top1'])} | {_pct(acc['top5'])} |")
    v, f = results["videos"], results["fused"]
    lines.append(f"| all test videos | {v['count']} | {_pct(v['top1'])} | {_pct(v['top5'])} |")
    lines.append(f"| fused over test cameras (per group) | {f['count']} | {_pct(f['top1'])} | {_pct(f['top5'])} |")
    lines.append(f"| single clip, single crop (no averaging) | {results['clips']['count']} | "
                 f"{_pct(results['clips']['top1'])} | {_pct(results['clips']['top5'])} |")
    if "mean_class_top1" in results:
        lines.append(f"| mean over classes (per-class top-1 averaged) | {len(results['per_class'])} classes | "
                     f"{_pct(results['mean_class_top1'])} | |")
    lines.append(f"| chance | | {_pct(results['chance_top1'])} | {_pct(min(1.0, 5 * results['chance_top1']))} |")
    return lines


def _per_class_table(results: dict[str, Any]) -> list[str]:
    lines = ["| class | test videos | top-1 % |", "|---|---:|---:|"]
    for name, acc in zip(results["classes"], results["per_class"], strict=True):
        lines.append(f"| {name} | {acc['count']} | {'-' if acc['top1'] is None else _pct(acc['top1'])} |")
    return lines


def _validation(log: list[dict[str, Any]]) -> list[str]:
    """How the finetuned checkpoint was chosen: validation top-1 over the run, and the best step."""
    scored = [r for r in log if "val_top1" in r]
    if not scored:
        return ["- no validation split (data.val_by=none, the paper's protocol): last-step.pt is the model the "
                "protocol tests; lowest-train-loss.pt is the step of lowest training loss"]
    best = max(scored, key=lambda r: (r["val_top1"], -r["step"]))
    curve = ", ".join(f"{r['step']}: {_pct(r['val_top1'])}" for r in scored)
    lines = [f"- validation top-1 % by step (a split held out of the training data: no test video): {curve}",
             f"- best-val-top1.pt = step {best['step']} ({_pct(best['val_top1'])}% validation top-1)"]
    if any("val_ema_top1" in r for r in scored):
        ema = max(scored, key=lambda r: (r.get("val_ema_top1", -1.0), -r["step"]))
        lines.append(f"- best-val-top1-ema.pt = EMA weights at step {ema['step']} "
                     f"({_pct(ema['val_ema_top1'])}% validation top-1)")
    return lines


def _timings(path: Path | None) -> list[str]:
    if path is None or not path.is_file():
        return []
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    total = sum(float(r[1]) for r in rows)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = ["## Wall time per stage", "",
             f"Measured on {os.cpu_count()} CPU cores (load average {load} when the report was written: other "
             f"processes sharing the cores stretch these times).", "",
             "| stage | seconds |", "|---|---:|"]
    lines += [f"| {r[0]} | {float(r[1]):.0f} |" for r in rows]
    lines += [f"| **total** | **{total:.0f}** ({total / 60:.1f} min) |", ""]
    return lines


def _run_summary(run: Path) -> tuple[RunConfig | None, list[dict[str, Any]]]:
    cfg_path = run / "config.yaml"
    cfg = RunConfig.from_dict(yaml.safe_load(cfg_path.read_text())) if cfg_path.is_file() else None
    return cfg, read_log(run)


def _stage_section(name: str, run: Path, out_dir: Path, keys: list[str]) -> list[str]:
    cfg, log = _run_summary(run)
    if not log:
        raise ValueError(f"{run}: no {name} log ({run / 'log.jsonl'})")
    png = plot_losses(log, keys, out_dir / f"{name}_loss.png", f"{name} loss")
    last = log[-1]
    lines = [f"## {name.capitalize()}", "", f"![{name} loss]({png.name})", ""]
    if cfg is not None:
        m = cfg.model
        lines.append(f"- run `{run}`: {last['step']} steps of batch {cfg.optim.batch_size} × {cfg.optim.accum_steps} "
                     f"micro-step(s) per process, encoder {m.depth} blocks × {m.embed_dim} on {m.frames}×{m.image_size}² "
                     f"clips ({m.num_tokens} tokens per view), config `{run / 'config.yaml'}`")
    first = log[0]
    terms = ", ".join(f"{k} {first[k]:.3f} → {last[k]:.3f}" for k in keys if k in first and k in last)
    speed = statistics.median(r["samples_per_s"] for r in log)
    wait = statistics.median(r["data_wait"] for r in log)
    lines.append(f"- {terms}; median {speed:.1f} samples/s, data wait {100 * wait:.0f}% of step time")
    lines.append("")
    return lines


def _contribution(results: dict[str, Any], scratch: dict[str, Any], scratch_dir: Path) -> list[str]:
    """The pretrained finetune beside the same finetune from a random encoder: what pretraining added."""
    rows = [("all test videos (clips × crops averaged)", lambda r: r["videos"]["top1"]),
            ("single clip, single crop", lambda r: r["clips"]["top1"])]
    if "mean_class_top1" in results and "mean_class_top1" in scratch:
        rows.append(("mean over classes", lambda r: r["mean_class_top1"]))
    if scratch["protocol"] != results["protocol"] or scratch["videos"]["count"] != results["videos"]["count"]:
        raise ValueError(f"{scratch_dir}: scored {scratch['videos']['count']} videos of {scratch['protocol']}, "
                         f"the report's eval {results['videos']['count']} of {results['protocol']}: not comparable")
    lines = ["## What pretraining contributed", "",
             f"The same finetune (config, steps, seed, model selection) from a randomly initialised encoder, "
             f"scored on the same test videos (`{scratch_dir}`). One seed each: "
             f"experiments/transfer/RESULTS.md has the controlled comparison over seeds.", "",
             "| top-1 % | pretrained, then finetuned | finetuned from scratch | difference (points) |",
             "|---|---:|---:|---:|"]
    for name, get in rows:
        a, b = get(results), get(scratch)
        lines.append(f"| {name} | {_pct(a)} | {_pct(b)} | {100 * (a - b):+.1f} |")
    lines.append(f"| chance | {_pct(results['chance_top1'])} | {_pct(scratch['chance_top1'])} | |")
    return lines + [""]


def write_report(pretrain_run: Path, finetune_run: Path, eval_dir: Path, out: Path,
                 timings: Path | None = None, probe_dirs: list[Path] | None = None,
                 scratch_eval: Path | None = None) -> Path:
    out_dir = out.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    results = json.loads((eval_dir / "results.json").read_text())
    lines = ["# MV2MAE demo report", "",
             f"Protocol `{results['protocol']}` on `{results['data']}`: pretraining and finetuning see only the "
             f"training cameras; the scores below are on the {results['split']} cameras, which the model never saw. "
             f"Every test video is scored as {results['clips_per_video']} clips × {results['crops_per_clip']} crops "
             f"with the softmax averaged; *fused* averages the cameras of a group.", ""]
    if "training" in results:
        lines += [f"The finetuned model was {results['training']['summary']}.", ""]
    lines += _timings(timings)
    if "fingerprint" in results:
        lines += [f"Computed on: {summary(results['fingerprint'])}.", ""]
    lines += ["## Accuracy", ""] + _accuracy_table(results)
    if len(results["per_camera"]) == 1:
        lines += ["", "(One test camera: the fused score equals that camera's.)"]
    if "per_class" in results:
        lines += ["", "Per class (all test videos):", ""] + _per_class_table(results)
    write_atomic(out_dir / "confusion.png", (eval_dir / "confusion.png").read_bytes())
    lines += ["", "![confusion matrix](confusion.png)", ""]
    if scratch_eval is not None:
        lines += _contribution(results, json.loads((scratch_eval / "results.json").read_text()), scratch_eval)
    for pdir in probe_dirs or []:
        probe = json.loads((pdir / "results.json").read_text())
        lines += [f"### Frozen-feature {probe['method']} probe of the pretrained encoder ({pdir})", ""]
        lines += _accuracy_table(probe) + [""]
    lines += _stage_section("pretrain", pretrain_run, out_dir, ["loss", "loss_self", "loss_cross"])
    recons = sorted((pretrain_run / "recon").glob("step-*.png"))
    if recons:
        write_atomic(out_dir / "reconstruction.png", recons[-1].read_bytes())
        lines += ["Reconstructions at the last pretraining step (one training sample; rows per view: the original, "
                  "the masked input the encoder saw, the self-view reconstruction, and for the target view the "
                  "cross-view reconstruction from the source view):", "", "![reconstruction](reconstruction.png)", ""]
    lines += _stage_section("finetune", finetune_run, out_dir, ["loss"])
    lines += ["### Model selection", ""] + _validation(read_log(finetune_run)) + [""]
    write_atomic(out, "\n".join(lines))
    return out
