"""The streaming loader on real shards: contract of the batches, determinism, the exact evaluation pass
across 2 ranks × 2 DataLoader workers, the motion options (tests/test_loader_motion.py holds their values),
and decoding on the device (``data.decode_on=device``, run on the CPU here) giving the workers' batches."""

import dataclasses
import re
from itertools import islice

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
from mv2mae.data.datasets import FinetuneClips, PretrainClips
from mv2mae.data.pixels import PLAN_FIELDS, crop_resize, decode_frames, to_video_tensor
from mv2mae.data.sampling import Crop, eval_boxes, eval_frame_indices
from mv2mae.data.splits import ShardSplit
from mv2mae.model.config import ModelConfig
from mv2mae.shards.protocols import select
from mv2mae.shards.schema import ContractError, frame_member, read_index
from mv2mae.tools.shardio import read_group

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


def stream(dataset_cls, split, options, seed, n):
    return list(islice(iter(dataset_cls(split, GEOM, options, seed=seed)), n))


def test_a_flipped_finetuning_clip_is_mirrored_and_takes_its_mirror_class(synth_data):
    """With a class-swap table a finetuning clip flips (p = 0.5) and its label follows the table; the
    crops are those of the same seed without flips."""
    split = ShardSplit.open(synth_data, "synth_xview", "train")
    table = [1, 0, 2]  # wave right <-> wave left; the third class is taken as symmetric
    split = dataclasses.replace(split, index=dataclasses.replace(split.index, flip_classes=table))
    options = data(synth_data, "synth_xview")
    plain = stream(FinetuneClips, split, dataclasses.replace(options, flip="off"), 3, 24)
    maybe = stream(FinetuneClips, split, options, 3, 24)  # flip=auto: on, since the index has a table
    flipped = 0
    for a, b in zip(plain, maybe, strict=True):
        assert (a["key"], a["camera"]) == (b["key"], b["camera"])
        if torch.equal(a["video"], b["video"]):
            assert b["label"] == a["label"]
        else:
            assert torch.equal(b["video"], a["video"].flip(-1)) and b["label"] == table[a["label"]]
            flipped += 1
    assert 0 < flipped < 24 and any(a["label"] != b["label"] for a, b in zip(plain, maybe, strict=True))


def test_pretraining_flips_every_view_together_with_its_motion(synth_data):
    """``data.flip=on``: one coin per sample mirrors every view, and each view's motion weights are
    mirrored with its pixels (framediff: computed from the mirrored clip)."""
    split = ShardSplit.open(synth_data, "synth_xview", "train")
    options = data(synth_data, "synth_xview", motion="framediff")
    plain = stream(PretrainClips, split, options, 5, 16)
    maybe = stream(PretrainClips, split, dataclasses.replace(options, flip="on"), 5, 16)
    grid = (2, *GEOM.grid)
    flipped = 0
    for a, b in zip(plain, maybe, strict=True):
        mirrored = not torch.equal(a["video"], b["video"])
        assert torch.equal(b["video"], a["video"].flip(-1) if mirrored else a["video"])  # all views, or none
        weights = a["motion"].reshape(grid)
        assert torch.allclose(b["motion"].reshape(grid), weights.flip(-1) if mirrored else weights, atol=1e-4)
        flipped += mirrored
    assert 0 < flipped < 16


def test_flipping_needs_the_class_swap_table_to_finetune(synth_data):
    assert read_index(synth_data).flip_classes is None  # 3 synthetic classes: punch left is not one of them
    split = ShardSplit.open(synth_data, "synth_xview", "train")
    assert FinetuneClips(split, GEOM, data(synth_data, "synth_xview")).flip_classes is None  # auto: off
    with pytest.raises(ContractError, match=r"data.flip=on, but its index.json records no flip_classes"):
        build_finetune_loader(MODEL, data(synth_data, "synth_xview", flip="on"), batch_size=2, seed=0)
    with pytest.raises(ValueError, match="flip must be auto, on or off"):
        DataConfig(flip="yes")


def test_adjacent_sources_come_from_the_recorded_camera_layout(synth_data):
    """The synthetic cameras stand as NTU's (1 at 0 degrees, 2 at -45, 3 at +45): the nearest view of
    camera 3 is camera 1, although camera 2 has the nearer id."""
    assert read_index(synth_data).layout["3"] == {"azimuth": 45.0, "height": 1.2}
    loader = build_pretrain_loader(MODEL, data(synth_data, "all", source_policy="adjacent"), batch_size=8, seed=0)
    pairs = {tuple(p) for b in take(loader, 3) for p in b["cameras"].tolist()}
    assert {(3, 1), (2, 1)} <= pairs and not {(3, 2), (2, 3)} & pairs


def test_evaluation_clips_cover_each_test_view_whole(synth_data):
    """A test video is the camera's whole recording, not the span it shares with the training views: the
    evaluation clips are spread over every stored frame of camera 1."""
    index = read_index(synth_data)
    options = data(synth_data, "synth_xview", eval_clips=2, eval_crops=1)
    samples = [(k, c, v) for b in build_eval_loader(MODEL, options, batch_size=64)
               for k, c, v in zip(b["key"], b["clip"].tolist(), b["video"], strict=True)]
    assert len(samples) == 2 * index.groups
    longer = 0
    for key, clip, video in samples:
        group = read_group(synth_data, index, key)
        frames = group.meta.view_frames["1"]
        longer += frames > group.meta.frames
        indices = eval_frame_indices(frames, GEOM, 2)[clip]
        box = eval_boxes(*group.meta.size, 1)[0]
        want = to_video_tensor(crop_resize(decode_frames(group, 1, indices), indices, Crop(box), GEOM.size))
        assert torch.equal(video, want), (key, clip)
    assert longer  # some test views are longer than the common span: the check above could tell


def test_bad_requests_fail_clearly(synth_data):
    with pytest.raises(ContractError, match="motion source 'flow' not in the cache"):
        build_pretrain_loader(MODEL, data(synth_data, "all", motion="flow"), batch_size=2,
                              seed=0).dataset.__iter__().__next__()
    with pytest.raises(ContractError, match=r"allows cameras \[2, 3\]; pretraining needs 3 views"):
        build_pretrain_loader(MODEL, data(synth_data, "synth_xview", num_sources=2), batch_size=2, seed=0)
    with pytest.raises(ContractError, match="protocol ntu60_xsub is for ntu60 data"):
        build_pretrain_loader(MODEL, data(synth_data, "ntu60_xsub"), batch_size=2, seed=0)


# Decoding on the device (here: the CPU) against the workers' path. The two decoders are the same
# libjpeg-turbo and both paths resample with the one resize_crops, so on the CPU the videos are equal.


def both_paths(build, synth_data, model, workers=0, **options):
    """The first two batches of one loader per ``decode_on``, everything else equal."""
    out = {}
    for where in ("cpu", "device"):
        loader = build(model, data(synth_data, "all", workers=workers, decode_on=where, **options))
        out[where] = take(loader, 2)
    return out["cpu"], out["device"]


@pytest.mark.parametrize("stage, size, workers, flip", [("pretrain", 32, 1, "on"), ("pretrain", 16, 0, "off"),
                                                         ("finetune", 32, 0, "auto"), ("eval", 32, 0, "auto")])
def test_decoding_on_the_device_gives_the_workers_batches(synth_data, stage, size, workers, flip):
    """Same samples (one plan drives both: each view's own frames, crop and flip), same shapes and fields,
    the same video; at size 16 the crops shrink more than 2x, where both resample by pixel area instead
    of bilinearly. With a worker, the plans cross processes in shared memory. Pretraining's framediff
    motion comes from the decoded (cropped, flipped) pixels on both paths."""
    model = MODEL.with_(image_size=size)
    build = {"pretrain": lambda m, d: build_pretrain_loader(m, d, batch_size=3, seed=2),
             "finetune": lambda m, d: build_finetune_loader(m, d, batch_size=3, seed=2),
             "eval": lambda m, d: build_eval_loader(m, d, batch_size=5)}[stage]
    for cpu, dev in zip(*both_paths(build, synth_data, model, workers, flip=flip), strict=True):
        assert list(dev) == list(cpu) and not set(PLAN_FIELDS) & set(dev)
        assert dev["video"].dtype == torch.uint8 and dev["video"].shape == cpu["video"].shape
        assert torch.equal(dev["video"], cpu["video"]), (dev["video"].int() - cpu["video"].int()).abs().max()
        if stage == "pretrain":
            assert dev["motion"].shape == cpu["motion"].shape == (3, 2, model.num_tokens)
            assert torch.equal(dev["motion"], cpu["motion"]) and dev["motion"].amax(dim=-1).min() > 0
        for key, value in cpu.items():
            if key not in ("video", "motion"):
                assert (torch.equal(value, dev[key]) if isinstance(value, torch.Tensor) else value == dev[key]), key


def plans(synth_data, n=1):
    """Batches as the workers ship them with decode_on=device, and the decoding stage the loader applies."""
    loader = build_pretrain_loader(MODEL, data(synth_data, "all", decode_on="device"), batch_size=3, seed=0)
    (decode, *_), loader.stages = loader.stages, ()
    return take(loader, n), decode


def test_a_bad_jpeg_or_frame_size_on_the_device_names_its_shard_and_member(synth_data):
    """Found in the training process, a bad frame stops the run with the line the workers would log."""
    (batch,), decode = plans(synth_data)
    first = int(batch["jpeg_count"][0])
    bad = first + 2  # the third JPEG of the second sample
    start = int(batch["jpeg_sizes"][:bad].sum())
    broken = dict(batch, jpeg=batch["jpeg"].clone())
    broken["jpeg"][start:start + int(batch["jpeg_sizes"][bad])] = 0
    camera, t = batch["jpeg_members"][bad].tolist()
    member = re.escape(f"{batch['shard'][1]}: {frame_member(batch['key'][1], camera, t)}")
    with pytest.raises(ContractError, match=f"{member} is not a decodable JPEG .*decode_on=cpu skips it"):
        decode(broken)
    resized = dict(batch, frame_size=batch["frame_size"].clone())
    resized["frame_size"][2, 0] += 1
    with pytest.raises(ContractError, match=f"{re.escape(batch['shard'][2])}: {batch['key'][2]}.c0.* metadata says"):
        decode(resized)
