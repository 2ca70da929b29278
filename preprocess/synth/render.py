"""Rasterising a scene: a textured room seen in perspective, the figure as shaded capsules, a contact
shadow, per-clip lighting and sensor noise. OpenCV primitives + numpy only (fast on CPU).

The room background depends only on (setup, camera), so it is ray-cast once per worker and reused;
per frame the cost is one copy, ~50 antialiased thick lines/circles, a shadow and the noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from mv2mae.preprocess.synth.cameras import Camera
from mv2mae.preprocess.synth.skeleton import BONES, JOINT_NAMES, Body

ROOM_HALF = 5.0  # the room spans [-5, 5] m in x and y
ROOM_HEIGHT = 3.0
TILE = 0.6  # floor tile size, metres
SHIFT = 4  # sub-pixel bits for OpenCV drawing
_J = {n: i for i, n in enumerate(JOINT_NAMES)}
_BONES = [(_J[a], _J[b], radius, part) for a, b, radius, part in BONES]


@dataclass(frozen=True)
class Room:
    """Colours of one setup's room (BGR, 0-255 floats)."""

    floor_a: np.ndarray
    floor_b: np.ndarray
    walls: np.ndarray  # (4, 3): walls at +y, -y, +x, -x
    ceiling: np.ndarray
    decor_seed: int


@dataclass(frozen=True)
class Lighting:
    """One clip's lighting: overall gain, colour tint, and the key light's direction (world, unit)."""

    gain: float
    tint: np.ndarray  # (3,) multiplies B, G, R
    direction: np.ndarray  # (3,) from the scene towards the light
    noise_sigma: float


def make_room(rng: np.random.Generator) -> Room:
    def color(lo: float, hi: float) -> np.ndarray:
        base = rng.uniform(lo, hi)
        return np.clip(base * rng.uniform(0.75, 1.2, 3), 0, 255)

    floor_a = color(70, 170)
    walls = np.stack([color(120, 220) for _ in range(4)])
    return Room(floor_a=floor_a, floor_b=floor_a * rng.uniform(0.7, 0.9), walls=walls,
                ceiling=color(190, 235), decor_seed=int(rng.integers(2**31)))


def make_lighting(rng: np.random.Generator) -> Lighting:
    azimuth, elevation = rng.uniform(0, 2 * np.pi), rng.uniform(0.6, 1.2)
    direction = np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth),
                          np.sin(elevation)])
    return Lighting(gain=float(rng.uniform(0.8, 1.15)), tint=rng.uniform(0.92, 1.08, 3),
                    direction=direction, noise_sigma=float(rng.choice(NOISE_LEVELS)))


def _hash(i: np.ndarray, j: np.ndarray, salt: float) -> np.ndarray:
    """A cheap deterministic per-cell random number in [0, 1)."""
    v = np.sin(i * 12.9898 + j * 78.233 + salt * 0.12345) * 43758.5453
    return v - np.floor(v)


def _rays(camera: Camera, size: tuple[int, int], scale: int) -> tuple[np.ndarray, np.ndarray]:
    w, h = size[0] * scale, size[1] * scale
    u, v = np.meshgrid((np.arange(w, dtype=np.float32) + 0.5) / scale, (np.arange(h, dtype=np.float32) + 0.5) / scale)
    k_inv = np.linalg.inv(camera.K).astype(np.float32)
    pix = np.stack([u, v, np.ones_like(u)], -1)
    dirs = pix @ (camera.R.T.astype(np.float32) @ k_inv).T
    return camera.position.astype(np.float32), dirs


def _room_hits(origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit of every ray with the room box: hit points (H, W, 3) and the surface index
    (0 floor, 1 ceiling, 2..5 walls at +y, -y, +x, -x)."""
    planes = [(2, 0.0), (2, ROOM_HEIGHT), (1, ROOM_HALF), (1, -ROOM_HALF), (0, ROOM_HALF), (0, -ROOM_HALF)]
    best = np.full(dirs.shape[:2], np.inf, np.float32)
    surface = np.zeros(dirs.shape[:2], np.int8)
    with np.errstate(divide="ignore", invalid="ignore"):
        for index, (axis, value) in enumerate(planes):
            dist = (value - origin[axis]) / dirs[..., axis]
            better = (dist > 0) & (dist < best)
            best = np.where(better, dist, best)
            surface[better] = index
    return origin + dirs * best[..., None], surface


def _floor(points: np.ndarray, room: Room) -> np.ndarray:
    x, y = points[..., 0], points[..., 1]
    i, j = np.floor(x / TILE), np.floor(y / TILE)
    checker = ((i + j) % 2)[..., None]
    base = room.floor_a * (1 - checker) + room.floor_b * checker
    base = base * (0.9 + 0.2 * _hash(i, j, room.decor_seed % 97))[..., None]
    fx, fy = x / TILE - i, y / TILE - j
    grout = (np.minimum(np.minimum(fx, 1 - fx), np.minimum(fy, 1 - fy)) < 0.03)[..., None]
    base = np.where(grout, base * 0.55, base)
    spot = 0.65 + 0.45 * np.exp(-(x**2 + y**2) / 10.0)  # a ceiling lamp above the stage
    return base * spot[..., None]


def _wall(points: np.ndarray, surface: np.ndarray, room: Room) -> np.ndarray:
    along = np.where(surface >= 4, points[..., 1], points[..., 0])
    z = points[..., 2]
    base = room.walls[np.clip(surface - 2, 0, 3)]
    panel = (np.abs(((along / 1.25) % 1.0) - 0.5) > 0.485)[..., None]  # vertical panel seams
    base = np.where(panel, base * 0.8, base)
    base = np.where((z < 0.12)[..., None], base * 0.45, base)  # skirting board
    rng = np.random.default_rng(room.decor_seed)
    for wall in range(2, 6):  # a few doors, windows and posters per wall
        for _ in range(int(rng.integers(1, 4))):
            c, w = rng.uniform(-3.8, 3.8), rng.uniform(0.5, 1.6)
            z0, hgt = rng.choice([0.0, rng.uniform(0.8, 1.4)]), rng.uniform(0.6, 1.9)
            color = rng.uniform(30, 240, 3)
            inside = (surface == wall) & (np.abs(along - c) < w / 2) & (z > z0) & (z < z0 + hgt)
            base = np.where(inside[..., None], color, base)
            frame = (surface == wall) & ~inside & (np.abs(along - c) < w / 2 + 0.04) & (z > z0 - 0.04) \
                & (z < z0 + hgt + 0.04)
            base = np.where(frame[..., None], color * 0.4, base)
    shade = 1.05 - 0.25 * np.clip(z / ROOM_HEIGHT, 0, 1)
    return base * shade[..., None]


def _ceiling(points: np.ndarray, room: Room) -> np.ndarray:
    x, y = points[..., 0], points[..., 1]
    lamp = (np.abs(((x / 2.0) % 1.0) - 0.5) < 0.15) & (np.abs(((y / 2.0) % 1.0) - 0.5) < 0.25)
    return np.where(lamp[..., None], np.array([250.0, 252, 255]), room.ceiling * 0.85)


def background(camera: Camera, size: tuple[int, int], room: Room) -> np.ndarray:
    """The empty room seen by ``camera`` (H, W, 3) uint8, supersampled 2x at small sizes."""
    scale = 2 if size[0] * size[1] <= 640 * 480 else 1
    origin, dirs = _rays(camera, size, scale)
    points, surface = _room_hits(origin, dirs)
    img = np.where((surface == 0)[..., None], _floor(points, room), 0.0)
    img = np.where((surface == 1)[..., None], _ceiling(points, room), img)
    img = np.where((surface >= 2)[..., None], _wall(points, surface, room), img)
    grain = np.random.default_rng(room.decor_seed).normal(1.0, 0.035, img.shape[:2])[..., None]
    img = np.clip(img * grain, 0, 255).astype(np.uint8)
    if scale > 1:
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    return img


def lit_background(bg: np.ndarray, light: Lighting) -> np.ndarray:
    return np.clip(bg.astype(np.float32) * (light.gain * light.tint), 0, 255).astype(np.uint8)


NOISE_LEVELS = (2.0, 2.5, 3.0)  # sensor-noise sigmas a clip can draw from


@lru_cache(maxsize=8)
def noise_bank(size: tuple[int, int], sigma: float, count: int = 4, margin: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian noise fields split in positive/negative uint8 parts, so that per frame noise costs two
    saturating adds of a randomly shifted window (a fresh field per frame would dominate the cost)."""
    rng = np.random.default_rng(20240115)
    n = rng.standard_normal((count, size[1] + margin, size[0] + margin, 3), dtype=np.float32) * sigma
    n = np.round(n)
    return np.clip(n, 0, 255).astype(np.uint8), np.clip(-n, 0, 255).astype(np.uint8)


def add_noise(frame: np.ndarray, choice: np.ndarray, sigma: float) -> np.ndarray:
    """``choice`` = (bank index, dx, dy) drawn per frame."""
    h, w = frame.shape[:2]
    pos, neg = noise_bank((w, h), sigma)
    k, dx, dy = (int(c) for c in choice)
    return cv2.subtract(cv2.add(frame, pos[k, dy:dy + h, dx:dx + w]), neg[k, dy:dy + h, dx:dx + w])


# A shaded capsule/disc is three concentric strokes: dark rim, mid tone, highlight, each shifted
# towards the light by a fraction of the radius (a cheap cylinder/sphere shading).
_LAYER_SCALE = np.array([1.0, 0.72, 0.34])
_LAYER_SHIFT = np.array([0.0, 0.22, 0.45])
_LAYER_TONE = np.array([0.0, 0.85, 1.12])  # the rim tone depends on the light (set per clip)


@dataclass(frozen=True)
class FigureStyle:
    """Everything about drawing the figure that is fixed for one clip seen by one camera."""

    bone_radius: np.ndarray  # (B,) metres
    bone_shades: list  # per bone: three BGR tuples
    head_radius: float
    head_shades: dict  # "hair"/"skin" -> three BGR tuples
    offset: np.ndarray  # (2,) image direction towards the light


def figure_style(camera: Camera, body: Body, light: Lighting) -> FigureStyle:
    light_cam = camera.R @ light.direction
    offset = light_cam[:2] / max(np.linalg.norm(light_cam[:2]), 1e-6)
    facing = float(np.clip(-light_cam[2], -1, 1))  # how much the lit side faces the camera
    tones = _LAYER_TONE.copy()
    tones[0] = 0.45 + 0.2 * facing

    def shades(part: str) -> list:
        color = np.asarray(body.colors[part], float) * light.gain * light.tint
        return [tuple(float(c) for c in np.clip(color * f, 0, 255)) for f in tones]

    return FigureStyle(bone_radius=np.array([body.radii[r] for _, _, r, _ in _BONES]),
                       bone_shades=[shades(part) for *_, part in _BONES], head_radius=body.radii["head"],
                       head_shades={"hair": shades("hair"), "skin": shades("skin")}, offset=offset)


def draw_shadow(img: np.ndarray, camera: Camera, joints: np.ndarray) -> None:
    """A soft contact shadow on the floor under the figure (darkens, does not paint)."""
    feet = joints[[_J["r_ankle"], _J["l_ankle"], _J["r_toe"], _J["l_toe"], _J["pelvis"]], :2]
    centre = feet.mean(0)
    spread = np.maximum([0.25, 0.2], (np.ptp(feet, axis=0) + 0.2) / 1.5)
    ring = np.stack([centre[0] + spread[0] * _RING[0], centre[1] + spread[1] * _RING[1], np.zeros(len(_RING[0]))], -1)
    uv, z = camera.project(ring)
    if (z <= 0).any():
        return
    h, w = img.shape[:2]
    pad = max(4, h // 40)
    x0, y0 = np.maximum(np.floor(uv.min(0)).astype(int) - pad, 0)
    x1, y1 = np.minimum(np.ceil(uv.max(0)).astype(int) + pad, [w, h])
    if x1 <= x0 or y1 <= y0:
        return
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    pts = np.round((uv - [x0, y0]) * (1 << SHIFT)).astype(np.int32)
    cv2.fillPoly(mask, [pts], 110, cv2.LINE_AA, SHIFT)
    k = 2 * (pad // 2) + 1
    keep = 255 - cv2.GaussianBlur(mask, (k, k), 0)
    img[y0:y1, x0:x1] = cv2.multiply(img[y0:y1, x0:x1], cv2.merge([keep] * 3), scale=1 / 255)


_RING = (np.cos(np.linspace(0, 2 * np.pi, 24, endpoint=False)), np.sin(np.linspace(0, 2 * np.pi, 24, endpoint=False)))
_BONE_A = np.array([a for a, _, _, _ in _BONES])
_BONE_B = np.array([b for _, b, _, _ in _BONES])


def draw_figure(img: np.ndarray, camera: Camera, joints: np.ndarray, style: FigureStyle) -> None:
    """Draw the figure of one frame (joints (J, 3), world) onto ``img`` in place, far parts first."""
    uv, depth = camera.project(joints)
    focal = camera.K[0, 0]
    bone_depth = (depth[_BONE_A] + depth[_BONE_B]) / 2
    radius_px = focal * style.bone_radius / bone_depth  # (B,)
    shift = style.offset[None, None, :] * (radius_px[:, None, None] * _LAYER_SHIFT[None, :, None])
    fixed = float(1 << SHIFT)
    ends_a = np.round((uv[_BONE_A][:, None, :] + shift) * fixed).astype(np.int64).tolist()
    ends_b = np.round((uv[_BONE_B][:, None, :] + shift) * fixed).astype(np.int64).tolist()
    thick = np.maximum(1, np.round(2 * radius_px[:, None] * _LAYER_SCALE[None, :])).astype(int).tolist()
    head_depth = depth[_J["head"]]
    head_drawn = False
    for b in np.argsort(-bone_depth, kind="stable").tolist():
        if not head_drawn and bone_depth[b] < head_depth:
            _draw_head(img, camera, joints, style)
            head_drawn = True
        for layer in range(3):
            cv2.line(img, ends_a[b][layer], ends_b[b][layer], style.bone_shades[b][layer], thick[b][layer],
                     cv2.LINE_AA, SHIFT)
    if not head_drawn:
        _draw_head(img, camera, joints, style)


def _draw_head(img: np.ndarray, camera: Camera, joints: np.ndarray, style: FigureStyle) -> None:
    """A skin disc for the face and a hair disc at the back of the head, nearer one drawn last, so the
    head shows which way the subject faces."""
    head, neck = joints[_J["head"]], joints[_J["neck"]]
    up = (head - neck) / np.linalg.norm(head - neck)
    forward = np.cross(up, joints[_J["r_shoulder"]] - joints[_J["l_shoulder"]])
    forward /= np.linalg.norm(forward)
    r = style.head_radius
    centres = np.stack([head + r * (0.22 * up - 0.28 * forward), head + r * (0.12 * forward - 0.05 * up)])
    uv, z = camera.project(centres)
    radii = camera.K[0, 0] * np.array([0.93 * r, 0.9 * r]) / z
    for i in np.argsort(-z).tolist():
        shades = style.head_shades["hair" if i == 0 else "skin"]
        for layer in range(3):
            c = uv[i] + style.offset * radii[i] * _LAYER_SHIFT[layer]
            cv2.circle(img, (int(round(c[0] * (1 << SHIFT))), int(round(c[1] * (1 << SHIFT)))),
                       int(round(radii[i] * _LAYER_SCALE[layer] * (1 << SHIFT))), shades[layer], -1, cv2.LINE_AA, SHIFT)
