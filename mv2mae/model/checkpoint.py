"""The one checkpoint reader: atomic saves, strict loads with an explicit key map and a geometry check.

A checkpoint is a dict with at least ``model`` (a state dict) and ``config`` (``ModelConfig`` as a
dict); trainers add optimiser state etc. (:mod:`mv2mae.train.checkpoint`). It is read with
``torch.load(weights_only=True)``: no arbitrary pickle is ever executed. Position embeddings are fixed
functions of the config and are not stored, so a checkpoint adapts to other frame counts and sizes by
construction (a VideoMAE 1D table is resampled from the grid it was trained on).

Loading is two steps and never mutates a built model: :func:`fit_config` answers which ModelConfig
to build (the wanted one, geometry-checked against the checkpoint, the 1D position table anchored
where it was trained), then the model is built from that config and loaded strictly.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mv2mae.model.classifier import PooledEncoder, VideoClassifier
from mv2mae.model.config import ModelConfig
from mv2mae.model.encoder import Encoder
from mv2mae.model.mv2mae import MV2MAE

FORMAT = "mv2mae-checkpoint"
ENCODER_PREFIX = "encoder."
CROSS_DECODER_PREFIX = "cross_decoder."
PRETRAIN_ONLY_PREFIXES = ("self_decoder.", CROSS_DECODER_PREFIX)
CLASSIFIER_HEAD_PREFIXES = ("fc_norm.", "head.")
# the encoder's final LayerNorm (inside the encoder's state): pretraining has it, a classifier does not
FINAL_NORM_PREFIX = "norm."
# fields an encoder's weights are tied to, the pixel statistics it was trained on included;
# frames and image_size may differ (positions adapt)
WEIGHT_GEOMETRY = ("tubelet", "patch", "channels", "embed_dim", "depth", "num_heads", "mlp_ratio",
                   "pos_embed", "pixel_mean", "pixel_std")


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message names file and keys."""


def save_model_state(path: str | Path, model: nn.Module, cfg: ModelConfig, **extra: Any) -> Path:
    """Write ``{format, model, config, **extra}`` atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, "model": model.state_dict(), "config": cfg.to_dict(), **extra}
    write_checkpoint(state, path)
    return path


TMP_MARK = ".tmp"  # a checkpoint being written is ``.<name>.tmp<pid>`` beside its final name


def write_checkpoint(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary name, then rename: a file under the final name is always complete.
    A failed write (a full disk, a file-size limit) removes the temporary file and is a
    ``CheckpointError`` naming ``path``; whatever the final name held before is untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch reports a failed write as a RuntimeError of its zip writer
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.strerror:
            reason = e.strerror
        else:  # torch's own words say little ("unexpected pos ..."): say what the disk says
            reason = (f"the write stopped after {written} bytes with {shutil.disk_usage(path.parent).free} bytes "
                      f"free: a full disk or a file-size limit? torch: {_last_line(e)}")
        raise CheckpointError(f"{path}: could not write the checkpoint ({reason}); the files already there are "
                              f"intact") from None


def _last_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[-1] if lines else type(e).__name__


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint file: the one ``torch.load`` of the project."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
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


def _check_geometry(src: ModelConfig, dst: ModelConfig, source: str) -> None:
    diffs = [f"{f}: checkpoint {getattr(src, f)!r} vs model {getattr(dst, f)!r}"
             for f in WEIGHT_GEOMETRY if getattr(src, f) != getattr(dst, f)]
    if diffs:
        raise CheckpointError(f"{source}: geometry mismatch — " + "; ".join(diffs))


def _anchor_positions(src: ModelConfig, dst: ModelConfig) -> ModelConfig:
    """``dst`` with the position table anchored where ``src``'s was (only matters for sinusoid1d)."""
    if dst.pos_embed != "sinusoid1d":
        return dst
    ref = src.pos_embed_reference_grid or src.grid
    ref = None if tuple(ref) == dst.grid else tuple(ref)
    return dst if ref == dst.pos_embed_reference_grid else dst.with_(pos_embed_reference_grid=ref)


def fit_config(ckpt: dict[str, Any], wanted: ModelConfig | None = None, source: str = "checkpoint",
               **overrides: Any) -> ModelConfig:
    """The ModelConfig to build a model from so that ``ckpt``'s weights load into it: ``wanted`` (or the
    checkpoint's own config) with ``overrides``, its weight geometry checked against the checkpoint's
    and a 1D position table anchored where the checkpoint's was trained."""
    src = config_of(ckpt)
    cfg = src if wanted is None else wanted
    cfg = cfg.with_(**overrides) if overrides else cfg
    _check_geometry(src, cfg, source)
    return _anchor_positions(src, cfg)


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


def _read(ckpt: dict[str, Any] | str | Path, source: str = "checkpoint") -> tuple[dict[str, Any], str]:
    """A checkpoint (read if given as a path) and its name for error messages."""
    if isinstance(ckpt, dict):
        return ckpt, source
    return load_checkpoint(ckpt), str(ckpt)


def load_mv2mae(ckpt: dict[str, Any] | str | Path, **config_overrides: Any) -> MV2MAE:
    """Rebuild an :class:`MV2MAE` from a full checkpoint, strictly (overrides: e.g. mask_ratio, tau)."""
    ckpt, source = _read(ckpt)
    model = MV2MAE(fit_config(ckpt, source=source, **config_overrides))
    load_state_strict(model, ckpt["model"], source)
    return model


def init_mv2mae(ckpt: dict[str, Any] | str | Path, wanted: ModelConfig) -> MV2MAE:
    """An :class:`MV2MAE` of ``wanted``'s geometry (e.g. to continue pretraining at another size) initialised
    strictly: a full MV2MAE checkpoint fills every part, except that a cross-view decoder it lacks (a
    single-view or λ = 0 pretraining) starts fresh and one ``wanted`` does not build is left out; an
    encoder-only one (a converted VideoMAE finetune, a classifier) fills the encoder and leaves the
    decoders freshly initialised, and the encoder's final norm too when the checkpoint has none (a
    classifier never has one)."""
    ckpt, source = _read(ckpt)
    model = MV2MAE(fit_config(ckpt, wanted, source))
    if any(k.startswith(PRETRAIN_ONLY_PREFIXES) for k in ckpt["model"]):
        state, has_cross = dict(ckpt["model"]), any(k.startswith(CROSS_DECODER_PREFIX) for k in ckpt["model"])
        if model.cross_decoder is None:
            state = {k: v for k, v in state.items() if not k.startswith(CROSS_DECODER_PREFIX)}
        elif not has_cross:
            state |= {CROSS_DECODER_PREFIX + k: v for k, v in model.cross_decoder.state_dict().items()}
        load_state_strict(model, state, source)
        return model
    state = encoder_state(ckpt["model"], source)
    if model.cfg.encoder_final_norm and not _has_final_norm(state):
        state |= {k: v for k, v in model.encoder.state_dict().items() if k.startswith(FINAL_NORM_PREFIX)}
    load_state_strict(model.encoder, state, source)
    return model


def _has_final_norm(encoder_state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(FINAL_NORM_PREFIX) for k in encoder_state)


def init_classifier(ckpt: dict[str, Any] | str | Path, wanted: ModelConfig, num_classes: int,
                    **classifier_args: Any) -> VideoClassifier:
    """A :class:`VideoClassifier` whose encoder is strictly loaded from an MV2MAE (or classifier)
    checkpoint; the head stays freshly initialised. Frames/size may differ from the checkpoint's. The
    pretraining encoder's final norm is dropped by name: the classifier normalises after pooling
    (``fc_norm``, fresh), as VideoMAE's mean-pooling finetune does."""
    ckpt, source = _read(ckpt)
    model = VideoClassifier(fit_config(ckpt, wanted, source), num_classes, **classifier_args)
    state = {k: v for k, v in encoder_state(ckpt["model"], source).items() if not k.startswith(FINAL_NORM_PREFIX)}
    load_state_strict(model.encoder, state, source)
    return model


def _is_classifier(ckpt: dict[str, Any]) -> bool:
    return "head.weight" in ckpt["model"]


def load_classifier(ckpt: dict[str, Any] | str | Path, source: str = "checkpoint",
                    **config_overrides: Any) -> VideoClassifier:
    """Rebuild a finetuned :class:`VideoClassifier` (encoder and head) strictly from its checkpoint
    (overrides: e.g. frames and image_size, which positions adapt to)."""
    ckpt, source = _read(ckpt, source)
    if not _is_classifier(ckpt):
        raise CheckpointError(f"{source}: not a finetuned classifier (no head.weight); evaluate a finetune "
                              f"checkpoint, or use `mv2mae probe` on a pretraining one")
    if _has_final_norm(encoder_state(ckpt["model"], source)):
        # LayerNorm per token does not commute with the mean: no exact conversion exists
        raise CheckpointError(f"{source}: a classifier of the old layout (the encoder's final norm before mean "
                              f"pooling and fc_norm), which has no exact conversion to the VideoMAE head; "
                              f"finetune again from its pretraining checkpoint")
    model = VideoClassifier(fit_config(ckpt, source=source, **config_overrides),
                            num_classes=int(ckpt["model"]["head.weight"].shape[0]))
    load_state_strict(model, ckpt["model"], source)
    return model


def load_encoder(ckpt: dict[str, Any] | str | Path, source: str = "checkpoint",
                 **config_overrides: Any) -> tuple[Encoder, ModelConfig]:
    """The encoder of any mv2mae checkpoint, strictly loaded (with its final norm where it has one)."""
    ckpt, source = _read(ckpt, source)
    cfg = fit_config(ckpt, source=source, **config_overrides)
    encoder = Encoder(cfg)
    load_state_strict(encoder, encoder_state(ckpt["model"], source), source)
    return encoder, cfg


def load_feature_model(ckpt: dict[str, Any] | str | Path, source: str = "checkpoint",
                       **config_overrides: Any) -> VideoClassifier | PooledEncoder:
    """The frozen-feature entry point (``mv2mae embed``, ``mv2mae probe``): ``forward_features`` gives the
    features the checkpoint's own next stage reads. A finetuned classifier: its head's input, the
    mean-pooled tokens through ``fc_norm``. Any other checkpoint: its encoder's tokens, final norm
    included where it has one (what the decoders read), mean-pooled."""
    ckpt, source = _read(ckpt, source)
    if _is_classifier(ckpt):
        return load_classifier(ckpt, source, **config_overrides)
    return PooledEncoder(*load_encoder(ckpt, source, **config_overrides))
