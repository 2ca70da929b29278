"""Fingerprints: what a number was computed from, recorded beside it so two results can be compared before
they are believed.

- ``shards_digest``: one sha256 over the shard checksums ``index.json`` already holds (no data re-read).
  It covers the shards (frames, labels, metadata), not the motion cache beside them.
- ``tree_digest``: one sha256 over a folder's sorted relative paths and file bytes, streamed (the raw
  videos a dataset was preprocessed from).
- ``numerics``: the machine and libraries the arithmetic ran on: CPU model and flags, torch's version, CPU
  capability, BLAS/LAPACK/OpenMP build and thread counts, numpy's BLAS, OpenCV's version and SIMD dispatch,
  ffmpeg's version and the environment variables that change any of them.

``differences`` lists where two records disagree, path by path.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import imageio_ffmpeg
import numpy as np
import torch

from mv2mae.shards.atomic import write_atomic
from mv2mae.shards.schema import read_index

FINGERPRINT_FILE = "fingerprint.json"  # beside a training run's config.yaml
# environment variables that change which kernels run, with how many threads, or how they round
ENV_PREFIXES = ("OPENBLAS_", "OMP_", "MKL_", "GOTO", "KMP_", "OPENCV_", "ATEN_", "DNNL_", "ONEDNN_")
ENV_NAMES = ("CUDA_VISIBLE_DEVICES", "CUBLAS_WORKSPACE_CONFIG", "PYTHONHASHSEED", "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE")
_TORCH_CONFIG = re.compile(r"(Math Kernel Library|MKL-DNN|OpenMP|LAPACK|NNPACK|CPU capability)")
_TORCH_BUILD = ("BLAS_INFO", "LAPACK_INFO", "USE_MKL", "USE_MKLDNN", "USE_OPENMP", "TORCH_VERSION")
_OPENCV_LINES = ("General configuration for OpenCV", "Baseline:", "requested:", "Dispatched code generation:",
                 "Parallel framework:", "Lapack:", "JPEG:", "FFMPEG:")
_BLOCK = 1 << 20
_CPUINFO = {"model name": "model", "vendor_id": "vendor", "cpu family": "family", "model": "model_number",
            "stepping": "stepping", "microcode": "microcode", "cache size": "cache", "flags": "flags"}


def shards_digest(root: str | Path) -> dict[str, Any]:
    """sha256 over ``name sha256`` of every shard in ``root``'s index.json, sorted by name."""
    index = read_index(root)
    h = hashlib.sha256()
    for shard in sorted(index.shards, key=lambda s: s.name):
        h.update(f"{shard.name} {shard.sha256}\n".encode())
    return {"sha256": h.hexdigest(), "shards": len(index.shards), "groups": index.groups}


def _files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix()):
        if path.is_file():
            yield path


def tree_digest(folder: str | Path) -> dict[str, Any]:
    """sha256 over every file under ``folder``: its relative path, its size, then its bytes."""
    folder = Path(folder)
    h, files, size = hashlib.sha256(), 0, 0
    for path in _files(folder):
        n = path.stat().st_size
        h.update(f"{path.relative_to(folder).as_posix()}\0{n}\0".encode())
        with path.open("rb") as f:
            while block := f.read(_BLOCK):
                h.update(block)
        files, size = files + 1, size + n
    return {"sha256": h.hexdigest(), "files": files, "bytes": size}


def data_fingerprint(root: str | Path, raw: str | Path | None = None) -> dict[str, Any]:
    """The shards of ``root`` and, when given and present, the raw folder they were made from."""
    record: dict[str, Any] = {"shards": shards_digest(root)}
    if raw is not None and Path(raw).is_dir():
        record["raw"] = tree_digest(raw)
    return record


def cpu() -> dict[str, Any]:
    """The first processor's identity and feature flags (/proc/cpuinfo on Linux, ``platform`` elsewhere)."""
    found: dict[str, Any] = {"model": platform.processor() or platform.machine(), "machine": platform.machine()}
    first = _first_cpuinfo()
    if first is None:
        return found
    fields = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in first.splitlines())}
    for key, name in _CPUINFO.items():
        if key in fields:
            found[name] = " ".join(sorted(fields[key].split())) if name == "flags" else fields[key]
    return found


# What cannot change within a process is read once per process: a study records a fingerprint for each of
# its ~100 stages, and ``ffmpeg -version`` is a subprocess. Thread counts and the environment stay live.
@functools.cache
def _first_cpuinfo() -> str | None:
    info = Path("/proc/cpuinfo")
    return info.read_text().split("\n\n", 1)[0] if info.is_file() else None


@functools.cache
def _torch_config() -> str:
    return torch.__config__.show()


@functools.cache
def _opencv_build() -> tuple[str, ...]:
    return tuple(" ".join(line.split()) for line in cv2.getBuildInformation().splitlines()
                 if line.strip().startswith(_OPENCV_LINES))


def torch_numerics() -> dict[str, Any]:
    """torch's version, CPU capability (``ATEN_CPU_CAPABILITY`` lowers it), BLAS/OpenMP build and threads."""
    shown = _torch_config()
    build = {}
    for part in shown.split("Build settings:", 1)[-1].split(","):
        key, _, value = part.strip().partition("=")
        if key in _TORCH_BUILD:
            build[key] = value.strip()
    return {"version": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "libraries": [line.strip(" -") for line in shown.splitlines() if _TORCH_CONFIG.search(line)
                          and "Build settings" not in line],
            "build": build, "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None}


def numpy_numerics() -> dict[str, Any]:
    """numpy's version, the BLAS/LAPACK it was built with and its SIMD baseline and dispatch (numpy >= 1.26)."""
    config = getattr(np.__config__, "CONFIG", {})
    deps = config.get("Build Dependencies", {})
    found: dict[str, Any] = {"version": np.__version__, "simd": config.get("SIMD Extensions")}
    for lib in ("blas", "lapack"):
        if lib in deps:
            found[lib] = {f: deps[lib][f] for f in ("name", "version", "openblas configuration") if f in deps[lib]}
    return found


def opencv_numerics() -> dict[str, Any]:
    """OpenCV's version, SIMD baseline and dispatched code paths, threads, JPEG and FFMPEG backends."""
    return {"version": cv2.__version__, "build": list(_opencv_build()), "threads": cv2.getNumThreads(),
            "optimized": cv2.useOptimized()}


@functools.cache
def ffmpeg_version() -> str | None:
    """The first line of ``ffmpeg -version`` of the binary imageio-ffmpeg runs (None when it cannot)."""
    try:
        result = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-version"], capture_output=True, text=True,
                                timeout=20)
    except (OSError, RuntimeError, subprocess.SubprocessError):
        return None
    return result.stdout.splitlines()[0] if result.returncode == 0 and result.stdout else None


def numerics_environment() -> dict[str, str]:
    """The environment variables, set in this process, that change which kernels run and how."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES) or k in ENV_NAMES}


def numerics() -> dict[str, Any]:
    """Everything above about this machine and process, JSON-able."""
    return {"cpu": cpu(), "platform": platform.platform(), "python": platform.python_version(),
            "cores": os.cpu_count(), "torch": torch_numerics(), "numpy": numpy_numerics(),
            "opencv": opencv_numerics(), "ffmpeg": ffmpeg_version(), "environment": numerics_environment()}


def fingerprint(root: str | Path | None = None, raw: str | Path | None = None) -> dict[str, Any]:
    """``{"data": ..., "numerics": ...}`` (data only when a preprocessed ``root`` is given)."""
    record: dict[str, Any] = {}
    if root is not None and (Path(root) / "index.json").is_file():
        record["data"] = data_fingerprint(root, raw)
    record["numerics"] = numerics()
    return record


def record_run_fingerprint(run_dir: Path, root: str | Path | None, step: int) -> None:
    """Append this start's fingerprint to ``run_dir/fingerprint.json`` (a list, one entry per start that
    differs from the previous one: a run resumed on another machine shows both)."""
    path = run_dir / FINGERPRINT_FILE
    starts = json.loads(path.read_text()) if path.is_file() else []
    now = fingerprint(root)
    if not starts or {k: v for k, v in starts[-1].items() if k != "step"} != now:
        starts.append({"step": step, **now})
        write_atomic(path, json.dumps(starts, indent=1) + "\n")


def summary(record: dict[str, Any]) -> str:
    """One line: the data's digests (when recorded), the CPU, torch's capability and numpy's BLAS."""
    parts = []
    data, num = record.get("data"), record["numerics"]
    if data:
        parts.append(f"shards sha256 {data['shards']['sha256'][:12]} ({data['shards']['groups']} groups)"
                     + (f", raw {data['raw']['sha256'][:12]} ({data['raw']['files']} files)" if "raw" in data else ""))
    parts.append(f"{num['cpu']['model']}, torch {num['torch']['version']} CPU capability "
                 f"{num['torch']['cpu_capability']}, numpy BLAS {num['numpy'].get('blas', {}).get('name', '?')}"
                 + "".join(f", {k}={v}" for k, v in num["environment"].items() if k.startswith(("OPENBLAS_", "ATEN_"))))
    return "; ".join(parts)


def differences(old: Any, new: Any, where: str = "") -> list[tuple[str, Any, Any]]:
    """(path, old value, new value) for every leaf where two JSON records differ; CPU flags are compared as
    sets (the path says which flags only one side has)."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new), key=str):
            found += differences(old.get(key), new.get(key), f"{where}.{key}" if where else str(key))
        return found
    if old == new:
        return []
    if where.endswith("cpu.flags") and isinstance(old, str) and isinstance(new, str):
        a, b = set(old.split()), set(new.split())
        return [(where, " ".join(sorted(a - b)) or "-", " ".join(sorted(b - a)) or "-")]
    return [(where, old, new)]
