"""Motion weights on the method's scale and aligned with the clip (METHOD.md, Objective), and flow's own τ.

A noisy (σ = 2), textured 128² scene with a textured object moving 1 px per frame is written as PNG
frames, preprocessed through the manifest adapter into real shards and a real Zarr cache (framediff and
flow), and read back by the pretraining loader at strides 1, 2 and 4."""

import csv

import cv2
import numpy as np
import pytest
import torch
from train_helpers import tiny_config

from mv2mae.data import DataConfig, build_pretrain_loader
from mv2mae.model.config import ModelConfig
from mv2mae.preprocess.pipeline import run
from mv2mae.train.tasks import PretrainTask

SIDE, FRAMES, OBJECT, NOISE = 128, 40, 28, 2.0
MODEL = ModelConfig(frames=8, image_size=64, tubelet=2, patch=8)


def texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Mid-grey texture with detail at a few pixels' scale (what JPEG keeps)."""
    base = rng.normal(128, 40, (height, width, 3)).astype(np.float32)
    return cv2.GaussianBlur(base, (0, 0), 1.0)


def noisy_scene(seed: int) -> np.ndarray:
    """uint8 RGB frames [FRAMES, SIDE, SIDE, 3]: still background, an object moving right 1 px per frame,
    independent sensor noise of σ = 2 grey levels on every frame."""
    rng = np.random.default_rng(seed)
    background, sprite = texture(rng, SIDE, SIDE), texture(rng, OBJECT, OBJECT) + 40
    frames = np.repeat(background[None], FRAMES, axis=0)
    y = (SIDE - OBJECT) // 2
    for t in range(FRAMES):
        x = 20 + t
        frames[t, y:y + OBJECT, x:x + OBJECT] = sprite
    frames += rng.normal(0, NOISE, frames.shape).astype(np.float32)
    return np.clip(frames.round(), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def noisy_data(tmp_path_factory):
    """Two cameras of the scene (their own noise and texture) through the real preprocessing."""
    base = tmp_path_factory.mktemp("noisy")
    rows = []
    for cam in (1, 2):
        folder = base / f"cam{cam}"
        folder.mkdir()
        for t, frame in enumerate(noisy_scene(seed=cam)):
            cv2.imwrite(str(folder / f"{t:04d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        rows.append({"group": "g1", "camera": cam, "path": folder.name, "label": 0, "subject": 1})
    manifest = base / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = base / "data"
    run("manifest", manifest, out, size=SIDE, motion="both", max_lag=0, jpeg_quality=95, workers=1)
    return out


def definition(video: np.ndarray, tubelet: int, patch: int) -> np.ndarray:
    """The method's per-token motion of uint8 clips [..., C, T, H, W], written out in numpy: mean absolute
    difference of consecutive sampled frames over each tubelet, frame 0 reusing frame 1's difference."""
    x = video.astype(np.float32)
    diff = np.abs(np.diff(x, axis=-3))
    diff = np.concatenate([diff[..., :1, :, :], diff], axis=-3)
    *lead, c, t, h, w = diff.shape
    cells = diff.reshape(*lead, c, t // tubelet, tubelet, h // patch, patch, w // patch, patch)
    k = len(lead)
    return cells.mean(axis=(k, k + 2, k + 4, k + 6)).reshape(*lead, -1)


def batch(root, motion: str, stride: int, seed: int = 0) -> dict:
    cfg = DataConfig(root=root, protocol="all", stride=stride, motion=motion, workers=0)
    return next(iter(build_pretrain_loader(MODEL, cfg, batch_size=6, seed=seed)))


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_framediff_equals_the_definition_on_the_sampled_frames_and_crop(noisy_data, stride):
    """``framediff`` (every preset's default) gives, in value, the method's motion of the very clip the
    loader hands out: its sampled frames (``stride`` apart) and its crop."""
    got = batch(noisy_data, "framediff", stride)
    video, motion = got["video"].numpy(), got["motion"].numpy()
    assert video.dtype == np.uint8
    want = definition(video, MODEL.tubelet, MODEL.patch)
    static = np.median(motion, axis=-1)  # most tokens see only the background's sensor noise
    assert np.allclose(static, np.median(want, axis=-1), rtol=0.03), (stride, static)
    peak = motion.max(axis=-1)  # the moving object
    assert np.allclose(peak, want.max(axis=-1), rtol=0.03), (stride, peak)
    assert np.allclose(motion, want, rtol=0.03, atol=0.05), stride


def test_flow_is_a_speed_whatever_the_stride(noisy_data):
    """``flow`` is in stored-frame pixels per stored frame: the object's 1 px per frame reads the same
    at strides 1, 2 and 4, and so does the static background's noise floor (a sum over the stride
    interval would grow 4x)."""
    peaks, floors = [], []
    for stride in (1, 2, 4):
        flow = batch(noisy_data, "flow", stride)["motion"].numpy()
        peaks.append(np.median(flow.max(axis=-1)))
        floors.append(np.median(flow))
    assert 0.3 < peaks[0] < 1.2, peaks  # a token partly covered by an object moving 1 px per frame
    assert np.allclose(peaks, peaks[0], rtol=0.15) and np.allclose(floors, floors[0], rtol=0.25), (peaks, floors)


def test_cached_motion_is_aligned_with_the_clips_crop_and_frames(noisy_data):
    """Where and when the clip moves (the definition, on the very pixels the loader hands out) is where
    and when the cached ``flow`` is high, view by view. Taking the cache through another box (the whole
    frame, or the crop shifted by 16 px) or other frames (consecutive ones instead of the sampled ones)
    drops the worst view's correlation to 0.6 or less. (``framediff`` is computed from the clip, and the
    test above holds it equal to the definition in value.)"""
    got = batch(noisy_data, "flow", stride=4, seed=1)
    want = definition(got["video"].numpy(), MODEL.tubelet, MODEL.patch).reshape(-1, MODEL.num_tokens)
    flow = got["motion"].numpy().reshape(-1, MODEL.num_tokens)
    agreement = [np.corrcoef(f, d)[0, 1] for f, d in zip(flow, want, strict=True)]
    assert min(agreement) > 0.7, agreement  # 0.77 aligned


def test_flow_motion_is_weighted_with_its_own_tau():
    """Training on ``flow`` uses ``model.tau_flow`` (flow's units), on framediff ``model.tau``."""
    flow, framediff = tiny_config("pretrain", "data.motion=flow"), tiny_config("pretrain")
    assert (flow.motion_tau, framediff.motion_tau) == (flow.model.tau_flow, framediff.model.tau) == (4.2, 60.0)
    task = PretrainTask(flow)
    model = task.build_model()
    m = flow.model
    video = torch.randn(2, 2, m.channels, m.frames, m.image_size, m.image_size, generator=torch.Generator().manual_seed(0))
    motion = torch.rand(2, 2, m.num_tokens, generator=torch.Generator().manual_seed(1)) * 3  # a few px per frame

    def loss(tau):
        return model(video, motion, generator=torch.Generator().manual_seed(2), tau=tau).loss

    got = task.train_step(model, {"video": video, "motion": motion}, torch.Generator().manual_seed(2)).loss
    assert torch.equal(got, loss(4.2)) and not torch.allclose(got, loss(60.0))
