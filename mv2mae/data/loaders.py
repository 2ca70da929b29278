"""DataLoader builders: what the training and evaluation loops call.

Geometry arrives as a :class:`ClipGeometry` (``ClipGeometry.from_model_config(model_cfg)``) and the
sampling options as a :class:`SamplingConfig`; the loaders add nothing else to either.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from torch.utils.data import DataLoader

from mv2mae.data.config import ClipGeometry, SamplingConfig
from mv2mae.data.datasets import ClipDataset, EvalClips, FinetuneClips, PretrainClips, ShardSplit
from mv2mae.data.decode import collate_clips


def _loader(dataset: ClipDataset, batch_size: int, workers: int, pin_memory: bool, drop_last: bool) -> DataLoader:
    s = dataset.sampling
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=pin_memory,
                      drop_last=drop_last, persistent_workers=workers > 0,
                      prefetch_factor=2 if workers > 0 else None,
                      collate_fn=partial(collate_clips, mean=s.mean, std=s.std, normalize=s.normalize))


def build_pretrain_loader(geom: ClipGeometry, root: str | Path, protocol: str, split: str = "train", *,
                          batch_size: int, workers: int, seed: int, rank: int = 0, world_size: int = 1,
                          sampling: SamplingConfig | None = None, pin_memory: bool = False) -> DataLoader:
    """Infinite multi-view batches: ``video`` [B, V, C, T, H, W] (view 0 = target), ``motion`` [B, V, N]
    (0-255 units), ``cameras`` [B, V], ``label`` [B], ``key`` list[str]."""
    ds = PretrainClips(ShardSplit.open(root, protocol, split), geom, sampling or SamplingConfig(), seed=seed,
                       rank=rank, world_size=world_size)
    return _loader(ds, batch_size, workers, pin_memory, drop_last=True)


def build_finetune_loader(geom: ClipGeometry, root: str | Path, protocol: str, split: str = "train", *,
                          batch_size: int, workers: int, seed: int, rank: int = 0, world_size: int = 1,
                          sampling: SamplingConfig | None = None, pin_memory: bool = False) -> DataLoader:
    """Infinite single-camera batches: ``video`` [B, C, T, H, W], ``label`` [B], ``camera`` [B], ``key``."""
    ds = FinetuneClips(ShardSplit.open(root, protocol, split), geom, sampling or SamplingConfig(), seed=seed,
                       rank=rank, world_size=world_size)
    return _loader(ds, batch_size, workers, pin_memory, drop_last=True)


def build_eval_loader(geom: ClipGeometry, root: str | Path, protocol: str, split: str = "test", *,
                      batch_size: int, workers: int, rank: int = 0, world_size: int = 1,
                      sampling: SamplingConfig | None = None, pin_memory: bool = False) -> DataLoader:
    """One exact pass (this rank's share): ``video`` [B, C, T, H, W], ``label``, ``camera``, ``clip``,
    ``crop``, ``key`` and ``video_id`` for softmax averaging per video and per group."""
    ds = EvalClips(ShardSplit.open(root, protocol, split), geom, sampling or SamplingConfig(), rank=rank,
                   world_size=world_size)
    return _loader(ds, batch_size, workers, pin_memory, drop_last=False)
