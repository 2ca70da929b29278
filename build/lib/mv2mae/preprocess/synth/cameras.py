"""Pinhole cameras on a circle around the subject (world: z up, metres, subject near the origin).

Default three cameras at one height as in NTU RGB+D (C001 in the middle, C002/C003 at -45/+45
degrees); up to eight as in ETRI-Activity3D, the extra ones at other azimuths and heights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_CAMERAS = 8
# (azimuth degrees, height metres) per camera id C001..C008.
LAYOUT = [(0, 1.2), (-45, 1.2), (45, 1.2), (-90, 0.8), (90, 0.8), (-135, 1.7), (135, 1.7), (180, 1.0)]
DISTANCE = 3.2  # metres from the subject's standing point
LOOK_AT = np.array([0.0, 0.0, 1.0])
FRAMED_HEIGHT = 2.6  # metres visible top-to-bottom at the subject: a 1.75 m figure fills ~2/3, a jump fits


@dataclass(frozen=True)
class Camera:
    id: int  # 1-based, as in the file names
    azimuth: float  # degrees
    height: float
    K: np.ndarray  # 3x3 intrinsics
    R: np.ndarray  # 3x3 world -> camera rotation (camera x right, y down, z forward)
    t: np.ndarray  # 3, so that X_cam = R @ X + t

    @property
    def position(self) -> np.ndarray:
        return -self.R.T @ self.t

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """World points (..., 3) -> camera coordinates (..., 3)."""
        return points @ self.R.T + self.t

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (..., 3) -> pixel coordinates (..., 2) and depth (...)."""
        cam = self.to_camera(points)
        z = cam[..., 2]
        uv = cam[..., :2] / z[..., None] * np.diag(self.K)[:2] + self.K[:2, 2]
        return uv, z

    def as_json(self) -> dict:
        return {"K": self.K.round(6).tolist(), "R": self.R.round(9).tolist(), "t": self.t.round(9).tolist(),
                "position": self.position.round(6).tolist(), "azimuth": self.azimuth, "height": self.height}


def make_camera(camera_id: int, size: tuple[int, int]) -> Camera:
    azimuth, height = LAYOUT[camera_id - 1]
    a = np.deg2rad(azimuth)
    position = np.array([DISTANCE * np.sin(a), DISTANCE * np.cos(a), height])
    forward = LOOK_AT - position
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rot = np.stack([right, down, forward])
    width, img_h = size
    focal = img_h * np.linalg.norm(LOOK_AT - position) / FRAMED_HEIGHT
    K = np.array([[focal, 0, width / 2], [0, focal, img_h / 2], [0, 0, 1.0]])
    return Camera(id=camera_id, azimuth=float(azimuth), height=float(height), K=K, R=rot, t=-rot @ position)


def make_rig(count: int, size: tuple[int, int]) -> list[Camera]:
    if not 1 <= count <= MAX_CAMERAS:
        raise ValueError(f"cameras must be 1..{MAX_CAMERAS}, got {count}")
    return [make_camera(i, size) for i in range(1, count + 1)]


def facing_yaw(camera: Camera) -> float:
    """The body yaw (radians) that makes the subject face ``camera`` (body forward is +y at yaw 0)."""
    return -np.deg2rad(camera.azimuth)


def facing_camera(replication: int, count: int) -> int:
    """The camera the subject faces in a replication (1-based), as in NTU: R001 faces C003, R002 C002."""
    order = [3, 2, 1, 4, 5, 6, 7, 8]
    order = [c for c in order if c <= count]
    return order[(replication - 1) % len(order)]
