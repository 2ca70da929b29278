"""What a study found, from its finished stages: top-1 per arm, seed, protocol and evaluation,
summarised as mean ± std over seeds and as paired differences to the reference arm.

Accuracies are per test video (its clips × crops softmax-averaged) on the protocol's test split, in
[0, 1]. Standard deviations are over seeds (sample std, n − 1); a paired difference is taken seed by
seed over the seeds both arms ran, then summarised the same way, so that what every arm shares with
the reference on one seed (data order, masks, initial weights) cancels out. Its 95 % interval is the
paired t interval (mean ± t(0.975, n − 1) · std / √n); a difference whose interval holds 0 is not
resolved by the seeds run.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from mv2mae.experiment.plan import Arm, Plan
from mv2mae.experiment.runner import RESULTS, read_done, run_folder, stage_names
from mv2mae.train.logs import read_log


def summarize(values: dict[int, float]) -> dict[str, Any]:
    """``{seed: value}`` -> mean, std (None below two seeds), n and the values themselves."""
    xs = [values[s] for s in sorted(values)]
    return {"mean": statistics.fmean(xs) if xs else None, "std": statistics.stdev(xs) if len(xs) > 1 else None,
            "n": len(xs), "values": {str(s): values[s] for s in sorted(values)}}


# two-sided 95 % quantiles of Student's t, t(0.975, df), for df = 1..30 (beyond: Fisher's expansion)
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788,
         2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639,
         2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)


def t975(df: int) -> float:
    """t(0.975, df): the factor of a 95 % interval's half-width in standard errors."""
    if df < 1:
        raise ValueError(f"a t interval needs df >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def paired(values: dict[int, float], reference: dict[int, float]) -> dict[str, Any]:
    """Summary of ``values[s] - reference[s]`` over the seeds both have, with its standard error, the
    paired t 95 % interval and whether that interval excludes 0 (``resolved``; None below two seeds)."""
    out = summarize({s: values[s] - reference[s] for s in values if s in reference})
    out["se"] = out["ci95"] = out["resolved"] = None
    if out["std"] is not None:
        se = out["std"] / math.sqrt(out["n"])
        half = t975(out["n"] - 1) * se
        out.update(se=se, ci95=[out["mean"] - half, out["mean"] + half],
                   resolved=bool(out["mean"] - half > 0 or out["mean"] + half < 0))
    return out


def arm_scores(out: Path, plan: Plan, arm: Arm) -> dict[str, dict[str, dict[int, float]]]:
    """protocol key -> evaluation (linear, knn, finetune) -> {seed: top-1} over the finished stages."""
    scores: dict[str, dict[str, dict[int, float]]] = {key: {} for key in plan.protocols}
    for seed in arm.seeds:
        folder = run_folder(out, arm, seed)
        for key in plan.protocols:
            for stage in (f"probe-{key}", f"eval-{key}"):
                done = read_done(folder / stage)
                for method, acc in (done["result"] if done else {}).items():
                    scores[key].setdefault(method, {})[seed] = acc["top1"]
    return scores


def loss_curve(out: Path, arm: Arm) -> list[list[float]]:
    """[step, loss averaged over the seeds that logged it] of the arm's pretraining runs."""
    by_step: dict[int, list[float]] = {}
    for seed in arm.seeds:
        for record in read_log(run_folder(out, arm, seed) / "pretrain"):
            if math.isfinite(record.get("loss", math.nan)):
                by_step.setdefault(int(record["step"]), []).append(float(record["loss"]))
    return [[step, statistics.fmean(losses)] for step, losses in sorted(by_step.items())]


def progress(out: Path, plan: Plan) -> dict[str, Any]:
    """Stages finished against planned, and the wall and CPU seconds the finished ones took, per stage kind."""
    done = total = 0
    seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for arm in plan.arms:
        for seed in arm.seeds:
            for stage in stage_names(plan, arm):
                total += 1
                record = read_done(run_folder(out, arm, seed) / stage)
                if record is not None:
                    done += 1
                    kind = stage.split("-")[0]
                    seconds[kind] = seconds.get(kind, 0.0) + record["seconds"]
                    cpu[kind] = cpu.get(kind, 0.0) + record["cpu_seconds"]
    return {"stages_done": done, "stages_planned": total, "seconds": seconds, "cpu_seconds": cpu,
            "seconds_total": sum(seconds.values()), "cpu_seconds_total": sum(cpu.values())}


def collect(out: Path, plan: Plan) -> dict[str, Any]:
    """Every arm's summaries and paired differences, the primary reading's comparisons, the step sweep and
    the progress of the study."""
    scores = {arm.name: arm_scores(out, plan, arm) for arm in plan.arms}
    ref = scores[plan.reference]
    arms = []
    for arm in plan.arms:
        mine = scores[arm.name]
        arms.append({
            "name": arm.name, "title": arm.title, "group": arm.group, "pretrain": arm.pretrain,
            "set": list(arm.sets), "seeds": list(arm.seeds), "evals": list(arm.evals),
            "metrics": {k: {m: summarize(v) for m, v in per.items()} for k, per in mine.items()},
            "vs_reference": {} if arm.name == plan.reference else {
                k: {m: paired(v, ref[k][m]) for m, v in per.items() if m in ref[k]} for k, per in mine.items()},
            "pretrain_loss": loss_curve(out, arm) if arm.pretrain else [],
        })
    return {"arms": arms, "primary": primary(plan, scores), "step_sweep": _step_sweep(plan, scores),
            "progress": progress(out, plan), "test_splits": test_splits(out, plan)}


def primary(plan: Plan, scores: dict[str, Any]) -> dict[str, Any]:
    """The primary reading: each arm's summary, and the paired differences the study is about — the
    reference arm minus every other arm, and every other pretrained arm minus the arm without pretraining."""
    key, ev = plan.primary
    read = {a.name: scores[a.name][key].get(ev, {}) for a in plan.arms if a.group in ("arm", "sweep")}
    arms = [a for a in plan.arms if a.group in ("arm", "sweep") and ev in a.evals]
    pairs = [(plan.reference, a.name) for a in arms if a.name != plan.reference]
    scratch = next((a.name for a in arms if not a.pretrain and a.group == "arm"), None)
    if scratch is not None:
        pairs += [(a.name, scratch) for a in arms if a.pretrain and a.name != plan.reference and a.group == "arm"]
    return {"protocol": key, "eval": ev,
            "arms": [{"name": a.name, "title": a.title, **summarize(read[a.name])} for a in arms],
            "comparisons": [{"a": x, "b": y, **paired(read[x], read[y])} for x, y in pairs]}


def test_splits(out: Path, plan: Plan) -> dict[str, dict[str, Any]]:
    """Per protocol key, from the first finished test of it: test videos and chance top-1 (what one run's
    accuracy is read against: its binomial standard error is sqrt(p (1 - p) / videos))."""
    found: dict[str, dict[str, Any]] = {}
    for arm in plan.arms:
        for seed in arm.seeds:
            for key in plan.protocols:
                for stage in (f"eval-{key}", f"probe-{key}"):
                    path = run_folder(out, arm, seed) / stage / RESULTS
                    if key in found or read_done(path.parent) is None or not path.is_file():
                        continue
                    results = json.loads(path.read_text())
                    results = results if "videos" in results else next(iter(results.values()))
                    found[key] = {"videos": results["videos"]["count"], "chance": results["chance_top1"]}
    return found


def _step_sweep(plan: Plan, scores: dict[str, Any]) -> list[dict[str, Any]]:
    """Each step-sweep arm against its pretraining length (0: the arm without pretraining, i.e. the untrained
    encoder and the finetune from scratch), on the step seeds; per length also the paired difference of
    the first step-sweep arm minus each other one."""
    rows = []
    untrained = next((a.name for a in plan.arms if not a.pretrain and a.group == "arm"), None)
    for steps in plan.step_sweep:
        row: dict[str, Any] = {"steps": steps, "arms": {}, "differences": {}}
        per_arm = {}
        for base in plan.step_arms:
            name = untrained if steps == 0 else base if steps == plan.steps else f"{base}-steps{steps}"
            per = scores.get(name, {}) if name else {}
            per_arm[base] = {k: {m: {s: v for s, v in by_seed.items() if s in plan.step_seeds}
                                 for m, by_seed in methods.items() if m in plan.step_evals} for k, methods in per.items()}
            row["arms"][base] = {"arm": name, "metrics": {k: {m: summarize(v) for m, v in methods.items()}
                                                          for k, methods in per_arm[base].items()}}
        if steps:
            first = plan.step_arms[0]
            for other in plan.step_arms[1:]:
                row["differences"][f"{first} - {other}"] = {
                    k: {m: paired(v, per_arm[other].get(k, {}).get(m, {})) for m, v in methods.items()}
                    for k, methods in per_arm[first].items()}
        rows.append(row)
    return rows
