"""Stage 1's input: a dataset directory seen through one protocol split (:class:`ShardSplit`), and the check
that it can serve a pretraining's views (:func:`check_pretrain_views`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mv2mae.data.config import DataConfig
from mv2mae.shards.contract import checked_index
from mv2mae.shards.protocols import ProtocolError, Selection, hold_out, keep_subjects, select
from mv2mae.shards.schema import ContractError, DatasetIndex


@dataclass
class ShardSplit:
    """A dataset directory seen through one protocol split."""

    root: Path
    index: DatasetIndex
    selection: Selection

    @classmethod
    def open(cls, root: str | Path, protocol: str, split: str, val_by: str = "none",
             val_fraction: float = 0.0, train_subjects: int = 0, test_subjects: int = 0) -> ShardSplit:
        """``split`` of ``protocol`` on ``root``; with ``train_subjects`` > 0, ``train`` (and the ``val`` share
        carved from it) keeps only its first that many subjects (:func:`~mv2mae.shards.protocols.keep_subjects`),
        with ``test_subjects`` > 0 ``test`` likewise; with ``val_by`` other than ``none``, ``train`` loses the
        validation share that ``val`` is (:func:`~mv2mae.shards.protocols.hold_out`). An index that breaks
        the contract (:func:`~mv2mae.shards.contract.checked_index`) is refused here, its groups as read."""
        index = checked_index(Path(root))
        if split == "val" and val_by == "none":
            raise ContractError(f"{root}: no validation split (data.val_by is none)")
        selection = select(index, protocol, "train" if split == "val" else split)
        keep = test_subjects if split == "test" else train_subjects
        if keep:
            selection = keep_subjects(selection, keep)
        if split in ("train", "val") and val_by != "none":
            fit, val = hold_out(selection, val_by, val_fraction)
            selection = val if split == "val" else fit
        if not selection.shards:
            raise ContractError(f"{root}: protocol {protocol} selects no shard for split {split!r}")
        return cls(root=Path(root), index=index, selection=selection)

    @property
    def num_classes(self) -> int:
        return len(self.index.classes)

    def label_flips(self, flip: str) -> list[int] | None:
        """The class-swap table finetuning flips with under ``data.flip`` (None: no flipping)."""
        table = self.index.flip_classes
        if flip == "on" and table is None:
            raise ContractError(f"{self.root}: data.flip=on, but its index.json records no flip_classes (which "
                                f"class a mirrored video shows); without it a flip could teach a wrong label")
        return None if flip == "off" else table


def check_pretrain_views(split: ShardSplit, data: DataConfig) -> None:
    """Refuse a pretraining that needs more views than the protocol's groups have, or a source policy the
    camera layout cannot serve (a usage error: the run's config asks what this dataset cannot give)."""
    cams, where = split.selection.cameras, f"{split.root}: protocol {split.selection.protocol}"
    if len(cams) < data.views:
        raise ProtocolError(f"{where} {split.selection.split} allows cameras {cams}; pretraining needs "
                            f"{data.views} views (1 target + {data.num_sources} source(s)): lower data.num_sources")
    if not split.selection.groups_with_views(data.views):
        raise ProtocolError(f"{where} {split.selection.split}: no group holds {data.views} of cameras {cams}; "
                            f"pretraining needs multi-view groups: lower data.num_sources")
    unplaced = [c for c in cams if str(c) not in split.index.layout]
    if data.source_policy in ("adjacent", "opposite") and unplaced:
        raise ProtocolError(f"{split.root}/index.json: source policy {data.source_policy!r} needs the camera "
                            f"layout, which places no camera {unplaced} (give the manifest an angle column, or "
                            f"add them to 'layout')")
