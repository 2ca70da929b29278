"""The fixed sets of values that options take, as enums: Typer checks them, lists them in ``--help`` and
completes them in the shell.

Protocols and splits come from :mod:`mv2mae.shards.protocols`, which imports in milliseconds. The other
sets are written here because their owners load OpenCV or torch, which ``--help`` must not wait for;
``tests/test_cli.py`` checks each against its owner (named beside it).
"""

from __future__ import annotations

from enum import Enum

import typer

from mv2mae.shards.protocols import PROTOCOLS, SPLITS


def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    return Enum(name, {v: v for v in values}, type=str)


class Renamed:
    """Parses an option whose values were renamed: the current names, and for a release the old spellings,
    each read with a one-line note on stderr naming the new one. ``metavar`` and ``complete`` give
    ``--help`` and shell completion the current names only."""

    def __init__(self, option: str, names: tuple[str, ...], old: dict[str, str]) -> None:
        self.option, self.names, self.old = option, names, old
        self.metavar = f"<{'|'.join(names)}>"

    def __call__(self, value: str) -> str:
        if value in self.old:
            typer.echo(f"note: {self.option} {value} is now spelled {self.option} {self.old[value]} (the same "
                       f"output; the old spelling is read until the next release)", err=True)
            value = self.old[value]
        if value not in self.names:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(self.names)}")
        return value

    def complete(self, incomplete: str) -> list[str]:
        return [n for n in self.names if n.startswith(incomplete)]


Protocol = _choices("Protocol", tuple(sorted(PROTOCOLS)))
Split = _choices("Split", (*SPLITS, "val"))  # "val": the validation share carved from train (data.val_by)
Dataset = _choices("Dataset", ("synth", "ntu60", "ntu120", "nucla", "pkummd2", "etri", "manifest"))  # ADAPTERS
Crop = _choices("Crop", ("none", "center", "person"))  # mv2mae.preprocess.crop.CROP_MODES
# preprocess --motion: the motion caches named for who reads them -> the sources each stores, under the names
# index.json and motion.zarr keep (preprocess.pipeline.MOTION_CHOICES): "display" rows are drawn by
# `mv2mae shards show` only (training computes framediff from each clip); "train-flow" is what
# data.motion=flow trains from. The option's old spellings were the stored names.
MOTION_CACHES = {"display": "framediff", "train-flow": "flow", "both": "both"}
MotionCache = Renamed("--motion", tuple(MOTION_CACHES), {"framediff": "display", "flow": "train-flow"})
Backend = _choices("Backend", ("ffmpeg", "opencv"))  # mv2mae.preprocess.decode.BACKENDS
Overlay = _choices("Overlay", ("auto", "framediff", "flow", "none"))  # shards show: a cached source, or none
DecodeOn = _choices("DecodeOn", ("auto", "cpu", "device"))  # mv2mae.data.config.DECODE_ON
ProbeMethod = _choices("ProbeMethod", ("linear", "knn"))  # mv2mae.eval.probe.METHODS
WeightsLayout = _choices("WeightsLayout", ("videomae", "hf"))  # mv2mae.interop.convert's kinds
ExportFormat = _choices("ExportFormat", ("hf",))
ModelPreset = _choices("ModelPreset", ("vit_tiny", "vit_small", "vit_base", "vit_large"))  # ModelConfig presets
