"""DataLoader builders: what the training and evaluation loops call.

Geometry arrives as a :class:`ClipGeometry` (``ClipGeometry.from_model_config(model_cfg)``) and the
sampling options as a :class:`SamplingConfig`; the loaders add nothing else to either.

Batch videos are ``[..., C, T, H, W]`` views of channels-last memory (``mv2mae.data.decode``): index,
``reshape`` or ``.to(device)`` them freely, but ``.view`` across the channel axis needs ``.contiguous()``
first. Batches are the caller's to keep (``mv2mae.data.transport``).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from torch.utils.data import DataLoader

from mv2mae.data.config import ClipGeometry, SamplingConfig
from mv2mae.data.datasets import ClipDataset, EvalClips, FinetuneClips, PretrainClips, ShardSplit
from mv2mae.data.decode import collate_clips
from mv2mae.data.transport import Batches, BatchRing

PREFETCH = 2  # batches in flight per worker


def _loader(dataset: ClipDataset, batch_size: int, workers: int, pin_memory: bool, drop_last: bool,
            reuse_buffers: bool) -> Batches:
    """A DataLoader whose workers reuse their batch memory (``mv2mae.data.transport``) unless
    ``reuse_buffers`` is false; iterating the returned object yields ordinary batches the caller owns."""
    s = dataset.sampling
    ring = BatchRing(workers, slots=PREFETCH + 2) if workers > 0 and reuse_buffers else None
    dataset.ring = ring.ends if ring is not None else None
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=pin_memory,
                        drop_last=drop_last, persistent_workers=workers > 0,
                        prefetch_factor=PREFETCH if workers > 0 else None,
                        collate_fn=partial(collate_clips, mean=s.mean, std=s.std, normalize=s.normalize))
    return Batches(loader, ring)


def build_pretrain_loader(geom: ClipGeometry, root: str | Path, protocol: str, split: str = "train", *,
                          batch_size: int, workers: int, seed: int, rank: int = 0, world_size: int = 1,
                          sampling: SamplingConfig | None = None, pin_memory: bool = False, reuse_buffers: bool = True) -> Batches:
    """Infinite multi-view batches: ``video`` [B, V, C, T, H, W] (view 0 = target), ``motion`` [B, V, N]
    (0-255 units), ``cameras`` [B, V], ``label`` [B], ``key`` list[str]."""
    ds = PretrainClips(ShardSplit.open(root, protocol, split), geom, sampling or SamplingConfig(), seed=seed,
                       rank=rank, world_size=world_size)
    return _loader(ds, batch_size, workers, pin_memory, drop_last=True, reuse_buffers=reuse_buffers)


def build_finetune_loader(geom: ClipGeometry, root: str | Path, protocol: str, split: str = "train", *,
                          batch_size: int, workers: int, seed: int, rank: int = 0, world_size: int = 1,
                          sampling: SamplingConfig | None = None, pin_memory: bool = False, reuse_buffers: bool = True) -> Batches:
    """Infinite single-camera batches: ``video`` [B, C, T, H, W], ``label`` [B], ``camera`` [B], ``key``."""
    ds = FinetuneClips(ShardSplit.open(root, protocol, split), geom, sampling or SamplingConfig(), seed=seed,
                       rank=rank, world_size=world_size)
    return _loader(ds, batch_size, workers, pin_memory, drop_last=True, reuse_buffers=reuse_buffers)


def build_eval_loader(geom: ClipGeometry, root: str | Path, protocol: str, split: str = "test", *,
                      batch_size: int, workers: int, rank: int = 0, world_size: int = 1,
                      sampling: SamplingConfig | None = None, pin_memory: bool = False, reuse_buffers: bool = True) -> Batches:
    """One exact pass (this rank's share): ``video`` [B, C, T, H, W], ``label``, ``camera``, ``clip``,
    ``crop``, ``key`` and ``video_id`` for softmax averaging per video and per group."""
    ds = EvalClips(ShardSplit.open(root, protocol, split), geom, sampling or SamplingConfig(), rank=rank,
                   world_size=world_size)
    return _loader(ds, batch_size, workers, pin_memory, drop_last=False, reuse_buffers=reuse_buffers)
