"""Typed configuration of the data: where the shards are and how clips are sampled from them.

:class:`DataConfig` is the run config's ``data`` section (YAML keys ``data.stride``, ``data.protocol``, …)
and the one thing besides the model's :class:`~mv2mae.model.config.ModelConfig` that the loaders take.
Geometry is the model's (frames, image size, tubelet, patch) plus ``data.stride``: :class:`ClipGeometry`
is derived from the two, never filled in by hand, so nothing in ``mv2mae.data`` repeats a geometry literal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from mv2mae.model.config import ModelConfig
from mv2mae.shards.protocols import DEFAULT_VAL_FRACTION, VALIDATION_BY

SOURCE_POLICIES = ("random", "adjacent", "opposite", "fixed")
# Motion weights (METHOD.md, Objective): "framediff" is the method's signal, computed from the clip itself
# (mv2mae.data.motion.clip_token_motion). "flow" is DIS optical flow from the Zarr cache, in its own units
# (stored pixels per stored frame) with its own τ (model.tau_flow). "none" trains the plain MAE loss.
CLIP_MOTION = ("framediff",)
CACHED_MOTION = ("flow",)
MOTION_OPTIONS = (*CLIP_MOTION, *CACHED_MOTION, "none")
# Earlier spellings of data.motion: a config that holds one (a preset, --set, a saved run) still reads, as
# the new value with a note, for one release (mv2mae.config.RENAMED_VALUES). "online" named the clip's
# framediff beside a cached one that training no longer reads.
OLD_MOTION_SPELLINGS = {"online": "framediff"}
DECODE_ON = ("auto", "cpu", "device")
FLIP_OPTIONS = ("auto", "on", "off")


@dataclass
class DataConfig:
    """Where the shards are and how groups become clips: which cameras, crops and motion weights."""

    root: str = ""  # preprocessed dataset directory (``--data``)
    protocol: str = "synth_xview"
    stride: int = 4  # stored frames between two sampled frames
    # K source views per pretraining target (the paper: one is best); 0 = single-view pretraining: each
    # sample is one camera's clip and only the self-view decoder trains (VideoMAE on the same videos)
    num_sources: int = 1
    source_policy: str = "random"  # random | adjacent | opposite (the farthest cameras) | fixed
    fixed_pairs: list[list[int]] = field(default_factory=list)  # policy "fixed": [target, *sources] camera ids
    motion: str = "framediff"  # framediff (from the clip) | flow (from the Zarr cache) | none
    crop_scale: tuple[float, float] = (0.5, 1.0)  # random resized crop: area fraction of the frame
    shared_crop: bool = False  # one crop box for every view of a sample (default: independent)
    # horizontal flip, p = 0.5, decided with each crop (mv2mae.data.sampling.Crop): "auto" flips finetuning
    # clips when the dataset records a class-swap table (index.json ``flip_classes``: a flipped clip takes
    # its mirror class) and never flips pretraining; "on" flips in both stages (finetuning then needs the
    # table; pretraining flips every view of a sample together); "off" never flips
    flip: str = "auto"
    shuffle_buffer: int = 256  # groups held by each worker's shuffle buffer
    # pretraining samples cut from each decoded group, each with new crops (and masks) of the same frames
    # and views (MAE-ST's repeated sampling; 1 = off, as in VideoMAE and the paper). Epochs still count
    # samples, so an epoch then decodes 1/repeats of the groups (MAE-ST's effective epochs)
    repeats: int = 1
    workers: int = 2  # loader processes per rank
    eval_clips: int = 2  # temporal clips per evaluation video
    eval_crops: int = 3  # spatial crops per evaluation clip (left/centre/right along the long side)
    # where the sampled JPEGs are decoded, cropped and resized: "cpu" (in the loader's workers), "device"
    # (workers only plan clips and read bytes; the training process decodes each batch at once where
    # the model runs: nvJPEG on CUDA), or "auto" = device on CUDA, cpu elsewhere (:meth:`decodes_on_device`)
    decode_on: str = "auto"
    # validation split carved from the protocol's train split for finetuning's model selection (no test
    # video is ever in it): whole subjects (the default, and tiny's), whole shards (datasets whose shards mix
    # subjects), or none: the paper's protocol, which its presets set (the whole train split, the last step
    # tested). Pretraining (no labels, no selection) uses the whole train split.
    val_by: str = VALIDATION_BY[0]  # subject
    val_fraction: float = DEFAULT_VAL_FRACTION  # share of the train subjects (or shards) held out: >= 1, never all
    # few-label transfer: only the first N subjects (by id) of the protocol's train split, in every stage
    # whose config sets it (the study sets it for finetuning and probes and pretrains on all of them);
    # 0 = every train subject. The test split is cut by its own option only
    train_subjects: int = 0
    # only the first N subjects (by id) of the protocol's test split (0 = all): with train_subjects on a
    # cross-view protocol, the unseen camera's recordings of the labelled subjects
    test_subjects: int = 0
    # groups a loader process may skip as unreadable (truncated or tampered shard, undecodable JPEG,
    # missing motion rows; each logged once) before the run stops: damaged data, not a sample or two
    max_bad_samples: int = 100
    # seconds the loader waits for a worker's next batch before the run fails (a worker stopped, or stuck
    # on a read): a bound on how long a run can hang, not a speed target
    timeout: float = 300.0

    def __post_init__(self) -> None:
        self.root = os.fspath(self.root)  # a Path is welcome; the saved config holds a string
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` listing every problem (the config loader reports it as a ConfigError)."""
        problems = []
        if self.source_policy not in SOURCE_POLICIES:
            problems.append(f"source_policy {self.source_policy!r} not in {SOURCE_POLICIES}")
        if self.motion not in MOTION_OPTIONS:
            problems.append(f"motion {self.motion!r} not in {MOTION_OPTIONS}")
        if self.flip not in FLIP_OPTIONS:
            problems.append(f"flip must be auto, on or off, got {self.flip!r}")
        if self.decode_on not in DECODE_ON:
            problems.append(f"decode_on must be auto, cpu or device, got {self.decode_on!r}")
        if self.val_by not in VALIDATION_BY:
            problems.append(f"val_by {self.val_by!r} not in {VALIDATION_BY}")
        if not 0.0 < self.val_fraction < 1.0:
            problems.append(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if min(self.train_subjects, self.test_subjects) < 0:
            problems.append(f"train_subjects and test_subjects must be >= 0 (0 = all), got {self.train_subjects}, "
                            f"{self.test_subjects}")
        if self.repeats < 1:
            problems.append(f"repeats must be >= 1, got {self.repeats}")
        if self.num_sources < 0:
            problems.append(f"num_sources must be >= 0, got {self.num_sources}")
        if min(self.stride, self.eval_clips, self.eval_crops) < 1 or min(self.workers, self.max_bad_samples) < 0:
            problems.append("stride, eval_clips and eval_crops must be >= 1, workers and max_bad_samples >= 0")
        if self.source_policy == "fixed":
            bad = [p for p in self.fixed_pairs if len(p) != self.num_sources + 1]
            if not self.fixed_pairs or bad:
                problems.append(f"source_policy 'fixed' needs fixed_pairs of [target, {self.num_sources} "
                                f"source(s)], got {self.fixed_pairs}")
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            problems.append(f"crop_scale must be [low, high] with 0 < low <= high <= 1, got {list(self.crop_scale)}")
        if self.shuffle_buffer < 1:
            problems.append(f"shuffle_buffer must be >= 1, got {self.shuffle_buffer}")
        if not self.timeout > 0:
            problems.append(f"timeout must be > 0 seconds, got {self.timeout}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def views(self) -> int:
        return 1 + self.num_sources

    def decodes_on_device(self, device_type: str) -> bool:
        """Whether batches used on ``device_type`` ("cpu", "cuda") are decoded there, in the training
        process, rather than in the loader's workers."""
        return self.decode_on == "device" or (self.decode_on == "auto" and device_type == "cuda")


@dataclass(frozen=True)
class ClipGeometry:
    """What one view of one clip looks like to the model: derived from ModelConfig + ``data.stride``."""

    frames: int  # sampled frames per clip
    stride: int  # stored frames between two sampled frames
    size: int  # square crop side after resizing, pixels
    tubelet: int  # frames per token
    patch: int  # pixels per token side

    @classmethod
    def of(cls, model: ModelConfig, data: DataConfig) -> ClipGeometry:
        """The model's geometry at the data's stride (the stride is a data choice, not the model's)."""
        return cls(frames=model.frames, stride=data.stride, size=model.image_size, tubelet=model.tubelet,
                   patch=model.patch)

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
