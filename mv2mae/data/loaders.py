"""DataLoader builders: what the training and evaluation loops call.

Each builder takes the model's :class:`~mv2mae.model.config.ModelConfig` (geometry and pixel statistics)
and a :class:`~mv2mae.data.config.DataConfig` (dataset, protocol, sampling, workers); the loaders add
nothing else to either. A run changes a sampling option with ``dataclasses.replace(data, ...)``.

Batch videos are ``[..., C, T, H, W]`` views of channels-last memory (``mv2mae.data.decode``): index,
``reshape`` or ``.to(device)`` them freely, but ``.view`` across the channel axis needs ``.contiguous()``
first. Batches are the caller's to keep (``mv2mae.data.transport``).
"""

from __future__ import annotations

from functools import partial

from torch.utils.data import DataLoader

from mv2mae.data.config import ClipGeometry, DataConfig
from mv2mae.data.datasets import ClipDataset, EvalClips, FinetuneClips, PretrainClips, ShardSplit
from mv2mae.data.decode import collate_clips
from mv2mae.data.transport import Batches, BatchRing, WorkerPids
from mv2mae.model.config import ModelConfig

PREFETCH = 2  # batches in flight per worker


def _loader(dataset: ClipDataset, model: ModelConfig, batch_size: int, pin_memory: bool, drop_last: bool,
            reuse_buffers: bool) -> Batches:
    """A DataLoader whose workers reuse their batch memory (``mv2mae.data.transport``) unless
    ``reuse_buffers`` is false; iterating the returned object yields ordinary batches the caller owns.
    Workers normalise with the model's pixel statistics (``denormalise`` undoes them) unless
    ``data.normalize_on`` leaves that to the device."""
    workers = dataset.data.workers
    ring = BatchRing(workers, slots=PREFETCH + 2) if workers > 0 and reuse_buffers else None
    dataset.ring = ring.ends if ring is not None else None
    pids = WorkerPids(workers) if workers > 0 else None
    collate = partial(collate_clips, mean=model.pixel_mean, std=model.pixel_std,
                      normalize=dataset.data.normalizes_in_worker())
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=pin_memory,
                        drop_last=drop_last, persistent_workers=workers > 0,
                        prefetch_factor=PREFETCH if workers > 0 else None, collate_fn=collate,
                        timeout=dataset.data.timeout if workers > 0 else 0,
                        worker_init_fn=pids.record if pids is not None else None)
    return Batches(loader, ring, pids)


def _split(data: DataConfig, split: str) -> ShardSplit:
    """A labelled split: ``train`` without the validation share ``val`` holds (``data.val_by``)."""
    return ShardSplit.open(data.root, data.protocol, split, data.val_by, data.val_fraction)


def build_pretrain_loader(model: ModelConfig, data: DataConfig, split: str = "train", *, batch_size: int, seed: int,
                          rank: int = 0, world_size: int = 1, pin_memory: bool = False,
                          reuse_buffers: bool = True, start: int = 0) -> Batches:
    """Infinite multi-view batches: ``video`` [B, V, C, T, H, W] (view 0 = target), ``motion`` [B, V, N]
    (0-255 units), ``cameras`` [B, V], ``label`` [B], ``key`` list[str]. ``start``: batches a resumed run
    already consumed; the stream continues after them exactly, replaying their sampling but not their
    decoding."""
    # pretraining (no labels, no model selection) always reads the whole split: no validation share held out
    ds = PretrainClips(ShardSplit.open(data.root, data.protocol, split), ClipGeometry.of(model, data), data,
                       seed=seed, rank=rank, world_size=world_size)
    ds.resume_at = (start, batch_size)
    return _loader(ds, model, batch_size, pin_memory, drop_last=True, reuse_buffers=reuse_buffers)


def build_finetune_loader(model: ModelConfig, data: DataConfig, split: str = "train", *, batch_size: int, seed: int,
                          rank: int = 0, world_size: int = 1, pin_memory: bool = False,
                          reuse_buffers: bool = True, start: int = 0) -> Batches:
    """Infinite single-camera batches: ``video`` [B, C, T, H, W], ``label`` [B], ``camera`` [B], ``key``
    (``start`` as for :func:`build_pretrain_loader`)."""
    ds = FinetuneClips(_split(data, split), ClipGeometry.of(model, data), data, seed=seed, rank=rank,
                       world_size=world_size)
    ds.resume_at = (start, batch_size)
    return _loader(ds, model, batch_size, pin_memory, drop_last=True, reuse_buffers=reuse_buffers)


def build_eval_loader(model: ModelConfig, data: DataConfig, split: str = "test", *, batch_size: int, rank: int = 0,
                      world_size: int = 1, pin_memory: bool = False, reuse_buffers: bool = True) -> Batches:
    """One exact pass (this rank's share) with ``data.eval_clips`` × ``data.eval_crops`` clips per video:
    ``video`` [B, C, T, H, W], ``label``, ``camera``, ``clip``, ``crop``, ``key`` and ``video_id`` for
    softmax averaging per video and per group."""
    ds = EvalClips(_split(data, split), ClipGeometry.of(model, data), data, rank=rank, world_size=world_size)
    return _loader(ds, model, batch_size, pin_memory, drop_last=False, reuse_buffers=reuse_buffers)
