"""``mv2mae experiment --verify``: re-run one stage of a finished study from scratch and compare.

The stage (``runs/ARM/seedS/STAGE``) is re-run in a temporary folder with everything it depends on:
the dataset is rendered and preprocessed anew, and a probe's or a finetune's pretraining is re-run too
(a committed study keeps no checkpoints). Its numbers are compared
with the committed ones — the stage's ``done.json`` when the study folder holds it, else the per-seed
top-1 in ``results.json`` — and so are the data digests in ``dataset.json``. The machine's fingerprint
is compared with the one in the committed ``results.json``: those differences explain, they do not decide.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mv2mae.data.fingerprint import differences, numerics
from mv2mae.experiment.plan import Arm, Plan
from mv2mae.experiment.report import plan_summary
from mv2mae.experiment.runner import (
    DATASET_RECORD,
    RESULTS,
    Study,
    StudyError,
    first_difference,
    read_done,
    run_folder,
    stage_names,
)
from mv2mae.train.distributed import DistEnv


@dataclass
class Verification:
    stage: str
    rows: list[tuple[str, Any, Any, str]]  # what, committed, re-run, difference ("identical" when equal)
    machine: list[tuple[str, Any, Any]]  # fingerprint path, committed, this machine
    tolerance: float
    failed: list[str] = field(default_factory=list)  # the rows that decide the exit status and differ
    columns: tuple[str, str] = ("committed", "re-run")
    machines: str = "committed results.json against this machine"

    @property
    def ok(self) -> bool:
        return not self.failed


def parse_stage(plan: Plan, stage: str | None) -> tuple[Arm, int, str]:
    """``runs/ARM/seedS/STAGE`` (``runs/`` optional) -> (arm, seed, stage); None -> the first probe stage
    of the untrained encoder's arm (cheap: no pretraining), else of the reference arm."""
    if stage is None:
        arm = next((a for a in plan.arms if not a.pretrain and a.probes), plan.arm(plan.reference))
        return arm, arm.seeds[0], stage_names(plan, arm)[0 if not arm.pretrain else 1]
    parts = stage.strip("/").split("/")
    parts = parts[1:] if parts[0] == "runs" else parts
    arms = {a.name: a for a in plan.arms}
    if len(parts) != 3 or parts[0] not in arms or not parts[1].startswith("seed") or not parts[1][4:].isdigit():
        raise StudyError(f"--stage {stage}: expected runs/ARM/seedS/STAGE with ARM one of {', '.join(arms)}")
    arm, seed = arms[parts[0]], int(parts[1][4:])
    if seed not in arm.seeds or parts[2] not in stage_names(plan, arm):
        raise StudyError(f"--stage {stage}: arm {arm.name} runs seeds {list(arm.seeds)} and stages "
                         f"{', '.join(stage_names(plan, arm))}")
    return arm, seed, parts[2]


def narrowed(plan: Plan, arm: Arm, seed: int, stage: str, folder: Path) -> tuple[Plan, Arm]:
    """The plan cut to what ``stage`` needs, its dataset moved into ``folder``."""
    key = stage.split("-", 1)[1] if "-" in stage else next(iter(plan.protocols))
    evals = arm.probes if stage.startswith("probe-") else ("finetune",) if "-" in stage else ()
    one = replace(arm, seeds=(seed,), evals=evals)
    dataset = {**plan.dataset, "dir": str(folder / "data"), "raw": str(folder / "raw")}
    return replace(plan, dataset=dataset, arms=(one,), protocols={key: plan.protocols[key]}), one


def numbers(result: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a stage's result, by dotted path (``linear.top1``)."""
    found: dict[str, float] = {}
    for key, value in result.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            found.update(numbers(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found[name] = float(value)
    return found


def check_same_plan(plan: Plan, out: Path) -> None:
    """The plan given is the one the study in ``out`` ran (its results.json's ``plan``)."""
    path = out / RESULTS
    if not path.is_file():
        raise StudyError(f"{out}: no {RESULTS}; --verify compares with a study's committed results")
    ran = json.loads(path.read_text())["plan"]
    mine = json.loads(json.dumps(plan_summary(plan)))
    if ran != mine:
        raise StudyError(f"{path} was made by another plan ({first_difference(ran, mine)}); give the study's --plan "
                         f"and --scale")


def committed_numbers(out: Path, arm: Arm, seed: int, stage: str) -> tuple[dict[str, float], str]:
    """The committed numbers of one stage and where they were read from."""
    done = read_done(run_folder(out, arm, seed) / stage)
    if done is not None:
        return numbers(done["result"]), str(run_folder(out, arm, seed) / stage / "done.json")
    path = out / RESULTS
    if not path.is_file() or "-" not in stage:
        raise StudyError(f"{out}: neither runs/{arm.name}/seed{seed}/{stage}/done.json nor {RESULTS} "
                         f"holds the numbers of that stage")
    kind, key = stage.split("-", 1)
    metrics = next((a["metrics"] for a in json.loads(path.read_text())["arms"] if a["name"] == arm.name), {})
    found = {f"{m}.top1": s["values"][str(seed)] for m, s in metrics.get(key, {}).items()
             if str(seed) in s["values"] and (m == "finetune") == (kind == "eval")}
    if not found:
        raise StudyError(f"{path}: no {stage} numbers of arm {arm.name} seed {seed}")
    return found, str(path)


def compare(name: str, old: Any, new: Any, tolerance: float | None) -> tuple[tuple[str, Any, Any, str], bool]:
    """One table row and whether it is within tolerance (None: must be equal)."""
    if old == new:
        return (name, old, new, "identical"), True
    if old is None or new is None:
        return (name, old, new, "one side not recorded"), False
    if tolerance is None:
        return (name, old, new, "differs"), False
    diff = new - old
    return (name, old, new, f"{diff:+.6g}"), math.isfinite(diff) and abs(diff) <= tolerance


def _digest(data: dict[str, Any], what: str) -> str | None:
    """The sha256 of ``what`` (shards, raw) in a data fingerprint; None when it was not recorded."""
    return data.get(what, {}).get("sha256")


def comparison(data_a: dict[str, Any], data_b: dict[str, Any], a: dict[str, float], b: dict[str, float],
               keys: list[str], tolerance: float) -> tuple[list[tuple[str, Any, Any, str]], list[str]]:
    """Table rows (data digests, then the numbers ``keys``) and the names of those that differ: a digest
    one side never recorded decides nothing, a number the other side lacks differs."""
    rows, failed = [], []
    for what in ("shards", "raw"):
        row, same = compare(f"data: {what} sha256", _digest(data_a, what), _digest(data_b, what), None)
        rows.append(row)
        failed += [] if same or None in row[1:3] else [row[0]]
    for key in keys:
        row, same = compare(key, a[key], b.get(key), tolerance)
        rows.append(row)
        failed += [] if same else [key]
    return rows, failed


def verify(plan: Plan, out: Path, env: DistEnv, stage: str | None, tolerance: float = 0.0,
           log: Callable[[str], None] = print) -> Verification:
    """Re-run ``stage`` of the study in ``out`` from scratch and compare it with what ``out`` holds."""
    check_same_plan(plan, out)
    arm, seed, name = parse_stage(plan, stage)
    label = f"runs/{arm.name}/seed{seed}/{name}"
    old, source = committed_numbers(out, arm, seed, name)
    machine_now = numerics()  # before a stage sets its thread count, as the study's record was taken
    committed_data = json.loads((out / DATASET_RECORD).read_text()) if (out / DATASET_RECORD).is_file() else {}
    with tempfile.TemporaryDirectory(prefix="mv2mae-verify-") as tmp:
        small, one = narrowed(plan, arm, seed, name, Path(tmp))
        needs = ["dataset (rendered and preprocessed)"] + [s for s in stage_names(small, one) if s != name]
        log(f"re-running {label} in {tmp}, with what it needs re-run too: {', '.join(needs)}")
        study = Study(small, Path(tmp) / "out", env, log)
        study.prepare()
        study.run(one, seed)
        done = read_done(run_folder(study.out, one, seed) / name)
        if done is None:
            raise StudyError(f"{label}: the re-run finished without the stage (a plan other than the study's?)")
        new = numbers(done["result"])
        rerun_data = json.loads((study.out / DATASET_RECORD).read_text())
    rows, failed = comparison(committed_data.get("fingerprint", {}), rerun_data["fingerprint"], old, new, sorted(old),
                              tolerance)
    log(f"committed numbers from {source}")
    committed_fp = json.loads((out / RESULTS).read_text()).get("fingerprint")
    machine = (differences(committed_fp["numerics"], machine_now) if committed_fp
               else [("fingerprint", "not recorded in the committed results.json", "-")])
    return Verification(label, rows, machine, tolerance, failed)


def study_results(path: Path) -> dict[str, Any]:
    """A finished study's results.json (``path`` is it or the study folder holding it)."""
    path = path / RESULTS if path.is_dir() else path
    if not path.is_file():
        raise StudyError(f"{path}: no such file; --compare takes a study folder or its {RESULTS}")
    return json.loads(path.read_text())


def seed_numbers(results: dict[str, Any]) -> dict[str, float]:
    """Every per-seed top-1 of a study, by ``ARM/seedS/PROTOCOL/EVALUATION``."""
    return {f"{arm['name']}/seed{seed}/{key}/{method}": value for arm in results["arms"]
            for key, per in arm["metrics"].items() for method, summary in per.items()
            for seed, value in summary["values"].items()}


def compare_studies(mine: Path, other: Path, tolerance: float = 0.0) -> Verification:
    """Two finished studies side by side: data digests, the per-seed numbers both have, fingerprints."""
    a, b = study_results(mine), study_results(other)
    fa, fb = a.get("fingerprint") or {}, b.get("fingerprint") or {}
    na, nb = seed_numbers(a), seed_numbers(b)
    both = sorted(set(na) & set(nb))
    rows, failed = comparison(fa.get("data", {}), fb.get("data", {}), na, nb, both, tolerance)
    machine = (differences(fa["numerics"], fb["numerics"]) if "numerics" in fa and "numerics" in fb
               else [("fingerprint", "recorded" if fa else "not recorded", "recorded" if fb else "not recorded")])
    return Verification(f"{len(both)} numbers both hold", rows, machine, tolerance, failed,
                        columns=(str(mine), str(other)), machines=f"{mine} against {other}")


def _cell(value: Any) -> str:
    if value is None:
        return "not recorded"
    return f"{value:.6g}" if isinstance(value, float) else str(value)[:64]


def format_verification(v: Verification) -> list[str]:
    """The comparison table, the machine's differences and the verdict, as lines of text."""
    lines = [f"| {v.stage} | {v.columns[0]} | {v.columns[1]} | difference |", "|---|---:|---:|---:|"]
    lines += [f"| {what} | {_cell(a)} | {_cell(b)} | {d} |" for what, a, b, d in v.rows]
    lines += ["", f"Fingerprint: {v.machines}"]
    lines += [f"  {path}: {_cell(a)} -> {_cell(b)}" for path, a, b in v.machine] or ["  no differences"]
    tol = "bit-equal numbers" if v.tolerance == 0 else f"numbers within {v.tolerance:g}"
    verdict = ("reproduced" if v.ok else "NOT reproduced: " + ", ".join(v.failed) + " differ")
    lines += ["", f"{verdict} (asked for identical data digests and {tol})"]
    return lines
