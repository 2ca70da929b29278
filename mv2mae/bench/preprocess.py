"""``mv2mae bench preprocess``: is preprocessing bound by decoding, as it should be?

On 1080p H.264 multi-view videos rendered by ``mv2mae.preprocess.synth``, with the same workers and a warm
process pool for both: the full pipeline (decode + align + JPEG + motion + shard/Zarr writing) against
decode-and-scale-only (the same probe and ffmpeg/OpenCV decode the pipeline does, results dropped) —
the physical ceiling of this stage. Also: output bytes per group, scaling from 1 to N workers, and
ffmpeg vs OpenCV decoding, the measurement behind ``decode.DEFAULT_BACKEND``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mv2mae.preprocess.adapters import GroupSpec, scan
from mv2mae.preprocess.decode import BACKENDS, DEFAULT_BACKEND
from mv2mae.preprocess.group import GroupResult, WorkConfig, decode_views, probe_views
from mv2mae.preprocess.pipeline import Options, make_pool, map_groups, run, work_config
from mv2mae.preprocess.synth import generate

BAR = 0.8  # full pipeline must reach this share of decode-only throughput
SIZE = (1920, 1080)


def decode_only(spec: GroupSpec, cfg: WorkConfig) -> int:
    """What the pipeline does before alignment — probe, crop box, decode + scale — and nothing else."""
    res = GroupResult(key=spec.key, partition=spec.partition)
    decoded = decode_views(probe_views(spec, cfg, res), cfg, res)
    return sum(len(frames) for *_, frames in decoded)


def _render(work: Path, groups: int, frames: int, workers: int) -> Path:
    videos = work / "videos"
    stamp = videos / "bench.json"
    want = {"groups": groups, "frames": frames, "size": list(SIZE)}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return videos
    shutil.rmtree(videos, ignore_errors=True)
    generate(videos, classes=groups, cameras=3, subjects=1, replications=1, setups=1, frames=(frames, frames),
             size=SIZE, seed=0, workers=workers, progress=False)
    stamp.write_text(json.dumps(want))
    return videos


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _time_decode(specs, cfg: WorkConfig, workers: int, pool) -> tuple[float, int]:
    t0 = time.perf_counter()
    frames = sum(map_groups(specs, cfg, workers, pool, fn=decode_only))
    return time.perf_counter() - t0, frames


def _time_full(videos: Path, out: Path, workers: int, pool) -> tuple[float, int]:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    summary = run("synth", videos, out, workers=workers, executor=pool, progress=False)
    seconds = time.perf_counter() - t0
    if summary.failed:
        raise RuntimeError(f"benchmark input broken: {summary.failed} group(s) failed, see {out}/failures.jsonl")
    return seconds, _dir_bytes(out)


def _warm(pool, workers: int) -> None:
    for f in [pool.submit(time.sleep, 0.3) for _ in range(2 * workers)]:
        f.result()


def _backends(specs, cfg: WorkConfig) -> dict[str, Any]:
    """One process, all views: decode + scale to the stored size with each backend."""
    out = {}
    for backend in BACKENDS:
        bcfg = replace(cfg, backend=backend, threads=os.cpu_count() or 1)
        seconds, frames = _time_decode(specs, bcfg, 1, None)
        out[backend] = {"seconds": round(seconds, 3), "frames": frames, "frames_per_s": round(frames / seconds, 1)}
    out["faster"] = max(BACKENDS, key=lambda b: out[b]["frames_per_s"])
    out["default"] = DEFAULT_BACKEND
    return out


def _measure(specs, videos: Path, work: Path, w: int, repeats: int) -> dict[str, Any]:
    """Best of ``repeats`` for each mode, alternating them, on one warm pool of ``w`` workers."""
    cfg = work_config("synth", videos, Options(workers=w))
    pool = make_pool(w) if w > 1 else None
    dec, full = [], []
    try:
        if pool is not None:
            _warm(pool, w)
        for _ in range(repeats):
            dec_s, n_frames = _time_decode(specs, cfg, w, pool)
            full_s, out_bytes = _time_full(videos, work / f"out-{w}", w, pool)
            dec.append(dec_s)
            full.append(full_s)
    finally:
        if pool is not None:
            pool.shutdown()
    dec_s, full_s = min(dec), min(full)
    return {"workers": w, "decode_only_s": round(dec_s, 3), "full_s": round(full_s, 3),
            "decode_only_runs_s": [round(x, 3) for x in dec], "full_runs_s": [round(x, 3) for x in full],
            "decode_only_groups_per_s": round(len(specs) / dec_s, 3), "full_groups_per_s": round(len(specs) / full_s, 3),
            "ratio": round(dec_s / full_s, 3), "stored_frames": n_frames,
            "output_bytes_per_group": int(out_bytes / len(specs))}


def run_bench(groups: int = 4, frames: int = 48, workers: int = 2, work_dir: Path | None = None,
              repeats: int = 3) -> dict[str, Any]:
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="mv2mae-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    videos = _render(work, groups, frames, workers)
    specs = scan("synth", videos).groups
    load_before = os.getloadavg()[0]
    runs = {str(w): _measure(specs, videos, work, w, repeats) for w in sorted({1, workers})}
    figures: dict[str, Any] = {
        "groups": len(specs), "views": sum(len(g.views) for g in specs), "source_size": list(SIZE),
        "cpu_count": os.cpu_count(), "repeats": repeats, "runs": runs, "workers": workers,
        "ratio": runs[str(workers)]["ratio"], "bar": BAR,
        "scaling_1_to_n": round(runs[str(workers)]["full_groups_per_s"] / runs["1"]["full_groups_per_s"], 3),
        "backends": _backends(specs, work_config("synth", videos, Options(workers=1))),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)], "work_dir": str(work)}
    figures["passes_bar"] = figures["ratio"] >= BAR
    return figures


def print_table(fig: dict[str, Any]) -> None:
    table = Table(title=f"preprocess: {fig['groups']} groups x 3 views, 1920x1080 H.264 -> short side 160")
    for col in ("workers", "decode-only groups/s", "full groups/s", "full / decode-only", "bytes/group"):
        table.add_column(col, justify="right")
    for r in fig["runs"].values():
        table.add_row(str(r["workers"]), f"{r['decode_only_groups_per_s']:.3f}", f"{r['full_groups_per_s']:.3f}",
                      f"{r['ratio']:.2f}", f"{r['output_bytes_per_group']:,}")
    console = Console()
    console.print(table)
    b = fig["backends"]
    console.print(f"bar full/decode-only >= {fig['bar']}: {'PASS' if fig['passes_bar'] else 'FAIL'} "
                  f"(ratio {fig['ratio']:.2f} at {fig['workers']} workers); scaling 1 -> {fig['workers']} workers: "
                  f"{fig['scaling_1_to_n']:.2f}x")
    console.print(f"best of {fig['repeats']} runs each; 1-min load average before/after: {fig['load_average_1min']}")
    console.print(f"decode + scale, 1 process: ffmpeg {b['ffmpeg']['frames_per_s']} frames/s, "
                  f"opencv {b['opencv']['frames_per_s']} frames/s -> faster: {b['faster']} (default: {b['default']})")
