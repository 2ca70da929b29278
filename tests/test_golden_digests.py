"""Golden digests: rendering and preprocessing give the same bytes on every x86 machine.

The cross-view study's first published numbers came from a dataset folder an older version of the code
had rendered and preprocessed (issue 24): the same plan then gave other numbers on a fresh box. Data
must therefore be a pure function of the arguments and the pinned tool versions (`constraints.txt`):
x264 runs single-threaded with ``+bitexact``; ffmpeg's decoding and ``area`` scaling and OpenCV's resize
and JPEG encoding gave identical bytes with their SIMD paths switched off (``-cpuflags 0``,
``OPENCV_CPU_DISABLE=AVX2,FMA3,AVX,...``) on the AMD EPYC box where these digests were recorded, and the
study's untrained-encoder probes came out identical on an Intel Xeon. This test renders a tiny set and
preprocesses it, then compares stage by stage — raw videos, skeletons, shards, motion cache — so a
difference names the first stage that moved.

When a pinned tool is upgraded on purpose, the digests change with it: run this module with
``MV2MAE_RECORD_GOLDEN=1`` and paste the printed table over ``GOLDEN`` (the versions beside it say
which tools produced it).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import pytest
import zarr

from mv2mae.preprocess.pipeline import run
from mv2mae.preprocess.synth import generate

SYNTH = dict(classes=3, cameras=2, subjects=2, replications=1, setups=1, frames=(24, 30), size=(96, 72), seed=5)
PREPROCESS = dict(size=48, fps=15, crop="person")

# Recorded 2026-12-07 on the AMD EPYC (Zen 5) box, OPENBLAS_CORETYPE=Haswell.
TOOLS = {"ffmpeg": "0.8.1", "opencv": "5.1.0", "numpy": "2.4.6", "zarr": "3.1.6"}
GOLDEN = {
    "raw videos": "947ef8c47f5e407e4d7b1e8c8d075ead625e494cb2b3f887103a1238701ffa46",
    "raw skeletons": "ced5c636098f2a7c4b7212fbbbb893c2fce9eb1e0068102da2af25d13a377c09",
    "shards": "e75442df54c010e876f6ad1f107836fe60a022d307d86aab0fdb47c6c39c8eab",
    "motion cache": "24c5972ad4e02bf4bdb860c1bb47d6acdc3e601ed5ea4710c823a8257daccc5c",
}


def tool_versions() -> dict[str, str]:
    return {"ffmpeg": imageio_ffmpeg.__version__, "opencv": cv2.__version__, "numpy": np.__version__,
            "zarr": zarr.__version__}


def files_digest(files: list[Path], root: Path) -> str:
    """sha256 over each file's path relative to ``root`` and its bytes, in path order."""
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def motion_digest(store: Path) -> str:
    """sha256 over every motion array's name, dtype, shape and values (not zarr's file layout)."""
    h = hashlib.sha256()
    root = zarr.open_group(str(store), mode="r")
    for stem in sorted(root.group_keys()):
        for source, array in sorted(root[stem].arrays(), key=lambda kv: kv[0]):
            values = np.asarray(array[...])
            h.update(f"{stem}/{source} {values.dtype} {values.shape}".encode())
            h.update(np.ascontiguousarray(values).tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def digests(tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("golden")
    raw, data = base / "raw", base / "data"
    generate(raw, workers=1, progress=False, **SYNTH)
    run("synth", raw, data, workers=1, progress=False, **PREPROCESS)
    index = json.loads((data / "index.json").read_text())
    shards = [data / s["name"] for s in index["shards"]]
    for shard, entry in zip(shards, index["shards"], strict=True):  # the manifest's checksums are the files'
        assert hashlib.sha256(shard.read_bytes()).hexdigest() == entry["sha256"], shard
    return {
        "raw videos": files_digest(list((raw / "nturgb+d_rgb").iterdir()), raw),
        "raw skeletons": files_digest(list((raw / "nturgb+d_skeletons").iterdir()), raw),
        "shards": files_digest(shards, data),
        "motion cache": motion_digest(data / "motion.zarr"),
    }


def test_rendering_and_preprocessing_are_bit_stable(digests):
    if os.environ.get("MV2MAE_RECORD_GOLDEN"):
        pytest.skip(f"recording: TOOLS = {tool_versions()}\nGOLDEN = {json.dumps(digests, indent=4)}")
    versions = tool_versions()
    assert versions == TOOLS, (f"the golden digests were recorded with {TOOLS}, this environment has {versions}: "
                               f"install with constraints.txt (make setup does), or re-record (module docstring)")
    moved = [stage for stage in GOLDEN if digests[stage] != GOLDEN[stage]]
    assert not moved, (f"first stage whose bytes differ from the golden digests: {moved[0]} (all that differ: "
                       f"{', '.join(moved)}); this machine's data would not reproduce a published result")
