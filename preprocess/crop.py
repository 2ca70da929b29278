"""Crop boxes and stored frame sizes: one place for the geometry of what a stored frame shows."""

from __future__ import annotations

from dataclasses import dataclass

CROP_MODES = ("none", "center", "person")
# a box whose aspect ratio is within this share of its group's is trimmed to it (a coded 1920x1088 beside
# 1920x1080 loses 8 rows); beyond, cropping would cut into what --crop none promises to keep
ASPECT_TOLERANCE = 0.02


@dataclass(frozen=True)
class Geometry:
    """How source frames become stored frames: crop mode, stored short side, person-box margin."""

    crop: str = "none"
    short_side: int = 160
    margin: float = 0.15

    def __post_init__(self) -> None:
        if self.crop not in CROP_MODES:
            raise ValueError(f"crop must be one of {CROP_MODES}, got {self.crop!r}")
        if self.short_side < 8:
            raise ValueError(f"short side must be >= 8 pixels, got {self.short_side}")


def full_box(width: int, height: int) -> list[int]:
    return [0, 0, width, height]


def center_box(width: int, height: int) -> list[int]:
    side = min(width, height)
    x0, y0 = (width - side) // 2, (height - side) // 2
    return [x0, y0, x0 + side, y0 + side]


def person_box(width: int, height: int, joints: tuple[float, float, float, float], margin: float) -> list[int]:
    """A square around the joints' box (plus ``margin`` of its longer side), kept inside the frame.

    Square, so that every view of a group stores the same frame size whatever the person's aspect.
    """
    x0, y0, x1, y1 = joints
    side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin)
    side = int(round(min(max(side, 16.0), min(width, height))))
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    left = int(round(min(max(cx - side / 2.0, 0.0), width - side)))
    top = int(round(min(max(cy - side / 2.0, 0.0), height - side)))
    return [left, top, left + side, top + side]


def stored_size(box: list[int], short_side: int) -> tuple[int, int]:
    """(width, height) of a stored frame: the box scaled so that its short side is ``short_side``."""
    w, h = box[2] - box[0], box[3] - box[1]
    scale = short_side / min(w, h)
    return max(1, int(round(w * scale))), max(1, int(round(h * scale)))


def fit_aspect(box: list[int] | tuple[int, ...], aspect: float) -> list[int] | None:
    """``box`` trimmed evenly on its long side to width/height ``aspect``, or None when that would cut
    more than ``ASPECT_TOLERANCE`` of it."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if abs(w / h / aspect - 1) > ASPECT_TOLERANCE:
        return None
    if w / h > aspect:
        keep = int(round(h * aspect))
        left = x0 + (w - keep) // 2
        return [left, y0, left + keep, y1]
    keep = int(round(w / aspect))
    top = y0 + (h - keep) // 2
    return [x0, top, x1, top + keep]
