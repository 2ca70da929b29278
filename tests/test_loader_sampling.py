"""Pure sampling decisions and the cached motion's cell-grid -> token-grid resampling (no shards needed)."""

import cv2
import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from mv2mae.config import ConfigError, RunConfig, load_config
from mv2mae.data.config import ClipGeometry, DataConfig
from mv2mae.data.motion import area_matrix, cache_token_motion, clip_token_motion
from mv2mae.data.sampling import (
    Crop,
    choose_views,
    eval_boxes,
    eval_frame_indices,
    random_resized_box,
    shared_clip,
    train_frame_indices,
)
from mv2mae.model.config import ModelConfig
from mv2mae.preprocess.adapters.etri import ETRI_LAYOUT
from mv2mae.preprocess.adapters.ntu import NTU_LAYOUT
from mv2mae.preprocess.motion import framediff_grid
from mv2mae.shards.schema import GroupMeta

GEOM = ClipGeometry.of(ModelConfig(frames=8, image_size=32, tubelet=2, patch=8), DataConfig(stride=2))


@pytest.mark.parametrize("num_frames", [1, 2, 5, 14, 15, 16, 40])
def test_frame_indices_stay_in_range_for_any_length(num_frames):
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = train_frame_indices(num_frames, GEOM, rng)
        assert len(idx) == GEOM.frames and idx.min() >= 0 and idx.max() < num_frames
        assert np.all(np.diff(idx) >= 0)
        if num_frames >= GEOM.span:
            assert np.all(np.diff(idx) == GEOM.stride)
    clips = eval_frame_indices(num_frames, GEOM, clips=3)
    assert len(clips) == 3 and all(c.max() < num_frames for c in clips)
    if num_frames >= GEOM.span:
        assert clips[0][0] == 0 and clips[-1][-1] == num_frames - 1


def test_views_follow_the_policy_and_the_allowed_cameras():
    rng = np.random.default_rng(1)
    cams = [1, 2, 3, 4, 5]
    for _ in range(50):
        views = choose_views(cams, DataConfig(num_sources=2), rng)
        assert len(set(views)) == 3 and set(views) <= set(cams)
        (alone,) = choose_views(cams, DataConfig(num_sources=0), rng)  # single-view pretraining
        assert alone in cams
    fixed = DataConfig(source_policy="fixed", fixed_pairs=[[1, 2], [9, 3]])
    assert all(choose_views(cams, fixed, rng) == [1, 2] for _ in range(10))  # [9, 3] lacks camera 9
    assert choose_views([2], DataConfig(), rng) is None
    with pytest.raises(ValueError, match="fixed_pairs"):
        DataConfig(source_policy="fixed", fixed_pairs=[[1, 2, 3]])


def test_adjacent_sources_follow_the_camera_layout_not_the_ids():
    """NTU: camera 1 stands between 2 and 3 (45 degrees from each; 2 and 3 are 90 apart), so the nearest
    view of camera 3 is camera 1, not camera 2. ETRI: the other height of the same position comes first."""
    rng = np.random.default_rng(1)
    adjacent = DataConfig(source_policy="adjacent")
    nearest = {1: set(), 2: set(), 3: set()}
    for _ in range(60):
        target, source = choose_views([1, 2, 3], adjacent, rng, NTU_LAYOUT)
        nearest[target].add(source)
    assert nearest == {1: {2, 3}, 2: {1}, 3: {1}}
    for _ in range(20):
        target, *sources = choose_views(range(1, 9), DataConfig(source_policy="adjacent", num_sources=3), rng,
                                        ETRI_LAYOUT)
        pair = target + 1 if target % 2 else target - 1  # C001/C002, C003/C004, ...: one position
        assert sources[0] == pair and len({(s - 1) // 2 for s in sources[1:]}) == 2  # then both neighbours
        assert all(abs((s - 1) // 2 - (target - 1) // 2) in (1, 3) for s in sources[1:])
    with pytest.raises(ValueError, match=r"cameras \[3\] have no place"):
        choose_views([2, 3], adjacent, rng, {"2": {"azimuth": 0.0}})
    farthest = {1: set(), 2: set(), 3: set()}
    for _ in range(60):
        target, source = choose_views([1, 2, 3], DataConfig(source_policy="opposite"), rng, NTU_LAYOUT)
        farthest[target].add(source)
    assert farthest == {1: {2, 3}, 2: {3}, 3: {2}}  # 2 and 3 stand 90 degrees apart, 1 between them


def test_a_pretraining_clip_takes_the_same_instants_from_the_span_its_views_share():
    """Three views whose common span is 23 frames; cameras 1 and 2 alone share 30, and a clip of that
    pair may use all of them (only what the pair needs is trimmed)."""
    meta = GroupMeta(key="K", dataset="t", label=0, subject=1, cameras=[1, 2, 3], fps=30.0, frames=23,
                     size=[32, 32], partition="p", view_frames={"1": 30, "2": 40, "3": 25},
                     offsets={"1": 0, "2": 5, "3": 2})
    assert meta.span([1, 2]) == ({1: 0, 2: 5}, 30) and meta.span([1, 2, 3]) == ({1: 0, 2: 5, 3: 2}, 23)
    assert meta.span([2, 3]) == ({2: 3, 3: 0}, 25)  # camera 3 starts 2 instants before the common span
    rng = np.random.default_rng(0)
    last = 0
    for _ in range(40):
        (c2, i2), (c1, i1) = shared_clip(meta, [2, 1], GEOM, rng)
        assert (c2, c1) == (2, 1) and np.array_equal(i2 - 5, i1)  # one instant in both views
        assert i1.min() >= 0 and i1.max() < 30 and i2.max() < 35
        last = max(last, int(i1.max()))
    assert last >= 23  # past the three-view span: the pair's own span is used


def test_crop_boxes_lie_inside_the_frame():
    rng = np.random.default_rng(2)
    for _ in range(200):
        x0, y0, x1, y1 = random_resized_box(96, 72, DataConfig(crop_scale=(0.1, 1.0)), rng)
        assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 72
    assert eval_boxes(96, 72, 3) == [(0, 0, 72, 72), (12, 0, 84, 72), (24, 0, 96, 72)]
    assert eval_boxes(72, 96, 1) == [(0, 12, 72, 84)]


def test_area_matrix_rows_are_exact_overlap_averages():
    m = area_matrix(4.0, 20.0, 2, cell=8, extent=21)  # cells [0,8) [8,16) [16,21)
    assert np.allclose(m.sum(axis=1), 1)
    assert np.allclose(m[0], [0.5, 0.5, 0])  # [4,12): half of cell 0, half of cell 1
    assert np.allclose(m[1], [0, 0.5, 0.5])  # [12,20)


def moving_square_clip(frames=40, width=96, height=72, side=12, seed=0):
    """A still textured background with one square moving on a straight line; returns frames and
    the square's top-left corner per frame."""
    rng = np.random.default_rng(seed)
    background = rng.integers(60, 120, size=(height, width, 3), dtype=np.uint8)
    corners = np.stack([np.linspace(4, width - side - 4, frames), np.linspace(8, height - side - 8, frames)], 1)
    clip = np.repeat(background[None], frames, axis=0)
    for t, (x, y) in enumerate(corners.round().astype(int)):
        clip[t, y:y + side, x:x + side] = (250, 250, 250)
    return clip, corners.round().astype(int)


def test_moving_square_has_the_highest_weights_after_any_crop():
    clip, corners = moving_square_clip()
    rows = framediff_grid(clip, cell=8)
    rng = np.random.default_rng(3)
    cfg = DataConfig(crop_scale=(0.2, 1.0))
    checked = 0
    for _ in range(60):
        idx = train_frame_indices(len(clip), GEOM, rng)
        box = random_resized_box(96, 72, cfg, rng)
        first, last = idx.min(), idx.max() + 1
        motion = cache_token_motion(rows[first:last], int(first), idx, Crop(box), (96, 72), 8, GEOM)
        tokens = motion.reshape(GEOM.grid)
        x0, y0, x1, y1 = box
        _, gh, gw = GEOM.grid
        for tt in range(GEOM.grid[0]):
            frames = idx[max(0, 2 * tt - 1): 2 * tt + 2]  # the tubelet's frames and the interval before
            sx0, sy0 = corners[frames.min():frames.max() + 1].min(0)  # the square's swept box
            sx1, sy1 = corners[frames.min():frames.max() + 1].max(0) + 12
            if sx1 <= x0 or sx0 >= x1 or sy1 <= y0 or sy0 >= y1 or frames.min() == frames.max():
                continue  # the square is outside this crop (or does not move) in this tubelet
            sx0, sy0, sx1, sy1 = sx0 - 8, sy0 - 8, sx1 + 8, sy1 + 8  # one motion cell of slack
            h, w = np.unravel_index(np.argmax(tokens[tt]), (gh, gw))
            tx0, tx1 = x0 + (x1 - x0) * w / gw, x0 + (x1 - x0) * (w + 1) / gw
            ty0, ty1 = y0 + (y1 - y0) * h / gh, y0 + (y1 - y0) * (h + 1) / gh
            assert tx1 > sx0 and tx0 < sx1 and ty1 > sy0 and ty0 < sy1, (box, tt, (h, w))
            assert tokens[tt].max() > 5 * np.median(tokens[tt]) + 1e-3
            checked += 1
    assert checked > 50


def test_cache_and_online_motion_agree_in_rank_on_the_square():
    clip, _ = moving_square_clip()
    rows = framediff_grid(clip, cell=8)
    idx = np.arange(GEOM.frames) * GEOM.stride + 3
    box = (0, 0, 96, 72)
    cached = cache_token_motion(rows[idx.min():idx.max() + 1], int(idx.min()), idx, Crop(box), (96, 72), 8, GEOM)
    cropped = np.stack([cv2.resize(clip[i], (GEOM.size, GEOM.size), interpolation=cv2.INTER_AREA) for i in idx])
    online = clip_token_motion(torch.from_numpy(cropped).movedim(-1, 0), GEOM.tubelet, GEOM.patch).numpy()
    assert online.shape == cached.shape == (GEOM.tokens,)
    moving = (online > 1) | (cached > 1)
    assert moving.sum() >= 4
    assert spearmanr(cached[moving], online[moving]).statistic > 0.8
    assert cached[np.argmax(online)] >= np.quantile(cached, 0.9)  # the most-moving token agrees


def test_geometry_comes_from_the_model_config_and_the_data_stride():
    model = ModelConfig(frames=8, image_size=64, tubelet=2, patch=16)
    geom = ClipGeometry.of(model, DataConfig(stride=3))
    assert (geom.frames, geom.stride, geom.size, geom.tubelet, geom.patch) == (8, 3, 64, 2, 16)
    assert geom.tokens == model.num_tokens


def test_the_run_config_data_section_is_the_loaders_data_config():
    cfg = load_config("tiny", "pretrain", ["data.num_sources=2", "data.source_policy=adjacent", "data.motion=none",
                                           "data.shared_crop=true", "data.eval_clips=4"])
    assert type(cfg.data) is DataConfig
    assert (cfg.data.num_sources, cfg.data.source_policy, cfg.data.motion, cfg.data.shared_crop,
            cfg.data.eval_clips, cfg.data.views) == (2, "adjacent", "none", True, 4, 3)
    assert RunConfig.from_dict(cfg.to_dict()).data == cfg.data  # a checkpoint's saved run_config loads back


@pytest.mark.parametrize("name, value, message", [
    ("repeats", 0, "repeats must be >= 1"), ("motion", "optical", "motion 'optical' not in"),
    ("decode_on", "gpu", "decode_on must be auto, cpu or device"),
    ("source_policy", "fixed", "fixed_pairs"), ("stride", 0, "stride"),
])
def test_invalid_data_options_are_config_errors_naming_the_section(name, value, message):
    with pytest.raises(ConfigError, match=f"data: .*{message}"):
        load_config("tiny", "pretrain", [f"data.{name}={value}"])
    with pytest.raises(ValueError, match=message):  # the same check guards a DataConfig built in code
        DataConfig(**{name: value})


def test_decoding_moves_to_the_device_by_default_only_on_cuda():
    assert not DataConfig(decode_on="auto").decodes_on_device("cpu")
    assert DataConfig(decode_on="auto").decodes_on_device("cuda")
    assert not DataConfig(decode_on="cpu").decodes_on_device("cuda")
    assert DataConfig(decode_on="device").decodes_on_device("cpu")  # the same code on the CPU (tests, CI)


def test_a_retired_key_in_a_saved_run_config_is_ignored_with_a_warning():
    """Runs saved before ``data.normalize_on`` was retired still resume and evaluate (their config is read
    back from the checkpoint); the key no longer means anything, so it is dropped, not refused."""
    saved = load_config("tiny", "pretrain").to_dict()
    saved["data"]["normalize_on"] = "worker"
    with pytest.warns(FutureWarning, match="data.normalize_on is retired and ignored"):
        cfg = RunConfig.from_dict(saved)
    assert cfg.data == load_config("tiny", "pretrain").data
    with pytest.warns(FutureWarning, match="data.normalize_on"):
        load_config("tiny", "pretrain", ["data.normalize_on=device"])
    with pytest.raises(ConfigError, match="unknown config key"):  # other unknown keys are still errors
        load_config("tiny", "pretrain", ["data.normalise_on=device"])
