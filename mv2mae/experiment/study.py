"""``run_plan``: the whole study — dataset, every (arm, seed) in turn, the report refreshed after each, so
an interrupted study leaves a partial RESULTS.md and a re-run continues where it stopped."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from mv2mae.data.fingerprint import numerics
from mv2mae.experiment.plan import Plan
from mv2mae.experiment.report import environment, write_report
from mv2mae.experiment.runner import DATASET_RECORD, Study, schedule
from mv2mae.train.distributed import DistEnv


def run_plan(plan: Plan, out: Path, env: DistEnv, command: str, log: Callable[[str], None] = print) -> Path:
    """Run every unfinished stage of ``plan`` into ``out``; returns the path of RESULTS.md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    study = Study(plan, out, env, log)
    study.prepare()
    dataset = json.loads((out / DATASET_RECORD).read_text())
    context = {"command": command, "environment": environment(env.device), "dataset": dataset,
               "fingerprint": {"data": dataset["fingerprint"], "numerics": numerics()}}
    for arm, seed in schedule(plan):
        study.run(arm, seed)
        write_report(out, plan, context)
    return write_report(out, plan, context)
