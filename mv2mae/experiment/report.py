"""The study's report: ``results.json`` (everything), ``RESULTS.md`` (tables, setup, the paper's numbers
beside ours) and SVG plots (accuracy per arm, pretraining loss curves, probe accuracy against steps)."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from mv2mae.data.fingerprint import summary
from mv2mae.experiment.plan import EVALS, PLAN_DIR, Plan
from mv2mae.experiment.results import collect
from mv2mae.experiment.runner import write_json_atomic
from mv2mae.experiment.svg import bar_chart, line_chart

REPORT = "RESULTS.md"
JSON = "results.json"
PLOTS = {"accuracy": "accuracy.svg", "loss": "pretrain_loss.svg", "steps": "steps.svg"}
EVAL_NAMES = {"linear": "linear probe", "knn": "k-NN", "finetune": "finetuned"}


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, machine and code revision the study ran with."""
    versions = {"python": platform.python_version()}
    for package in ("mv2mae", "torch", "timm", "numpy"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    machine = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "platform": platform.platform(), "device": str(device)}
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    return {"versions": versions, "machine": machine, "git": _git_revision()}


def _git_revision() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).parent, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def write_report(out: Path, plan: Plan, context: dict[str, Any]) -> Path:
    """Collect the finished stages of ``out`` and write results.json, the plots and RESULTS.md."""
    results = {"plan": plan_summary(plan), **context, **collect(out, plan)}
    write_json_atomic(out / JSON, results)
    _plots(out, plan, results)
    path = out / REPORT
    path.write_text(markdown(plan, results))
    return path


def shown_source(source: str) -> str:
    """A shipped plan by its place in the package (not this machine's install path), any other as given."""
    path = Path(source)
    return f"mv2mae/experiment/plans/{path.name}" if path.parent == PLAN_DIR else source


def plan_summary(plan: Plan) -> dict[str, Any]:
    return {"name": plan.name, "title": plan.title, "source": shown_source(plan.source), "scale": plan.scale,
            "config": plan.config, "dataset": plan.dataset, "pretrain_protocol": plan.pretrain_protocol,
            "protocols": plan.protocols, "budget": {k: list(v) for k, v in plan.budget.items()},
            "reference": plan.reference, "primary": {"protocol": plan.primary[0], "eval": plan.primary[1]},
            "pretrain_steps": plan.steps, "step_sweep": list(plan.step_sweep), "step_arms": list(plan.step_arms),
            "step_seeds": list(plan.step_seeds), "step_evals": list(plan.step_evals), "paper": list(plan.paper)}


# ---------------------------------------------------------------------------- numbers as text
def fmt(summary: dict[str, Any] | None, signed: bool = False) -> str:
    """``mean ± std`` in percent (points), with the seed count; ``–`` when nothing finished."""
    if not summary or summary["mean"] is None:
        return "–"
    mean = f"{100 * summary['mean']:+.1f}" if signed else f"{100 * summary['mean']:.1f}"
    if summary["std"] is None:
        return f"{mean} (1 seed)"
    return f"{mean} ± {100 * summary['std']:.1f} ({summary['n']})"


def interval(summary: dict[str, Any] | None) -> str:
    """A paired difference's 95 % interval in points, ``–`` below two seeds."""
    if not summary or summary.get("ci95") is None:
        return "–"
    lo, hi = summary["ci95"]
    return f"[{100 * lo:+.1f}, {100 * hi:+.1f}]"


def verdict(summary: dict[str, Any] | None, a: str, b: str) -> str:
    """What a paired difference ``a − b`` says: who is ahead where its 95 % interval excludes 0."""
    if not summary or summary.get("resolved") is None:
        return "– (needs 2 seeds)"
    if not summary["resolved"]:
        return "not resolved"
    return f"{a} ahead" if summary["mean"] > 0 else f"{b} ahead"


def _primary(plan: Plan, results: dict[str, Any]) -> list[str]:
    prim = results["primary"]
    titles = {a["name"]: a["title"] for a in results["arms"]}
    reading = f"{prim['protocol']}: {EVAL_NAMES[prim['eval']]}"
    lines = [f"## Primary reading — {reading} top-1 %", "",
             f"The reading the study is about (`{plan.protocols[prim['protocol']]}` test split). Paired "
             "differences are taken seed by seed; the interval is the paired t 95 % interval over seeds; "
             "“not resolved” where it holds 0. d / se is the mean difference in standard errors.", "",
             "| arm | top-1 % (mean ± std, seeds) |", "|---|---:|"]
    lines += [f"| {a['title']} | {fmt(a)} |" for a in prim["arms"]]
    lines += ["", "| paired difference | points (mean ± std, seeds) | 95 % interval | d / se | verdict |",
              "|---|---:|---:|---:|---|"]
    for c in prim["comparisons"]:
        ratio = f"{c['mean'] / c['se']:+.1f}" if c.get("se") else "–"
        lines.append(f"| {c['a']} − {c['b']} | {fmt(c, signed=True)} | {interval(c)} | {ratio} | "
                     f"{verdict(c, c['a'], c['b'])} |")
    return [*lines, "", "Arms: " + "; ".join(f"`{n}` = {t}" for n, t in titles.items()
                                              if any(a["name"] == n for a in prim["arms"])) + ".", ""]


def _step_table(plan: Plan, results: dict[str, Any]) -> list[str]:
    cols = [(arm, k, e) for arm in plan.step_arms for k in plan.protocols for e in plan.step_evals]
    key, ev = plan.primary
    diffs = list(results["step_sweep"][-1]["differences"])
    lines = [f"## Pretraining length: {', '.join(plan.step_arms)} against pretraining steps", "",
             "Step 0 is the arm without pretraining (the untrained encoder; the finetune from scratch); every "
             f"other length is a full pretraining with its own warm-up and cosine schedule. The study's length is "
             f"{plan.steps} steps. Seeds {list(plan.step_seeds)}.", "",
             "| pretraining steps | " + " | ".join(f"{a} · {k}: {EVAL_NAMES[e]}" for a, k, e in cols)
             + "".join(f" | {d} · {key}: {EVAL_NAMES[ev]} (95 % interval)" for d in diffs) + " |",
             "|---:|" + "---:|" * (len(cols) + len(diffs))]
    for row in results["step_sweep"]:
        cells = [fmt(row["arms"][a]["metrics"].get(k, {}).get(e)) for a, k, e in cols]
        for d in diffs:
            c = row["differences"].get(d, {}).get(key, {}).get(ev)
            cells.append(f"{fmt(c, signed=True)} {interval(c)}" if c else "–")
        lines.append(f"| {row['steps']} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _columns(plan: Plan) -> list[tuple[str, str]]:
    return [(key, e) for key in plan.protocols for e in EVALS]


def _table(plan: Plan, arms: list[dict[str, Any]], field: str, signed: bool) -> list[str]:
    cols = _columns(plan)
    lines = ["| arm | pretraining overrides | " + " | ".join(f"{k}: {EVAL_NAMES[e]}" for k, e in cols) + " |",
             "|---|---|" + "---:|" * len(cols)]
    for arm in arms:
        sets = ", ".join(f"`{s}`" for s in arm["set"]) if arm["pretrain"] else "no pretraining"
        cells = [fmt(arm[field].get(k, {}).get(e), signed) for k, e in cols]
        lines.append(f"| {arm['title']} | {sets or 'the budget only'} | " + " | ".join(cells) + " |")
    return lines


def _noise(plan: Plan, splits: dict[str, dict[str, Any]]) -> list[str]:
    """Chance and the sampling noise of one run's top-1 per protocol, to read the differences against."""
    parts = []
    for key in plan.protocols:
        if key in splits:
            n, chance = splits[key]["videos"], splits[key]["chance"]
            se = [100 * math.sqrt(p * (1 - p) / n) for p in (chance, 0.5)]
            parts.append(f"{key}: {n} test videos, chance {100 * chance:.1f}%, one run's binomial standard error "
                         f"{se[0]:.1f} points at chance and {se[1]:.1f} at 50%")
    return ["Reading the numbers — " + "; ".join(parts) + ".", ""] if parts else []


def markdown(plan: Plan, results: dict[str, Any]) -> str:
    prog, env = results["progress"], results["environment"]
    groups = {g: [a for a in results["arms"] if a["group"] == g] for g in ("arm", "sweep")}
    ref_title = next(a["title"] for a in results["arms"] if a["name"] == plan.reference)
    status = ("complete" if prog["stages_done"] == prog["stages_planned"] else "**partial**")
    v, m = env["versions"], env["machine"]
    synth = plan.dataset.get("synth", {})
    lines = [f"# {plan.title}", ""]
    if plan.notes:
        lines += [plan.notes, ""]
    lines += [
        f"Status: {status} — {prog['stages_done']} of {prog['stages_planned']} stages finished in "
        f"{prog['seconds_total'] / 60:.1f} min ("
        + ", ".join(f"{k} {s / 60:.1f}" for k, s in sorted(prog["seconds"].items()))
        + f"), {prog['cpu_seconds_total'] / 60:.1f} CPU-minutes.", "",
        "## Setup", "",
        f"- Command: `{results['command']}`",
        f"- Code: mv2mae {v['mv2mae']}" + (f" (git {env['git']})" if env["git"] else "")
        + f", torch {v['torch']}, timm {v['timm']}, numpy {v['numpy']}, Python {v['python']}",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, device {m['device']}"
        + (f" ({m['gpu']})" if "gpu" in m else "") + f"; {m['platform']}",
        f"- Dataset: `mv2mae synth` seed {synth.get('seed')}, "
        + ", ".join(f"{k} {v}" for k, v in synth.items() if k != "seed")
        + f" ({results['dataset']['groups']} groups); preprocessed with "
        + ", ".join(f"{k} {v}" for k, v in plan.dataset.get("preprocess", {}).items()),
        *([f"- Fingerprint: {summary(results['fingerprint'])}; compare with `mv2mae experiment --verify` "
            "(results.json's `fingerprint` has the whole record)"] if "fingerprint" in results else []),
        f"- Pretraining on `{plan.pretrain_protocol}`; evaluation on "
        + ", ".join(f"{k} = `{p}`" for k, p in plan.protocols.items()),
        f"- Budget: preset `{plan.config}`, plan `{shown_source(plan.source)}` scale `{plan.scale}`; "
        + "; ".join(f"{stage}: " + " ".join(f"`{s}`" for s in sets) for stage, sets in plan.budget.items() if sets),
        f"- Seeds: arms {list(groups['arm'][0]['seeds']) if groups['arm'] else []}"
        + (f", sweeps {groups['sweep'][0]['seeds']}" if groups["sweep"] else "")
        + (f", step sweep {list(plan.step_seeds)}" if plan.step_sweep else ""),
        "",
        *_primary(plan, results),
        "## Every reading: top-1 % on the test split (mean ± std over seeds, seed count in brackets)", "",
        "Linear probe and k-NN: frozen encoder, mean-pooled features. Finetuned: the whole encoder, then "
        "multi-clip × multi-crop testing. One pretraining per arm and seed serves every protocol.", "",
        *_noise(plan, results.get("test_splits", {})),
        *_table(plan, groups["arm"] + groups["sweep"], "metrics", signed=False), "",
        f"## Paired difference to {ref_title} (points, mean ± std of the per-seed differences)", "",
        *_table(plan, [a for a in groups["arm"] + groups["sweep"] if a["name"] != plan.reference],
                "vs_reference", signed=True), "",
    ]
    if results["step_sweep"]:
        lines += _step_table(plan, results)
    lines += ["## Plots", "", f"![accuracy per arm]({PLOTS['accuracy']})", "",
              f"![pretraining loss]({PLOTS['loss']})", ""]
    if results["step_sweep"]:
        lines += [f"![top-1 against pretraining steps]({PLOTS['steps']})", ""]
    if plan.paper:
        keys = list(plan.paper[0])
        lines += ["## The paper's numbers, for context", "",
                  "Top-1 % reported for MV2MAE (ViT-S, full-size pretraining on the real datasets; from "
                  "METHOD.md). Not comparable in level with a small synthetic study; they show what the method "
                  "claims at scale.", "",
                  "| " + " | ".join(keys) + " |", "|---" * len(keys) + "|"]
        lines += ["| " + " | ".join(str(row.get(k, "")) for k in keys) + " |" for row in plan.paper]
        lines.append("")
    return "\n".join(lines)


def _plots(out: Path, plan: Plan, results: dict[str, Any]) -> None:
    arms = [a for a in results["arms"] if a["group"] in ("arm", "sweep")]
    series = [f"{k} {EVAL_NAMES[e]}" for k, e in _columns(plan)]
    values = {}
    for arm in arms:
        for (key, e), name in zip(_columns(plan), series, strict=True):
            s = arm["metrics"].get(key, {}).get(e)
            if s and s["mean"] is not None:
                values[(arm["name"], name)] = (100 * s["mean"], 100 * s["std"] if s["std"] is not None else None)
    (out / PLOTS["accuracy"]).write_text(bar_chart([a["name"] for a in arms], series, values,
                                                   f"{plan.title}: top-1 % per arm (mean ± std over seeds)",
                                                   "top-1 %"))
    curves = {a["name"]: [tuple(p) for p in a["pretrain_loss"]] for a in arms if a["pretrain_loss"]}
    (out / PLOTS["loss"]).write_text(line_chart(curves, "pretraining loss (mean over seeds; each arm's own "
                                                "objective, so levels differ)", "step", "loss"))
    if results["step_sweep"]:
        lines: dict[str, list[tuple[float, float]]] = {}
        for row in results["step_sweep"]:
            for arm, entry in row["arms"].items():
                for key, per in entry["metrics"].items():
                    for e, summary in per.items():
                        if summary["mean"] is not None:
                            lines.setdefault(f"{arm} {key} {EVAL_NAMES[e]}", []).append(
                                (row["steps"], 100 * summary["mean"]))
        (out / PLOTS["steps"]).write_text(line_chart(lines, f"top-1 % against pretraining steps (mean over "
                                                     f"seeds {list(plan.step_seeds)})", "pretraining steps",
                                                     "top-1 %"))
