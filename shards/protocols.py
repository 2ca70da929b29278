"""Evaluation protocols as filters on ``index.json``: which whole shards, which cameras, per split.

A protocol never reads data to throw it away: shards are partitioned by the preprocessing so that
every standard protocol selects whole shards (``ShardEntry.subjects`` / ``.setups`` say which), and
the cameras a split may use are a list. Each split comes from its own list, as the dataset publishes
it: a shard whose subjects (setups, partitions) neither list names belongs to no split — never to
"test" for not being "train". Pretraining uses the ``train`` split only, so no test view or test
subject leaks into pretraining.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from typing import Any

from mv2mae.shards.schema import ContractError, DatasetIndex, ShardEntry, parse_camera_set

SPLITS = ("train", "test")
VALIDATION_BY = ("subject", "shard", "none")  # the first is the default
DEFAULT_VAL_FRACTION = 0.1

NTU60_XSUB_TRAIN = frozenset({1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38})
NTU60_XSUB_TEST = frozenset({3, 6, 7, 10, 11, 12, 20, 21, 22, 23, 24, 26, 29, 30, 32, 33, 36, 37, 39, 40})
NTU120_XSUB_TRAIN = NTU60_XSUB_TRAIN | frozenset(
    {45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85, 86, 89, 91,
     92, 93, 94, 95, 97, 98, 100, 103})
NTU120_XSUB_TEST = NTU60_XSUB_TEST | frozenset(
    {41, 42, 43, 44, 48, 51, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 71, 72, 73, 75, 76, 77, 79, 87, 88, 90,
     96, 99, 101, 102, 104, 105, 106})
NTU120_XSET_TRAIN = frozenset(range(2, 33, 2))  # even setups 2-32
NTU120_XSET_TEST = frozenset(range(1, 32, 2))  # odd setups 1-31
# ETRI-Activity3D [unverified rule, DATASETS.md]: subjects 1-100, those divisible by 3 test
ETRI_XSUB_TEST = frozenset(range(3, 101, 3))
ETRI_XSUB_TRAIN = frozenset(range(1, 101)) - ETRI_XSUB_TEST


class ProtocolError(ContractError):
    """A protocol is unknown or cannot be applied to a dataset directory."""

    exit_code = 2  # a usage error (the command line's exit status)


@dataclass(frozen=True)
class Protocol:
    """``field`` (``subject`` / ``setup`` / ``partition`` / None) decides the split of each shard: ``train``
    and ``test`` each hold that field's values of one split (a set, or a predicate's ``Container``); a
    value in neither puts its shard in no split. ``None`` means every shard is in both splits
    (cross-view protocols). Cameras ``None`` = all, except that train cameras ``None`` beside listed
    test cameras means every camera the test split does not use (so one protocol holds out camera 1 of a
    3- or an 8-camera rig). With ``index_split`` the two lists come from the
    official split the adapter recorded in ``index.args["meta"]["splits"][index_split]``:
    ``train_partitions`` / ``test_partitions`` for a protocol with a field, ``train_cameras`` /
    ``test_cameras`` for a cross-view one (no field)."""

    name: str
    datasets: tuple[str, ...]  # datasets it applies to ("*" = any)
    description: str
    field: str | None = None
    train: Container[int] | None = None
    test: Container[int] | None = None
    train_cameras: tuple[int, ...] | None = None
    test_cameras: tuple[int, ...] | None = None
    index_split: str | None = None  # official split recorded by the adapter (see the docstring)


@dataclass
class Selection:
    """What a protocol selects for one split of one dataset directory."""

    protocol: str
    split: str
    shards: list[ShardEntry]
    cameras: list[int]

    @property
    def groups(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def keys(self) -> list[str]:
        return [k for s in self.shards for k in s.keys]

    def groups_with_views(self, views: int) -> int:
        """Groups holding at least ``views`` of the split's cameras (those a multi-view sample can use)."""
        allowed = set(self.cameras)
        return sum(n for s in self.shards for cams, n in s.camera_sets.items()
                   if len(allowed & parse_camera_set(cams)) >= views)

    @property
    def videos(self) -> int:
        """Single-camera videos the split holds: each group's cameras the split allows."""
        allowed = set(self.cameras)
        return sum(n * len(allowed & parse_camera_set(cams)) for s in self.shards for cams, n in s.camera_sets.items())


class _Parity:
    """The odd (or even) integers, as a ``Container`` a ``Protocol`` list can be."""

    def __init__(self, odd: bool):
        self.odd = odd

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and value % 2 == int(self.odd)


ODD, EVEN = _Parity(True), _Parity(False)

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in [
    Protocol("ntu60_xsub", ("ntu60",), "NTU-60 cross-subject: 20 listed performers train, the other 20 test",
             "subject", NTU60_XSUB_TRAIN, NTU60_XSUB_TEST),
    Protocol("ntu60_xview", ("ntu60",), "NTU-60 cross-view: cameras 2, 3 train; camera 1 tests",
             train_cameras=(2, 3), test_cameras=(1,)),
    Protocol("ntu120_xsub", ("ntu120",), "NTU-120 cross-subject: 53 listed performers train, the other 53 test",
             "subject", NTU120_XSUB_TRAIN, NTU120_XSUB_TEST),
    Protocol("ntu120_xset", ("ntu120",), "NTU-120 cross-setup: even setups 2-32 train, odd setups 1-31 test",
             "setup", NTU120_XSET_TRAIN, NTU120_XSET_TEST),
    Protocol("nucla_xview", ("nucla",), "N-UCLA cross-view: views 1, 2 train; view 3 tests",
             train_cameras=(1, 2), test_cameras=(3,)),
    Protocol("pkummd2_xsub", ("pkummd2",), "PKU-MMD II cross-subject from the official cross_subject_v2.txt",
             "partition", index_split="cross_subject"),
    Protocol("pkummd2_xview", ("pkummd2",), "PKU-MMD II cross-view from the official cross_view_v2.txt: the "
             "views it trains on train, the view it tests tests", index_split="cross_view"),
    Protocol("etri_xsub", ("etri",), "ETRI-Activity3D cross-subject: of subjects 1-100, those divisible by 3 "
             "test", "subject", ETRI_XSUB_TRAIN, ETRI_XSUB_TEST),
    Protocol("synth_xview", ("synth",), "synthetic set, cross-view as NTU: cameras 2, 3 train; 1 tests",
             train_cameras=(2, 3), test_cameras=(1,)),
    Protocol("synth_xsub", ("synth",), "synthetic set, cross-subject: odd subjects train, even test",
             "subject", ODD, EVEN),
    Protocol("synth_xview_all", ("synth",), "synthetic set, cross-view on every camera: camera 1 (0°) tests, "
             "all the others train", test_cameras=(1,)),
    # the train side of both study protocols at once: one pretraining serves both evaluations and
    # sees neither's test videos (the held-out camera, the held-out subjects)
    Protocol("synth_xview_xsub", ("synth",), "synthetic set, train side of synth_xview_all and synth_xsub: odd "
             "subjects from every camera but 1 train; even subjects from camera 1 test", "subject", ODD, EVEN,
             test_cameras=(1,)),
    # ROCOG-v2 has no official split we could verify (DATASETS.md): the manifest's subject column decides
    Protocol("rocog", ("manifest",), "ROCOG-v2 through the manifest adapter, cross-subject: odd subject "
             "numbers train, even test (number the manifest's subjects accordingly)", "subject", ODD, EVEN),
    Protocol("all", ("*",), "every shard and camera in both splits (pretraining on everything, demos)"),
]}


def reference_cameras(dataset: str, meta: dict[str, Any]) -> list[int]:
    """The cameras that train under every cross-view split of ``dataset`` — its protocols', and any
    official split its adapter recorded in ``meta["splits"]`` — sorted; ``[]`` when none picks cameras.

    Preprocessing aligns each group to one of these, so that no test view decides a training view's
    timing (NTU cross-view tests camera 1: its groups are aligned to camera 2)."""
    lists = [p.train_cameras for p in PROTOCOLS.values() if dataset in p.datasets and p.train_cameras]
    lists += [s["train_cameras"] for s in meta.get("splits", {}).values() if s.get("train_cameras")]
    return sorted(set.intersection(*map(set, lists))) if lists else []


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ProtocolError(f"split {split!r} is not one of {SPLITS}")


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ProtocolError(f"unknown protocol {name!r}; known: {', '.join(sorted(PROTOCOLS))}")
    return PROTOCOLS[name]


def _official_split(protocol: Protocol, index: DatasetIndex, what: str) -> tuple[list[Any], list[Any]]:
    """The train and test lists of ``what`` (``partitions``, ``cameras``) of the official split the adapter
    recorded for ``protocol``."""
    split = index.args.get("meta", {}).get("splits", {}).get(protocol.index_split)
    keys = (f"train_{what}", f"test_{what}")
    if not isinstance(split, dict) or not all(isinstance(split.get(k), list) for k in keys):
        raise ProtocolError(f"protocol {protocol.name} needs index.json args.meta.splits.{protocol.index_split}."
                            f"{keys[0]} and .{keys[1]} (the official split file, read by the {index.dataset} "
                            f"adapter when it is present under --root)")
    return split[keys[0]], split[keys[1]]


def _split_lists(protocol: Protocol, index: DatasetIndex) -> tuple[Container, Container]:
    if protocol.index_split is None:
        return protocol.train, protocol.test
    train, test = _official_split(protocol, index, "partitions")
    return frozenset(train), frozenset(test)


def _split_cameras(protocol: Protocol, index: DatasetIndex) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """(train cameras, test cameras): the protocol's own, or a cross-view protocol's official lists."""
    if protocol.index_split is None or protocol.field is not None:
        return protocol.train_cameras, protocol.test_cameras
    train, test = _official_split(protocol, index, "cameras")
    if not train or not test or set(train) & set(test):
        raise ProtocolError(f"protocol {protocol.name}: the official split lists cameras {train} to train and {test} "
                            f"to test; it needs both, disjoint (index.json args.meta.splits.{protocol.index_split})")
    return tuple(int(c) for c in train), tuple(int(c) for c in test)


def _shard_split(protocol: Protocol, shard: ShardEntry, lists: tuple[Container, Container]) -> str | None:
    """``train``, ``test``, or None (no list names the shard's values)."""
    values = {"subject": shard.subjects, "setup": shard.setups, "partition": [shard.partition]}[protocol.field]
    if not values:
        raise ProtocolError(f"protocol {protocol.name} needs the {protocol.field} of every shard; "
                            f"{shard.name} lists none in index.json")
    train, test = lists
    sides = set()
    for v in values:
        if v in train and v in test:
            raise ProtocolError(f"protocol {protocol.name} lists {protocol.field} {v} in both train and test")
        sides.add("train" if v in train else "test" if v in test else None)
    if len(sides) > 1:
        raise ProtocolError(f"shard {shard.name} mixes {protocol.field}s {values} of different splits under "
                            f"{protocol.name}; re-run preprocessing (it partitions by {protocol.field})")
    return sides.pop()


def select(index: DatasetIndex, name: str, split: str) -> Selection:
    """The shards and cameras ``name`` gives ``split`` on ``index`` (errors name what is missing)."""
    protocol = get_protocol(name)
    _check_split(split)
    if "*" not in protocol.datasets and index.dataset not in protocol.datasets:
        raise ProtocolError(f"protocol {name} is for {'/'.join(protocol.datasets)} data; this directory "
                            f"holds {index.dataset!r} (try {_suggest(index.dataset)})")
    if protocol.field is None:
        shards = list(index.shards)
    else:
        lists = _split_lists(protocol, index)
        shards = [s for s in index.shards if _shard_split(protocol, s, lists) == split]
    present = sorted({c for s in shards for c in s.cameras})
    train_cameras, test_cameras = _split_cameras(protocol, index)
    allowed = train_cameras if split == "train" else test_cameras
    if allowed is None and split == "train" and test_cameras is not None:
        present = [c for c in present if c not in test_cameras]
    cameras = present if allowed is None else [c for c in allowed if c in present]
    if shards and allowed is not None and len(cameras) < len(allowed):
        missing = sorted(set(allowed) - set(present))
        raise ProtocolError(f"protocol {name} {split} uses cameras {list(allowed)}; the data has no camera {missing}")
    return Selection(protocol=name, split=split, shards=shards, cameras=cameras)


def hold_out(train: Selection, by: str, fraction: float) -> tuple[Selection, Selection]:
    """``(fit, val)``: a validation split carved out of a protocol's ``train`` selection, as whole subjects
    (``by="subject"``: every shard is one subject's, or one side of the split) or whole shards; a share of
    ``fraction`` of them (at least one, never all), evenly spaced over their sorted order so the choice is
    fixed by the data alone. Validation keeps the train cameras: no test video is ever in it."""
    if by not in VALIDATION_BY or by == "none":
        raise ProtocolError(f"validation by {by!r}: use one of {', '.join(v for v in VALIDATION_BY if v != 'none')}")
    units = sorted({v for s in train.shards for v in s.subjects}) if by == "subject" else sorted(s.name for s in train.shards)
    if len(units) < 2:
        raise ProtocolError(f"protocol {train.protocol}: the train split has {len(units)} {by}(s); a validation "
                            f"split needs at least 2 (set data.val_by=none to train without one)")
    count = min(len(units) - 1, max(1, round(fraction * len(units))))
    held = {units[int((i + 0.5) * len(units) / count)] for i in range(count)}
    fit, val = [], []
    for shard in train.shards:
        keys = set(shard.subjects) if by == "subject" else {shard.name}
        if keys <= held:
            val.append(shard)
        elif keys & held:
            raise ProtocolError(f"shard {shard.name} mixes validation and training subjects {sorted(keys)}; "
                                f"hold out whole shards instead (data.val_by=shard)")
        else:
            fit.append(shard)
    return (Selection(train.protocol, "train", fit, train.cameras),
            Selection(train.protocol, "val", val, train.cameras))


def keep_subjects(split: Selection, count: int) -> Selection:
    """The first ``count`` subjects (by id) of a protocol's selection, with its cameras: a labelled subset of
    a few subjects for few-label transfer (``data.train_subjects``, ``data.test_subjects``), fixed by the
    data alone. Every shard must be one subject's, or wholly inside or outside the subset."""
    subjects = sorted({v for s in split.shards for v in s.subjects})
    if count < 1 or count > len(subjects):
        raise ProtocolError(f"protocol {split.protocol}: cannot keep {count} of the {split.split} split's "
                            f"{len(subjects)} subject(s) (data.{split.split}_subjects: 1-{len(subjects)}, or 0 for all)")
    kept = set(subjects[:count])
    shards = []
    for shard in split.shards:
        if set(shard.subjects) <= kept:
            shards.append(shard)
        elif set(shard.subjects) & kept:
            raise ProtocolError(f"shard {shard.name} mixes subjects {sorted(shard.subjects)}, only some of them among "
                                f"the first {count}; data.{split.split}_subjects needs shards of one subject")
    return Selection(split.protocol, split.split, shards, split.cameras)


def _suggest(dataset: str) -> str:
    names = [p.name for p in PROTOCOLS.values() if dataset in p.datasets or "*" in p.datasets]
    return ", ".join(names)
