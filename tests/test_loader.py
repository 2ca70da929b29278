"""The streaming loader on real shards: contract of the batches, determinism, the exact evaluation pass
across 2 ranks × 2 DataLoader workers, cache-vs-online motion agreement, and decoding on the device
(``data.decode_on=device``, run on the CPU here) giving the workers' batches."""

import numpy as np
import pytest
import torch
from fixtures_data import session_synth_data
from scipy.stats import spearmanr

from mv2mae.data import (
    ClipGeometry,
    DataConfig,
    build_eval_loader,
    build_finetune_loader,
    build_pretrain_loader,
)
from mv2mae.data.device import PLAN_FIELDS
from mv2mae.model.config import ModelConfig
from mv2mae.shards.protocols import select
from mv2mae.shards.schema import ContractError, read_index

MODEL = ModelConfig(frames=8, image_size=32, tubelet=2, patch=8)
GEOM = ClipGeometry.of(MODEL, DataConfig(stride=2))


def data(root, protocol, workers=0, **options) -> DataConfig:
    return DataConfig(root=root, protocol=protocol, stride=2, workers=workers, **options)


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    return session_synth_data(tmp_path_factory)


def take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_pretrain_batches_follow_the_model_contract(synth_data):
    index = read_index(synth_data)
    (batch,) = take(build_pretrain_loader(MODEL, data(synth_data, "synth_xview"), batch_size=4, seed=0), 1)
    assert batch["video"].shape == (4, 2, 3, GEOM.frames, GEOM.size, GEOM.size)
    assert batch["video"].dtype == torch.uint8  # pixels: the model normalises them
    assert batch["motion"].shape == (4, 2, GEOM.tokens) and (batch["motion"] >= 0).all()
    assert batch["motion"].amax(dim=-1).min() > 0  # every view of a moving figure has motion
    assert set(batch["cameras"].flatten().tolist()) <= {2, 3}  # cross-view training cameras only
    assert (batch["cameras"][:, 0] != batch["cameras"][:, 1]).all()  # target and source differ
    for key, label in zip(batch["key"], batch["label"].tolist(), strict=True):
        assert index.classes[label] and int(key[-3:]) - 1 == label  # NTU action id -> 0-based label


def test_short_clips_and_default_geometry_do_not_crash(synth_data):
    model = ModelConfig(image_size=32, patch=16)  # 16 frames at stride 4 span 61 stored frames; clips hold ~20
    options = DataConfig(root=synth_data, protocol="all", workers=0, num_sources=2, source_policy="adjacent")
    geom = ClipGeometry.of(model, options)
    (batch,) = take(build_pretrain_loader(model, options, batch_size=2, seed=1), 1)
    assert batch["video"].shape == (2, 3, 3, 16, 32, 32) and batch["motion"].shape == (2, 3, geom.tokens)


def test_same_seed_same_batches_other_seed_other_batches(synth_data):
    def run(seed):
        return take(build_pretrain_loader(MODEL, data(synth_data, "all", workers=2), batch_size=3, seed=seed), 3)

    a, b, c = run(5), run(5), run(6)
    for x, y in zip(a, b, strict=True):
        assert x["key"] == y["key"] and torch.equal(x["cameras"], y["cameras"])
        assert torch.equal(x["video"], y["video"]) and torch.equal(x["motion"], y["motion"])
    assert any(not torch.equal(x["video"], z["video"]) for x, z in zip(a, c, strict=True))


def test_repeated_sampling_recrops_the_frames_it_decoded_once(synth_data):
    def run(repeats):
        options = data(synth_data, "all", repeats=repeats)
        (batch,) = take(build_pretrain_loader(MODEL, options, batch_size=6, seed=4), 1)
        return batch

    once, twice = run(1), run(2)
    assert twice["key"][0::2] == twice["key"][1::2]  # consecutive samples come from one group...
    assert torch.equal(twice["cameras"][0::2], twice["cameras"][1::2])  # ...and the same views
    for a, b in zip(twice["video"][0::2], twice["video"][1::2], strict=True):
        assert not torch.equal(a, b)  # but each has crops of its own
    assert not torch.equal(twice["motion"][0::2], twice["motion"][1::2])  # and weights for its crops
    assert once["key"][:3] == twice["key"][0::2]  # the same groups, in the same order
    assert torch.equal(once["video"][0], twice["video"][0])  # and the first crops as without repeats
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        DataConfig(repeats=0)


def test_exact_pass_covers_every_group_once_across_2_ranks_x_2_workers(synth_data):
    index = read_index(synth_data)
    selection = select(index, "synth_xsub", "test")
    assert len(selection.shards) >= 2
    options = data(synth_data, "synth_xsub", workers=2, eval_clips=2, eval_crops=3)
    seen = []
    for rank in range(2):
        loader = build_eval_loader(MODEL, options, batch_size=5, rank=rank, world_size=2)
        for batch in loader:
            seen += list(zip(batch["video_id"], batch["clip"].tolist(), batch["crop"].tolist(), strict=True))
    expected = {(f"{k}/c{c:03d}", clip, crop) for k in selection.keys for c in selection.cameras
                for clip in range(2) for crop in range(3)}
    assert len(seen) == len(set(seen)) == len(expected)  # nothing twice, nothing lost
    assert set(seen) == expected


def test_finetune_and_eval_use_the_protocol_cameras(synth_data):
    (batch,) = take(build_finetune_loader(MODEL, data(synth_data, "synth_xview"), batch_size=6, seed=0), 1)
    assert batch["video"].shape == (6, 3, GEOM.frames, GEOM.size, GEOM.size)
    assert set(batch["camera"].tolist()) <= {2, 3}
    batches = list(build_eval_loader(MODEL, data(synth_data, "synth_xview", eval_clips=1, eval_crops=3),
                                     batch_size=64))
    cams = torch.cat([b["camera"] for b in batches])
    assert set(cams.tolist()) == {1} and len(cams) == 3 * read_index(synth_data).groups


def test_cache_and_online_motion_agree_in_rank(synth_data):
    def motion(source):
        loader = build_pretrain_loader(MODEL, data(synth_data, "all", motion=source), batch_size=8, seed=3)
        return torch.cat([b["motion"] for b in take(loader, 3)]).flatten(0, 1).numpy()

    cached, online = motion("framediff"), motion("online")
    assert cached.shape == online.shape == (48, GEOM.tokens)
    assert spearmanr(cached.ravel(), online.ravel()).statistic >= 0.9
    per_view = [spearmanr(a, b).statistic for a, b in zip(cached, online, strict=True)]
    assert np.median(per_view) >= 0.8


def test_bad_requests_fail_clearly(synth_data):
    with pytest.raises(ContractError, match="motion source 'flow' not in the cache"):
        build_pretrain_loader(MODEL, data(synth_data, "all", motion="flow"), batch_size=2,
                              seed=0).dataset.__iter__().__next__()
    with pytest.raises(ContractError, match=r"allows cameras \[2, 3\]; pretraining needs 3 views"):
        build_pretrain_loader(MODEL, data(synth_data, "synth_xview", num_sources=2), batch_size=2, seed=0)
    with pytest.raises(ContractError, match="protocol ntu60_xsub is for ntu60 data"):
        build_pretrain_loader(MODEL, data(synth_data, "ntu60_xsub"), batch_size=2, seed=0)


# Decoding on the device (here: the CPU) against the workers' cv2 path. The two decoders are the same
# libjpeg-turbo; the resamplers differ only in rounding (cv2's fixed-point weights against float
# arithmetic rounded to the nearest level), so a pixel may differ by one level and most do not.
MAX_LEVELS, MEAN_LEVELS = 1, 0.25


def both_paths(build, synth_data, model, workers=0, **options):
    """The first two batches of one loader per ``decode_on``, everything else equal."""
    out = {}
    for where in ("cpu", "device"):
        loader = build(model, data(synth_data, "all", workers=workers, decode_on=where, **options))
        out[where] = take(loader, 2)
    return out["cpu"], out["device"]


@pytest.mark.parametrize("stage, size, workers", [("pretrain", 32, 1), ("pretrain", 16, 0), ("finetune", 32, 0),
                                                   ("eval", 32, 0)])
def test_decoding_on_the_device_gives_the_workers_batches_within_one_level(synth_data, stage, size, workers):
    """Same samples (one plan drives both), same shapes and fields, video within rounding; at size 16 the
    crops shrink more than 2x, where both resample by pixel area instead of bilinearly. With a worker,
    the plans cross processes in shared memory."""
    model = MODEL.with_(image_size=size)
    build = {"pretrain": lambda m, d: build_pretrain_loader(m, d, batch_size=3, seed=2),
             "finetune": lambda m, d: build_finetune_loader(m, d, batch_size=3, seed=2),
             "eval": lambda m, d: build_eval_loader(m, d, batch_size=5)}[stage]
    for cpu, dev in zip(*both_paths(build, synth_data, model, workers), strict=True):
        assert list(dev) == list(cpu) and not set(PLAN_FIELDS) & set(dev)
        assert dev["video"].dtype == torch.uint8 and dev["video"].shape == cpu["video"].shape
        levels = (dev["video"].int() - cpu["video"].int()).abs()
        assert levels.max() <= MAX_LEVELS and levels.float().mean() <= MEAN_LEVELS, (levels.max(), levels.float().mean())
        for key, value in cpu.items():
            if key != "video":
                assert (torch.equal(value, dev[key]) if isinstance(value, torch.Tensor) else value == dev[key]), key


def test_online_motion_is_computed_after_decoding_on_the_device(synth_data):
    build = lambda m, d: build_pretrain_loader(m, d, batch_size=3, seed=5)  # noqa: E731
    for cpu, dev in zip(*both_paths(build, synth_data, MODEL, motion="online"), strict=True):
        assert dev["motion"].shape == cpu["motion"].shape == (3, 2, GEOM.tokens)
        # a mean of |frame differences|: pixels one level apart move a difference by at most two levels
        error = (dev["motion"] - cpu["motion"]).abs()
        assert error.max() <= 2 * MAX_LEVELS and error.mean() <= 2 * MEAN_LEVELS
        assert dev["motion"].amax(dim=-1).min() > 0


def plans(synth_data, n=1):
    """Batches as the workers ship them with decode_on=device, and the decoder the loader applies."""
    loader = build_pretrain_loader(MODEL, data(synth_data, "all", decode_on="device"), batch_size=3, seed=0)
    decoder, loader.finish = loader.finish, None
    return take(loader, n), decoder


def test_a_bad_jpeg_or_frame_size_on_the_device_names_its_group(synth_data):
    (batch,), decode = plans(synth_data)
    first = int(batch["jpeg_count"][0])
    start = int(batch["jpeg_sizes"][:first + 2].sum())  # the third JPEG of the second sample
    broken = dict(batch, jpeg=batch["jpeg"].clone())
    broken["jpeg"][start:start + int(batch["jpeg_sizes"][first + 2])] = 0
    with pytest.raises(ContractError, match=f"{batch['key'][1]}: sampled JPEG 2 of the group does not decode"):
        decode(broken)
    resized = dict(batch, frame_size=batch["frame_size"].clone())
    resized["frame_size"][2, 0] += 1
    with pytest.raises(ContractError, match=f"{batch['key'][2]}: a sampled frame is .* metadata says"):
        decode(resized)
