"""Weights in and out: official VideoMAE (MCG-NJU) checkpoints, Hugging Face ``VideoMAEModel`` /
``VideoMAEForPreTraining`` directories, and export back to the Hugging Face layout (safetensors): a
pretraining model as ``VideoMAEModel`` (or ``VideoMAEForPreTraining``), a finetuned classifier as
``VideoMAEForVideoClassification``, each with a ``preprocessor_config.json``.

Only explicit key maps are used; every imported key must land somewhere and every model key of an
imported part must be filled, or the conversion fails naming the keys.

Attention biases: VideoMAE has q and v biases and no k bias; our timm blocks have one fused qkv bias.
Imports put zeros in the k slot. Exports drop the k bias, which is exact: q·b_k is the same for
every key of a query, and softmax is invariant to such a shift.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mv2mae.model.checkpoint import CheckpointError, load_state_strict, save_model_state
from mv2mae.model.classifier import VideoClassifier
from mv2mae.model.config import ModelConfig
from mv2mae.model.mv2mae import MV2MAE

HEAD_DIM = 64  # every released VideoMAE size uses 64-wide heads; heads are not stored in weights
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
PREPROCESSOR_FILE = "preprocessor_config.json"
EXPORT_FILES = ("config.json", "model.safetensors", PREPROCESSOR_FILE)
# a key of config.json that says the folder is an export of ours (transformers keeps unknown keys as attributes)
EXPORTED_BY = ("exported_by", "mv2mae")
EXPORT_TOLERANCE = 1e-4  # largest |ours - transformers'| accepted on the check after an export

# Hugging Face files name the q/v biases ``q_bias``/``v_bias`` (the hub's and transformers' own
# on-disk names); in-memory modules call them ``query.bias``/``value.bias``. Both are read.
_HF_Q_BIAS = ("q_bias", "query.bias")
_HF_V_BIAS = ("v_bias", "value.bias")

# ours (inside one block) <-> Hugging Face VideoMAELayer
_HF_BLOCK = {
    "norm1": "layernorm_before",
    "attn.proj": "attention.output.dense",
    "norm2": "layernorm_after",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}


# ============================================================================ shared helpers
def _split_qkv(block: dict[str, torch.Tensor], prefix: str, dim: int) -> dict[str, torch.Tensor]:
    """Our fused qkv weight/bias -> separate q, k, v entries (k bias dropped, see module doc)."""
    w = block[f"{prefix}attn.qkv.weight"]
    out = {"q.weight": w[:dim], "k.weight": w[dim:2 * dim], "v.weight": w[2 * dim:]}
    bias = block.get(f"{prefix}attn.qkv.bias")
    if bias is not None:
        out["q.bias"], out["v.bias"] = bias[:dim], bias[2 * dim:]
    return out


def _fused_qkv(q_w: torch.Tensor, k_w: torch.Tensor, v_w: torch.Tensor, q_b: torch.Tensor | None,
               v_b: torch.Tensor | None) -> dict[str, torch.Tensor]:
    dim = q_w.shape[0]
    zeros = torch.zeros(dim, dtype=q_w.dtype)
    return {
        "attn.qkv.weight": torch.cat([q_w, k_w, v_w]),
        "attn.qkv.bias": torch.cat([zeros if q_b is None else q_b, zeros, zeros if v_b is None else v_b]),
    }


def _count_blocks(state: dict[str, torch.Tensor], pattern: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def _take(state: dict[str, torch.Tensor], used: set[str], key: str, source: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"{source}: missing key {key}")
    used.add(key)
    return state[key]


def _check_all_used(state: dict[str, torch.Tensor], used: set[str], source: str, ignore: tuple[str, ...]) -> None:
    left = sorted(k for k in state if k not in used and not k.startswith(ignore))
    if left:
        shown = ", ".join(left[:8]) + (f", … ({len(left)} in all)" if len(left) > 8 else "")
        raise CheckpointError(f"{source}: keys the conversion does not know: {shown}")


# ============================================================================ MCG-NJU VideoMAE
def _mcg_block(state, used, src: str, dst: str, source: str) -> dict[str, torch.Tensor]:
    out = {}
    for name in ("norm1", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
        for p in ("weight", "bias"):
            out[f"{dst}{name}.{p}"] = _take(state, used, f"{src}{name}.{p}", source)
    qkv = _take(state, used, f"{src}attn.qkv.weight", source)
    dim = qkv.shape[1]
    q_b = _take(state, used, f"{src}attn.q_bias", source) if f"{src}attn.q_bias" in state else None
    v_b = _take(state, used, f"{src}attn.v_bias", source) if f"{src}attn.v_bias" in state else None
    fused = _fused_qkv(qkv[:dim], qkv[dim:2 * dim], qkv[2 * dim:], q_b, v_b)
    return {f"{dst}{k}": v for k, v in fused.items()} | out


def from_videomae(state: dict[str, torch.Tensor], frames: int, image_size: int, source: str,
                  num_heads: int | None = None, decoder_heads: int | None = None) -> tuple[ModelConfig, dict, list[str]]:
    """MCG-NJU state dict (pretraining: ``encoder.*``/``decoder.*``; finetuned: top-level
    ``blocks.*`` with ``fc_norm``/``head``) -> (config, our partial state dict, imported parts)."""
    enc = "encoder." if "encoder.patch_embed.proj.weight" in state else ""
    used: set[str] = set()
    proj = _take(state, used, f"{enc}patch_embed.proj.weight", source)
    dim, channels, tubelet, patch, _ = proj.shape
    depth = _count_blocks(state, rf"^{re.escape(enc)}blocks\.(\d+)\.")
    hidden = state[f"{enc}blocks.0.mlp.fc1.weight"].shape[0]
    has_norm = f"{enc}norm.weight" in state
    ours = {"encoder.patch_embed.proj.weight": proj,
            "encoder.patch_embed.proj.bias": _take(state, used, f"{enc}patch_embed.proj.bias", source)}
    for i in range(depth):
        ours |= _mcg_block(state, used, f"{enc}blocks.{i}.", f"encoder.blocks.{i}.", source)
    if has_norm:
        ours |= {f"encoder.norm.{p}": _take(state, used, f"{enc}norm.{p}", source) for p in ("weight", "bias")}
    fields: dict[str, Any] = dict(
        frames=frames, image_size=image_size, tubelet=tubelet, patch=patch, channels=channels, embed_dim=dim,
        depth=depth, num_heads=num_heads or dim // HEAD_DIM, mlp_ratio=hidden / dim, encoder_final_norm=has_norm,
        pos_embed="sinusoid1d", norm_eps=1e-6)
    parts = ["encoder"]
    if "encoder_to_decoder.weight" in state:
        ddim = state["encoder_to_decoder.weight"].shape[0]
        ddepth = _count_blocks(state, r"^decoder\.blocks\.(\d+)\.")
        fields |= dict(decoder_dim=ddim, decoder_depth=ddepth, decoder_heads=decoder_heads or ddim // HEAD_DIM)
        ours |= {"self_decoder.proj.weight": _take(state, used, "encoder_to_decoder.weight", source),
                 "self_decoder.mask_token": _take(state, used, "mask_token", source)}
        for i in range(ddepth):
            ours |= _mcg_block(state, used, f"decoder.blocks.{i}.", f"self_decoder.blocks.{i}.", source)
        for name in ("norm", "head"):
            ours |= {f"self_decoder.{name}.{p}": _take(state, used, f"decoder.{name}.{p}", source)
                     for p in ("weight", "bias")}
        parts.append("self_decoder")
    # classification heads and stored position tables have no place in an encoder import
    _check_all_used(state, used, source, ignore=("fc_norm.", "head.", "pos_embed", "encoder.pos_embed"))
    return ModelConfig(**fields), ours, parts


def read_videomae_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: not a readable VideoMAE checkpoint ({type(exc).__name__}: {exc})") from exc
    for wrapper in ("model", "module", "state_dict"):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not any(k.endswith("patch_embed.proj.weight") for k in obj):
        raise CheckpointError(f"{path}: no VideoMAE patch_embed.proj.weight found; is this an MCG-NJU checkpoint?")
    return obj


# ============================================================================ Hugging Face
def read_hf_dir(directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    cfg_file = directory / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{directory}: no config.json; expected a Hugging Face VideoMAE directory")
    hf_cfg = json.loads(cfg_file.read_text())
    if hf_cfg.get("model_type") != "videomae":
        raise CheckpointError(f"{cfg_file}: model_type is {hf_cfg.get('model_type')!r}, expected 'videomae'")
    for name in HF_WEIGHTS:
        if (directory / name).is_file():
            if name.endswith(".safetensors"):
                return hf_cfg, load_file(directory / name)
            return hf_cfg, torch.load(directory / name, map_location="cpu", weights_only=True)
    raise CheckpointError(f"{directory}: none of {', '.join(HF_WEIGHTS)} found")


def _optional(state, used: set[str], prefix: str, names: tuple[str, ...]) -> torch.Tensor | None:
    for name in names:
        if prefix + name in state:
            used.add(prefix + name)
            return state[prefix + name]
    return None


def _hf_block(state, used, src: str, dst: str, source: str) -> dict[str, torch.Tensor]:
    out = {}
    for ours, theirs in _HF_BLOCK.items():
        for p in ("weight", "bias"):
            out[f"{dst}{ours}.{p}"] = _take(state, used, f"{src}{theirs}.{p}", source)
    att = f"{src}attention.attention."
    q_b, v_b = (_optional(state, used, att, names) for names in (_HF_Q_BIAS, _HF_V_BIAS))
    fused = _fused_qkv(_take(state, used, att + "query.weight", source), _take(state, used, att + "key.weight", source),
                       _take(state, used, att + "value.weight", source), q_b, v_b)
    return {f"{dst}{k}": v for k, v in fused.items()} | out


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    image = hf.get("image_size", 224)
    patch = hf.get("patch_size", 16)
    if isinstance(image, (list, tuple)):
        if image[0] != image[1]:
            raise CheckpointError(f"non-square image_size {image} is not supported")
        image = image[0]
    if isinstance(patch, (list, tuple)):
        patch = patch[0]
    dim, ddim = hf.get("hidden_size", 768), hf.get("decoder_hidden_size", 384)
    if hf.get("decoder_intermediate_size", 1536) / ddim != hf.get("intermediate_size", 3072) / dim:
        raise CheckpointError("decoder and encoder MLP ratios differ; mv2mae uses one mlp_ratio")
    if hf.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"hidden_act {hf.get('hidden_act')!r} unsupported (only exact 'gelu')")
    return ModelConfig(
        frames=hf.get("num_frames", 16), image_size=image, tubelet=hf.get("tubelet_size", 2), patch=patch,
        channels=hf.get("num_channels", 3), embed_dim=dim, depth=hf.get("num_hidden_layers", 12),
        num_heads=hf.get("num_attention_heads", 12), mlp_ratio=hf.get("intermediate_size", 3072) / dim,
        qkv_bias=True, norm_eps=hf.get("layer_norm_eps", 1e-12),
        encoder_final_norm=not hf.get("use_mean_pooling", True), decoder_dim=ddim,
        decoder_depth=hf.get("decoder_num_hidden_layers", 4), decoder_heads=hf.get("decoder_num_attention_heads", 6),
        pos_embed="sinusoid1d", norm_pix=hf.get("norm_pix_loss", True))


def from_hf(hf_cfg: dict[str, Any], state: dict[str, torch.Tensor], source: str) -> tuple[ModelConfig, dict, list[str]]:
    cfg = config_from_hf(hf_cfg)
    base = "videomae." if any(k.startswith("videomae.") for k in state) else ""
    used: set[str] = set()
    emb = f"{base}embeddings.patch_embeddings.projection."
    ours = {f"encoder.patch_embed.proj.{p}": _take(state, used, emb + p, source) for p in ("weight", "bias")}
    for i in range(cfg.depth):
        ours |= _hf_block(state, used, f"{base}encoder.layer.{i}.", f"encoder.blocks.{i}.", source)
    if cfg.encoder_final_norm:
        ours |= {f"encoder.norm.{p}": _take(state, used, f"{base}layernorm.{p}", source) for p in ("weight", "bias")}
    parts = ["encoder"]
    if "encoder_to_decoder.weight" in state:
        ours |= {"self_decoder.proj.weight": _take(state, used, "encoder_to_decoder.weight", source),
                 "self_decoder.mask_token": _take(state, used, "mask_token", source)}
        for i in range(cfg.decoder_depth):
            ours |= _hf_block(state, used, f"decoder.decoder_layers.{i}.", f"self_decoder.blocks.{i}.", source)
        for name in ("norm", "head"):
            ours |= {f"self_decoder.{name}.{p}": _take(state, used, f"decoder.{name}.{p}", source)
                     for p in ("weight", "bias")}
        parts.append("self_decoder")
    _check_all_used(state, used, source, ignore=("fc_norm.", "classifier."))
    return cfg, ours, parts


def _check_exportable(cfg: ModelConfig) -> None:
    if cfg.pos_embed != "sinusoid1d" or cfg.pos_embed_reference_grid is not None:
        raise CheckpointError(
            f"Hugging Face VideoMAE only has the 1D sinusoid position table on its own grid; this model uses "
            f"pos_embed={cfg.pos_embed!r} (reference grid {cfg.pos_embed_reference_grid}) and would give different "
            "features there. Train with pos_embed=sinusoid1d (the default) at the geometry you export.")
    if not cfg.qkv_bias:
        raise CheckpointError("export needs qkv_bias=True (VideoMAE has q/v biases)")


def _hf_config(cfg: ModelConfig, architecture: str, mean_pooling: bool) -> dict[str, Any]:
    return dict(
        model_type="videomae", architectures=[architecture],
        image_size=cfg.image_size, patch_size=cfg.patch, num_channels=cfg.channels, num_frames=cfg.frames,
        tubelet_size=cfg.tubelet, hidden_size=cfg.embed_dim, num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.num_heads, intermediate_size=int(cfg.embed_dim * cfg.mlp_ratio), hidden_act="gelu",
        layer_norm_eps=cfg.norm_eps, qv_bias=True, use_mean_pooling=mean_pooling,
        decoder_hidden_size=cfg.decoder_dim, decoder_num_hidden_layers=cfg.decoder_depth,
        decoder_num_attention_heads=cfg.decoder_heads, decoder_intermediate_size=int(cfg.decoder_dim * cfg.mlp_ratio),
        norm_pix_loss=cfg.norm_pix, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _encoder_to_hf(state: dict[str, torch.Tensor], cfg: ModelConfig, base: str, final_norm: bool) -> dict[str, torch.Tensor]:
    """Our ``encoder.*`` -> transformers' ``VideoMAEModel`` keys under ``base``."""
    out = {f"{base}embeddings.patch_embeddings.projection.{p}": state[f"encoder.patch_embed.proj.{p}"]
           for p in ("weight", "bias")}
    for i in range(cfg.depth):
        out |= _to_hf_block(state, f"encoder.blocks.{i}.", f"{base}encoder.layer.{i}.", cfg.embed_dim)
    if final_norm:
        out |= {f"{base}layernorm.{p}": state[f"encoder.norm.{p}"] for p in ("weight", "bias")}
    return out


def to_hf(model: MV2MAE, with_decoder: bool) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Our pretraining model -> (HF config dict, HF state dict) for VideoMAEModel or VideoMAEForPreTraining."""
    cfg = model.cfg
    _check_exportable(cfg)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    out = _encoder_to_hf(state, cfg, "videomae." if with_decoder else "", cfg.encoder_final_norm)
    if with_decoder:
        out |= {"encoder_to_decoder.weight": state["self_decoder.proj.weight"],
                "mask_token": state["self_decoder.mask_token"]}
        for i in range(cfg.decoder_depth):
            out |= _to_hf_block(state, f"self_decoder.blocks.{i}.", f"decoder.decoder_layers.{i}.", cfg.decoder_dim)
        for name in ("norm", "head"):
            out |= {f"decoder.{name}.{p}": state[f"self_decoder.{name}.{p}"] for p in ("weight", "bias")}
    architecture = "VideoMAEForPreTraining" if with_decoder else "VideoMAEModel"
    return _hf_config(cfg, architecture, mean_pooling=not cfg.encoder_final_norm), out


def classifier_to_hf(model: VideoClassifier, class_names: list[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Our finetuned classifier -> VideoMAEForVideoClassification with mean pooling: the encoder's blocks,
    ``fc_norm`` and the linear head (``classifier``), ``id2label`` from ``class_names``."""
    cfg = model.cfg
    _check_exportable(cfg)
    if len(class_names) != model.num_classes:
        raise CheckpointError(f"{len(class_names)} class names for a {model.num_classes}-class head")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    out = _encoder_to_hf(state, cfg, "videomae.", final_norm=False)
    out |= {f"fc_norm.{p}": state[f"fc_norm.{p}"] for p in ("weight", "bias")}
    out |= {f"classifier.{p}": state[f"head.{p}"] for p in ("weight", "bias")}
    hf_cfg = _hf_config(cfg, "VideoMAEForVideoClassification", mean_pooling=True)
    hf_cfg |= dict(id2label={str(i): name for i, name in enumerate(class_names)},
                   label2id={name: i for i, name in enumerate(class_names)})
    return hf_cfg, out


def preprocessor_config(cfg: ModelConfig) -> dict[str, Any]:
    """transformers' VideoMAE image processor set to our test-time view of a frame: short side resized to
    the model's input size, the centre square cropped, our pixel mean and std."""
    return dict(image_processor_type="VideoMAEImageProcessor", do_resize=True, size={"shortest_edge": cfg.image_size},
                resample=2, do_center_crop=True, crop_size={"height": cfg.image_size, "width": cfg.image_size},
                do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=list(cfg.pixel_mean),
                image_std=list(cfg.pixel_std))


def _to_hf_block(state: dict[str, torch.Tensor], src: str, dst: str, dim: int) -> dict[str, torch.Tensor]:
    out = {f"{dst}{theirs}.{p}": state[f"{src}{ours}.{p}"] for ours, theirs in _HF_BLOCK.items()
           for p in ("weight", "bias")}
    on_disk = {"q.weight": "query.weight", "k.weight": "key.weight", "v.weight": "value.weight",
               "q.bias": _HF_Q_BIAS[0], "v.bias": _HF_V_BIAS[0]}
    for key, value in _split_qkv(state, src, dim).items():
        out[f"{dst}attention.attention.{on_disk[key]}"] = value.contiguous()
    return out


# ============================================================================ entry points
def imported_model(cfg: ModelConfig, partial: dict[str, torch.Tensor], parts: list[str], source: str) -> MV2MAE:
    """A full MV2MAE whose imported parts are loaded strictly; the rest keeps its fresh init."""
    model = MV2MAE(cfg)
    for part in parts:
        module = getattr(model, part)
        prefix = f"{part}."
        load_state_strict(module, {k[len(prefix):]: v for k, v in partial.items() if k.startswith(prefix)}, source)
    stray = sorted(k for k in partial if k.split(".", 1)[0] not in parts)
    if stray:
        raise CheckpointError(f"{source}: converted keys outside the imported parts: {', '.join(stray[:8])}")
    return model


def convert(kind: str, src: Path, out: Path, frames: int = 16, image_size: int = 224,
            num_heads: int | None = None, decoder_heads: int | None = None) -> tuple[MV2MAE, list[str]]:
    """Import a VideoMAE (``videomae``: MCG-NJU .pth) or Hugging Face (``hf``: directory) checkpoint."""
    src = Path(src)
    if kind == "videomae":
        cfg, partial, parts = from_videomae(read_videomae_file(src), frames, image_size, str(src), num_heads,
                                            decoder_heads)
    elif kind == "hf":
        hf_cfg, state = read_hf_dir(src)
        cfg, partial, parts = from_hf(hf_cfg, state, str(src))
    else:
        raise ValueError(f"unknown source kind {kind!r}: use 'videomae' or 'hf'")
    model = imported_model(cfg, partial, parts, str(src))
    save_model_state(out, model, cfg, imported_from={"kind": kind, "path": str(src), "parts": parts})
    return model, parts


def export_hf(model: MV2MAE | VideoClassifier, out_dir: Path, with_decoder: bool = False,
              class_names: list[str] | None = None) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``preprocessor_config.json``: a classifier as
    ``VideoMAEForVideoClassification`` (``class_names`` become ``id2label``), a pretraining model as
    ``VideoMAEModel`` (or ``VideoMAEForPreTraining`` with its self-view decoder)."""
    if isinstance(model, VideoClassifier):
        hf_cfg, state = classifier_to_hf(model, class_names or [f"class_{i}" for i in range(model.num_classes)])
    else:
        hf_cfg, state = to_hf(model, with_decoder)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / "model.safetensors"
    try:
        save_file(state, str(weights), metadata={"format": "pt"})
    except SafetensorError as e:  # safetensors reports a failed write (a full disk) as its own error type
        raise OSError(errno.EIO, str(e).replace("\n", " "), str(weights)) from None
    (out_dir / "config.json").write_text(json.dumps(hf_cfg | dict([EXPORTED_BY]), indent=2) + "\n")
    (out_dir / PREPROCESSOR_FILE).write_text(json.dumps(preprocessor_config(model.cfg), indent=2) + "\n")
    return out_dir


def is_export(folder: Path) -> bool:
    """Whether ``folder`` holds nothing but an earlier :func:`export_hf` (which an export may replace)."""
    if not all(item.name in EXPORT_FILES for item in folder.iterdir()):
        return False
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get(EXPORTED_BY[0]) == EXPORTED_BY[1]


def check_export(model: MV2MAE | VideoClassifier, out_dir: Path, tolerance: float = EXPORT_TOLERANCE) -> float | None:
    """Load ``out_dir`` with the installed transformers and compare its output on a random clip with ours
    (encoder tokens, or a classifier's logits): the largest absolute difference, or None when transformers
    is not installed. A difference above ``tolerance`` is an error: it catches a transformers version that
    reads the weights differently (e.g. drops the ``q_bias``/``v_bias`` entries)."""
    if importlib.util.find_spec("transformers") is None:
        return None
    import transformers  # optional (extra "interop"), and seconds to import: only when checking

    cfg = model.cfg
    clip = torch.randn(1, cfg.channels, cfg.frames, cfg.image_size, cfg.image_size,
                       generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        if isinstance(model, VideoClassifier):
            theirs = transformers.VideoMAEForVideoClassification.from_pretrained(out_dir).eval()
            diff = (theirs(clip.transpose(1, 2)).logits - model(clip)).abs().max()
        else:
            theirs = transformers.VideoMAEModel.from_pretrained(out_dir).eval()
            diff = (theirs(clip.transpose(1, 2)).last_hidden_state - model.encoder(clip)).abs().max()
    if not diff <= tolerance:
        raise CheckpointError(f"{out_dir}: transformers {transformers.__version__} computes outputs {float(diff):.2e} "
                              f"away from ours (tolerance {tolerance:g}); this version reads the export differently")
    return float(diff)
