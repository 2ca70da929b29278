"""NTU RGB+D 60/120 and the synthetic set (same naming): ``SsssCcccPpppRrrrAaaa_rgb.avi`` + ``.skeleton``.

A group is one (setup, performer, replication, action); its views are the cameras C001-C003. Partitions
are performer x setup parity (``P001-S1`` = performer 1, odd setups), so cross-subject (performers) and
cross-setup (setup parity) protocols both select whole shards; cross-view picks cameras inside a sample.

Camera layout: NTU's three cameras stand at one height, C001 in the middle and C002/C003 45 degrees to
either side (which side is which is [unverified]; adjacency does not depend on it), so C001 is the
neighbour of both and C002/C003 are 90 degrees apart. The synthetic set's layout is its ground truth
(``ground_truth.json``: each camera's azimuth and height).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from mv2mae.preprocess.adapters.base import (
    AdapterError,
    AdapterOptions,
    GroupSpec,
    Scan,
    ViewSource,
    camera_layout,
    record_missing_views,
)
from mv2mae.preprocess.synth.actions import flip_classes

NAME_RE = re.compile(r"^S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})(?:_rgb)?\.(?:avi|mp4|mkv)$", re.IGNORECASE)

NTU120_CLASSES = [
    "drink water", "eat meal/snack", "brushing teeth", "brushing hair", "drop", "pickup", "throw",
    "sitting down", "standing up (from sitting position)", "clapping", "reading", "writing",
    "tear up paper", "wear jacket", "take off jacket", "wear a shoe", "take off a shoe", "wear on glasses",
    "take off glasses", "put on a hat/cap", "take off a hat/cap", "cheer up", "hand waving",
    "kicking something", "reach into pocket", "hopping (one foot jumping)", "jump up",
    "make a phone call/answer phone", "playing with phone/tablet", "typing on a keyboard",
    "pointing to something with finger", "taking a selfie", "check time (from watch)",
    "rub two hands together", "nod head/bow", "shake head", "wipe face", "salute",
    "put the palms together", "cross hands in front (say stop)", "sneeze/cough", "staggering", "falling",
    "touch head (headache)", "touch chest (stomachache/heart pain)", "touch back (backache)",
    "touch neck (neckache)", "nausea or vomiting condition", "use a fan (with hand or paper)/feeling warm",
    "punching/slapping other person", "kicking other person", "pushing other person",
    "pat on back of other person", "point finger at the other person", "hugging other person",
    "giving something to other person", "touch other person's pocket", "handshaking",
    "walking towards each other", "walking apart from each other",
    # NTU-120 additions (A061-A120)
    "put on headphone", "take off headphone", "shoot at the basket", "bounce ball", "tennis bat swing",
    "juggling table tennis balls", "hush (quite)", "flick hair", "thumb up", "thumb down", "make ok sign",
    "make victory sign", "staple book", "counting money", "cutting nails", "cutting paper (using scissors)",
    "snapping fingers", "open bottle", "sniff (smell)", "squat down", "toss a coin", "fold paper",
    "ball up paper", "play magic cube", "apply cream on face", "apply cream on hand back", "put on bag",
    "take off bag", "put something into a bag", "take something out of a bag", "open a box",
    "move heavy objects", "shake fist", "throw up cap/hat", "hands up (both hands)", "cross arms",
    "arm circles", "arm swings", "running on the spot", "butt kicks (kick backward)", "cross toe touch",
    "side kick", "yawn", "stretch oneself", "blow nose", "hit other person with something",
    "wield knife towards other person", "knock over other person (hit with body)",
    "grab other person's stuff", "shoot at other person with a gun", "step on foot", "high-five",
    "cheers and drink", "carry something with other person", "take a photo of other person",
    "follow other person", "whisper in other person's ear", "exchange things with other person",
    "support somebody with hand", "finger-guessing game (playing rock-paper-scissors)",
]
NTU60_CLASSES = NTU120_CLASSES[:60]
NTU_LAYOUT = camera_layout({1: (0, None), 2: (-45, None), 3: (45, None)})
GROUND_TRUTH = "ground_truth.json"  # written by ``mv2mae synth``


def partition_of(subject: int, setup: int) -> str:
    """Performer x setup parity: ``P007-S1`` holds performer 7's groups from odd setups."""
    return f"P{subject:03d}-S{setup % 2}"


def _scan_ntu(root: Path, options: AdapterOptions, dataset: str, classes: list[str],
              layout: dict[str, dict[str, float]]) -> Scan:
    videos: dict[tuple[int, int, int, int], list[ViewSource]] = {}
    skeletons = {p.stem: p for p in root.rglob("*.skeleton")} if _wants_skeletons(options) else {}
    failures: list[dict] = []
    found: dict[tuple[int, int, int, int], dict[int, Path]] = {}  # every camera's file, kept or not
    for path in sorted(root.rglob("*")):
        m = NAME_RE.match(path.name)
        if not m or not path.is_file():
            continue
        s, c, p, r, a = (int(x) for x in m.groups())
        if not 1 <= a <= len(classes):
            failures.append({"file": str(path), "reason": f"action A{a:03d} outside the {len(classes)} classes"})
            continue
        found.setdefault((s, p, r, a), {})[c] = path
        stem = f"S{s:03d}C{c:03d}P{p:03d}R{r:03d}A{a:03d}"
        skeleton = skeletons.get(stem)
        if options.drop_missing_skeletons and skeleton is None:
            failures.append({"file": str(path), "reason": "skeleton file missing (--drop-missing-skeletons)"})
            continue
        videos.setdefault((s, p, r, a), []).append(ViewSource(camera=c, path=path, skeleton=skeleton))
    if not videos and not failures:
        raise AdapterError(f"{root}: no NTU-named videos (SsssCcccPpppRrrrAaaa_rgb.avi) found")
    groups = []
    cameras = {c for files in found.values() for c in files}
    for (s, p, r, a), views in sorted(videos.items()):
        key = f"S{s:03d}P{p:03d}R{r:03d}A{a:03d}"
        views.sort(key=lambda v: v.camera)
        first = views[0].path
        record_missing_views(key, set(found[(s, p, r, a)]), cameras, failures,
                             lambda c, f=first: str(f.with_name(f"{f.name[:4]}C{c:03d}{f.name[8:]}")))
        groups.append(GroupSpec(key=key, label=a - 1, label_name=classes[a - 1], subject=p,
                                partition=partition_of(p, s), views=views, setup=s, replication=r))
    return Scan(dataset=dataset, classes=classes, groups=groups, failures=failures, layout=layout)


def _wants_skeletons(options: AdapterOptions) -> bool:
    return options.need_person_crop or options.drop_missing_skeletons


def scan_ntu60(root: Path, options: AdapterOptions) -> Scan:
    return _scan_ntu(root, options, "ntu60", NTU60_CLASSES, NTU_LAYOUT)


def scan_ntu120(root: Path, options: AdapterOptions) -> Scan:
    return _scan_ntu(root, options, "ntu120", NTU120_CLASSES, NTU_LAYOUT)


def scan_synth(root: Path, options: AdapterOptions) -> Scan:
    """The synthetic set: NTU naming, class names from ``classes.txt`` (line i = action A(i+1)), camera
    layout from ``ground_truth.json``."""
    classes_file = root / "classes.txt"
    if not classes_file.is_file():
        raise AdapterError(f"{classes_file}: missing — is {root} a synthetic dataset (mv2mae synth)?")
    classes = [line.strip() for line in classes_file.read_text().splitlines() if line.strip()]
    result = _scan_ntu(root, options, "synth", classes, _synth_layout(root / GROUND_TRUTH))
    result.flip_classes = flip_classes(classes)  # the generator's mirror pairs (left/right actions)
    return result


def _synth_layout(path: Path) -> dict[str, dict[str, float]]:
    """Each rendered camera's azimuth and height, as the generator placed it ({} without the file)."""
    if not path.is_file():
        return {}
    try:
        cameras = json.loads(path.read_text())["cameras"]
        return camera_layout({int(name[1:]): (cam["azimuth"], cam["height"]) for name, cam in cameras.items()})
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AdapterError(f"{path}: no camera placement to read ({type(e).__name__}: {e}) — is this a "
                           f"synthetic dataset written by `mv2mae synth`?") from None


def read_skeleton_box(path: Path) -> tuple[float, float, float, float] | None:
    """Union of the colour-image joint boxes over all frames and bodies; None if no body was tracked.

    Format (NTU text): frame count; per frame a body count; per body one info line, a joint count and
    one line per joint ``x y z depthX depthY colorX colorY ...``.
    """
    try:
        tokens = path.read_text().split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"unreadable skeleton file ({e})") from e
    lines = [t.strip() for t in tokens if t.strip()]
    xs: list[float] = []
    ys: list[float] = []
    try:
        i = 0
        n_frames = int(lines[i])
        i += 1
        for _ in range(n_frames):
            n_bodies = int(lines[i])
            i += 1
            for _ in range(n_bodies):
                n_joints = int(lines[i + 1])
                i += 2
                for j in range(n_joints):
                    vals = lines[i + j].split()
                    xs.append(float(vals[5]))
                    ys.append(float(vals[6]))
                i += n_joints
    except (IndexError, ValueError) as e:
        raise ValueError(f"malformed skeleton file ({e.__class__.__name__}: {e})") from e
    pts = np.array([xs, ys], dtype=np.float64)
    if pts.size == 0:
        return None
    finite = np.isfinite(pts).all(axis=0)
    if not finite.any():
        return None
    pts = pts[:, finite]
    return float(pts[0].min()), float(pts[1].min()), float(pts[0].max()), float(pts[1].max())
