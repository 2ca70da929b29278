"""A study plan (YAML): one dataset, its protocols, one budget, seeds and arms -> the runs to make.

A plan names the dataset (rendered and preprocessed by the study when absent), the protocol the
encoders are pretrained on and the protocols they are evaluated on, the budget every run shares
(``--set`` overrides of a config preset, per stage), the seeds, and the arms: each arm is a list of
``--set`` overrides of pretraining (``pretrain: false`` = no pretraining). ``sweeps`` are arms around
the ``reference`` arm (its overrides, then theirs) with their own seeds; an arm may name its own ``seeds``.
``step_sweep`` repeats the reference arm (or the pretrained arms it lists under ``arms``) at other
pretraining lengths. ``primary`` names the reading the study is about (a protocol key and an evaluation):
the report leads with it, paired differences with 95 % intervals. ``scales`` are named partial plans merged over the rest
(``--scale``): mappings merge key by key, the budget's override lists are appended (a later ``--set``
wins), anything else is replaced. Shipped plans live in ``mv2mae/experiment/plans/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mv2mae.config import ConfigError, RunConfig, deep_merge, load_config, read_yaml
from mv2mae.shards.protocols import ProtocolError, get_protocol

PLAN_DIR = Path(__file__).parent / "plans"
EVALS = ("linear", "knn", "finetune")  # linear probe, k-NN, finetune + test
PROBES = ("linear", "knn")
BUDGET_STAGES = ("shared", "pretrain", "finetune")  # shared: both stages (model size, frames, crop, ...)
GROUPS = ("arm", "sweep", "steps")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_REQUIRED = ("name", "config", "dataset", "pretrain_protocol", "protocols", "seeds", "arms")
_TOP_KEYS = {"name", "title", "config", "dataset", "pretrain_protocol", "protocols", "budget", "seeds", "evals",
             "reference", "arms", "sweeps", "step_sweep", "paper", "scales", "notes", "primary"}


class PlanError(ValueError):
    """A plan that does not describe a study; the message names the plan file and the entry."""


@dataclass(frozen=True)
class Arm:
    """One row of the study: pretraining overrides (after the budget's), seeds and evaluations."""

    name: str  # folder name under RUNS/
    title: str  # what the report calls it
    group: str  # arm | sweep | steps
    sets: tuple[str, ...]
    seeds: tuple[int, ...]
    evals: tuple[str, ...]
    pretrain: bool = True

    @property
    def probes(self) -> tuple[str, ...]:
        return tuple(e for e in self.evals if e in PROBES)


@dataclass(frozen=True)
class Plan:
    name: str
    title: str
    source: str  # the file it was read from
    scale: str
    config: str  # preset every run starts from
    dataset: dict[str, Any]  # dir, raw, workers, synth: generate() arguments, preprocess: run() options
    pretrain_protocol: str
    protocols: dict[str, str]  # report name -> protocol
    budget: dict[str, tuple[str, ...]]  # BUDGET_STAGES -> --set overrides
    reference: str  # the arm others are compared with (paired differences)
    arms: tuple[Arm, ...]
    steps: int  # the budget's pretraining length
    step_sweep: tuple[int, ...]  # pretraining lengths of the step-sweep arms (0 = no pretraining)
    step_seeds: tuple[int, ...]
    step_arms: tuple[str, ...]  # the arms repeated at those lengths (the reference arm by default)
    step_evals: tuple[str, ...]  # what each length is read by
    primary: tuple[str, str]  # (protocol key, evaluation): the reading the study is about
    paper: tuple[dict[str, Any], ...]  # the paper's own numbers, shown for context
    notes: str

    def stage_sets(self, stage: str) -> list[str]:
        """The budget's overrides of ``stage`` (shared first)."""
        return [*self.budget["shared"], *self.budget[stage]]

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)

    def pretrain_config(self, arm: Arm, seed: int, root: str = "") -> RunConfig:
        return load_config(self.config, "pretrain", [*self.stage_sets("pretrain"), *arm.sets, f"seed={seed}",
                                                     f"data.protocol={self.pretrain_protocol}", f"data.root={root}"])

    def finetune_config(self, protocol: str, seed: int, root: str = "") -> RunConfig:
        return load_config(self.config, "finetune", [*self.stage_sets("finetune"), f"seed={seed}",
                                                     f"data.protocol={protocol}", f"data.root={root}"])


def load_plan(spec: str, scale: str = "default") -> Plan:
    """Read a plan (a shipped name or a YAML file), merge ``scale`` over it and check every arm's configs."""
    try:
        path, raw = read_yaml(spec, PLAN_DIR, "plan", "shipped plan")
    except ConfigError as e:
        raise PlanError(str(e)) from e
    scales = raw.pop("scales", None) or {}
    if scale not in scales and scale != "default":
        raise PlanError(f"{path}: no scale {scale!r} (scales: {', '.join(sorted(scales)) or 'none'})")
    raw = merge_scale(raw, scales.get(scale) or {})
    try:
        plan = _build(raw, str(path), scale)
        _check_configs(plan)
    except (ConfigError, ProtocolError, KeyError, TypeError, ValueError) as e:
        if isinstance(e, PlanError):
            raise
        raise PlanError(f"{path}: {e.args[0] if isinstance(e, KeyError) else e}") from e
    return plan


def merge_scale(plan: dict[str, Any], scale: dict[str, Any]) -> dict[str, Any]:
    """``scale`` over ``plan``: mappings merge, ``budget`` override lists are appended, the rest replaced."""
    out = deep_merge(plan, {k: v for k, v in scale.items() if k != "budget"})
    budget = out.setdefault("budget", {})
    for stage, sets in (scale.get("budget") or {}).items():
        budget[stage] = [*(budget.get(stage) or []), *sets]
    return out


def _build(raw: dict[str, Any], source: str, scale: str) -> Plan:
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise PlanError(f"{source}: unknown plan key(s) {', '.join(unknown)}; valid: {', '.join(sorted(_TOP_KEYS))}")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise PlanError(f"{source}: the plan lacks {', '.join(missing)}")
    budget = raw.get("budget") or {}
    if set(budget) - set(BUDGET_STAGES):
        raise PlanError(f"{source}: budget sections are {BUDGET_STAGES}, got {sorted(budget)}")
    budget = {stage: tuple(str(s) for s in budget.get(stage) or ()) for stage in BUDGET_STAGES}
    protocols = dict(raw["protocols"])
    for name in [raw["pretrain_protocol"], *protocols.values()]:
        get_protocol(name)
    seeds, evals = _seeds(raw["seeds"], "seeds"), _evals(raw.get("evals", EVALS), "evals")
    arms = [_arm(a, "arm", (), seeds, evals) for a in raw["arms"]]
    reference = raw.get("reference", arms[-1].name)
    ref = next((a for a in arms if a.name == reference), None)
    if ref is None or not ref.pretrain:
        raise PlanError(f"{source}: reference {reference!r} must name a pretrained arm")
    sweeps = raw.get("sweeps") or {}
    if sweeps:
        s_seeds, s_evals = _seeds(sweeps["seeds"], "sweeps.seeds"), _evals(sweeps.get("evals", evals), "sweeps.evals")
        arms += [_arm(a, "sweep", ref.sets, s_seeds, s_evals) for a in sweeps["arms"]]
    steps = load_config(raw["config"], "pretrain", [*budget["shared"], *budget["pretrain"]]).schedule.steps
    lengths: tuple[int, ...] = ()
    t_seeds: tuple[int, ...] = ()
    t_arms: tuple[str, ...] = ()
    t_evals: tuple[str, ...] = ()
    sweep = raw.get("step_sweep") or {}
    if sweep:
        lengths = tuple(sorted({int(n) for n in sweep["steps"]} | {0, steps}))
        t_seeds = _seeds(sweep["seeds"], "step_sweep.seeds")
        t_evals = _evals(sweep.get("evals", PROBES), "step_sweep.evals")
        t_arms = tuple(str(a) for a in sweep.get("arms") or [ref.name])
        for name in t_arms:
            base = next((a for a in arms if a.name == name and a.group == "arm"), None)
            if base is None or not base.pretrain:
                raise PlanError(f"{source}: step_sweep arm {name!r} must name a pretrained arm of 'arms'")
            # the budget's own length is the arm itself, 0 the arms without pretraining
            arms += [Arm(f"{name}-steps{n}", f"{base.title}, {n} pretraining steps", "steps",
                         (*base.sets, f"steps={n}"), t_seeds, t_evals) for n in lengths if n not in (0, steps)]
    primary = raw.get("primary") or {"protocol": next(iter(protocols)), "eval": "finetune"}
    if set(primary) != {"protocol", "eval"} or primary["protocol"] not in protocols or primary["eval"] not in EVALS:
        raise PlanError(f"{source}: primary must be {{protocol: one of {sorted(protocols)}, eval: one of "
                        f"{list(EVALS)}}}, got {primary!r}")
    for row in raw.get("paper") or ():
        if not isinstance(row, dict):
            raise PlanError(f"{source}: paper row {row!r} is not a mapping")
        blank = [str(k) for k, v in row.items() if v is None]
        if blank:
            raise PlanError(f"{source}: paper row {row!r} has no value for {', '.join(blank)} (a comma inside an "
                            f"unquoted value of a {{...}} row splits it: quote the value)")
    names = [a.name for a in arms]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PlanError(f"{source}: arm names must be unique; repeated: {', '.join(dupes)}")
    return Plan(name=str(raw["name"]), title=str(raw.get("title", raw["name"])), source=source, scale=scale,
                config=str(raw["config"]), dataset=dict(raw["dataset"]),
                pretrain_protocol=str(raw["pretrain_protocol"]), protocols=protocols, budget=budget,
                reference=ref.name, arms=tuple(arms), steps=steps, step_sweep=lengths, step_seeds=t_seeds,
                step_arms=t_arms, step_evals=t_evals, primary=(str(primary["protocol"]), str(primary["eval"])), paper=tuple(raw.get("paper") or ()), notes=str(raw.get("notes", "")).strip())


def _arm(raw: dict[str, Any], group: str, base_sets: tuple[str, ...], seeds: tuple[int, ...],
         evals: tuple[str, ...]) -> Arm:
    name = str(raw["name"])
    if not _NAME.match(name):
        raise PlanError(f"arm name {name!r} must be letters, digits, '_', '.' or '-' (it names a folder)")
    unknown = sorted(set(raw) - {"name", "title", "set", "pretrain", "evals", "seeds"})
    if unknown:
        raise PlanError(f"arm {name}: unknown key(s) {', '.join(unknown)} (name, title, set, pretrain, evals, seeds)")
    pretrain = bool(raw.get("pretrain", True))
    sets = tuple(str(s) for s in raw.get("set") or ())
    if sets and not pretrain:
        raise PlanError(f"arm {name}: 'set' overrides pretraining, which pretrain: false leaves out")
    arm_evals = _evals(raw.get("evals", evals), f"arm {name} evals")
    arm_seeds = _seeds(raw["seeds"], f"arm {name} seeds") if "seeds" in raw else seeds
    return Arm(name, str(raw.get("title", name)), group, (*base_sets, *sets) if pretrain else (), arm_seeds,
               arm_evals, pretrain)


def _seeds(raw: Any, where: str) -> tuple[int, ...]:
    seeds = tuple(int(s) for s in raw)
    if not seeds or len(set(seeds)) != len(seeds):
        raise PlanError(f"{where}: a non-empty list of distinct seeds, got {raw!r}")
    return seeds


def _evals(raw: Any, where: str) -> tuple[str, ...]:
    evals = tuple(str(e) for e in raw)
    bad = [e for e in evals if e not in EVALS]
    if bad or not evals:
        raise PlanError(f"{where}: choose from {EVALS}, got {list(raw)!r}")
    return evals


def _check_configs(plan: Plan) -> None:
    """Every run's configs resolve (a typo in an arm fails now, not an hour into the study)."""
    for arm in plan.arms:
        try:
            if arm.pretrain:
                plan.pretrain_config(arm, arm.seeds[0])
        except ConfigError as e:
            raise PlanError(f"{plan.source}: arm {arm.name}: {e}") from e
    for protocol in plan.protocols.values():
        plan.finetune_config(protocol, 0)
