"""Exact resume replays the consumed part of the data stream — which groups, frames, crops — without
decoding it: a loader started after N batches yields exactly what a fresh loader yields after its first
N, split over any number of workers, with repeated sampling ending mid-group."""

import pytest
import torch
from fixtures_data import session_synth_data

from mv2mae.data import DataConfig, build_finetune_loader, build_pretrain_loader
from mv2mae.model.config import ModelConfig

MODEL = ModelConfig(frames=4, image_size=32, tubelet=2, patch=8)


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    return session_synth_data(tmp_path_factory)


def batches(build, data, start, count):
    stream = iter(build(MODEL, data, batch_size=3, seed=5, start=start))
    return [next(stream) for _ in range(count)]


@pytest.mark.parametrize("build, workers, repeats, options", [
    (build_pretrain_loader, 2, 2, {}),  # 3-sample batches, 2 samples per group: the cut falls inside a group
    (build_pretrain_loader, 0, 1, {}),
    (build_finetune_loader, 2, 1, {}),
    # decoding in the training process: the workers replay the same decisions (crops, flips) as they plan
    (build_pretrain_loader, 0, 2, dict(decode_on="device", flip="on")),
])
def test_a_resumed_stream_continues_exactly_where_it_left_off(synth_data, build, workers, repeats, options):
    data = DataConfig(root=str(synth_data), protocol="synth_xview", stride=2, workers=workers, shuffle_buffer=4,
                      repeats=repeats, **options)
    straight = batches(build, data, start=0, count=7)
    resumed = batches(build, data, start=5, count=2)
    for a, b in zip(straight[5:], resumed, strict=True):
        assert a["key"] == b["key"]
        assert torch.equal(a["video"], b["video"])  # same frames and crops, pixel for pixel
        if "motion" in a:
            assert torch.equal(a["motion"], b["motion"])
    assert [b["key"] for b in straight[:5]] != [b["key"] for b in straight[2:7]]  # the stream does move on
