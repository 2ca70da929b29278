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

from mv2mae.data.fingerprint import shards_digest, tree_digest
from mv2mae.preprocess.pipeline import run
from mv2mae.preprocess.synth import generate

SYNTH = dict(classes=3, cameras=2, subjects=2, replications=1, setups=1, frames=(24, 30), size=(96, 72), seed=5)
PREPROCESS = dict(size=48, fps=15, crop="person")

# Recorded 2026-12-07 on the AMD EPYC (Zen 5) box, OPENBLAS_CORETYPE=Haswell.
TOOLS = {"ffmpeg": "0.8.1", "opencv": "5.1.0", "numpy": "2.4.6", "zarr": "3.1.6"}
GOLDEN = {
    "raw videos": "74fc65c1294f3a08e40129df03c0d4073b45045152c216d6598520db8a33a43d",
    "raw skeletons": "485b809312c631e20b2d81bdb6836403f4b46c038b610ec3e357c5137ea4dbf9",
    "shards": "60e966a990f0b26ea69a3a0e344ae51b50fb1372ba54eb1e816147ce1730cf00",
    "motion cache": "24c5972ad4e02bf4bdb860c1bb47d6acdc3e601ed5ea4710c823a8257daccc5c",
}


def tool_versions() -> dict[str, str]:
    return {"ffmpeg": imageio_ffmpeg.__version__, "opencv": cv2.__version__, "numpy": np.__version__,
            "zarr": zarr.__version__}


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
        "raw videos": tree_digest(raw / "nturgb+d_rgb")["sha256"],
        "raw skeletons": tree_digest(raw / "nturgb+d_skeletons")["sha256"],
        "shards": shards_digest(data)["sha256"],  # over the manifest's checksums, checked above against the files
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
