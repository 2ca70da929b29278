"""``mv2mae shards show``: one group as a montage — one row per camera, one column per sampled instant of
the views' common span, so a column shows the same moment in every view — with the motion cache as a
heat-map overlay. PNG (a figure with labels and a colour bar) or GIF (the cameras side by side, one
animation frame per instant of the common span)."""

from __future__ import annotations

from pathlib import Path

import cv2
import matplotlib
import numpy as np
from matplotlib import cm, colormaps, colors
from PIL import Image

from mv2mae.shards.motion import MotionRows
from mv2mae.shards.reader import GroupSample
from mv2mae.shards.schema import ContractError, DatasetIndex, frame_member, read_index
from mv2mae.shards.untrusted import check_jpeg
from mv2mae.tools.shardio import read_group


def _frame(group: GroupSample, cam: int, t: int) -> np.ndarray:
    data = group.frame(cam, t)
    check_jpeg(data, group.meta.size, f"{group.shard}: {frame_member(group.key, cam, t)}")  # before decoding it
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ContractError(f"{group.shard}: frame {t} of camera {cam} of {group.key} does not decode")
    return img[..., ::-1]


def _motion(root: Path, index: DatasetIndex, group: GroupSample, source: str | None) -> dict[int, np.ndarray]:
    """Every stored frame's motion cells of each camera, cropped to the group's own grid."""
    if source is None:
        return {}
    rows = MotionRows(root, source, index)
    every = {c: np.arange(group.meta.view_frames[str(c)]) for c in group.meta.cameras}
    return {c: np.asarray(rows.view(group, c, every[c])[0], np.float32) for c in group.meta.cameras}


def overlay(rgb: np.ndarray, cells: np.ndarray, vmax: float, alpha: float = 0.85) -> np.ndarray:
    """Blend a magma heat-map of ``cells`` over ``rgb``; opacity grows with motion, so still regions
    keep their own pixels and moving ones glow."""
    h, w = rgb.shape[:2]
    level = np.clip(cells / max(vmax, 1e-6), 0, 1)
    up = cv2.resize(level, (w, h), interpolation=cv2.INTER_LINEAR)
    heat = colormaps["magma"](up)[..., :3] * 255
    a = (alpha * up ** 0.7)[..., None]
    return (rgb * (1 - a) + heat * a).astype(np.uint8)


def show(root: str | Path, key: str, out: str | Path, columns: int = 8, source: str | None = "auto",
         fps: float | None = None) -> Path:
    """Write the montage of group ``key`` to ``out`` (.png or .gif); returns the path."""
    root, out = Path(root), Path(out)
    if out.suffix.lower() not in (".png", ".gif"):
        raise ValueError(f"{out}: --out must end in .png or .gif")
    index = read_index(root)
    group = read_group(root, index, key)
    if source == "auto":
        source = index.motion[0] if index.motion else None
    motion = _motion(root, index, group, source)
    vmax = max([float(np.percentile(m, 99.5)) for m in motion.values()] + [1.0])
    out.parent.mkdir(parents=True, exist_ok=True)
    label = group.meta.label_name or (index.classes[group.meta.label] if 0 <= group.meta.label < len(index.classes)
                                      else str(group.meta.label))
    title = (f"{key} — {label} · subject {group.meta.subject} · {group.meta.frames} common frames @ "
             f"{group.meta.fps:g} fps"
             + (f" · {source} motion" if source else ""))
    if out.suffix.lower() == ".gif":
        _gif(group, motion, vmax, out, fps or group.meta.fps)
    else:
        _png(group, motion, vmax, out, columns, title, source)
    return out


def _tile(group: GroupSample, motion, vmax: float, cam: int, t: int) -> np.ndarray:
    """Camera ``cam`` at instant ``t`` of the common span (its stored frame ``offsets[cam] + t``)."""
    stored = group.meta.offsets[str(cam)] + t
    rgb = _frame(group, cam, stored)
    if cam in motion:
        rgb = overlay(rgb, motion[cam][stored], vmax)
    return rgb


def _png(group, motion, vmax, out: Path, columns: int, title: str, source: str | None) -> None:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pyplot: only once the file-only Agg backend is chosen

    cams, meta = group.meta.cameras, group.meta
    times = np.unique(np.linspace(0, meta.frames - 1, min(columns, meta.frames)).round().astype(int))
    w, h = meta.size
    tile_in = 1.9
    fig, axes = plt.subplots(len(cams), len(times), squeeze=False, figsize=(
        tile_in * len(times) * w / h + 1.2, tile_in * len(cams) + 0.9), dpi=110)
    for r, cam in enumerate(cams):
        for c, t in enumerate(times):
            ax = axes[r, c]
            ax.imshow(_tile(group, motion, vmax, cam, int(t)))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"frame {t}", fontsize=10)
            if c == 0:
                ax.set_ylabel(f"camera {cam}", fontsize=11, fontweight="bold")
    fig.suptitle(title, fontsize=12)
    if motion:
        mappable = cm.ScalarMappable(norm=colors.Normalize(0, vmax), cmap="magma")
        bar = fig.colorbar(mappable, ax=axes, fraction=0.02, pad=0.01)
        bar.set_label(f"{source} (0-255 units)", fontsize=9)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)


def _gif(group, motion, vmax, out: Path, fps: float) -> None:
    frames = []
    for t in range(group.meta.frames):
        tiles = []
        for cam in group.meta.cameras:
            tile = np.ascontiguousarray(_tile(group, motion, vmax, cam, t))
            cv2.putText(tile, f"cam {cam}  t={t}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                        cv2.LINE_AA)
            tiles.append(tile)
        frames.append(Image.fromarray(np.concatenate(tiles, axis=1)))
    frames[0].save(out, save_all=True, append_images=frames[1:], duration=int(1000 / max(fps, 1)), loop=0)
