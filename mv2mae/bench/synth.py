"""Throughput of the synthetic generator: rendered frames per second per core.

"Per core" is frames divided by CPU seconds (this process plus its ffmpeg children), so the figure
does not depend on how busy the machine is, and multiplies by the worker count on idle cores.
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import cv2

from mv2mae.preprocess.synth.cameras import make_rig
from mv2mae.preprocess.synth.generate import (
    SKELETON_DIR,
    VIDEO_DIR,
    SynthConfig,
    plan_group,
    render_frames,
    render_group,
    room_background,
)


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def bench_size(size: tuple[int, int], groups: int, seed: int = 0) -> dict:
    """Render ``groups`` groups (3 cameras) at ``size``: rendering alone, then render + encode + write."""
    cfg = SynthConfig(size=size, seed=seed)
    keys = [(1, 1 + i // cfg.classes, 1, 1 + i % cfg.classes) for i in range(groups)]
    rig = make_rig(cfg.cameras, cfg.size)
    start = time.perf_counter()
    for cam in rig:  # the static room is ray-cast once per camera and process; time it apart
        room_background(cfg, cam, plan_group(cfg, *keys[0]))
    background_s = (time.perf_counter() - start) / len(rig)

    cpu, frames = _cpu_seconds(), 0
    for key in keys:
        plan = plan_group(cfg, *key)
        for cam in rig:
            for _ in render_frames(cfg, plan, cam, range(plan.offsets[cam.id], plan.offsets[cam.id] + plan.lengths[cam.id])):
                frames += 1
    render_cpu = _cpu_seconds() - cpu

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / VIDEO_DIR).mkdir()
        (Path(tmp) / SKELETON_DIR).mkdir()
        cpu, wall, written = _cpu_seconds(), time.perf_counter(), 0
        for key in keys:
            written += render_group(cfg, tmp, key)[2]
        full_cpu, full_wall = _cpu_seconds() - cpu, time.perf_counter() - wall
    return {
        "size": f"{size[0]}x{size[1]}", "groups": groups, "frames": frames,
        "render_fps_per_core": round(frames / render_cpu, 1),
        "end_to_end_fps_per_core": round(written / full_cpu, 1),
        "end_to_end_fps_wall": round(written / full_wall, 1),
        "background_ms_per_camera": round(background_s * 1000, 1),
    }


def benchmark(sizes: list[tuple[int, int]], groups: list[int]) -> dict:
    cv2.setNumThreads(1)
    rows = [bench_size(size, n) for size, n in zip(sizes, groups, strict=True)]
    return {"benchmark": "synth", "unit": "frames/s per core (CPU time incl. ffmpeg)", "rows": rows}
