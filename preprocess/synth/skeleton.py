"""The articulated figure: joints, bones, per-subject proportions and appearance, forward kinematics.

Body frame (before the subject's facing yaw is applied): +x is the subject's right, +y forward, +z up,
metres. A pose is given as unit *directions* of each limb segment (upper arm, forearm, thigh, shin)
plus a few torso angles; forward kinematics chains bone lengths along them, so bone lengths are exact
in every frame whatever the action does.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

JOINT_NAMES = [
    "pelvis", "chest", "neck", "head",
    "r_shoulder", "r_elbow", "r_wrist", "r_hand",
    "l_shoulder", "l_elbow", "l_wrist", "l_hand",
    "r_hip", "r_knee", "r_ankle", "r_toe",
    "l_hip", "l_knee", "l_ankle", "l_toe",
]
J = {name: i for i, name in enumerate(JOINT_NAMES)}

# NTU RGB+D's 25 Kinect joints, in file order, mapped onto ours (the nearest joint where we have no
# equivalent: spine-shoulder -> chest, hand tips and thumbs -> hand).
NTU_JOINTS = [
    ("SpineBase", "pelvis"), ("SpineMid", "chest"), ("Neck", "neck"), ("Head", "head"),
    ("ShoulderLeft", "l_shoulder"), ("ElbowLeft", "l_elbow"), ("WristLeft", "l_wrist"),
    ("HandLeft", "l_hand"), ("ShoulderRight", "r_shoulder"), ("ElbowRight", "r_elbow"),
    ("WristRight", "r_wrist"), ("HandRight", "r_hand"), ("HipLeft", "l_hip"), ("KneeLeft", "l_knee"),
    ("AnkleLeft", "l_ankle"), ("FootLeft", "l_toe"), ("HipRight", "r_hip"), ("KneeRight", "r_knee"),
    ("AnkleRight", "r_ankle"), ("FootRight", "r_toe"), ("SpineShoulder", "chest"),
    ("HandTipLeft", "l_hand"), ("ThumbLeft", "l_hand"), ("HandTipRight", "r_hand"),
    ("ThumbRight", "r_hand"),
]
NTU_TO_OURS = np.array([J[ours] for _, ours in NTU_JOINTS])

# Limb segments drawn as capsules: (from joint, to joint, radius key, clothing part).
BONES = [
    ("pelvis", "chest", "torso", "shirt"),
    ("chest", "neck", "neck", "skin"),
    ("l_shoulder", "r_shoulder", "shoulder", "shirt"),
    ("l_hip", "r_hip", "hip", "pants"),
    ("r_shoulder", "r_elbow", "upper_arm", "shirt"),
    ("r_elbow", "r_wrist", "forearm", "sleeve"),
    ("r_wrist", "r_hand", "hand", "skin"),
    ("l_shoulder", "l_elbow", "upper_arm", "shirt"),
    ("l_elbow", "l_wrist", "forearm", "sleeve"),
    ("l_wrist", "l_hand", "hand", "skin"),
    ("r_hip", "r_knee", "thigh", "pants"),
    ("r_knee", "r_ankle", "shin", "pants"),
    ("r_ankle", "r_toe", "foot", "shoes"),
    ("l_hip", "l_knee", "thigh", "pants"),
    ("l_knee", "l_ankle", "shin", "pants"),
    ("l_ankle", "l_toe", "foot", "shoes"),
]


@dataclass(frozen=True)
class Body:
    """One subject: segment lengths and radii (metres), clothing colours (BGR), motion style."""

    lengths: dict[str, float]
    radii: dict[str, float]
    colors: dict[str, tuple[int, int, int]]
    speed: float  # multiplies every action's tempo
    amplitude: float  # multiplies every action's range of motion


_SKIN = [(150, 180, 225), (120, 160, 210), (90, 130, 185), (60, 95, 140), (45, 70, 105)]
_HAIR = [(20, 20, 25), (30, 45, 70), (40, 70, 110), (120, 160, 190), (60, 60, 60)]
_SHOES = [(30, 30, 30), (220, 220, 220), (40, 50, 90), (90, 60, 40)]


def _cloth(rng: np.random.Generator) -> tuple[int, int, int]:
    hue = int(rng.integers(0, 180))
    sat = int(rng.integers(60, 230))
    val = int(rng.integers(70, 230))
    bgr = np.array([[[hue, sat, val]]], np.uint8)
    b, g, r = cv2.cvtColor(bgr, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def make_body(rng: np.random.Generator) -> Body:
    """Draw one subject: height 1.55-1.95 m, limb ratios within +-7 %, girth, clothes, tempo."""
    height = rng.uniform(1.55, 1.95)
    s = height / 1.75

    def jit(v: float, spread: float = 0.07) -> float:
        return float(v * s * rng.uniform(1 - spread, 1 + spread))

    lengths = {
        "spine": jit(0.50), "neck": jit(0.10), "head": jit(0.13),
        "shoulder_half": jit(0.19), "hip_half": jit(0.10),
        "upper_arm": jit(0.30), "forearm": jit(0.27), "hand": jit(0.09),
        "thigh": jit(0.44), "shin": jit(0.43), "foot": jit(0.17), "ankle_height": 0.07 * s,
    }
    girth = rng.uniform(0.85, 1.25)
    radii = {
        "torso": 0.135 * s * girth, "neck": 0.05 * s, "shoulder": 0.07 * s * girth,
        "hip": 0.10 * s * girth, "upper_arm": 0.05 * s * girth, "forearm": 0.042 * s,
        "hand": 0.035 * s, "thigh": 0.072 * s * girth, "shin": 0.055 * s, "foot": 0.045 * s,
        "head": 0.105 * s,
    }
    skin = _SKIN[int(rng.integers(len(_SKIN)))]
    shirt = _cloth(rng)
    colors = {
        "skin": skin, "hair": _HAIR[int(rng.integers(len(_HAIR)))], "shirt": shirt,
        "sleeve": shirt if rng.random() < 0.5 else skin, "pants": _cloth(rng),
        "shoes": _SHOES[int(rng.integers(len(_SHOES)))],
    }
    return Body(lengths=lengths, radii=radii, colors=colors,
                speed=float(rng.uniform(0.8, 1.25)), amplitude=float(rng.uniform(0.8, 1.15)))


def _rot_x(a: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([o, z, z], -1), np.stack([z, c, -s], -1), np.stack([z, s, c], -1)], -2)


def _rot_y(a: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def rot_z(a: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def _apply(rot: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.einsum("tij,tj->ti", rot, v)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def forward_kinematics(body: Body, pose: dict[str, np.ndarray]) -> np.ndarray:
    """Joint positions (T, J, 3) in the body frame, feet on the floor (z = 0) unless ``lift`` > 0.

    ``pose`` holds per-frame arrays: ``pitch``/``roll``/``twist`` (T,) torso angles (bow forward,
    bend to the right, turn to the left), ``lift`` (T,) metres above the floor, ``sway`` (T, 3) pelvis
    shift, and unit directions (T, 3) ``{r,l}_{upper,fore,thigh,shin}`` — arms in the torso frame,
    legs in the pelvis frame.
    """
    L = body.lengths
    t = pose["pitch"].shape[0]
    joints = np.zeros((t, len(JOINT_NAMES), 3))
    torso = _rot_x(-pose["pitch"]) @ _rot_y(pose["roll"]) @ rot_z(pose["twist"])
    up = np.array([0.0, 0.0, 1.0])
    joints[:, J["chest"]] = _apply(torso, np.broadcast_to(up * L["spine"], (t, 3)))
    joints[:, J["neck"]] = _apply(torso, np.broadcast_to(up * (L["spine"] + L["neck"]), (t, 3)))
    joints[:, J["head"]] = _apply(torso, np.broadcast_to(up * (L["spine"] + L["neck"] + L["head"]), (t, 3)))
    for side, sign in (("r", 1.0), ("l", -1.0)):
        shoulder = np.array([sign * L["shoulder_half"], 0.0, L["spine"] - 0.02])
        joints[:, J[f"{side}_shoulder"]] = _apply(torso, np.broadcast_to(shoulder, (t, 3)))
        upper = _apply(torso, _unit(pose[f"{side}_upper"]))
        fore = _apply(torso, _unit(pose[f"{side}_fore"]))
        joints[:, J[f"{side}_elbow"]] = joints[:, J[f"{side}_shoulder"]] + upper * L["upper_arm"]
        joints[:, J[f"{side}_wrist"]] = joints[:, J[f"{side}_elbow"]] + fore * L["forearm"]
        joints[:, J[f"{side}_hand"]] = joints[:, J[f"{side}_wrist"]] + fore * L["hand"]
        hip = np.array([sign * L["hip_half"], 0.0, -0.04])
        joints[:, J[f"{side}_hip"]] = hip
        thigh, shin = _unit(pose[f"{side}_thigh"]), _unit(pose[f"{side}_shin"])
        joints[:, J[f"{side}_knee"]] = hip + thigh * L["thigh"]
        joints[:, J[f"{side}_ankle"]] = joints[:, J[f"{side}_knee"]] + shin * L["shin"]
        # The foot points forward, following the shin when the leg swings up (a kick).
        foot = _unit(np.array([0.0, 1.0, -0.25]) + np.clip(shin[:, 1:2], 0, None) * np.array([0, 0.0, 1.5]))
        joints[:, J[f"{side}_toe"]] = joints[:, J[f"{side}_ankle"]] + foot * L["foot"]
    # Keep the standing foot (or both) planted: the body moves over its feet, never the reverse.
    ankles = joints[:, [J["r_ankle"], J["l_ankle"]]]
    weight = np.exp(-(ankles[:, :, 2] - ankles[:, :, 2].min(axis=1, keepdims=True)) / 0.03)
    anchor = (ankles[:, :, :2] * weight[:, :, None]).sum(1) / weight.sum(1, keepdims=True)
    joints[:, :, :2] -= anchor[:, None, :]
    joints += pose["sway"][:, None, :]
    feet = joints[:, [J["r_ankle"], J["l_ankle"]], 2].min(axis=1)
    joints[:, :, 2] += (L["ankle_height"] - feet + pose["lift"])[:, None]
    return joints


def place(joints: np.ndarray, yaw: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Body frame -> world frame: turn by ``yaw`` (T,) about the vertical and move to ``origin`` (2,)."""
    world = np.einsum("tij,tkj->tki", rot_z(yaw), joints)
    world[:, :, :2] += origin
    return world
