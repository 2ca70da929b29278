"""Protocols select whole shards and the right cameras, keep train and test apart, and fail clearly when
they cannot apply."""

import pytest

from mv2mae.shards.protocols import (
    NTU60_XSUB_TEST,
    NTU60_XSUB_TRAIN,
    NTU120_XSUB_TEST,
    NTU120_XSUB_TRAIN,
    PROTOCOLS,
    ProtocolError,
    hold_out,
    reference_cameras,
    select,
)
from mv2mae.shards.schema import DatasetIndex, ShardEntry, camera_set_key

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
                                     sha256="0" * 64, subjects=[p], setups=mine, cameras=list(cameras),
                                     camera_sets={camera_set_key(list(cameras)): len(keys)}, keys=keys))
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


def test_shards_no_official_list_names_are_in_no_split():
    """Test is its own list, not "not train": NTU-60 performers past 40 (NTU-120 files in an NTU-60
    folder) and a PKU-MMD partition the split file does not name are neither trained nor tested on."""
    ntu = ntu_index("ntu60", performers=42, setups=1)
    for split in ("train", "test"):
        assert not {sh.subjects[0] for sh in select(ntu, "ntu60_xsub", split).shards} & {41, 42}
    pku = ntu_index("pkummd2", performers=1, setups=1,
                    meta={"splits": {"cross_subject": {"train_partitions": ["xsub_train"],
                                                       "test_partitions": ["xsub_test"]}}})
    pku.shards[0].partition, pku.shards[1].partition = "xsub_test", "unlisted"
    assert [sh.partition for sh in select(pku, "pkummd2_xsub", "test").shards] == ["xsub_test"]
    assert select(pku, "pkummd2_xsub", "train").shards == []


def test_clear_errors():
    index = ntu_index("ntu60", performers=4, setups=2)
    with pytest.raises(ProtocolError, match="unknown protocol 'ntu61_xsub'.*ntu60_xsub"):
        select(index, "ntu61_xsub", "train")
    with pytest.raises(ProtocolError, match="for ntu120 data.*holds 'ntu60'"):
        select(index, "ntu120_xset", "train")
    with pytest.raises(ProtocolError, match="split 'val'"):
        select(index, "ntu60_xsub", "val")
    index.shards[0].subjects = [1, 3]  # performer 1 trains, 3 tests: a shard may not straddle them
    with pytest.raises(ProtocolError, match=f"shard {index.shards[0].name} mixes subjects \\[1, 3\\] of different"):
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
        assert p.test_cameras is not None or p.train_cameras is None, p.name  # train-only cameras: no split


def test_official_subject_lists_are_complete():
    assert len(NTU60_XSUB_TRAIN) == len(NTU60_XSUB_TEST) == 20
    assert NTU60_XSUB_TRAIN | NTU60_XSUB_TEST == set(range(1, 41))
    assert len(NTU120_XSUB_TRAIN) == len(NTU120_XSUB_TEST) == 53
    assert NTU120_XSUB_TRAIN | NTU120_XSUB_TEST == set(range(1, 107))


# Values far past every dataset's range: a list that names one on both sides shows up here.
VALUES = range(0, 1000)


def _everything_index(dataset: str, meta: dict | None = None) -> DatasetIndex:
    """One shard per subject (1-120, each in one setup 1-33) and per PKU-MMD partition, every shard
    holding eight cameras: whatever a protocol selects, it selects from all of it."""
    cams = list(range(1, 9))
    entries = [(f"P{p:03d}", [p], [1 + p % 33]) for p in range(1, 121)]
    entries += [(part, [200 + i], [1]) for i, part in enumerate(("xsub_train", "xsub_test", "unlisted"))]
    shards = [ShardEntry(name=f"{part}-000000.tar", partition=part, samples=1, bytes=1, sha256="0" * 64,
                         subjects=subjects, setups=setups, cameras=cams, camera_sets={camera_set_key(cams): 1},
                         keys=[part]) for part, subjects, setups in entries]
    return DatasetIndex(dataset=dataset, classes=["a"], fps=30.0, short_side=160, cell=8, motion=[], shards=shards,
                        args={"meta": meta or {}})


PKU_META = {"splits": {"cross_subject": {"train_partitions": ["xsub_train"], "test_partitions": ["xsub_test"]},
                       "cross_view": {"train_cameras": [1, 3], "test_cameras": [2]}}}


@pytest.mark.parametrize("name", sorted(set(PROTOCOLS) - {"all"}))
def test_train_and_test_share_no_subject_setup_partition_or_camera(name):
    """The invariant every evaluation protocol promises: cross-subject (setup, official-partition) splits
    share no subject (setup, partition); cross-view splits share no camera. ``all`` is the one protocol
    without a split: it pretrains on everything."""
    protocol = PROTOCOLS[name]
    assert protocol.field is not None or protocol.test_cameras is not None or protocol.index_split, name
    index = _everything_index(protocol.datasets[0], PKU_META)
    train, test = select(index, name, "train"), select(index, name, "test")
    if protocol.field is not None:
        if protocol.index_split is None:
            assert not [v for v in VALUES if v in protocol.train and v in protocol.test], name
        attr = {"subject": "subjects", "setup": "setups", "partition": "partition"}[protocol.field]
        sides = [{v for sh in sel.shards for v in getattr(sh, attr) if v} if attr != "partition" else
                 {sh.partition for sh in sel.shards} for sel in (train, test)]
        assert sides[0] and sides[1] and not sides[0] & sides[1], (name, sides)
        assert not set(train.keys) & set(test.keys)
    if protocol.test_cameras is not None:
        assert not set(protocol.train_cameras or ()) & set(protocol.test_cameras), name
    if protocol.test_cameras is not None or protocol.field is None:
        assert train.cameras and test.cameras and not set(train.cameras) & set(test.cameras), name


def test_views_are_aligned_to_a_training_camera_of_every_cross_view_protocol():
    for dataset in {d for p in PROTOCOLS.values() if p.train_cameras for d in p.datasets}:
        ref = reference_cameras(dataset, {})
        for p in PROTOCOLS.values():
            if dataset in p.datasets and p.train_cameras:
                assert ref and set(ref) <= set(p.train_cameras) and not set(ref) & set(p.test_cameras), dataset
    assert reference_cameras("ntu60", {}) == [2, 3]  # NTU-60 cross-view tests camera 1
    assert reference_cameras("etri", {}) == []  # no cross-view split: the lowest camera id
    official = {"splits": {"cross_view": {"train_cameras": [1, 3], "test_cameras": [2]}}}
    assert reference_cameras("pkummd2", official) == [1, 3]  # PKU-MMD's file tests the middle view


def test_pkummd2_cross_view_takes_its_cameras_from_the_official_list_and_refuses_a_dataset_without_it():
    index = _everything_index("pkummd2", PKU_META)
    train, test = select(index, "pkummd2_xview", "train"), select(index, "pkummd2_xview", "test")
    assert (train.cameras, test.cameras) == ([1, 3], [2]) and train.keys == test.keys == index_keys(index)
    no_list = _everything_index("pkummd2", {"splits": {"cross_subject": PKU_META["splits"]["cross_subject"]}})
    with pytest.raises(ProtocolError, match="pkummd2_xview needs index.json args.meta.splits.cross_view.train_cameras"):
        select(no_list, "pkummd2_xview", "train")
    overlapping = _everything_index("pkummd2", {"splits": {"cross_view": {"train_cameras": [1, 2], "test_cameras": [2]}}})
    with pytest.raises(ProtocolError, match="needs both, disjoint"):
        select(overlapping, "pkummd2_xview", "test")


def index_keys(index: DatasetIndex) -> list[str]:
    return [k for s in index.shards for k in s.keys]


def test_groups_with_too_few_cameras_are_counted_not_sampled():
    index = ntu_index("ntu60", performers=1, setups=1)
    index.shards[1].camera_sets = {"1,2,3": 1, "2": 1, "1,3": 1}  # three groups: full, one camera, no camera 2
    train = select(index, "ntu60_xview", "train")  # cameras 2 and 3
    assert train.groups == 3 and train.groups_with_views(2) == 1 and train.groups_with_views(1) == 3
    assert train.videos == 2 + 1 + 1  # single-camera videos: what finetuning passes over


def test_validation_is_carved_from_train_subjects_only():
    index = ntu_index("ntu60", performers=40, setups=2)
    train, test = select(index, "ntu60_xsub", "train"), select(index, "ntu60_xsub", "test")
    fit, val = hold_out(train, "subject", 0.1)
    subjects = lambda sel: {v for s in sel.shards for v in s.subjects}  # noqa: E731
    assert len(subjects(val)) == 2 and subjects(val) | subjects(fit) == subjects(train) == NTU60_XSUB_TRAIN
    assert not subjects(val) & subjects(fit) and not subjects(val) & subjects(test)
    assert val.split == "val" and val.cameras == train.cameras and fit.groups + val.groups == train.groups
    assert hold_out(train, "subject", 0.1) == (fit, val)  # fixed by the data alone
    assert len(subjects(hold_out(train, "subject", 0.99)[0])) == 1  # never all of them
    by_shard_fit, by_shard_val = hold_out(train, "shard", 0.25)
    assert len(by_shard_val.shards) == 10 and not {s.name for s in by_shard_val.shards} & {s.name for s in by_shard_fit.shards}


def test_validation_by_subject_refuses_shards_that_mix_subjects():
    index = ntu_index("ntu60", performers=4, setups=2)
    mixed = index.shards[0]
    mixed.subjects = [1, 2]
    with pytest.raises(ProtocolError, match=f"{mixed.name} mixes validation and training subjects.*val_by=shard"):
        hold_out(select(index, "all", "train"), "subject", 0.5)
    one = ntu_index("ntu60", performers=1, setups=2)
    with pytest.raises(ProtocolError, match="1 subject"):
        hold_out(select(one, "all", "train"), "subject", 0.1)


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
