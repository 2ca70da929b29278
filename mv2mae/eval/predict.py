"""Class predictions for video files from a finetuned classifier: what ``mv2mae predict`` computes.

Each video is sampled as ``eval`` samples a stored group: ``clips`` temporal clips evenly spaced over it at
the run's stride (counted in the dataset's stored frames, so converted to the video's own frame rate),
``crops`` squares along the long side, each resized to the model's input and handed to it as uint8
pixels (the model normalises them with the checkpoint's statistics); the softmax is averaged over clips × crops. Several synchronised views of one
recording are fused as ``eval`` fuses the cameras of a group: their probabilities are averaged.
The whole frame is seen: a dataset preprocessed with ``--crop person`` was trained on person boxes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mv2mae.config import RunConfig
from mv2mae.data.config import ClipGeometry, DataConfig
from mv2mae.data.pixels import crop_resize, to_video_tensor
from mv2mae.data.sampling import Crop, eval_boxes, eval_frame_indices
from mv2mae.eval.embed import open_video, read_frames
from mv2mae.eval.guards import require_finite_scores, require_finite_weights
from mv2mae.model.checkpoint import load_checkpoint, load_classifier
from mv2mae.model.classifier import VideoClassifier

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
FUSED = "fused"


@dataclass
class Predictor:
    """A finetuned classifier with what it needs to see a video file as it was tested."""

    model: VideoClassifier
    classes: list[str]
    data: DataConfig  # stride, eval_clips, eval_crops of the run
    fps: float | None  # frame rate of the stored frames it was trained on (None: unknown, use the video's)
    device: torch.device

    @classmethod
    def load(cls, checkpoint: str | Path, device: str | torch.device = "cpu") -> Predictor:
        ckpt = load_checkpoint(checkpoint)
        model = load_classifier(ckpt, str(checkpoint)).to(device).eval()
        require_finite_weights(model, str(checkpoint))
        classes = ckpt.get("classes") or [f"class_{i}" for i in range(model.num_classes)]
        if len(classes) != model.num_classes:
            raise ValueError(f"{checkpoint}: its head has {model.num_classes} outputs but it records {len(classes)} "
                             f"class names")
        data = RunConfig.from_dict(ckpt["run_config"]).data if "run_config" in ckpt else DataConfig()
        return cls(model, list(classes), data, ckpt.get("fps"), torch.device(device))

    def clips(self, path: Path, clips: int | None = None, crops: int | None = None) -> torch.Tensor:
        """The test clips of one video: uint8 [clips × crops, C, T, H, W] on the model's device."""
        cap, total, video_fps = open_video(path)
        stride = self.data.stride
        if self.fps and video_fps > 0:  # the run's stride is in stored frames at the dataset's rate
            stride = max(1, round(stride * video_fps / self.fps))
        geom = ClipGeometry.of(self.model.cfg, replace(self.data, stride=stride))
        starts = eval_frame_indices(total, geom, clips or self.data.eval_clips)
        frames = read_frames(cap, path, {int(i) for clip in starts for i in clip})
        height, width = next(iter(frames.values())).shape[:2]
        boxes = eval_boxes(width, height, crops or self.data.eval_crops)
        rgb = np.stack([crop_resize(frames, idx, Crop(box), geom.size) for idx in starts for box in boxes])
        return to_video_tensor(rgb).to(self.device)

    @torch.inference_mode()
    def probabilities(self, path: Path, clips: int | None = None, crops: int | None = None) -> np.ndarray:
        """Class probabilities [C] of one video: the softmax averaged over its clips × crops."""
        logits = self.model(self.clips(path, clips, crops))
        probs = logits.float().softmax(dim=-1).mean(dim=0).cpu().numpy()
        require_finite_scores(probs, str(path))
        return probs


def video_files(paths: list[Path]) -> list[Path]:
    """The videos to predict: files as given, folders expanded to the video files they hold (sorted)."""
    out = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
            if not found:
                raise ValueError(f"{path}: no video files ({', '.join(VIDEO_SUFFIXES)})")
            out += found
        elif path.is_file():
            out.append(path)
        else:
            raise ValueError(f"{path}: no such file or directory")
    return out


def top_classes(probs: np.ndarray, classes: list[str], k: int) -> list[dict[str, Any]]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"class": classes[i], "score": round(float(probs[i]), 6)} for i in order]


def predict_videos(predictor: Predictor, videos: list[Path], views: bool = False, top_k: int = 5,
                   clips: int | None = None, crops: int | None = None) -> list[dict[str, Any]]:
    """One row per video ``{"video", "top": [{"class", "score"}, …]}``; with ``views`` (the videos are
    synchronised views of one recording) a last row ``video="fused"`` averages their probabilities."""
    probs = [predictor.probabilities(v, clips, crops) for v in videos]
    rows = [{"video": str(v), "top": top_classes(p, predictor.classes, top_k)} for v, p in zip(videos, probs, strict=True)]
    if views and len(videos) > 1:
        rows.append({"video": FUSED, "top": top_classes(np.mean(probs, axis=0), predictor.classes, top_k)})
    return rows
