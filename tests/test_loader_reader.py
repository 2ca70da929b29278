"""The shard stream reader: tar parsing, member selection by plan, and the split by rank and worker."""

import io
import json
import tarfile

import cv2
import numpy as np
import pytest
import webdataset as wds
from fixtures_data import session_synth_data

from mv2mae.data.pixels import crop_resize, decode_frames
from mv2mae.data.sampling import Crop
from mv2mae.shards.reader import (
    GroupSample,
    balanced_assignment,
    eval_groups,
    tar_groups,
    train_groups,
)
from mv2mae.shards.schema import ContractError, GroupMeta, read_index, split_member
from mv2mae.shards.tarindex import iter_tar


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    return session_synth_data(tmp_path_factory)


def make_tar(members, fmt=tarfile.GNU_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_iter_tar_reads_what_tarfile_wrote(fmt):
    long_key = "G" * 120 if fmt != tarfile.USTAR_FORMAT else "G" * 60
    members = [("A.json", b"{}"), ("A.c001.f0000.jpg", b"x" * 700), (f"{long_key}.json", b"[]"), ("B.txt", b"")]
    got = list(iter_tar(io.BytesIO(make_tar(members, fmt)), "t.tar"))
    assert got == members
    skipped = list(iter_tar(io.BytesIO(make_tar(members, fmt)), "t.tar", want=lambda n: n.endswith(".json")))
    assert [d for _, d in skipped] == [b"{}", None, b"[]", None]


def test_truncated_or_corrupt_tar_names_the_shard():
    data = make_tar([("A.json", b"{}" * 400)])
    with pytest.raises(ContractError, match="s.tar: truncated tar"):
        list(iter_tar(io.BytesIO(data[:700]), "s.tar"))
    bad = bytearray(data)
    bad[10] ^= 0xFF  # inside the first header's name
    with pytest.raises(ContractError, match="s.tar: corrupt tar header"):
        list(iter_tar(io.BytesIO(bytes(bad)), "s.tar"))


def test_plan_keeps_only_the_wanted_members(synth_data):
    shard = read_index(synth_data).shards[0]

    def plan(meta, where):
        if meta.key == shard.keys[0]:
            return None  # skip the first group entirely
        return {"c002.f0003.jpg"}, ("decision", meta.key)

    groups = list(tar_groups([{"url": str(synth_data / shard.name)}], plan=plan))
    assert [g["__key__"] for g in groups] == shard.keys[1:]
    for g in groups:
        assert sorted(k for k in g if not k.startswith("__")) == ["c002.f0003.jpg"]
        assert g["__meta__"].key == g["__key__"]  # the metadata member arrives parsed and checked
        assert g["__plan__"] == ("decision", g["__key__"])
        assert cv2.imdecode(np.frombuffer(g["c002.f0003.jpg"], np.uint8), cv2.IMREAD_COLOR) is not None


def test_training_stream_splits_shards_by_rank_and_is_resampled(synth_data):
    names = [s.name for s in read_index(synth_data).shards]
    assert len(names) >= 2
    seen = []
    for rank in range(2):
        stream = train_groups(synth_data, names, seed=0, rank=rank, world_size=2, shuffle_buffer=4)
        seen.append({next(stream).shard for _ in range(20)})
    assert seen[0] and seen[1] and not seen[0] & seen[1]  # disjoint shard subsets per rank
    stream = train_groups(synth_data, names[:1], seed=0, rank=1, world_size=4, shuffle_buffer=4)
    assert len({next(stream).key for _ in range(30)}) == read_index(synth_data).shards[0].samples  # never dry


def test_eval_pass_balances_shards_and_covers_every_group(synth_data):
    assert balanced_assignment([5, 1, 1, 1, 1, 1], 2) == [[0], [1, 2, 3, 4, 5]]
    index = read_index(synth_data)
    keys = [g.key for r in range(3) for g in eval_groups(synth_data, index.shards, rank=r, world_size=3)]
    assert sorted(keys) == sorted(k for s in index.shards for k in s.keys)


def test_decoded_frames_are_rgb_and_cropped_to_the_box():
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:, 30:] = (0, 0, 255)  # blue, right half only
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    meta = GroupMeta(key="K", dataset="t", label=0, subject=1, cameras=[1], fps=30.0, frames=1, size=[60, 40],
                     partition="p", view_frames={"1": 1}, offsets={"1": 0})
    group = GroupSample(meta=meta, shard="s.tar", members={"c001.f0000.jpg": jpeg.tobytes()})
    frames = decode_frames(group, 1, np.array([0]))
    out = crop_resize(frames, np.array([0, 0]), Crop((32, 0, 60, 40)), 16)
    assert out.shape == (2, 16, 16, 3) and out.flags.c_contiguous
    assert (out[..., 2] > 240).all() and (out[..., :2] < 15).all()
    with pytest.raises(ContractError, match="s.tar: group K has no member K.c001.f0001.jpg"):
        decode_frames(group, 1, np.array([1]))


def test_member_names_split_at_the_first_dot_and_refuse_directories():
    assert split_member("K1.c001.f0000.JPG") == ("K1", "c001.f0000.jpg")
    for foreign in ("K1", "dir/K1.json"):
        with pytest.raises(ContractError, match="s.tar: member .* is not KEY.EXT"):
            split_member(foreign, "s.tar")


def test_plain_webdataset_reads_a_shard_as_one_sample_per_group(synth_data):
    """For people with their own loaders: webdataset alone, no code of ours, gives one sample per group,
    its metadata under "json" and one JPEG per stored frame and camera ("c001.f0000.jpg")."""
    index = read_index(synth_data)
    urls = [str(synth_data / s.name) for s in index.shards]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert [s["__key__"] for s in samples] == [k for s in index.shards for k in s.keys]
    for sample in samples:
        meta = json.loads(sample["json"])
        frames = sorted(k for k in sample if k.endswith(".jpg"))
        assert meta["key"] == sample["__key__"] and len(frames) == sum(meta["view_frames"].values())
        assert frames[0] == f"c{meta['cameras'][0]:03d}.f0000.jpg"
        image = cv2.imdecode(np.frombuffer(sample[frames[-1]], np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (meta["size"][1], meta["size"][0], 3)
