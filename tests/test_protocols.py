"""Protocols select whole shards and the right cameras, and fail clearly when they cannot apply."""

import pytest

from mv2mae.shards.protocols import NTU60_XSUB_TRAIN, NTU120_XSUB_TRAIN, PROTOCOLS, ProtocolError, select
from mv2mae.shards.schema import DatasetIndex, ShardEntry

GROUPS_PER_SHARD = 3


def ntu_index(dataset: str, performers: int, setups: int, cameras=(1, 2, 3), **args) -> DatasetIndex:
    """An index shaped like the NTU preprocessing writes: one partition per performer × setup parity."""
    shards = []
    for p in range(1, performers + 1):
        for parity in (0, 1):
            mine = [s for s in range(1, setups + 1) if s % 2 == parity]
            keys = [f"S{s:03d}P{p:03d}R001A{a:03d}" for s in mine for a in range(1, GROUPS_PER_SHARD + 1)]
            name = f"p{p:03d}{'even' if parity == 0 else 'odd'}-000000.tar"
            shards.append(ShardEntry(name=name, partition=name[:-11], samples=len(keys), bytes=1000,
                                     sha256="0" * 64, subjects=[p], setups=mine, cameras=list(cameras), keys=keys))
    return DatasetIndex(dataset=dataset, classes=[f"a{i}" for i in range(60)], fps=30.0, short_side=160, cell=8,
                        motion=["framediff"], shards=shards, args=args)


def test_ntu60_cross_subject_counts():
    index = ntu_index("ntu60", performers=40, setups=2)
    train, test = select(index, "ntu60_xsub", "train"), select(index, "ntu60_xsub", "test")
    per_performer = 2 * GROUPS_PER_SHARD  # two setups, GROUPS_PER_SHARD actions each
    assert train.groups == len(NTU60_XSUB_TRAIN) * per_performer == 120
    assert test.groups == (40 - len(NTU60_XSUB_TRAIN)) * per_performer == 120
    assert train.cameras == test.cameras == [1, 2, 3]
    assert not set(train.keys) & set(test.keys)
    assert {int(k[5:8]) for k in test.keys} == set(range(1, 41)) - NTU60_XSUB_TRAIN


def test_ntu60_cross_view_uses_every_group_with_disjoint_cameras():
    index = ntu_index("ntu60", performers=40, setups=2)
    train, test = select(index, "ntu60_xview", "train"), select(index, "ntu60_xview", "test")
    assert train.groups == test.groups == index.groups == 240
    assert train.cameras == [2, 3] and test.cameras == [1]


def test_ntu120_cross_subject_and_cross_setup_counts():
    index = ntu_index("ntu120", performers=106, setups=4)
    xsub_train = select(index, "ntu120_xsub", "train")
    assert len({s for sh in xsub_train.shards for s in sh.subjects}) == len(NTU120_XSUB_TRAIN) == 53
    assert xsub_train.groups == 53 * 4 * GROUPS_PER_SHARD
    xset_train, xset_test = select(index, "ntu120_xset", "train"), select(index, "ntu120_xset", "test")
    assert {s for sh in xset_train.shards for s in sh.setups} == {2, 4}
    assert {s for sh in xset_test.shards for s in sh.setups} == {1, 3}
    assert xset_train.groups == xset_test.groups == 106 * 2 * GROUPS_PER_SHARD


def test_etri_and_pkummd_rules():
    etri = ntu_index("etri", performers=9, setups=1, cameras=tuple(range(1, 9)))
    assert {sh.subjects[0] for sh in select(etri, "etri_xsub", "test").shards} == {3, 6, 9}
    assert select(etri, "etri_xsub", "train").cameras == list(range(1, 9))
    with pytest.raises(ProtocolError, match="args.meta.splits.cross_subject"):
        select(ntu_index("pkummd2", performers=2, setups=1), "pkummd2_xsub", "train")


def test_clear_errors():
    index = ntu_index("ntu60", performers=4, setups=2)
    with pytest.raises(ProtocolError, match="unknown protocol 'ntu61_xsub'.*ntu60_xsub"):
        select(index, "ntu61_xsub", "train")
    with pytest.raises(ProtocolError, match="for ntu120 data.*holds 'ntu60'"):
        select(index, "ntu120_xset", "train")
    with pytest.raises(ProtocolError, match="split 'val'"):
        select(index, "ntu60_xsub", "val")
    index.shards[0].subjects = [1, 3]  # performer 1 trains, 3 tests: a shard may not straddle them
    with pytest.raises(ProtocolError, match=f"shard {index.shards[0].name} mixes train and test subjects"):
        select(index, "ntu60_xsub", "train")
    no_setups = ntu_index("ntu120", performers=2, setups=2)
    no_setups.shards[1].setups = []
    with pytest.raises(ProtocolError, match=f"setup of every shard; {no_setups.shards[1].name}"):
        select(no_setups, "ntu120_xset", "train")
    two_cams = ntu_index("ntu60", performers=2, setups=1, cameras=(2, 3))
    with pytest.raises(ProtocolError, match=r"no camera \[1\]"):
        select(two_cams, "ntu60_xview", "test")


def test_every_listed_protocol_has_a_description_and_valid_cameras():
    assert {"ntu60_xsub", "ntu60_xview", "ntu120_xsub", "ntu120_xset", "nucla_xview", "pkummd2_xsub",
            "etri_xsub", "synth_xview", "synth_xsub"} <= set(PROTOCOLS)
    for p in PROTOCOLS.values():
        assert p.description
        if p.train_cameras is not None:
            assert not set(p.train_cameras) & set(p.test_cameras), p.name


@pytest.mark.parametrize("cameras", [(1, 2, 3), (1, 2, 3, 4, 5)])
def test_synth_study_protocols_hold_out_camera_1_on_any_rig_and_pretraining_sees_no_test_video(cameras):
    index = ntu_index("synth", performers=4, setups=1, cameras=cameras)
    xview = {split: select(index, "synth_xview_all", split) for split in ("train", "test")}
    assert xview["train"].cameras == list(cameras[1:]) and xview["test"].cameras == [1]
    assert xview["train"].groups == xview["test"].groups == index.groups
    pretrain = select(index, "synth_xview_xsub", "train")
    assert pretrain.cameras == list(cameras[1:]) and pretrain.keys == select(index, "synth_xsub", "train").keys
    seen = {(k, c) for k in pretrain.keys for c in pretrain.cameras}
    for protocol in ("synth_xview_all", "synth_xsub"):
        test = select(index, protocol, "test")
        assert not seen & {(k, c) for k in test.keys for c in test.cameras}, protocol
