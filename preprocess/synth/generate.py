"""Planning, rendering and writing the synthetic dataset in NTU RGB+D's layout.

A *group* is one action instance (setup S, subject P, replication R, action A) recorded by every
camera. Each group is planned from its own random stream, seeded by (seed, S, P, R, A), so the output
does not depend on the worker count or the order of work. Each camera records a window of the
group's world timeline that starts 0..D frames late and ends 0..D frames early (NTU's views are not
frame-aligned either); the windows are written to ``ground_truth.json``.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import ffmpeg
import imageio_ffmpeg
import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mv2mae.preprocess.synth import render
from mv2mae.preprocess.synth.actions import ACTIONS, FPS, perform
from mv2mae.preprocess.synth.cameras import Camera, facing_camera, facing_yaw, make_rig
from mv2mae.preprocess.synth.skeleton import (
    JOINT_NAMES,
    NTU_TO_OURS,
    Body,
    forward_kinematics,
    make_body,
    place,
)
from mv2mae.shards.atomic import write_atomic

VIDEO_DIR = "nturgb+d_rgb"
SKELETON_DIR = "nturgb+d_skeletons"
GROUND_TRUTH = "ground_truth.json"
CLASSES_FILE = "classes.txt"
GT_VERSION = 1
MAX_MISALIGNMENT = 18  # frames, as the largest start/end difference between NTU views
NOISE_SHIFT = 16  # must match render.noise_bank's margin


@dataclass(frozen=True)
class SynthConfig:
    classes: int = 12
    cameras: int = 3
    subjects: int = 8
    replications: int = 2
    setups: int = 1
    frames: tuple[int, int] = (48, 72)  # world-timeline length range of a clip
    size: tuple[int, int] = (320, 240)  # width, height
    seed: int = 0
    crf: int = 23  # x264 quality: re-rendered frames still match decoded ones closely
    preset: str = "superfast"  # x264 speed: encoding is about half of the cost of a frame
    skeletons: bool = True  # NTU-format .skeleton files (person crops); the bulk of the output's bytes

    def __post_init__(self) -> None:
        lo, hi = self.frames
        w, h = self.size
        checks = [
            (1 <= self.classes <= len(ACTIONS), f"classes must be 1..{len(ACTIONS)}, got {self.classes}"),
            (1 <= self.cameras <= 8, f"cameras must be 1..8, got {self.cameras}"),
            (self.subjects >= 1 and self.replications >= 1 and self.setups >= 1,
             "subjects, replications and setups must be >= 1"),
            (16 <= lo <= hi, f"frames must be MIN:MAX with 16 <= MIN <= MAX, got {lo}:{hi}"),
            (w >= 64 and h >= 48 and w % 2 == 0 and h % 2 == 0,
             f"size must be even and at least 64x48 (H.264 4:2:0), got {w}x{h}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @classmethod
    def from_json(cls, arguments: dict) -> SynthConfig:
        """The config recorded in ``ground_truth.json`` (lists back to tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in arguments.items()})

    @property
    def max_misalignment(self) -> int:
        """Largest start (and end) difference between views; at most a quarter of the shortest clip."""
        return min(MAX_MISALIGNMENT, self.frames[0] // 4)


@dataclass(frozen=True)
class GroupPlan:
    setup: int
    subject: int
    replication: int
    action: int  # 1-based
    body: Body
    room: render.Room
    light: render.Lighting
    joints: np.ndarray  # (world frames, J, 3) world metres
    offsets: dict[int, int]  # camera id -> first world frame of its video
    lengths: dict[int, int]  # camera id -> frame count of its video
    noise: dict[int, np.ndarray]  # camera id -> (world frames, 3) noise-field choices
    facing: int  # camera the subject faces

    @property
    def key(self) -> str:
        return group_key(self.setup, self.subject, self.replication, self.action)


def group_key(setup: int, subject: int, replication: int, action: int) -> str:
    return f"S{setup:03d}P{subject:03d}R{replication:03d}A{action:03d}"


def video_stem(setup: int, camera: int, subject: int, replication: int, action: int) -> str:
    return f"S{setup:03d}C{camera:03d}P{subject:03d}R{replication:03d}A{action:03d}"


def _rng(cfg: SynthConfig, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([cfg.seed, *stream]))


def plan_group(cfg: SynthConfig, setup: int, subject: int, replication: int, action: int) -> GroupPlan:
    rig = make_rig(cfg.cameras, cfg.size)
    body = make_body(_rng(cfg, 1, subject))
    room = render.make_room(_rng(cfg, 2, setup))
    rng = _rng(cfg, 3, setup, subject, replication, action)
    world = int(rng.integers(cfg.frames[0], cfg.frames[1] + 1))
    d = cfg.max_misalignment
    # Mostly small differences, now and then up to d (NTU: median 1 frame, max 18).
    starts = np.floor((d + 1) * rng.random(cfg.cameras) ** 2).astype(int)
    ends = np.floor((d + 1) * rng.random(cfg.cameras) ** 2).astype(int)
    starts, ends = starts - starts.min(), ends - ends.min()  # some camera sees the first/last frame
    facing = facing_camera(replication, cfg.cameras)
    yaw = facing_yaw(rig[facing - 1]) + rng.uniform(-0.15, 0.15)
    origin = rng.uniform(-0.12, 0.12, 2)
    pose = perform(ACTIONS[action - 1], body, world, rng)
    joints = place(forward_kinematics(body, pose), yaw + pose["yaw"], origin)
    light = render.make_lighting(rng)
    noise = {}
    for cam in rig:
        nrng = _rng(cfg, 4, setup, subject, replication, action, cam.id)
        noise[cam.id] = np.stack([nrng.integers(0, 4, world), nrng.integers(0, NOISE_SHIFT, world),
                                  nrng.integers(0, NOISE_SHIFT, world)], -1)
    return GroupPlan(setup=setup, subject=subject, replication=replication, action=action, body=body,
                     room=room, light=light, joints=joints,
                     offsets={c.id: int(starts[i]) for i, c in enumerate(rig)},
                     lengths={c.id: int(world - starts[i] - ends[i]) for i, c in enumerate(rig)},
                     noise=noise, facing=facing)


_BACKGROUNDS: dict[tuple, np.ndarray] = {}


def room_background(cfg: SynthConfig, camera: Camera, plan: GroupPlan) -> np.ndarray:
    """The empty room for (seed, setup, camera, size), ray-cast once per process."""
    key = (cfg.seed, plan.setup, camera.id, cfg.size)
    if key not in _BACKGROUNDS:
        if len(_BACKGROUNDS) > 64:
            _BACKGROUNDS.clear()
        _BACKGROUNDS[key] = render.background(camera, cfg.size, plan.room)
    return _BACKGROUNDS[key]


def render_frames(cfg: SynthConfig, plan: GroupPlan, camera: Camera, world_frames, *, figure: bool = True,
                  noise: bool = True):
    """Yield the rendered BGR frames of ``camera`` at the given world frame indices (``figure`` and
    ``noise`` off give the empty scene / the clean image, for checks)."""
    lit = render.lit_background(room_background(cfg, camera, plan), plan.light)
    style = render.figure_style(camera, plan.body, plan.light)
    for t in world_frames:
        frame = lit.copy()
        if figure:
            render.draw_shadow(frame, camera, plan.joints[t])
            render.draw_figure(frame, camera, plan.joints[t], style)
        yield render.add_noise(frame, plan.noise[camera.id][t], plan.light.noise_sigma) if noise else frame


def _open_encoder(path: Path, cfg: SynthConfig):
    width, height = cfg.size
    stream = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="bgr24", s=f"{width}x{height}", framerate=FPS)
    stream = stream.output(str(path), format="avi", vcodec="libx264", pix_fmt="yuv420p", r=FPS, preset=cfg.preset, crf=cfg.crf,
                           threads=1, fflags="+bitexact", flags="+bitexact")
    stream = stream.global_args("-loglevel", "error", "-nostdin").overwrite_output()
    return stream.run_async(cmd=imageio_ffmpeg.get_ffmpeg_exe(), pipe_stdin=True, pipe_stderr=True)


def _encode(path: Path, frames, cfg: SynthConfig) -> int:
    """Pipe raw BGR frames into the bundled ffmpeg (libx264, yuv420p, 30 fps); one thread, because
    parallelism comes from running many groups at once. Written under a hidden temporary name (which
    no adapter matches) and renamed when complete, so an interrupted run leaves no truncated video."""
    tmp = path.with_name(f".{path.name}.partial")
    proc = _open_encoder(tmp, cfg)
    count = 0
    try:
        for frame in frames:
            proc.stdin.write(frame.tobytes())
            count += 1
    finally:
        proc.stdin.close()
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.wait()
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{path}: ffmpeg failed ({proc.returncode}): {err.splitlines()[-1:] or err}")
    os.replace(tmp, path)
    return count


def skeleton_text(camera: Camera, joints: np.ndarray, body_id: int) -> str:
    """One video's skeleton in NTU's text format (one body per frame, 25 Kinect joints).

    x y z are in the camera's 3D frame with Kinect's axes (x to the camera's left, y up, z forward);
    colorX/colorY are pixel coordinates in this video; depthX/depthY project onto a Kinect-v2-like
    512x424 depth image; orientations are identity quaternions.
    """
    ntu = joints[:, NTU_TO_OURS]
    cam = camera.to_camera(ntu)
    uv, _ = camera.project(ntu)
    depth_uv = cam[..., :2] / cam[..., 2:3] * 365.0 + np.array([256.0, 212.0])
    lines = [str(len(joints))]
    for t in range(len(joints)):
        pelvis, neck = cam[t, 0], cam[t, 2]
        lean = (neck - pelvis)[:2] / max(np.linalg.norm(neck - pelvis), 1e-6)
        lines += ["1", f"{body_id} 0 1 1 1 1 0 {-lean[0]:.6g} {-lean[1]:.6g} 2", "25"]
        for j in range(25):
            x, y, z = cam[t, j]
            lines.append(f"{-x:.7g} {-y:.7g} {z:.7g} {depth_uv[t, j, 0]:.7g} {depth_uv[t, j, 1]:.7g} "
                         f"{uv[t, j, 0]:.7g} {uv[t, j, 1]:.7g} 1 0 0 0 2")
    return "\n".join(lines) + "\n"


def render_group(cfg: SynthConfig, out_dir: str, group: tuple[int, int, int, int]) -> tuple[str, dict, int]:
    """Render, encode and describe one group; returns (key, ground-truth entry, frames written)."""
    cv2.setNumThreads(1)
    plan = plan_group(cfg, *group)
    out = Path(out_dir)
    written = 0
    for camera in make_rig(cfg.cameras, cfg.size):
        stem = video_stem(plan.setup, camera.id, plan.subject, plan.replication, plan.action)
        first, count = plan.offsets[camera.id], plan.lengths[camera.id]
        span = range(first, first + count)
        written += _encode(out / VIDEO_DIR / f"{stem}_rgb.avi", render_frames(cfg, plan, camera, span), cfg)
        body_id = 72057594037927936 + int(stem[1:4]) * 10**6 + int(stem[9:12]) * 10**3 + plan.action
        if cfg.skeletons:
            text = skeleton_text(camera, plan.joints[first:first + count], body_id)
            write_atomic(out / SKELETON_DIR / f"{stem}.skeleton", text, sync=False)
    entry = {
        "label": plan.action - 1, "action": ACTIONS[plan.action - 1].name, "subject": plan.subject,
        "setup": plan.setup, "replication": plan.replication, "world_frames": len(plan.joints),
        "facing_camera": plan.facing,
        "cameras": {f"C{c:03d}": {"offset": plan.offsets[c], "frames": plan.lengths[c]} for c in plan.offsets},
        "joints": plan.joints.round(3).tolist(),
    }
    return plan.key, entry, written


def all_groups(cfg: SynthConfig) -> list[tuple[int, int, int, int]]:
    return [(s, p, r, a) for s in range(1, cfg.setups + 1) for p in range(1, cfg.subjects + 1)
            for r in range(1, cfg.replications + 1) for a in range(1, cfg.classes + 1)]


def _run(cfg: SynthConfig, out_dir: Path, workers: int, progress: bool) -> tuple[dict, int]:
    groups = all_groups(cfg)
    entries, frames = {}, 0
    columns = [TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TextColumn("videos"),
               TimeRemainingColumn()]
    # The pool forks its workers at the first submit: do that before the progress bar starts its
    # refresh thread, so no child inherits a lock that thread holds.
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    if pool is None:
        results = (render_group(cfg, str(out_dir), g) for g in groups)
    else:
        results = (f.result() for f in as_completed([pool.submit(render_group, cfg, str(out_dir), g) for g in groups]))
    try:
        with Progress(*columns, disable=not progress, transient=False) as bar:
            task = bar.add_task("render", total=len(groups) * cfg.cameras)
            for key, entry, n in results:
                entries[key], frames = entry, frames + n
                bar.advance(task, cfg.cameras)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return entries, frames


def generate(out_dir, *, classes: int = 12, cameras: int = 3, subjects: int = 8, replications: int = 2,
             setups: int = 1, frames: tuple[int, int] = (48, 72), size: tuple[int, int] = (320, 240),
             seed: int = 0, workers: int = 1, progress: bool = True, skeletons: bool = True) -> dict:
    """Render the dataset into ``out_dir`` (NTU RGB+D layout + classes.txt + ground_truth.json).

    ``workers`` <= 0 means one process per core; ``skeletons=False`` writes no ``.skeleton`` files."""
    cfg = SynthConfig(classes=classes, cameras=cameras, subjects=subjects, replications=replications,
                      setups=setups, frames=tuple(frames), size=tuple(size), seed=seed, skeletons=skeletons)
    out = Path(out_dir)
    (out / VIDEO_DIR).mkdir(parents=True, exist_ok=True)
    if skeletons:
        (out / SKELETON_DIR).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    entries, total_frames = _run(cfg, out, workers if workers > 0 else (os.cpu_count() or 1), progress)
    rig = make_rig(cfg.cameras, cfg.size)
    truth = {
        "version": GT_VERSION, "seed": cfg.seed, "arguments": asdict(cfg), "fps": FPS,
        "size": list(cfg.size), "joint_names": JOINT_NAMES,
        "cameras": {f"C{c.id:03d}": c.as_json() for c in rig},
        "groups": {key: entries[key] for key in sorted(entries)},
    }
    write_atomic(out / GROUND_TRUTH, json.dumps(truth, separators=(",", ":")))
    write_atomic(out / CLASSES_FILE, "".join(f"{a.name}\n" for a in ACTIONS[:cfg.classes]))
    seconds = time.perf_counter() - start
    return {"videos": len(entries) * cfg.cameras, "groups": len(entries), "frames": total_frames,
            "seconds": round(seconds, 3), "out": str(out)}
