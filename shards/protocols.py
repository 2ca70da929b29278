"""Evaluation protocols as filters on ``index.json``: which whole shards, which cameras, per split.

A protocol never reads data to throw it away: shards are partitioned by the preprocessing so that
every standard protocol selects whole shards (``ShardEntry.subjects`` / ``.setups`` say which), and
the cameras a split may use are a list. Pretraining uses the ``train`` split only, so no test view
or test subject leaks into pretraining.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mv2mae.shards.schema import ContractError, DatasetIndex, ShardEntry

SPLITS = ("train", "test")

NTU60_XSUB_TRAIN = frozenset({1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38})
NTU120_XSUB_TRAIN = NTU60_XSUB_TRAIN | frozenset(
    {45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85, 86, 89, 91,
     92, 93, 94, 95, 97, 98, 100, 103})


class ProtocolError(ContractError):
    """A protocol is unknown or cannot be applied to a dataset directory."""

    exit_code = 2  # a usage error (the command line's exit status)


@dataclass(frozen=True)
class Protocol:
    """``field`` (``subject`` / ``setup`` / ``partition`` / None) decides train vs test per shard via
    ``is_train``; ``None`` means every shard is in both splits (cross-view protocols). Cameras ``None`` =
    all. With ``index_split`` the rule comes from the official split the adapter recorded in
    ``index.args["meta"]["splits"][index_split]`` (``train_partitions``)."""

    name: str
    datasets: tuple[str, ...]  # datasets it applies to ("*" = any)
    description: str
    field: str | None = None
    is_train: Callable[[int], bool] | None = None
    train_cameras: tuple[int, ...] | None = None
    test_cameras: tuple[int, ...] | None = None
    index_split: str | None = None  # official split recorded by the adapter (see the docstring)

    def cameras_for(self, split: str) -> tuple[int, ...] | None:
        _check_split(split)
        return self.train_cameras if split == "train" else self.test_cameras


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


def _odd(v: int) -> bool:
    return v % 2 == 1


def _even(v: int) -> bool:
    return v % 2 == 0


def _not_multiple_of_3(v: int) -> bool:
    return v % 3 != 0


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in [
    Protocol("ntu60_xsub", ("ntu60",), "NTU-60 cross-subject: 20 listed performers train, 20 test",
             "subject", NTU60_XSUB_TRAIN.__contains__),
    Protocol("ntu60_xview", ("ntu60",), "NTU-60 cross-view: cameras 2, 3 train; camera 1 tests",
             train_cameras=(2, 3), test_cameras=(1,)),
    Protocol("ntu120_xsub", ("ntu120",), "NTU-120 cross-subject: 53 listed performers train, 53 test",
             "subject", NTU120_XSUB_TRAIN.__contains__),
    Protocol("ntu120_xset", ("ntu120",), "NTU-120 cross-setup: even setups train, odd setups test",
             "setup", _even),
    Protocol("nucla_xview", ("nucla",), "N-UCLA cross-view: views 1, 2 train; view 3 tests",
             train_cameras=(1, 2), test_cameras=(3,)),
    Protocol("pkummd2_xsub", ("pkummd2",), "PKU-MMD II cross-subject from the official cross_subject_v2.txt",
             "partition", index_split="cross_subject"),
    Protocol("etri_xsub", ("etri",), "ETRI-Activity3D cross-subject: subjects divisible by 3 test",
             "subject", _not_multiple_of_3),
    Protocol("synth_xview", ("synth",), "synthetic set, cross-view as NTU: cameras 2, 3 train; 1 tests",
             train_cameras=(2, 3), test_cameras=(1,)),
    Protocol("synth_xsub", ("synth",), "synthetic set, cross-subject: odd subjects train, even test",
             "subject", _odd),
    # ROCOG-v2 has no official split we could verify (DATASETS.md): the manifest's subject column decides
    Protocol("rocog", ("manifest",), "ROCOG-v2 through the manifest adapter, cross-subject: odd subject "
             "numbers train, even test (number the manifest's subjects accordingly)", "subject", _odd),
    Protocol("all", ("*",), "every shard and camera in both splits (pretraining on everything, demos)"),
]}


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ProtocolError(f"split {split!r} is not one of {SPLITS}")


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ProtocolError(f"unknown protocol {name!r}; known: {', '.join(sorted(PROTOCOLS))}")
    return PROTOCOLS[name]


def _split_rule(protocol: Protocol, index: DatasetIndex) -> Callable:
    if protocol.index_split is None:
        return protocol.is_train
    split = index.args.get("meta", {}).get("splits", {}).get(protocol.index_split)
    if not split or "train_partitions" not in split:
        raise ProtocolError(f"protocol {protocol.name} needs index.json args.meta.splits.{protocol.index_split}."
                            f"train_partitions (the official split file, read by the {index.dataset} adapter "
                            f"when it is present under --root)")
    return frozenset(split["train_partitions"]).__contains__


def _shard_split(protocol: Protocol, shard: ShardEntry, is_train: Callable) -> str:
    values = {"subject": shard.subjects, "setup": shard.setups, "partition": [shard.partition]}[protocol.field]
    if not values:
        raise ProtocolError(f"protocol {protocol.name} needs the {protocol.field} of every shard; "
                            f"{shard.name} lists none in index.json")
    sides = {is_train(v) for v in values}
    if len(sides) > 1:
        raise ProtocolError(f"shard {shard.name} mixes train and test {protocol.field}s {values} under "
                            f"{protocol.name}; re-run preprocessing (it partitions by {protocol.field})")
    return "train" if sides.pop() else "test"


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
        rule = _split_rule(protocol, index)
        shards = [s for s in index.shards if _shard_split(protocol, s, rule) == split]
    present = sorted({c for s in shards for c in s.cameras})
    allowed = protocol.cameras_for(split)
    cameras = present if allowed is None else [c for c in allowed if c in present]
    if shards and allowed is not None and len(cameras) < len(allowed):
        missing = sorted(set(allowed) - set(present))
        raise ProtocolError(f"protocol {name} {split} uses cameras {list(allowed)}; the data has no camera {missing}")
    return Selection(protocol=name, split=split, shards=shards, cameras=cameras)


def _suggest(dataset: str) -> str:
    names = [p.name for p in PROTOCOLS.values() if dataset in p.datasets or "*" in p.datasets]
    return ", ".join(names)
