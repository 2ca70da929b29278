"""Typed configuration of train-time sampling: clip geometry and sampling policy.

Geometry is plain fields so the training loop can build it from the model's config in one line
(:meth:`ClipGeometry.from_model_config`); nothing in ``mv2mae.data`` repeats a geometry literal.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SOURCE_POLICIES = ("random", "adjacent", "fixed")
MOTION_OPTIONS = ("framediff", "flow", "online", "none")


@dataclass(frozen=True)
class ClipGeometry:
    """What one view of one clip looks like to the model."""

    frames: int = 16  # sampled frames per clip
    stride: int = 4  # stored frames between two sampled frames
    size: int = 128  # square crop side after resizing, pixels
    tubelet: int = 2  # frames per token
    patch: int = 16  # pixels per token side

    def __post_init__(self) -> None:
        if self.frames % self.tubelet or self.size % self.patch:
            raise ValueError(f"geometry {self}: frames must divide by tubelet and size by patch")
        if min(self.frames, self.stride, self.size, self.tubelet, self.patch) < 1:
            raise ValueError(f"geometry {self}: every field must be >= 1")

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid (T', H', W'); token index = t'·H'·W' + h'·W' + w'."""
        return self.frames // self.tubelet, self.size // self.patch, self.size // self.patch

    @property
    def tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w

    @property
    def span(self) -> int:
        """Stored frames covered by one clip at the nominal stride."""
        return (self.frames - 1) * self.stride + 1

    @classmethod
    def from_model_config(cls, cfg, stride: int = 4) -> ClipGeometry:
        """Geometry of ``mv2mae.model.config.ModelConfig`` (the stride is a data choice, not the model's)."""
        return cls(frames=cfg.frames, stride=stride, size=cfg.image_size, tubelet=cfg.tubelet, patch=cfg.patch)


@dataclass
class SamplingConfig:
    """How groups become clips: which cameras, which crops, which motion weights."""

    num_sources: int = 1  # K source views per target (the paper: one is best)
    source_policy: str = "random"  # random | adjacent | fixed
    fixed_pairs: list[list[int]] = field(default_factory=list)  # [target, *sources] camera-id tuples
    shared_crop: bool = False  # one crop box for every view of a sample (default: independent)
    crop_scale: tuple[float, float] = (0.5, 1.0)  # random resized crop: area fraction of the frame
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # random resized crop: aspect ratio range
    motion: str = "framediff"  # framediff | flow (from the Zarr cache) | online (from the clip) | none
    normalize: bool = True  # ImageNet mean/std in the loader; False returns uint8 for on-device normalising
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    shuffle_buffer: int = 256  # groups held by each worker's shuffle buffer
    # pretraining samples cut from each decoded group: new crops (and masks) of the same frames and views
    # (MAE-ST's repeated sampling). 1 = every sample decodes its own group (VideoMAE, the paper)
    repeats: int = 1
    eval_clips: int = 2  # temporal clips per evaluation video
    eval_crops: int = 3  # spatial crops per evaluation clip (left/centre/right along the long side)

    def __post_init__(self) -> None:
        if self.source_policy not in SOURCE_POLICIES:
            raise ValueError(f"source_policy {self.source_policy!r} not in {SOURCE_POLICIES}")
        if self.motion not in MOTION_OPTIONS:
            raise ValueError(f"motion {self.motion!r} not in {MOTION_OPTIONS}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if self.num_sources < 1:
            raise ValueError(f"sources must be >= 1, got {self.num_sources}")
        if self.source_policy == "fixed":
            bad = [p for p in self.fixed_pairs if len(p) != self.num_sources + 1]
            if not self.fixed_pairs or bad:
                raise ValueError(f"source_policy 'fixed' needs fixed_pairs of [target, {self.num_sources} source(s)], "
                                 f"got {self.fixed_pairs}")

    @property
    def views(self) -> int:
        return 1 + self.num_sources

    @classmethod
    def from_data_config(cls, data, **overrides) -> SamplingConfig:
        """Sampling options of ``mv2mae.config.DataConfig`` (fields of the same name are copied)."""
        names = {f.name for f in fields(cls)}
        values = {k: getattr(data, k) for k in names if hasattr(data, k)}
        return cls(**{**values, **overrides})
