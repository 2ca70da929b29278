"""A tiny real dataset for the loader and tool tests: rendered by ``mv2mae.preprocess.synth``, preprocessed by
``mv2mae.preprocess.pipeline`` into real tar shards and a real Zarr cache. Built once per session (the
directory under pytest's session temp root is reused by every module that asks for it)."""

from __future__ import annotations

import shutil
from pathlib import Path

from mv2mae.preprocess.pipeline import run
from mv2mae.preprocess.synth import generate

SYNTH = dict(classes=3, cameras=3, subjects=2, replications=1, setups=2, frames=(20, 28), size=(96, 72), seed=0)
SHORT_SIDE = 64


def build_synth_data(base: Path) -> Path:
    data = base / "data"
    if (data / "index.json").is_file():
        return data
    raw = base / "raw"
    shutil.rmtree(raw, ignore_errors=True)
    shutil.rmtree(data, ignore_errors=True)
    generate(raw, workers=2, progress=False, **SYNTH)
    run("synth", raw, data, size=SHORT_SIDE, workers=2)
    return data


def session_synth_data(tmp_path_factory) -> Path:
    """The shared dataset under this session's temp root (a module fixture calls this)."""
    return build_synth_data(tmp_path_factory.getbasetemp() / "synth-shards")
