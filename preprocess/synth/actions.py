"""Action classes as joint trajectories over time.

Every clip is idle lead-in -> action -> idle lead-out (as NTU clips are), all actions starting from
the same relaxed stance so that only motion tells them apart. Inside the action the motion has a
smooth onset/offset envelope, a subject-specific tempo and range, and per-repetition jitter in
amplitude and phase, so that a clip's motion-energy signal has a distinct, non-periodic profile
(views are aligned later by cross-correlating exactly that signal).

Mirror pairs (wave/punch/kick/side-bend, right and left) share one definition with a side sign:
they differ only by which side moves, which is what makes the viewpoint matter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mv2mae.preprocess.synth.skeleton import Body

FPS = 30


@dataclass(frozen=True)
class Drive:
    """The time signals an action is written in, all arrays of shape (T,) over the world timeline."""

    env: np.ndarray  # 0 in the idle parts, rising smoothly to 1 inside the action
    theta: np.ndarray  # repetition phase, 2*pi per repetition, 0 outside the action
    gain: np.ndarray  # subject amplitude x per-repetition jitter
    side: float  # +1 right, -1 left (mirror pairs); +1 for symmetric actions

    @property
    def cycle(self) -> np.ndarray:
        """0 -> 1 -> 0 once per repetition, gated by the envelope."""
        return self.env * (0.5 - 0.5 * np.cos(self.theta))

    @property
    def hold(self) -> np.ndarray:
        """Into a pose, hold it, and back, once per repetition (bow, squat): sharp onsets, still middle."""
        x = np.clip(1.7 * self.cycle, 0, 1)
        return x * x * (3 - 2 * x)

    @property
    def pulse(self) -> np.ndarray:
        """A sharp strike once per repetition (punch, kick)."""
        return self.env * np.clip(np.sin(self.theta), 0, None) ** 2


def vec(t: int, x: float, y: float, z: float) -> np.ndarray:
    return np.broadcast_to(np.array([x, y, z], float), (t, 3)).copy()


def mix(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Blend two direction tracks (T, 3) with weights (T,); forward kinematics renormalises."""
    return a * (1 - w)[:, None] + b * w[:, None]


def sagittal(side: float, angle: np.ndarray, out: float = 0.04) -> np.ndarray:
    """A leg direction swung ``angle`` radians forward from straight down."""
    return np.stack([np.full_like(angle, side * out), np.sin(angle), -np.cos(angle)], -1)


def rest_pose(t: int) -> dict[str, np.ndarray]:
    zero = np.zeros(t)
    pose = {"pitch": zero.copy(), "roll": zero.copy(), "twist": zero.copy(), "lift": zero.copy(),
            "yaw": zero.copy(), "sway": np.zeros((t, 3))}
    for side, s in (("r", 1.0), ("l", -1.0)):
        pose[f"{side}_upper"] = vec(t, s * 0.16, 0.02, -1)
        pose[f"{side}_fore"] = vec(t, s * 0.10, 0.22, -1)
        pose[f"{side}_thigh"] = vec(t, s * 0.03, 0.0, -1)
        pose[f"{side}_shin"] = vec(t, s * 0.01, -0.01, -1)
    return pose


def _arm(s: float) -> str:
    return "r" if s > 0 else "l"


def _other(s: float) -> str:
    return "l" if s > 0 else "r"


def wave(pose: dict, d: Drive) -> None:
    s, t = d.side, d.env.shape[0]
    swing = 0.55 * d.gain * np.sin(d.theta) + s * 0.15
    arm = _arm(s)
    pose[f"{arm}_upper"] = mix(pose[f"{arm}_upper"], vec(t, s * 0.9, 0.2, 0.35), d.env)
    up = np.stack([s * np.sin(swing), np.full(t, 0.2), np.cos(swing)], -1)
    pose[f"{arm}_fore"] = mix(pose[f"{arm}_fore"], up, d.env)


def punch(pose: dict, d: Drive) -> None:
    s, t = d.side, d.env.shape[0]
    for side in (1.0, -1.0):  # both fists come up to a guard
        arm = _arm(side)
        pose[f"{arm}_upper"] = mix(pose[f"{arm}_upper"], vec(t, side * 0.3, 0.35, -0.9), d.env)
        pose[f"{arm}_fore"] = mix(pose[f"{arm}_fore"], vec(t, -side * 0.2, 0.55, 0.8), d.env)
    arm, strike = _arm(s), np.clip(d.pulse * d.gain, 0, 1)
    pose[f"{arm}_upper"] = mix(pose[f"{arm}_upper"], vec(t, -s * 0.1, 1, 0.12), strike)
    pose[f"{arm}_fore"] = mix(pose[f"{arm}_fore"], vec(t, -s * 0.1, 1, 0.12), strike)
    pose["twist"] += s * 0.35 * strike


def kick(pose: dict, d: Drive) -> None:
    s, t = d.side, d.env.shape[0]
    leg = _arm(s)
    p = d.pulse * d.gain
    chamber = d.env * np.sin(0.5 * d.theta) ** 2  # knee comes up before the leg snaps out
    thigh = 1.35 * np.clip(p + 0.4 * chamber, 0, 1.2)
    pose[f"{leg}_thigh"] = sagittal(s, thigh, 0.08)
    pose[f"{leg}_shin"] = sagittal(s, thigh - 1.1 * chamber * (1 - p), 0.08)
    pose["pitch"] -= 0.18 * p
    for side in (1.0, -1.0):  # arms out for balance, flung up with each kick
        arm = _arm(side)
        pose[f"{arm}_upper"] = mix(pose[f"{arm}_upper"], vec(t, side * 0.6, 0.1, -0.8), d.env)
        pose[f"{arm}_upper"] = mix(pose[f"{arm}_upper"], vec(t, side * 0.8, 0.2, 0.1), 0.7 * p)


def raise_both_arms(pose: dict, d: Drive) -> None:
    t, q = d.env.shape[0], np.clip(d.cycle * (1.6 * d.gain), 0, 1)
    for side in (1.0, -1.0):
        arm = _arm(side)
        pose[f"{arm}_upper"] = mix(pose[f"{arm}_upper"], vec(t, side * 0.28, 0.08, 1), q)
        pose[f"{arm}_fore"] = mix(pose[f"{arm}_fore"], vec(t, side * 0.2, 0.1, 1), q)


def clap(pose: dict, d: Drive) -> None:
    t = d.env.shape[0]
    closed = 0.5 + 0.5 * np.cos(d.theta * 1.0)
    for side in (1.0, -1.0):
        arm = _arm(side)
        pose[f"{arm}_upper"] = mix(pose[f"{arm}_upper"], vec(t, side * 0.35, 0.9, -0.3), d.env)
        fore = mix(vec(t, side * 0.6, 0.8, 0.15), vec(t, -side * 0.8, 0.6, 0.12), closed)
        pose[f"{arm}_fore"] = mix(pose[f"{arm}_fore"], fore, d.env)


def squat(pose: dict, d: Drive) -> None:
    t, q = d.env.shape[0], d.hold * d.gain
    for side in (1.0, -1.0):
        leg, arm = _arm(side), _arm(side)
        pose[f"{leg}_thigh"] = sagittal(side, 1.35 * q, 0.1)
        pose[f"{leg}_shin"] = sagittal(side, -0.55 * q, 0.06)
        pose[f"{arm}_upper"] = mix(pose[f"{arm}_upper"], vec(t, side * 0.15, 1, 0.05), q)
        pose[f"{arm}_fore"] = mix(pose[f"{arm}_fore"], vec(t, side * 0.1, 1, 0.1), q)
    pose["pitch"] += 0.45 * q
    pose["sway"][:, 1] -= 0.12 * q


def jump(pose: dict, d: Drive) -> None:
    t = d.env.shape[0]
    phase = (d.theta / (2 * np.pi)) % 1.0
    air = (phase > 0.4) & (phase < 0.8) & (d.env > 0.3)
    crouch = d.env * np.where(air, 0.0, np.sin(np.pi * np.clip((phase - 0.8) % 1.0 / 0.6, 0, 1)))
    hop = np.where(air, np.sin(np.pi * (phase - 0.4) / 0.4), 0.0) * 0.22 * d.gain * d.env
    for side in (1.0, -1.0):
        leg = _arm(side)
        pose[f"{leg}_thigh"] = sagittal(side, 0.9 * crouch + 0.15 * hop, 0.05)
        pose[f"{leg}_shin"] = sagittal(side, -0.5 * crouch - 0.6 * hop, 0.03)
        swing = np.clip(hop * 4, 0, 1)
        pose[f"{leg}_upper"] = mix(pose[f"{leg}_upper"], vec(t, side * 0.3, 0.5, 0.8), swing)
        pose[f"{leg}_upper"] = mix(pose[f"{leg}_upper"], vec(t, side * 0.2, -0.4, -0.9), crouch * 0.8)
    pose["pitch"] += 0.3 * crouch
    pose["lift"] += hop


def bow(pose: dict, d: Drive) -> None:
    q = d.hold * d.gain
    pitch = 0.95 * q
    pose["pitch"] += pitch
    for side in (1.0, -1.0):  # arms keep hanging under gravity while the torso tilts
        arm = _arm(side)
        pose[f"{arm}_upper"] = np.stack([np.full_like(q, side * 0.12), np.sin(pitch), -np.cos(pitch)], -1)
        pose[f"{arm}_fore"] = np.stack([np.full_like(q, side * 0.05), np.sin(pitch) + 0.15, -np.cos(pitch)], -1)
    pose["sway"][:, 1] -= 0.14 * q


def walk_in_place(pose: dict, d: Drive, scale: float = 1.0) -> None:
    for side in (1.0, -1.0):
        leg = _arm(side)
        step = d.env * np.clip(np.sin(d.theta + (0 if side > 0 else np.pi)), 0, None) * d.gain * scale
        pose[f"{leg}_thigh"] = sagittal(side, 0.85 * step, 0.03)
        pose[f"{leg}_shin"] = sagittal(side, -0.45 * step, 0.01)
        swing = -0.45 * scale * d.env * d.gain * np.sin(d.theta + (0 if side > 0 else np.pi))
        pose[f"{leg}_upper"] = np.stack([np.full_like(swing, side * 0.16), np.sin(swing), -np.cos(swing)], -1)
        pose[f"{leg}_fore"] = np.stack([np.full_like(swing, side * 0.1), np.sin(swing) + 0.25, -np.cos(swing)], -1)


def turn_around(pose: dict, d: Drive) -> None:
    turned = np.cumsum(d.env) / max(float(d.env.sum()), 1e-6)  # 0 -> 1 while the action lasts
    pose["yaw"] += 2 * np.pi * turned
    walk_in_place(pose, d, scale=0.35)


def side_bend(pose: dict, d: Drive) -> None:
    s, t = d.side, d.env.shape[0]
    q = d.hold * d.gain
    pose["roll"] += s * 0.5 * q
    other = _other(s)  # the opposite arm arcs over the head
    pose[f"{other}_upper"] = mix(pose[f"{other}_upper"], vec(t, s * 0.3, 0.0, 1), q)
    pose[f"{other}_fore"] = mix(pose[f"{other}_fore"], vec(t, s * 0.9, 0.0, 0.5), q)


def flap_arms(pose: dict, d: Drive) -> None:
    elevation = -1.25 + 1.55 * np.clip(d.cycle * d.gain, 0, 1.1)
    elevation = np.where(d.env > 0, elevation, -1.25)
    w = np.clip(d.env * 3, 0, 1)
    for side in (1.0, -1.0):
        arm = _arm(side)
        target = np.stack([side * np.cos(elevation), np.full_like(elevation, 0.1), np.sin(elevation)], -1)
        pose[f"{arm}_upper"] = mix(pose[f"{arm}_upper"], target, w)
        pose[f"{arm}_fore"] = mix(pose[f"{arm}_fore"], target, w)


@dataclass(frozen=True)
class Action:
    name: str
    perform: Callable[[dict, Drive], None]
    tempo_hz: float  # repetitions per second at speed 1
    side: float = 1.0


ACTIONS = [
    Action("wave right hand", wave, 2.0, 1.0),
    Action("wave left hand", wave, 2.0, -1.0),
    Action("punch with right hand", punch, 1.3, 1.0),
    Action("punch with left hand", punch, 1.3, -1.0),
    Action("kick with right leg", kick, 0.9, 1.0),
    Action("kick with left leg", kick, 0.9, -1.0),
    Action("raise both arms", raise_both_arms, 0.6),
    Action("clap", clap, 2.2),
    Action("squat", squat, 0.7),
    Action("jump", jump, 1.1),
    Action("bow", bow, 0.55),
    Action("turn around", turn_around, 1.5),
    Action("walk in place", walk_in_place, 1.0),
    Action("bend to the right", side_bend, 0.6, 1.0),
    Action("bend to the left", side_bend, 0.6, -1.0),
    Action("flap arms", flap_arms, 1.4),
]
ACTION_NAMES = [a.name for a in ACTIONS]
MIRROR_PAIRS = [(0, 1), (2, 3), (4, 5), (13, 14)]


def flip_classes(names: list[str]) -> list[int] | None:
    """The class-swap table of a left-right mirror for a dataset of these action names: a mirror pair's
    classes swap, the symmetric actions stay. None when a class is not one of ours or its mirror
    image is not among the classes (then no label says what a mirrored video shows)."""
    mirror = {ACTION_NAMES[a]: ACTION_NAMES[b] for pair in MIRROR_PAIRS for a, b in (pair, pair[::-1])}
    if not set(names) <= set(ACTION_NAMES):
        return None
    images = [mirror.get(name, name) for name in names]
    return [names.index(image) for image in images] if set(images) <= set(names) else None


def smooth_noise(rng: np.random.Generator, u: np.ndarray, waves: int = 3) -> np.ndarray:
    """A smooth random signal in about [-1, 1] over ``u`` in [0, 1] (a few random sinusoids)."""
    out = np.zeros_like(u)
    for _ in range(waves):
        out += np.sin(2 * np.pi * rng.uniform(0.5, 3.0) * u + rng.uniform(0, 2 * np.pi))
    return out / waves


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0, 1)
    return x * x * (3 - 2 * x)


def perform(action: Action, body: Body, frames: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The pose track (see :func:`forward_kinematics`) of one clip of ``frames`` world frames."""
    lead_in = int(round(frames * rng.uniform(0.12, 0.3)))
    lead_out = int(round(frames * rng.uniform(0.08, 0.22)))
    core = frames - lead_in - lead_out
    t = np.arange(frames, dtype=float)
    u = np.clip((t - lead_in) / core, 0, 1)
    ramp = rng.uniform(0.08, 0.16)
    env = _smoothstep(u / ramp) * _smoothstep((1 - u) / ramp)
    reps = max(1, int(round(action.tempo_hz * body.speed * rng.uniform(0.9, 1.1) * core / FPS)))
    # A random, monotonic time warp: the tempo drifts within a clip, so repetitions are not evenly
    # spaced and every repetition still completes inside the action.
    inside = slice(lead_in, lead_in + core)
    steps = 1 + 0.4 * smooth_noise(rng, u[inside])
    warp = np.zeros(frames)
    warp[inside] = np.concatenate([[0.0], np.cumsum(steps[:-1])]) / steps[:-1].sum()
    warp[lead_in + core:] = 1.0
    theta = 2 * np.pi * reps * warp
    gain = body.amplitude * (1 + 0.25 * smooth_noise(rng, u))
    pose = rest_pose(frames)
    action.perform(pose, Drive(env=env, theta=theta, gain=gain, side=action.side))
    # Getting into the action shifts the weight and straightens the back a little, as people do:
    # a whole-body cue at onset and offset that every camera sees, whichever limb then moves.
    pose["sway"][:, 0] -= action.side * 0.03 * env
    pose["pitch"] -= 0.04 * env
    _idle(pose, rng, t)
    return pose


def _idle(pose: dict, rng: np.random.Generator, t: np.ndarray) -> None:
    """Breathing-scale sway, present all the time, so idle frames are alive but nearly still."""
    u = t / max(t[-1], 1.0)
    pose["sway"][:, 0] += 0.012 * smooth_noise(rng, u, 2)
    pose["sway"][:, 1] += 0.008 * smooth_noise(rng, u, 2)
    pose["roll"] += 0.015 * smooth_noise(rng, u, 2)
    pose["pitch"] += 0.012 * smooth_noise(rng, u, 2)
    # A few brief fidgets (a quick hand movement, a little knee dip, a nod) at random moments:
    # small, but sharp in time and partly vertical, so every clip's motion has a signature of its
    # own that all cameras see at the same instant, also in the idle parts.
    for _ in range(int(rng.integers(2, 5))):
        at, width = rng.uniform(0, t[-1]), rng.uniform(1.2, 2.5)
        bump = np.exp(-0.5 * ((t - at) / width) ** 2)
        side = float(rng.choice([-1.0, 1.0]))
        arm = "r" if side > 0 else "l"
        pose[f"{arm}_upper"] = mix(pose[f"{arm}_upper"], vec(len(t), side * 0.6, 0.5, -0.6), 0.5 * bump)
        pose[f"{arm}_fore"] = mix(pose[f"{arm}_fore"], vec(len(t), side * 0.3, 0.9, -0.2), 0.6 * bump)
        pose["sway"][:, 0] += side * 0.03 * bump
        pose["pitch"] += 0.06 * bump
        for leg, s in (("r", 1.0), ("l", -1.0)):
            knee = 0.3 * bump
            pose[f"{leg}_thigh"] = mix(pose[f"{leg}_thigh"], sagittal(s, knee), bump)
            pose[f"{leg}_shin"] = mix(pose[f"{leg}_shin"], sagittal(s, -knee), bump)
