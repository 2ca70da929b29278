"""DataLoader builders: what the training and evaluation loops call.

Each builder takes the model's :class:`~mv2mae.model.config.ModelConfig` (geometry and pixel statistics)
and a :class:`~mv2mae.data.config.DataConfig` (dataset, protocol, sampling, workers); the loaders add
nothing else to either. A run changes a sampling option with ``dataclasses.replace(data, ...)``.

Batch videos are uint8 pixels, which the model normalises. The ``device`` a loader is built for decides
where they are decoded (``data.decode_on``): in the workers, as ``[..., C, T, H, W]`` views of
channels-last memory (``mv2mae.data.decode``: index, ``reshape`` or ``.to(device)`` them freely, but
``.view`` across the channel axis needs ``.contiguous()`` first), or, decoding on the device, in this
process as each batch is taken (``mv2mae.data.device``), so that ``video`` is already on ``device``.
Batches are the caller's to keep (``mv2mae.data.transport``).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from mv2mae.data.config import ClipGeometry, DataConfig
from mv2mae.data.datasets import ClipDataset, EvalClips, FinetuneClips, PretrainClips, ShardSplit
from mv2mae.data.decode import collate_clips
from mv2mae.data.device import DeviceDecoder
from mv2mae.data.transport import Batches, BatchRing, WorkerPids
from mv2mae.model.config import ModelConfig

PREFETCH = 2  # batches in flight per worker


def _loader(dataset: ClipDataset, batch_size: int, pin_memory: bool, drop_last: bool, reuse_buffers: bool | None,
            device: torch.device) -> Batches:
    """A DataLoader whose workers reuse their batch memory (``mv2mae.data.transport``) when
    ``reuse_buffers`` says so, by default (None) where that pays: with decoded video (12-14% more
    samples per worker CPU-second), not with JPEG bytes, which take fresh memory anyway (1.00x;
    BENCHMARKS.md). Iterating the returned object yields ordinary batches the caller owns, decoded on
    ``device`` when the dataset is encoded."""
    workers = dataset.data.workers
    reuse = not dataset.encoded if reuse_buffers is None else reuse_buffers
    ring = BatchRing(workers, slots=PREFETCH + 2) if workers > 0 and reuse else None
    dataset.ring = ring.ends if ring is not None else None
    pids = WorkerPids(workers) if workers > 0 else None
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=pin_memory,
                        drop_last=drop_last, persistent_workers=workers > 0,
                        prefetch_factor=PREFETCH if workers > 0 else None, collate_fn=collate_clips,
                        timeout=dataset.data.timeout if workers > 0 else 0,
                        worker_init_fn=pids.record if pids is not None else None)
    decoder = DeviceDecoder(dataset.geom, device, dataset.clip_motion) if dataset.encoded else None
    return Batches(loader, ring, pids, decoder)


def _split(data: DataConfig, split: str) -> ShardSplit:
    """A labelled split: ``train`` without the validation share ``val`` holds (``data.val_by``)."""
    return ShardSplit.open(data.root, data.protocol, split, data.val_by, data.val_fraction, data.train_subjects,
                           data.test_subjects)


def _dataset(cls: type[ClipDataset], split: ShardSplit, model: ModelConfig, data: DataConfig, device: torch.device,
             **kwargs) -> ClipDataset:
    return cls(split, ClipGeometry.of(model, data), data, encoded=data.decodes_on_device(device.type), **kwargs)


def build_pretrain_loader(model: ModelConfig, data: DataConfig, split: str = "train", *, batch_size: int, seed: int,
                          rank: int = 0, world_size: int = 1, pin_memory: bool = False, reuse_buffers: bool | None = None,
                          start: int = 0, device: torch.device | str = "cpu") -> Batches:
    """Infinite multi-view batches: ``video`` uint8 [B, V, C, T, H, W] (view 0 = target), ``motion`` [B, V, N]
    (0-255 units), ``cameras`` [B, V], ``label`` [B], ``key`` list[str]. ``start``: batches a resumed run
    already consumed; the stream continues after them exactly, replaying their sampling but not their
    decoding."""
    device = torch.device(device)
    # pretraining (no labels, no model selection) always reads the whole split: no validation share held out
    ds = _dataset(PretrainClips, ShardSplit.open(data.root, data.protocol, split, train_subjects=data.train_subjects,
                                                    test_subjects=data.test_subjects), model, data, device,
                  seed=seed, rank=rank, world_size=world_size)
    ds.resume_at = (start, batch_size)
    return _loader(ds, batch_size, pin_memory, drop_last=True, reuse_buffers=reuse_buffers, device=device)


def build_finetune_loader(model: ModelConfig, data: DataConfig, split: str = "train", *, batch_size: int, seed: int,
                          rank: int = 0, world_size: int = 1, pin_memory: bool = False, reuse_buffers: bool | None = None,
                          start: int = 0, device: torch.device | str = "cpu") -> Batches:
    """Infinite single-camera batches: ``video`` uint8 [B, C, T, H, W], ``label`` [B], ``camera`` [B], ``key``
    (``start`` as for :func:`build_pretrain_loader`)."""
    device = torch.device(device)
    ds = _dataset(FinetuneClips, _split(data, split), model, data, device, seed=seed, rank=rank,
                  world_size=world_size)
    ds.resume_at = (start, batch_size)
    return _loader(ds, batch_size, pin_memory, drop_last=True, reuse_buffers=reuse_buffers, device=device)


def build_eval_loader(model: ModelConfig, data: DataConfig, split: str = "test", *, batch_size: int, rank: int = 0,
                      world_size: int = 1, pin_memory: bool = False, reuse_buffers: bool | None = None,
                      device: torch.device | str = "cpu") -> Batches:
    """One exact pass (this rank's share) with ``data.eval_clips`` × ``data.eval_crops`` clips per video:
    ``video`` uint8 [B, C, T, H, W], ``label``, ``camera``, ``clip``, ``crop``, ``key`` and ``video_id`` for
    softmax averaging per video and per group."""
    device = torch.device(device)
    ds = _dataset(EvalClips, _split(data, split), model, data, device, rank=rank, world_size=world_size)
    return _loader(ds, batch_size, pin_memory, drop_last=False, reuse_buffers=reuse_buffers, device=device)
