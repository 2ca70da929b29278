"""The streaming loader on real shards: contract of the batches, determinism, the exact evaluation pass
across 2 ranks × 2 DataLoader workers, and the motion options (tests/test_loader_motion.py holds their values)."""

import pytest
import torch
from fixtures_data import session_synth_data

from mv2mae.data import (
    ClipGeometry,
    DataConfig,
    build_eval_loader,
    build_finetune_loader,
    build_pretrain_loader,
)
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
    assert batch["video"].dtype == torch.float32
    assert batch["motion"].shape == (4, 2, GEOM.tokens) and (batch["motion"] >= 0).all()
    assert batch["motion"].amax(dim=-1).min() > 0  # every view of a moving figure has motion
    assert set(batch["cameras"].flatten().tolist()) <= {2, 3}  # cross-view training cameras only
    assert (batch["cameras"][:, 0] != batch["cameras"][:, 1]).all()  # target and source differ
    for key, label in zip(batch["key"], batch["label"].tolist(), strict=True):
        assert index.classes[label] and int(key[-3:]) - 1 == label  # NTU action id -> 0-based label
    mean = torch.tensor(MODEL.pixel_mean).view(3, 1, 1, 1)
    std = torch.tensor(MODEL.pixel_std).view(3, 1, 1, 1)
    pixels = batch["video"] * std + mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


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
        options = data(synth_data, "all", repeats=repeats, normalize_on="device")
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


def test_online_is_another_name_for_framediff(synth_data):
    def motion(source):
        loader = build_pretrain_loader(MODEL, data(synth_data, "all", motion=source), batch_size=8, seed=3)
        return torch.cat([b["motion"] for b in take(loader, 2)])

    framediff = motion("framediff")
    assert framediff.shape == (16, 2, GEOM.tokens) and torch.equal(framediff, motion("online"))


def test_bad_requests_fail_clearly(synth_data):
    with pytest.raises(ContractError, match="motion source 'flow' not in the cache"):
        build_pretrain_loader(MODEL, data(synth_data, "all", motion="flow"), batch_size=2,
                              seed=0).dataset.__iter__().__next__()
    with pytest.raises(ContractError, match=r"allows cameras \[2, 3\]; pretraining needs 3 views"):
        build_pretrain_loader(MODEL, data(synth_data, "synth_xview", num_sources=2), batch_size=2, seed=0)
    with pytest.raises(ContractError, match="protocol ntu60_xsub is for ntu60 data"):
        build_pretrain_loader(MODEL, data(synth_data, "ntu60_xsub"), batch_size=2, seed=0)
