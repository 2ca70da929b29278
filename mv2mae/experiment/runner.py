"""Running a plan: the dataset once, then every (arm, seed) through its stages, each in its own folder.

Layout of ``--out``::

    dataset.json                     the dataset spec the study was made on (a different one is an error)
    ledger.jsonl                     one line per stage executed (folder, seconds, resumed checkpoint)
    runs/ARM/seedS/pretrain/         a training run (checkpoints, log.jsonl, config.yaml) + done.json
    runs/ARM/seedS/probe-PROTOCOL/   results.json (linear and k-NN on one extraction) + done.json
    runs/ARM/seedS/finetune-PROTOCOL/, eval-PROTOCOL/

A stage is finished when its ``done.json`` exists: written last and atomically, it holds the stage's
spec (its resolved config and everything upstream of it) and its result. A re-run skips finished
stages, resumes an interrupted training run from its newest checkpoint (``--resume auto``) and redoes
an interrupted probe or test, which write nothing before they finish. A finished stage whose spec
differs from the plan's is an error, never silently reused.
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from mv2mae.config import RunConfig
from mv2mae.data.config import DataConfig
from mv2mae.data.fingerprint import data_fingerprint, fingerprint, shards_digest
from mv2mae.eval.evaluate import evaluate
from mv2mae.eval.probe import run_probe
from mv2mae.experiment.plan import Arm, Plan
from mv2mae.model.checkpoint import load_classifier, load_feature_model
from mv2mae.model.classifier import PooledEncoder
from mv2mae.model.encoder import Encoder
from mv2mae.preprocess.pipeline import run as preprocess
from mv2mae.preprocess.synth import generate
from mv2mae.preprocess.synth.generate import GROUND_TRUTH
from mv2mae.shards.atomic import write_atomic
from mv2mae.shards.protocols import select
from mv2mae.shards.schema import DatasetIndex, read_index
from mv2mae.train import checkpoint as ckpt_io
from mv2mae.train.distributed import DistEnv
from mv2mae.train.tasks import fit_stage, with_init

RUNS = "runs"
DONE = "done.json"
LEDGER = "ledger.jsonl"
DATASET_RECORD = "dataset.json"
RESULTS = "results.json"


class StudyError(ValueError):
    """The study cannot go on as planned (a leak, a folder made by another plan); the message says why."""


def run_folder(out: Path, arm: Arm, seed: int) -> Path:
    return out / RUNS / arm.name / f"seed{seed}"


def stage_names(plan: Plan, arm: Arm) -> list[str]:
    """The stage folders of one (arm, seed), in the order they run."""
    names = ["pretrain"] if arm.pretrain else []
    for key in plan.protocols:
        names += [f"probe-{key}"] if arm.probes else []
        names += [f"finetune-{key}", f"eval-{key}"] if "finetune" in arm.evals else []
    return names


def schedule(plan: Plan) -> list[tuple[Arm, int]]:
    """(arm, seed) in the order they run: every arm's first seed, then every arm's second, ..."""
    seeds = list(dict.fromkeys(s for arm in plan.arms for s in arm.seeds))
    return [(arm, seed) for seed in seeds for arm in plan.arms if seed in arm.seeds]


def read_done(folder: Path) -> dict[str, Any] | None:
    path = folder / DONE
    return json.loads(path.read_text()) if path.is_file() else None


def write_json_atomic(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=1) + "\n")


def check_no_leak(index: DatasetIndex, pretrain_protocol: str, protocols: dict[str, str]) -> None:
    """Pretraining may not see a test video (group × camera) of any evaluation protocol."""
    pre = select(index, pretrain_protocol, "train")
    seen = {(k, c) for k in pre.keys for c in pre.cameras}
    for name, protocol in protocols.items():
        test = select(index, protocol, "test")
        leaked = seen & {(k, c) for k in test.keys for c in test.cameras}
        if leaked:
            key, cam = sorted(leaked)[0]
            raise StudyError(f"pretraining on {pretrain_protocol} sees {len(leaked)} test video(s) of {name} "
                             f"({protocol}), e.g. {key} camera {cam}: choose a pretraining protocol inside "
                             f"every evaluation protocol's train side")


def prepare_dataset(plan: Plan, out: Path, log: Callable[[str], None]) -> Path:
    """The plan's dataset: rendered and preprocessed when absent (both resume), checked when present."""
    spec = plan.dataset
    data, raw = Path(spec["dir"]), Path(spec["raw"])
    record = out / DATASET_RECORD
    if record.is_file() and (data / "index.json").is_file():
        made = json.loads(record.read_text())
        if made["spec"] != spec:
            raise StudyError(f"{out} was made on another dataset ({record}: {made['spec']}); choose another --out")
        now = shards_digest(data)
        check_same_shards(made, now, data, record, log)
        check_expected_shards(spec, now, data)
        return data
    workers = int(spec.get("workers", 0))
    truth = raw / GROUND_TRUTH
    if truth.is_file():
        made = json.loads(truth.read_text())["arguments"]
        other = {k: made.get(k) for k, v in spec["synth"].items() if made.get(k) != v}
        if other:  # rendering over it would mix two datasets in one folder
            raise StudyError(f"{raw} holds a dataset rendered with other arguments ({other}); "
                             f"set dataset.raw and dataset.dir to new folders")
    elif (data / "index.json").is_file():
        log(f"using {data} as preprocessed ({raw} is gone, so its rendering arguments are not checked)")
    else:
        log(f"rendering the synthetic dataset into {raw}")
        generate(raw, workers=workers, progress=False,
                 **{k: tuple(v) if isinstance(v, list) else v for k, v in spec["synth"].items()})
    if truth.is_file():
        log(f"preprocessing {raw} into {data} (resumes; nothing to do when finished)")
        preprocess("synth", raw, data, workers=workers, progress=False, **spec.get("preprocess", {}))
    made = data_fingerprint(data, raw)
    check_expected_shards(spec, made["shards"], data)
    write_json_atomic(record, {"spec": spec, "groups": made["shards"]["groups"], "fingerprint": made})
    return data


def check_expected_shards(spec: dict[str, Any], now: dict[str, Any], data: Path) -> None:
    """The shards in ``data`` (``now``: their :func:`shards_digest`) are the ones the plan was run on
    (``dataset.shards_sha256``). Rendering and preprocessing are bit-stable for the pinned tool versions
    (tests/test_golden_digests.py), so another digest means the folder was made by other code or other
    tools: the first published cross-view study read a folder left by an earlier version (issue 24)."""
    want = spec.get("shards_sha256")
    if want is not None and now["sha256"] != want:
        raise StudyError(f"{data}: shards sha256 {now['sha256'][:12]}, the plan's dataset.shards_sha256 is {want[:12]}: the folder "
                         f"was made by another version of mv2mae or of its data libraries (constraints.txt); delete "
                         f"{data} (and its raw folder) to render it again, or set dataset.dir and dataset.raw elsewhere")


def check_same_shards(made: dict[str, Any], now: dict[str, Any], data: Path, record: Path,
                      log: Callable[[str], None]) -> None:
    """The shards in ``data`` (``now``: their :func:`shards_digest`) are the ones the study's dataset.json
    recorded (an older record without a fingerprint gets this folder's, and says so)."""
    then = made.get("fingerprint", {}).get("shards")
    if then is None:
        log(f"{record} records no shard digest (made before fingerprints): recording {data}'s, {now['sha256'][:12]}")
        write_json_atomic(record, {**made, "fingerprint": {"shards": now}})
    elif then["sha256"] != now["sha256"]:
        raise StudyError(f"the data changed: the shards in {data} (sha256 {now['sha256'][:12]}, {now['groups']} groups) "
                         f"are not the ones this study used ({record}: {then['sha256'][:12]}, {then['groups']} groups); "
                         f"re-render into new dataset.dir and dataset.raw folders with a new --out, or restore the data")


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the loaders' workers): on a shared machine
    a steadier measure of a stage's cost than its wall time."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def config_spec(cfg: RunConfig) -> dict[str, Any]:
    """What defines a training run: its resolved config without the paths (dataset, init checkpoint),
    through JSON so that it compares equal to what ``done.json`` gives back."""
    d = cfg.to_dict()
    d["finetune"].pop("init")
    d["data"] = _data_spec(cfg.data)
    return json.loads(json.dumps(d))


def _data_spec(data: DataConfig) -> dict[str, Any]:
    """``data`` without its path; ``train_subjects`` and ``test_subjects`` only when they cut (so studies made
    before the options existed still match their own plan)."""
    d = json.loads(json.dumps(asdict(data)))
    d.pop("root")
    for key in ("train_subjects", "test_subjects"):
        if not d[key]:
            d.pop(key)
    return d


class Study:
    """Runs ``plan`` into ``out`` on this process's device (one process: the stages are small)."""

    def __init__(self, plan: Plan, out: Path, env: DistEnv, log: Callable[[str], None] = print) -> None:
        if env.world_size > 1:
            raise StudyError("mv2mae experiment runs in one process (its runs are small); launch it without torchrun")
        self.plan, self.out, self.env, self.log = plan, Path(out), env, log
        self.root = ""

    def prepare(self) -> Path:
        data = prepare_dataset(self.plan, self.out, self.log)
        check_no_leak(read_index(data), self.plan.pretrain_protocol, self.plan.protocols)
        self.root = str(data)
        return data

    def run(self, arm: Arm, seed: int) -> None:
        """Every stage of one (arm, seed) that is not finished yet."""
        plan, folder = self.plan, run_folder(self.out, arm, seed)
        cfg = plan.pretrain_config(arm, seed, self.root)
        if cfg.loop.threads and self.env.device.type == "cpu":  # probes and tests too, as the trainer does
            torch.set_num_threads(cfg.loop.threads)
        if arm.pretrain:
            upstream: dict[str, Any] = {"stage": "pretrain", "config": config_spec(cfg)}
            self._stage(folder / "pretrain", upstream, lambda: self._fit(cfg, folder / "pretrain"))
        else:
            upstream = {"stage": "init", "seed": seed, "model": cfg.model.to_dict()}
        init = (lambda: _checkpoint(folder / "pretrain")) if arm.pretrain else (lambda: None)
        for key, protocol in plan.protocols.items():
            ft_cfg = plan.finetune_config(protocol, seed, self.root)
            if arm.probes:
                # the probes are fitted and tested on the finetune's subsets (data.train_subjects, test_subjects)
                data = replace(cfg.data, protocol=protocol, train_subjects=ft_cfg.data.train_subjects,
                               test_subjects=ft_cfg.data.test_subjects)
                spec = {"stage": "probe", "protocol": protocol, "methods": list(arm.probes),
                        "data": _data_spec(data), "upstream": upstream}
                self._stage(folder / f"probe-{key}", spec, lambda d=data, k=key: self._probe(
                    cfg, init(), seed, d, arm.probes, folder / f"probe-{k}"))
            if "finetune" in arm.evals:
                # the finetune's weight-tied model fields come from the pretraining, already upstream
                ft_spec = {"stage": "finetune", "config": config_spec(ft_cfg), "upstream": upstream}
                ft_dir = folder / f"finetune-{key}"
                self._stage(ft_dir, ft_spec, lambda c=ft_cfg, d=ft_dir: self._fit(with_init(c, init())[0], d))
                self._stage(folder / f"eval-{key}", {"stage": "eval", "upstream": ft_spec},
                            lambda c=ft_cfg, d=ft_dir, k=key: self._evaluate(c, d, folder / f"eval-{k}"))

    # ------------------------------------------------------------------ stages
    def _stage(self, folder: Path, spec: dict[str, Any], work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        spec = json.loads(json.dumps(spec))
        done = read_done(folder)
        if done is not None:
            if done["spec"] != spec:
                raise StudyError(f"{folder} was made by another plan ({first_difference(done['spec'], spec)}); "
                                 f"delete it, or choose another --out")
            return done["result"]
        self.log(f"{folder.relative_to(self.out)}")
        t0, cpu0 = time.perf_counter(), cpu_seconds()
        result = work()
        times = {"seconds": round(time.perf_counter() - t0, 3), "cpu_seconds": round(cpu_seconds() - cpu0, 3)}
        write_json_atomic(folder / DONE, {"spec": spec, "result": result, **times})
        with open(self.out / LEDGER, "a") as f:
            f.write(json.dumps({"stage": str(folder.relative_to(self.out)), **times, "time": time.time(),
                                "resumed_from": result.get("resumed_from")}) + "\n")
        return result

    def _fit(self, cfg: RunConfig, folder: Path) -> dict[str, Any]:
        summary = fit_stage(cfg, folder, self.env, resume="auto")
        return {k: summary[k] for k in ("steps", "final_loss", "skipped", "resumed_from")}

    def _probe(self, cfg: RunConfig, ckpt: Path | None, seed: int, data: DataConfig, methods: tuple[str, ...],
               folder: Path) -> dict[str, Any]:
        if ckpt is None:  # no pretraining: the encoder as finetuning from scratch starts it
            torch.manual_seed(seed)
            model = PooledEncoder(Encoder(cfg.model), cfg.model).to(self.env.device).eval()
        else:
            model = load_feature_model(ckpt).to(self.env.device).eval()
        results = run_probe(model, data, self.env, methods, len(read_index(data.root).classes))
        write_json_atomic(folder / RESULTS, {**results, "fingerprint": fingerprint(data.root)})
        return {m: _accuracy(r) for m, r in results.items()}

    def _evaluate(self, cfg: RunConfig, ft_dir: Path, folder: Path) -> dict[str, Any]:
        model = load_classifier(_checkpoint(ft_dir)).to(self.env.device).eval()
        results, _ = evaluate(model, cfg.data, self.env, read_index(cfg.data.root).classes)
        write_json_atomic(folder / RESULTS, {**results, "fingerprint": fingerprint(cfg.data.root)})
        return {"finetune": _accuracy(results)}


def _checkpoint(run_dir: Path) -> Path:
    path = ckpt_io.latest(run_dir)
    if path is None:
        raise StudyError(f"{run_dir} is marked finished but holds no checkpoint; delete the folder to redo it")
    return path


def _accuracy(results: dict[str, Any]) -> dict[str, float]:
    return {"top1": results["videos"]["top1"], "top5": results["videos"]["top5"], "fused_top1": results["fused"]["top1"]}


def first_difference(old: Any, new: Any, where: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            if old.get(key) != new.get(key):
                return first_difference(old.get(key), new.get(key), f"{where}.{key}" if where else str(key))
    return f"{where or 'spec'}: {old!r} then, {new!r} now"
