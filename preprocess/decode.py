"""Decoding: a source (video file or image folder) -> RGB uint8 frames [T, H, W, 3] at the stored size.

Two backends. ``ffmpeg`` (ffmpeg-python driving the bundled static ffmpeg) crops, converts the frame
rate and scales *inside* ffmpeg, so a 1080p frame never crosses the pipe — only the small stored frame
does. ``opencv`` decodes full frames in-process and resizes them with ``INTER_AREA``; it is the
fallback when the ffmpeg binary is unavailable. ``mv2mae bench preprocess`` measures both on 1080p
H.264; the default is the faster one there.

A variable-frame-rate video (phones record so) is resampled by its frames' own presentation times, read
from the container without decoding (:func:`variable_frame_times`), on both backends: its header's rate
and frame count may be nominal ones that no frame follows. Sizes are bounded before anything is
allocated: stored frames at most ``MAX_FRAME_SIDE`` a side, a view at most ``MAX_VIEW_FRAMES`` frames.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import ffmpeg
import imageio_ffmpeg
import numpy as np

from mv2mae.preprocess.crop import ASPECT_TOLERANCE, fit_aspect, stored_size
from mv2mae.shards.schema import MAX_VIEW_FRAMES
from mv2mae.shards.untrusted import MAX_FRAME_SIDE

BACKENDS = ("ffmpeg", "opencv")
# ``mv2mae bench preprocess``, 1080p H.264 -> 284x160, one process: ffmpeg 42.9-59.2 frames/s, OpenCV
# 23.9-36.2 frames/s (three runs on a loaded 2-core machine): scaling inside ffmpeg wins.
DEFAULT_BACKEND = "ffmpeg"
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
MIN_DECODED_FRACTION = 0.9  # fewer decoded frames than this share of the header's count = truncated
# frames a header's count may be over: Matroska and WebM store no count, only a duration that OpenCV turns
# into one (a valid 10-frame MKV reads as 12)
HEADER_SLACK = 2
MIN_VIEW_FRACTION = 0.5  # a view shorter than this share of its group's longest view is left out
# frame intervals that differ from their median by more than this share (and more than a tick and a half
# of the container's clock, which rounds them) make a video variable-frame-rate
VFR_TOLERANCE = 0.05


class DecodeError(RuntimeError):
    """A source could not be decoded; the message names the reason (the caller adds the file)."""


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float  # a variable-frame-rate video's average rate
    frames: int  # as the container header says (may be approximate for damaged files)
    # presentation times (s, from 0) of every frame of a variable-frame-rate video; None: constant rate
    times: tuple[float, ...] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class DecodeRequest:
    """What to take from a source and how to shape it."""

    box: tuple[int, int, int, int]  # crop box in source pixels [x0, y0, x1, y1]
    size: tuple[int, int]  # stored (width, height)
    fps: float  # output frame rate
    start: int | None = None  # first source frame (inclusive)
    end: int | None = None  # last source frame (exclusive)
    threads: int = 1  # decoder threads (ffmpeg) — kept low when many workers share the cores


@lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    return imageio_ffmpeg.get_ffmpeg_exe()


def image_files(folder: Path) -> list[Path]:
    """Per-frame images of a folder, in natural order; N-UCLA's ``*_rgb.jpg`` preferred over others."""
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file()]
    rgb = [p for p in files if p.stem.endswith("_rgb")]
    chosen = rgb or files
    return sorted(chosen, key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)])


def probe(path: Path, image_fps: float = 30.0) -> VideoInfo:
    """Size, frame rate and frame count of a source, read with OpenCV (there is no ffprobe)."""
    path = Path(path)
    if path.is_dir():
        files = image_files(path)
        if not files:
            raise DecodeError("image folder holds no frames")
        first = cv2.imread(str(files[0]), cv2.IMREAD_COLOR)
        if first is None:
            raise DecodeError(f"unreadable image {files[0].name}")
        return VideoInfo(first.shape[1], first.shape[0], float(image_fps), len(files))
    if not path.is_file():
        raise DecodeError("file not found")
    if path.stat().st_size == 0:
        raise DecodeError("empty file (0 bytes)")
    try:  # OpenCV says only that it could not open a file it may not read: ask the file system first
        with open(path, "rb") as f:
            f.read(1)
    except PermissionError:
        raise DecodeError("permission denied: the file is not readable by this user") from None
    except OSError as e:
        raise DecodeError(f"cannot read the file ({e.strerror or e})") from None
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise DecodeError("not a readable video (OpenCV could not open it)")
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps, n = float(cap.get(cv2.CAP_PROP_FPS)), int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()
    if w <= 0 or h <= 0:
        raise DecodeError("no video stream (zero frame size)")
    times = variable_frame_times(path)
    if times is not None:  # the header's rate and count may be the container's nominal ones: use the times
        return VideoInfo(w, h, (len(times) - 1) / times[-1], len(times), times)
    if not fps or fps <= 0 or fps > 1000:
        raise DecodeError(f"no usable frame rate in the header ({fps})")
    return VideoInfo(w, h, fps, max(n, 0))


def frame_times(path: Path) -> tuple[np.ndarray, float] | None:
    """(presentation times in seconds, sorted, one per frame; the container's clock tick) of the first
    video stream, read from the packets without decoding them (a stream copy into ffmpeg's ``framemd5``
    listing); None when the container gives no times."""
    cmd = (ffmpeg.input(str(path)).video.output("pipe:", c="copy", f="framemd5")
           .global_args("-nostdin", "-loglevel", "error"))
    try:
        listing, _ = cmd.run(cmd=ffmpeg_exe(), capture_stdout=True, capture_stderr=True)
    except ffmpeg.Error:
        return None
    tick, pts = None, []
    for line in listing.decode(errors="replace").splitlines():
        if line.startswith("#tb 0:"):
            num, _, den = line.split(":", 1)[1].strip().partition("/")
            tick = int(num) / int(den) if den.isdigit() and int(den) > 0 and num.isdigit() else None
        elif line and not line.startswith("#"):
            fields = [f.strip() for f in line.split(",")]
            if len(fields) > 2 and fields[2].lstrip("-").isdigit():
                pts.append(int(fields[2]))
    if tick is None or len(pts) < 2:
        return None
    times = np.sort(np.asarray(pts, np.float64)) * tick
    return times - times[0], tick


def variable_frame_times(path: Path) -> tuple[float, ...] | None:
    """The frame times of ``path`` if its frame rate varies (phones record so: the interval follows the
    exposure), else None (constant rate, or no times to tell)."""
    found = frame_times(path)
    if found is None:
        return None
    times, tick = found
    steps = np.diff(times)
    typical = float(np.median(steps))
    if typical <= 0 or np.abs(steps - typical).max() <= max(VFR_TOLERANCE * typical, 1.5 * tick):
        return None
    return tuple(times.tolist())


def conform_views(infos: list[VideoInfo], boxes: list[list[int]], short_side: int,
                  fps: float | None) -> tuple[tuple[int, int], float, list[tuple[int, int, int, int] | str]]:
    """How each view of a group becomes the group's stored geometry, on its own: real rigs mix resolutions
    (a coded 1088 beside 1080), codecs, containers, frame rates and rotations.

    Returns the stored (width, height), the common frame rate (``fps``, else the one most views have, the
    first view's on a tie) and, per view, its crop box (source pixels, after rotation) trimmed to the
    group's aspect ratio — the most common one among the boxes — or why the crop policy cannot serve the
    view: a box whose aspect ratio differs by more than ``ASPECT_TOLERANCE`` (a portrait phone beside
    landscape cameras under ``--crop none``), or one whose own stored frames would exceed
    ``MAX_FRAME_SIDE`` (a 16000x2 video would ask for 1,280,000x160 frames), which takes no part in
    choosing the group's ratio. Every kept view is then cropped, scaled and resampled to the same size and
    rate by the decoder."""
    if not infos:
        return (0, 0), float(fps or 0.0), []
    rates = Counter(round(i.fps, 2) for i in infos)
    rate = fps or max(infos, key=lambda i: (rates[round(i.fps, 2)], -infos.index(i))).fps
    oversized = [_oversized(box, short_side) for box in boxes]
    usable = [b for b, why in zip(boxes, oversized, strict=True) if why is None]
    if not usable:
        return (0, 0), float(rate), oversized
    aspects = Counter(round(_aspect(b), 2) for b in usable)
    reference = max(usable, key=lambda b: (aspects[round(_aspect(b), 2)], -usable.index(b)))
    planned: list[tuple[int, int, int, int] | str] = []
    for info, box, why in zip(infos, boxes, oversized, strict=True):
        fitted = fit_aspect(box, _aspect(reference)) if why is None else None
        planned.append(why or (tuple(fitted) if fitted is not None else
                       f"{box[2] - box[0]}x{box[3] - box[1]} crop of a {info.width}x{info.height} view does not fit "
                       f"the group's aspect ratio {_aspect(reference):.3f} (more than {ASPECT_TOLERANCE:.0%} off): "
                       f"the crop policy cannot serve it (--crop center or person can)"))
    return stored_size(list(reference), short_side), float(rate), planned


def _oversized(box: list[int], short_side: int) -> str | None:
    """Why ``box`` cannot be stored at ``short_side`` within ``MAX_FRAME_SIDE`` (None: it can)."""
    width, height = stored_size(box, short_side)
    if max(width, height) <= MAX_FRAME_SIDE:
        return None
    return (f"its stored frames would be {width}x{height} (a {box[2] - box[0]}x{box[3] - box[1]} view at short side "
            f"{short_side}), beyond the {MAX_FRAME_SIDE}-pixel bound")


def _aspect(box: list[int] | tuple[int, ...]) -> float:
    return (box[2] - box[0]) / (box[3] - box[1])


def short_views(lengths: list[int]) -> list[str | None]:
    """Per view, why it is too short to keep (None: keep it): a view with fewer than ``MIN_VIEW_FRACTION``
    of the longest view's frames would cut every view of the group to its length (alignment keeps only
    the span all views cover) and leave the lag estimate too little overlap."""
    longest = max(lengths, default=0)
    return [f"only {n} frames where the group's longest view has {longest}: keeping it would cut every view "
            f"to {n}" if n < MIN_VIEW_FRACTION * longest else None for n in lengths]


def decode(path: Path, info: VideoInfo, req: DecodeRequest, backend: str = DEFAULT_BACKEND) -> np.ndarray:
    """Decode ``path`` into RGB frames [T, H, W, 3] (uint8) shaped as ``req`` asks."""
    path = Path(path)
    if expected_frames(info, req) > MAX_VIEW_FRAMES:
        raise DecodeError(f"{expected_frames(info, req)} frames at {req.fps:g} fps, more than the {MAX_VIEW_FRAMES} "
                          f"a stored view may hold (cut it with start/end)")
    if path.is_dir():
        frames = _decode_images(path, info, req)
    elif backend == "ffmpeg":
        frames = _decode_ffmpeg(path, info, req)
    elif backend == "opencv":
        frames = _decode_opencv(path, info, req)
    else:
        raise ValueError(f"unknown decode backend {backend!r}; choose from {BACKENDS}")
    _check_complete(frames, info, req)
    return frames


def expected_frames(info: VideoInfo, req: DecodeRequest) -> int:
    """Frames the output should have if the source is intact (from the header count)."""
    start = req.start or 0
    end = info.frames if req.end is None else min(req.end, info.frames)
    return max(0, int(np.floor((end - start) * req.fps / info.fps + 1e-6)))


def _check_complete(frames: np.ndarray, info: VideoInfo, req: DecodeRequest) -> None:
    if len(frames) == 0:
        raise DecodeError("no frame could be decoded")
    if len(frames) > MAX_VIEW_FRAMES:  # the header understated the length
        raise DecodeError(f"more than the {MAX_VIEW_FRAMES} frames a stored view may hold (cut it with start/end)")
    want = expected_frames(info, req)
    if want and len(frames) + HEADER_SLACK < MIN_DECODED_FRACTION * want:
        raise DecodeError(f"truncated or damaged: decoded {len(frames)} of {want} expected frames")


def _same_fps(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-3 * max(a, b)


def _decode_ffmpeg(path: Path, info: VideoInfo, req: DecodeRequest) -> np.ndarray:
    x0, y0, x1, y1 = req.box
    width, height = req.size
    stream = ffmpeg.input(str(path), threads=req.threads).video
    if req.start or req.end is not None:
        # Frame-exact cut. An input seek (-ss) is faster on long videos but lands a frame off on
        # containers without a precise index (AVI), which would shift every instance of a sequence.
        trim = {"start_frame": req.start or 0}
        if req.end is not None:
            trim["end_frame"] = req.end
        stream = stream.trim(**trim).setpts("PTS-STARTPTS")
    if (x0, y0, x1, y1) != (0, 0, info.width, info.height):
        # exact: without it ffmpeg rounds x, y, width and height of 4:2:0 sources down to even values,
        # so an odd box (person crops) would be shifted against the box recorded in the metadata.
        stream = stream.crop(x0, y0, x1 - x0, y1 - y0, exact=1)
    # one frame past the bound is enough to refuse the view (_check_complete), whatever the header said
    out_kwargs = {"format": "rawvideo", "pix_fmt": "rgb24", "frames:v": MAX_VIEW_FRAMES + 1}
    if _same_fps(req.fps, info.fps) and info.times is None:
        out_kwargs["fps_mode"] = "passthrough"  # keep every decoded frame exactly once
    else:  # resampled by the frames' own times: a variable-rate video too, even at its average rate
        if info.times is not None and not (req.start or req.end is not None):
            stream = stream.setpts("PTS-STARTPTS")
        stream = stream.filter("fps", fps=req.fps)
    stream = stream.filter("scale", width, height, flags="area")
    cmd = stream.output("pipe:", **out_kwargs).global_args("-nostdin", "-loglevel", "error")
    try:
        raw, _ = cmd.run(cmd=ffmpeg_exe(), capture_stdout=True, capture_stderr=True)
    except ffmpeg.Error as e:
        msg = (e.stderr or b"").decode(errors="replace").strip().splitlines()
        # The header was readable (probe passed), so a failing decode means damaged content.
        raise DecodeError(f"truncated or damaged: ffmpeg says {msg[-1] if msg else 'nothing'}") from None
    frame_bytes = width * height * 3
    n = len(raw) // frame_bytes
    return np.frombuffer(raw[: n * frame_bytes], np.uint8).reshape(n, height, width, 3)


def _resample_indices(n_src: int, src_fps: float, out_fps: float) -> list[int]:
    """Source index for each output frame, nearest in time (the rule of ffmpeg's ``fps`` filter)."""
    if _same_fps(src_fps, out_fps):
        return list(range(n_src))
    n_out = int(np.ceil(n_src * out_fps / src_fps - 1e-6))
    return [min(n_src - 1, int(np.floor(k * src_fps / out_fps + 0.5))) for k in range(n_out)]


def _resample_times(times: np.ndarray, out_fps: float) -> list[int]:
    """Source index for each output frame of a variable-rate video with frame ``times`` (s): each frame
    takes the output slot nearest its time and holds it until the next frame's slot, the last of several
    frames in one slot winning (the rule of ffmpeg's ``fps`` filter)."""
    if len(times) == 0:
        return []
    slots = np.round((times - times[0]) * out_fps).astype(np.int64)
    return (np.searchsorted(slots, np.arange(slots[-1] + 1), side="right") - 1).tolist()


def _shape_frame(bgr: np.ndarray, req: DecodeRequest) -> np.ndarray:
    x0, y0, x1, y1 = req.box
    crop = bgr[y0:y1, x0:x1]
    if crop.shape[1] != req.size[0] or crop.shape[0] != req.size[1]:
        crop = cv2.resize(crop, req.size, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)


def _decode_opencv(path: Path, info: VideoInfo, req: DecodeRequest) -> np.ndarray:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DecodeError("not a readable video (OpenCV could not open it)")
    start = req.start or 0
    # source frames enough for the most a stored view may hold: a lying header cannot fill the memory
    bound = int(MAX_VIEW_FRAMES * max(1.0, info.fps / req.fps)) + HEADER_SLACK + 1
    limit = min((req.end if req.end is not None else 1 << 30) - start, bound)
    if start:
        cap.set(cv2.CAP_PROP_POS_FRAMES, start)
    shaped: list[np.ndarray] = []
    try:
        while len(shaped) < limit:
            ok, bgr = cap.read()
            if not ok:
                break
            shaped.append(_shape_frame(bgr, req))
    finally:
        cap.release()
    if info.times is not None:
        idx = _resample_times(np.asarray(info.times[start:start + len(shaped)]), req.fps)
    else:
        idx = _resample_indices(len(shaped), info.fps, req.fps)
    if not idx:
        return np.zeros((0, req.size[1], req.size[0], 3), np.uint8)
    return np.stack([shaped[i] for i in idx])


def _decode_images(folder: Path, info: VideoInfo, req: DecodeRequest) -> np.ndarray:
    files = image_files(folder)[req.start or 0: req.end]
    idx = _resample_indices(len(files), info.fps, req.fps)
    out = []
    for i in idx:
        bgr = cv2.imread(str(files[i]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DecodeError(f"unreadable image {files[i].name}")
        if bgr.shape[:2] != (info.height, info.width):
            raise DecodeError(f"image {files[i].name} is {bgr.shape[1]}x{bgr.shape[0]}, "
                              f"the folder's first is {info.width}x{info.height}")
        out.append(_shape_frame(bgr, req))
    return np.stack(out) if out else np.zeros((0, req.size[1], req.size[0], 3), np.uint8)
