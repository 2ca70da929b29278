"""The one source of truth for the model's geometry and sizes.

Everything that depends on frames, tubelet, patch, image size or channels reads it from a
:class:`ModelConfig`; no other module hard-codes a geometry number.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MASK_TYPES = ("random", "tube")
POS_EMBED_TYPES = ("sincos3d", "sinusoid1d")

# Encoder / decoder sizes. Decoder widths follow VideoMAE (192/3 for ViT-S, 384/6 for ViT-B).
_SIZE_PRESETS: dict[str, dict[str, Any]] = {
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3, decoder_dim=96, decoder_heads=3),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6, decoder_dim=192, decoder_heads=3),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12, decoder_dim=384, decoder_heads=6),
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16, decoder_dim=512, decoder_heads=8),
}

# counts and sizes, with the least each may be (a depth of 0 leaves a decoder out of nothing: at least one block)
_COUNTS = dict(frames=1, image_size=1, tubelet=1, patch=1, channels=1, embed_dim=1, depth=1, num_heads=1,
               decoder_dim=1, decoder_depth=1, decoder_heads=1, cross_decoder_depth=1)


@dataclass
class ModelConfig:
    """Geometry, sizes and objective settings of MV2MAE (defaults: the paper's ViT-S recipe)."""

    # --- geometry: clip [C, T, H, W] cut into tubelets of [tubelet, patch, patch]
    frames: int = 16
    image_size: int = 128
    tubelet: int = 2
    patch: int = 16
    channels: int = 3
    # --- encoder
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    encoder_final_norm: bool = True  # LayerNorm after the last block (VideoMAE pretraining); a classifier drops it
    # --- decoders (self-view and cross-view share width/depth)
    decoder_dim: int = 192
    decoder_depth: int = 4
    decoder_heads: int = 3
    cross_decoder_depth: int = 4
    # whether the cross-view decoder is built: a configuration that leaves it out of the loss (one view per
    # sample, or lambda_cross = 0) builds none, so its checkpoints hold no cross-view weights and every
    # built parameter takes part in the loss, as DDP needs (RunConfig derives it from data.num_sources
    # and lambda_cross)
    cross_view: bool = True
    # --- position embeddings, fixed (not learned). sinusoid1d is VideoMAE's own table, a 1D sinusoid over
    # the flattened token index (the method's convention): transformers' VideoMAE computes exactly this
    # table, so such a model exports and imported VideoMAE weights keep their positions. sincos3d
    # (separable t/h/w sin-cos) extends to any grid by construction but has no transformers equivalent.
    pos_embed: str = "sinusoid1d"
    # token grid the 1D table was defined on (None = this config's grid); set when adapting a
    # 1D-sinusoid checkpoint to other frames/size so the table is resampled, not re-indexed.
    pos_embed_reference_grid: tuple[int, int, int] | None = None
    # --- masking
    mask_ratio: float = 0.7
    mask_type: str = "random"
    # --- objective
    norm_pix: bool = True
    tau: float = 60.0  # τ for framediff motion (0-255 grey levels; the paper's best value)
    # τ for flow motion (data.motion=flow, in stored-frame pixels per stored frame): measured so that it
    # spreads the weights over the masked tokens as τ = 60 spreads framediff's — same mean std of the
    # weights over the views of 128 synthetic two-view samples, 16×128² at stride 4 (4.23; 4.95 for the
    # tiny preset's 8×64² at stride 3), and then also the same max/min ratio (2.03 against 2.11).
    # `mv2mae bench motion` measures it; BENCHMARKS.md has the figures.
    tau_flow: float = 4.2
    lambda_cross: float = 1.0
    # --- input normalisation the clip arrives with (targets are built in [0, 1] pixel space)
    pixel_mean: tuple[float, float, float] = field(default=IMAGENET_MEAN)
    pixel_std: tuple[float, float, float] = field(default=IMAGENET_STD)

    def __post_init__(self) -> None:
        self.pixel_mean = tuple(float(v) for v in self.pixel_mean)
        self.pixel_std = tuple(float(v) for v in self.pixel_std)
        if self.pos_embed_reference_grid is not None:
            self.pos_embed_reference_grid = tuple(int(v) for v in self.pos_embed_reference_grid)
        self.validate()

    # ------------------------------------------------------------------ construction
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        if name not in _SIZE_PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(_SIZE_PRESETS)}")
        return cls(**{**_SIZE_PRESETS[name], **overrides})

    @staticmethod
    def preset_names() -> tuple[str, ...]:
        return tuple(_SIZE_PRESETS)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        # plain lists/tuples of numbers only: checkpoints are loaded with weights_only=True
        out["pixel_mean"] = list(self.pixel_mean)
        out["pixel_std"] = list(self.pixel_std)
        if self.pos_embed_reference_grid is not None:
            out["pos_embed_reference_grid"] = list(self.pos_embed_reference_grid)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {', '.join(unknown)}")
        return cls(**data)

    def with_(self, **overrides: Any) -> ModelConfig:
        return replace(self, **overrides)

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        problems = [f"{name}={getattr(self, name)!r} must be a whole number >= {low}" for name, low in _COUNTS.items()
                    if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int)
                    or getattr(self, name) < low]
        if problems:  # every check below divides by or counts with these
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))
        if self.frames % self.tubelet:
            problems.append(f"frames={self.frames} is not a multiple of tubelet={self.tubelet}")
        if self.image_size % self.patch:
            problems.append(f"image_size={self.image_size} is not a multiple of patch={self.patch}")
        if self.embed_dim % self.num_heads:
            problems.append(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        if self.decoder_dim % self.decoder_heads:
            problems.append(f"decoder_dim={self.decoder_dim} is not divisible by decoder_heads={self.decoder_heads}")
        if not 0.0 < self.mask_ratio < 1.0:
            problems.append(f"mask_ratio={self.mask_ratio} must be in (0, 1): a share of the tokens is masked, "
                            f"and some stay visible")
        if self.mask_type not in MASK_TYPES:
            problems.append(f"mask_type={self.mask_type!r} must be one of {MASK_TYPES}")
        if self.pos_embed not in POS_EMBED_TYPES:
            problems.append(f"pos_embed={self.pos_embed!r} must be one of {POS_EMBED_TYPES}")
        if self.embed_dim % 2 or self.decoder_dim % 2:
            problems.append("sin-cos position embeddings need even embed_dim and decoder_dim")
        if not (self.tau > 0 and self.tau_flow > 0):
            problems.append(f"tau={self.tau} and tau_flow={self.tau_flow} must be > 0 (inf: the plain MAE loss)")
        if len(self.pixel_mean) != self.channels or len(self.pixel_std) != self.channels:
            problems.append(f"pixel_mean/pixel_std need {self.channels} values")
        if not problems and self.mask_type in MASK_TYPES and not 0 < self.num_masked < self.num_tokens:
            problems.append(f"mask_ratio={self.mask_ratio} masks {self.num_masked} of the {self.num_tokens} tokens "
                            f"({self.mask_type} masking of a {self.grid} grid): at least one must be masked and one "
                            f"visible")
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    # ------------------------------------------------------------------ derived geometry
    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid (T', H', W'); token index = t'·H'·W' + h'·W' + w'."""
        side = self.image_size // self.patch
        return (self.frames // self.tubelet, side, side)

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def tubelet_size(self) -> tuple[int, int, int]:
        return (self.tubelet, self.patch, self.patch)

    @property
    def patch_dim(self) -> int:
        """Values per token target: tubelet·patch·patch·channels."""
        return self.tubelet * self.patch * self.patch * self.channels

    @property
    def num_masked(self) -> int:
        """Masked tokens per view (fixed so that views batch together)."""
        if self.mask_type == "tube":
            t, h, w = self.grid
            return t * int(self.mask_ratio * h * w)
        return int(self.mask_ratio * self.num_tokens)

    @property
    def num_visible(self) -> int:
        return self.num_tokens - self.num_masked

    def geometry(self) -> dict[str, Any]:
        return dict(frames=self.frames, image_size=self.image_size, tubelet=self.tubelet,
                    patch=self.patch, channels=self.channels)
