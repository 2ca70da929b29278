"""The fixed sets of values that options take, as enums: Typer checks them, lists them in ``--help`` and
completes them in the shell.

Protocols and splits come from :mod:`mv2mae.shards.protocols`, which imports in milliseconds. The other
sets are written here because their owners load OpenCV or torch, which ``--help`` must not wait for;
``tests/test_cli.py`` checks each against its owner (named beside it).
"""

from __future__ import annotations

from enum import Enum

from mv2mae.shards.protocols import PROTOCOLS, SPLITS


def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    return Enum(name, {v: v for v in values}, type=str)


Protocol = _choices("Protocol", tuple(sorted(PROTOCOLS)))
Split = _choices("Split", (*SPLITS, "val"))  # "val": the validation share carved from train (data.val_by)
Dataset = _choices("Dataset", ("synth", "ntu60", "ntu120", "nucla", "pkummd2", "etri", "manifest"))  # ADAPTERS
Crop = _choices("Crop", ("none", "center", "person"))  # mv2mae.preprocess.crop.CROP_MODES
StoredMotion = _choices("StoredMotion", ("framediff", "flow", "both"))  # preprocess.pipeline.MOTION_CHOICES
Backend = _choices("Backend", ("ffmpeg", "opencv"))  # mv2mae.preprocess.decode.BACKENDS
Overlay = _choices("Overlay", ("auto", "framediff", "flow", "none"))  # shards show: a cached source, or none
ProbeMethod = _choices("ProbeMethod", ("linear", "knn"))  # mv2mae.eval.probe.METHODS
WeightsLayout = _choices("WeightsLayout", ("videomae", "hf"))  # mv2mae.interop.convert's kinds
ExportFormat = _choices("ExportFormat", ("hf",))
ModelPreset = _choices("ModelPreset", ("vit_tiny", "vit_small", "vit_base", "vit_large"))  # ModelConfig presets
