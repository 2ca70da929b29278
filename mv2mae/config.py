"""Typed run configuration: one dataclass per section, YAML presets, ``--set key=value`` overrides.

A preset (``mv2mae/configs/<name>.yaml`` or any YAML file) holds the sections shared by both stages
plus a ``stages:`` block with what differs between pretraining and finetuning::

    base: ntu60_xsub            # optional: start from another preset
    model: {preset: vit_small}  # a ModelConfig preset plus field overrides
    data: {protocol: ntu60_xview}
    stages:
      pretrain: {optim: {base_lr: 1.5e-4}, schedule: {epochs: 1600}}
      finetune: {optim: {base_lr: 5.0e-4, layer_decay: 0.75}, finetune: {mixup: 0.8}}

Resolving a preset for one stage merges ``base`` → shared sections → ``stages.<stage>`` →
command-line overrides, then builds the dataclasses with a type check on every value. An unknown key
or a wrong type is a :class:`ConfigError` that names the key and lists what is valid.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mv2mae.data.config import CACHED_MOTION, OLD_MOTION_SPELLINGS, DataConfig
from mv2mae.model.config import ModelConfig

STAGES = ("pretrain", "finetune")
PRESET_DIR = Path(__file__).parent / "configs"
# Short names accepted by ``--set`` for the keys people change most.
ALIASES = {"steps": "schedule.steps", "batch_size": "optim.batch_size", "seed": "loop.seed"}
# Keys of earlier versions that no longer do anything, with the reason. Saved run configs (read on resume,
# by eval and by report) may hold them, so they are dropped with a warning rather than refused.
RETIRED_KEYS = {"data.normalize_on": "loaders hand out uint8 video and the model normalises it"}
# Values renamed for what they do: key -> {old spelling: new}. A config holding an old spelling reads as the
# new value with a FutureWarning, and the run saves the new one (its config.yaml, its checkpoints).
RENAMED_VALUES = {"data.motion": OLD_MOTION_SPELLINGS}


class ConfigError(ValueError):
    """A preset, override or saved config that does not describe a valid run."""

    exit_code = 2  # a usage error (the command line's exit status)


@dataclass
class OptimConfig:
    """AdamW; learning rates are per 256 samples and scaled by the global batch."""

    batch_size: int = 8  # per rank and micro-step
    accum_steps: int = 1  # micro-steps per optimizer step
    base_lr: float = 1.5e-4
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    clip_grad: float = 0.0  # max global grad norm; 0 = no clipping (the norm is still logged)
    layer_decay: float = 1.0  # finetuning: lr scale per layer from the head down (1 = off)

    def __post_init__(self) -> None:
        if min(self.batch_size, self.accum_steps) < 1:
            raise ConfigError(f"optim.batch_size and optim.accum_steps must be >= 1, got {self.batch_size} and "
                              f"{self.accum_steps}")
        rates = dict(base_lr=self.base_lr, min_lr=self.min_lr, warmup_lr=self.warmup_lr,
                     weight_decay=self.weight_decay, clip_grad=self.clip_grad)
        bad = [f"optim.{k}={v}" for k, v in rates.items() if not (math.isfinite(v) and v >= 0)]
        if bad or not 0 < self.layer_decay <= 1 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"{', '.join(bad) or 'optim'}: learning rates, weight_decay and clip_grad must be "
                              f"finite and >= 0, betas in [0, 1), layer_decay in (0, 1] (got layer_decay "
                              f"{self.layer_decay}, betas {list(self.betas)})")


@dataclass
class ScheduleConfig:
    """Step-based warmup + cosine. ``epochs`` > 0 derives the step counts from the dataset size."""

    steps: int = 100
    warmup_steps: int = 10
    epochs: float = 0.0
    warmup_epochs: float = 0.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.warmup_steps < 0:
            raise ConfigError(f"schedule.steps must be >= 1 and warmup_steps >= 0, got {self.steps} and "
                              f"{self.warmup_steps}: a run of no steps trains nothing")
        if not (math.isfinite(self.epochs) and self.epochs >= 0 and math.isfinite(self.warmup_epochs)
                and self.warmup_epochs >= 0):
            raise ConfigError(f"schedule.epochs and warmup_epochs must be finite and >= 0, got {self.epochs} and "
                              f"{self.warmup_epochs}")


@dataclass
class LoopConfig:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast; only ever used on CUDA
    compile: bool = False  # torch.compile the model
    threads: int = 0  # torch intra-op threads per rank on CPU (0 = torch default)
    log_every: int = 10
    ckpt_every: int = 100
    keep_last: int = 2
    recon_every: int = 0  # pretraining: reconstruction PNG every N steps (0 = only at the end)
    max_bad_steps: int = 20  # consecutive non-finite losses before the run stops
    # seconds a collective (gradient sync, barrier) waits for the other ranks before the run fails: a
    # rank that stopped, hangs or died ends the run instead of hanging it (torchrun then ends the rest)
    collective_timeout: float = 600.0
    # resuming the data stream: "skip" replays the consumed batches' sampling decisions, reading but not
    # decoding them (exact; BENCHMARKS.md has the cost); "reseed" starts a fresh stream seeded by the
    # position (instant, not the same samples)
    resume_data: str = "skip"

    def __post_init__(self) -> None:
        if self.resume_data not in ("skip", "reseed"):
            raise ConfigError(f"loop.resume_data={self.resume_data!r} must be 'skip' or 'reseed'")
        if min(self.log_every, self.ckpt_every, self.keep_last, self.max_bad_steps) < 1:
            raise ConfigError("loop.log_every, ckpt_every, keep_last and max_bad_steps must be >= 1")
        if not self.collective_timeout > 0:
            raise ConfigError(f"loop.collective_timeout must be > 0 seconds, got {self.collective_timeout}")


@dataclass
class FinetuneConfig:
    """Classifier head and the regularisation of the finetuning recipe."""

    init: str = ""  # pretrained checkpoint whose encoder initialises the classifier
    num_classes: int = 0  # 0 = the class count of the dataset index
    drop_path: float = 0.1
    head_dropout: float = 0.0
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.1
    # validation (data.val_by) every N optimizer steps and at the last one (0 = at every loop.ckpt_every);
    # each validation also writes a step checkpoint, and checkpoints/best-val-top1.pt is the best so far
    val_every: int = 0
    # > 0: also keep timm's exponential moving average of the weights (e.g. 0.999), validated on its own
    # and saved as checkpoints/best-val-top1-ema.pt
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.val_every < 0 or not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"finetune.val_every must be >= 0 and ema_decay in [0, 1), got {self.val_every} "
                              f"and {self.ema_decay}")


@dataclass
class RunConfig:
    stage: str = "pretrain"
    preset: str = ""  # what the config was resolved from (informational)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"stage={self.stage!r} must be one of {STAGES}")
        # the cross-view decoder is built only where the loss uses it (DDP needs every parameter in the loss)
        cross_view = self.data.num_sources > 0 and self.model.lambda_cross != 0
        if self.model.cross_view != cross_view:
            self.model = self.model.with_(cross_view=cross_view)

    @property
    def motion_tau(self) -> float:
        """The objective's τ in the units of ``data.motion``: ``model.tau_flow`` for flow (stored pixels per
        stored frame), ``model.tau`` otherwise (framediff's 0-255 grey levels)."""
        return self.model.tau_flow if self.data.motion in CACHED_MOTION else self.model.tau

    def global_batch(self, world_size: int) -> int:
        return self.optim.batch_size * self.optim.accum_steps * world_size

    def scaled_lr(self, world_size: int) -> tuple[float, float, float]:
        """(peak, min, warmup-start) learning rates: base × global batch / 256."""
        scale = self.global_batch(world_size) / 256
        return self.optim.base_lr * scale, self.optim.min_lr * scale, self.optim.warmup_lr * scale

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out["model"] = self.model.to_dict()
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        return _build(cls, copy.deepcopy(raw), "")


# ---------------------------------------------------------------------------- loading
def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(spec: str, stage: str, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Resolve a preset name or YAML path for ``stage`` and apply ``key=value`` overrides."""
    if stage not in STAGES:
        raise ConfigError(f"stage {stage!r} must be one of {STAGES}")
    raw = _read_preset(spec, seen=())
    stages = raw.pop("stages", None) or {}
    if not isinstance(stages, dict) or set(stages) - set(STAGES):
        raise ConfigError(f"{spec}: 'stages' must map a subset of {STAGES} to sections")
    if stages.get(stage) is None:
        defined = sorted(k for k, v in stages.items() if v is not None)
        raise ConfigError(f"{spec}: preset has no '{stage}' stage (it defines: {', '.join(defined) or 'none'})")
    merged = deep_merge(raw, stages[stage])
    merged["stage"] = stage
    merged["preset"] = str(spec)
    return resolve(merged, overrides)


def resolve(raw: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """A config dict (e.g. a checkpoint's ``run_config``) plus ``key=value`` overrides -> RunConfig."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        _apply_override(raw, item)
    return _build(RunConfig, raw, "")


def read_yaml(spec: str, folder: Path, kind: str, shipped: str) -> tuple[Path, dict[str, Any]]:
    """``spec`` as a YAML file, else as a name shipped in ``folder`` (``folder/<spec>.yaml``): its path
    and mapping. ``kind`` and ``shipped`` name the thing in errors ("config", "preset")."""
    path = Path(spec)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = folder / f"{spec}.yaml"
        if not path.is_file():
            names = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
            raise ConfigError(f"unknown {kind} {spec!r}: not a YAML file and not a {shipped} ({shipped}s: {names})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({e})") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a {kind} must be a mapping of sections")
    return path, raw


def _read_preset(spec: str, seen: tuple[str, ...]) -> dict[str, Any]:
    path, raw = read_yaml(spec, PRESET_DIR, "config", "preset")
    if str(path) in seen:
        raise ConfigError(f"{path}: 'base' chain loops ({' -> '.join(seen)})")
    base = raw.pop("base", None)
    if base is None:
        return raw
    return deep_merge(_read_preset(str(base), seen + (str(path),)), raw)


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over a copy of ``base``: mappings merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like key=value (e.g. steps=200, optim.base_lr=1e-3)")
    key = ALIASES.get(key, key)
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
        node = child
    node[leaf] = value


# ---------------------------------------------------------------------------- typed building
def valid_keys(cls: type = RunConfig, prefix: str = "") -> list[str]:
    """Every dotted key a config accepts (what an error message lists)."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            if tp is ModelConfig:
                keys.append(f"{prefix}{f.name}.preset")
            keys.extend(valid_keys(tp, f"{prefix}{f.name}."))
        else:
            keys.append(prefix + f.name)
    return keys


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a section (mapping), got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    raw = dict(raw)
    preset = raw.pop("preset", None) if cls is ModelConfig else None
    for name in [n for n in raw if f"{where}{n}" in RETIRED_KEYS]:
        del raw[name]
        warnings.warn(f"config key {where}{name} is retired and ignored: {RETIRED_KEYS[where + name]}",
                      FutureWarning, stacklevel=2)
    unknown = sorted(set(raw) - set(names))
    if unknown:
        bad = ", ".join(f"{where}{k}" for k in unknown)
        raise ConfigError(f"unknown config key(s) {bad}; valid keys: {', '.join(valid_keys(cls, where))}")
    values = {}
    for name, value in raw.items():
        tp = hints[name]
        key = f"{where}{name}"
        values[name] = (_build(tp, value, key + ".") if dataclasses.is_dataclass(tp)
                        else _coerce(_new_spelling(key, value), tp, key))
    try:
        if cls is ModelConfig:
            if preset is not None:
                return ModelConfig.preset(_coerce(preset, str, f"{where}preset"), **values)
            return ModelConfig(**values)
        return cls(**values)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{where.rstrip('.') or 'config'}: {e}") from e


def _new_spelling(key: str, value: Any) -> Any:
    """``value`` as it is spelled now (:data:`RENAMED_VALUES`), with a note when it was an old spelling."""
    renamed = RENAMED_VALUES.get(key, {})
    if isinstance(value, str) and value in renamed:
        warnings.warn(f"config {key}={value} is now spelled {key}={renamed[value]} (the same thing; the old "
                      f"spelling is read until the next release)", FutureWarning, stacklevel=2)
        return renamed[value]
    return value


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (converting int→float and lists→tuples)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} does not fit {tp}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        item_types = [args[0]] * len(value) if (origin is list or args[-1] is Ellipsis) else list(args)
        items = [_coerce(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, item_types, strict=True))]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) and "inf" as strings
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):  # YAML 1.1 reads on/off (and yes/no) as booleans: `data.flip=off`
            return "on" if value else "off"
    elif tp is Any:
        return value
    name = getattr(tp, "__name__", str(tp))
    raise ConfigError(f"{key}: expected {name}, got {value!r} ({type(value).__name__})")


def _plain(value: Any) -> Any:
    """Dataclasses → dicts, tuples → lists, inf kept as a float (YAML writes .inf)."""
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value
