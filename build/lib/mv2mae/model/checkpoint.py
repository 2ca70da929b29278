"""Checkpoints: atomic saves, strict loads with an explicit key map and a geometry check.

A checkpoint is a dict with at least ``model`` (a state dict) and ``config`` (``ModelConfig`` as a
dict); trainers add optimiser state etc. It is read with ``torch.load(weights_only=True)``: no
arbitrary pickle is ever executed. Position embeddings are fixed functions of the config and are not
stored, so a checkpoint adapts to other frame counts and sizes by construction (a VideoMAE 1D table
is resampled from the grid it was trained on).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mv2mae.model.config import ModelConfig

FORMAT = "mv2mae-checkpoint"
ENCODER_PREFIX = "encoder."
PRETRAIN_ONLY_PREFIXES = ("self_decoder.", "cross_decoder.")
CLASSIFIER_HEAD_PREFIXES = ("fc_norm.", "head.")
# fields an encoder's weights are tied to; frames and image_size may differ (positions adapt)
WEIGHT_GEOMETRY = ("tubelet", "patch", "channels", "embed_dim", "depth", "num_heads", "mlp_ratio",
                   "pos_embed")


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message names file and keys."""


def save_model_state(path: str | Path, model: nn.Module, cfg: ModelConfig, **extra: Any) -> Path:
    """Write ``{format, model, config, **extra}`` atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, "model": model.state_dict(), "config": cfg.to_dict(), **extra}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one-line error
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path}: not an mv2mae checkpoint (needs 'model' and 'config' entries)")
    return ckpt


def config_of(ckpt: dict[str, Any]) -> ModelConfig:
    return ModelConfig.from_dict(dict(ckpt["config"]))


def _names(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(sorted(keys)[:limit])
    return shown + (f", … ({len(keys)} in all)" if len(keys) > limit else "")


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load every key or fail naming the missing, unexpected and mis-shaped ones."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)}≠{tuple(v.shape)}" for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"missing keys: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_names(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches: {_names(shapes)}")
    if problems:
        raise CheckpointError(f"{source}: does not fit {type(module).__name__} — " + "; ".join(problems))
    module.load_state_dict(state, strict=True)


def check_geometry(src: ModelConfig, dst: ModelConfig, source: str) -> None:
    diffs = [f"{f}: checkpoint {getattr(src, f)!r} vs model {getattr(dst, f)!r}"
             for f in WEIGHT_GEOMETRY if getattr(src, f) != getattr(dst, f)]
    if diffs:
        raise CheckpointError(f"{source}: geometry mismatch — " + "; ".join(diffs))


def adapted_config(src: ModelConfig, dst: ModelConfig) -> ModelConfig:
    """``dst`` with the position table anchored where ``src``'s was (only matters for sinusoid1d)."""
    if dst.pos_embed != "sinusoid1d":
        return dst
    ref = src.pos_embed_reference_grid or src.grid
    ref = None if tuple(ref) == dst.grid else tuple(ref)
    return dst if ref == dst.pos_embed_reference_grid else dst.with_(pos_embed_reference_grid=ref)


def encoder_state(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Key map pretraining/classifier checkpoint -> encoder: keep ``encoder.*``, drop the decoders
    and a previous head by name; anything else is an error."""
    out, unknown = {}, []
    for key, value in state.items():
        if key.startswith(ENCODER_PREFIX):
            out[key[len(ENCODER_PREFIX):]] = value
        elif not key.startswith(PRETRAIN_ONLY_PREFIXES + CLASSIFIER_HEAD_PREFIXES):
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{source}: keys with no place in the encoder: {_names(unknown)}")
    return out


def _open(ckpt: dict[str, Any] | str | Path) -> tuple[dict[str, Any], str, ModelConfig]:
    """A checkpoint (loaded if given as a path), its name for error messages, and its model config."""
    source = str(ckpt) if isinstance(ckpt, (str, Path)) else "checkpoint"
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    return ckpt, source, config_of(ckpt)


def _open_for(ckpt: dict[str, Any] | str | Path, target: ModelConfig) -> tuple[dict[str, Any], str, ModelConfig]:
    """Load ``ckpt`` if it is a path, check its geometry against ``target`` and return it with its name
    for error messages and the config the target must take (``target`` itself when nothing changes)."""
    ckpt, source, src_cfg = _open(ckpt)
    check_geometry(src_cfg, target, source)
    return ckpt, source, adapted_config(src_cfg, target)


def load_pretrained_into_classifier(classifier: nn.Module, ckpt: dict[str, Any] | str | Path) -> nn.Module:
    """Initialise ``classifier.encoder`` strictly from an MV2MAE (or classifier) checkpoint.

    The head stays freshly initialised. Frames/size may differ from the checkpoint's.
    """
    ckpt, source, new_cfg = _open_for(ckpt, classifier.cfg)
    if new_cfg is not classifier.cfg:
        classifier.cfg = new_cfg
        classifier.encoder.rebuild_pos_embed(new_cfg)
    load_state_strict(classifier.encoder, encoder_state(ckpt["model"], source), source)
    return classifier


def load_pretrained_into_mv2mae(model: nn.Module, ckpt: dict[str, Any] | str | Path) -> nn.Module:
    """Initialise an :class:`MV2MAE` (e.g. to continue pretraining at another size) strictly: a full
    MV2MAE checkpoint fills every part; an encoder-only one (a converted VideoMAE finetune, a
    classifier) fills the encoder and leaves the decoders freshly initialised."""
    ckpt, source, new_cfg = _open_for(ckpt, model.cfg)
    if new_cfg is not model.cfg:
        model.cfg = new_cfg
        for part in (model.encoder, model.self_decoder, model.cross_decoder):
            part.rebuild_pos_embed(new_cfg)
    if any(k.startswith(PRETRAIN_ONLY_PREFIXES) for k in ckpt["model"]):
        load_state_strict(model, ckpt["model"], source)
    else:
        load_state_strict(model.encoder, encoder_state(ckpt["model"], source), source)
    return model


def load_mv2mae(ckpt: dict[str, Any] | str | Path, **config_overrides: Any) -> nn.Module:
    """Rebuild an :class:`MV2MAE` from a checkpoint, strictly (overrides: e.g. mask_ratio, tau)."""
    from mv2mae.model.mv2mae import MV2MAE

    ckpt, source, src_cfg = _open(ckpt)
    cfg = adapted_config(src_cfg, src_cfg.with_(**config_overrides))
    check_geometry(src_cfg, cfg, source)
    model = MV2MAE(cfg)
    load_state_strict(model, ckpt["model"], source)
    return model


def load_encoder(ckpt: dict[str, Any] | str | Path, **config_overrides: Any) -> tuple[nn.Module, ModelConfig]:
    """The frozen-feature entry point: the encoder of any mv2mae checkpoint, strictly loaded."""
    from mv2mae.model.encoder import Encoder

    ckpt, source, src_cfg = _open(ckpt)
    cfg = adapted_config(src_cfg, src_cfg.with_(**config_overrides))
    check_geometry(src_cfg, cfg, source)
    encoder = Encoder(cfg)
    load_state_strict(encoder, encoder_state(ckpt["model"], source), source)
    return encoder, cfg
