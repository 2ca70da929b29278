"""DataLoader builders: what the training and evaluation loops call, and stage 6 of the data path,
:func:`collate_clips`.

Each builder takes the model's :class:`~mv2mae.model.config.ModelConfig` (geometry and pixel statistics)
and a :class:`~mv2mae.data.config.DataConfig` (dataset, protocol, sampling, workers); the loaders add
nothing else to either. A run changes a sampling option with ``dataclasses.replace(data, ...)``.

Batch videos are uint8 pixels, which the model normalises. The ``device`` a loader is built for decides
where they are decoded (``data.decode_on``): in the workers, as ``[..., C, T, H, W]`` views of
channels-last memory (``mv2mae.data.pixels.to_video_tensor``: index, ``reshape`` or ``.to(device)`` them
freely, but ``.view`` across the channel axis needs ``.contiguous()`` first), or, decoding on the device,
in this process as each batch is taken (:class:`~mv2mae.data.pixels.DecodeOnDevice`, then
:class:`~mv2mae.data.motion.ClipMotion`), so that ``video`` is already on ``device``. Batches are the
caller's to keep. The workers run under the guards of ``mv2mae.data.workers``.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, default_collate

from mv2mae.data.config import ClipGeometry, DataConfig
from mv2mae.data.datasets import ClipDataset, EvalClips, FinetuneClips, PretrainClips
from mv2mae.data.motion import ClipMotion
from mv2mae.data.pixels import JPEG_FIELDS, DecodeOnDevice, channels_last
from mv2mae.data.replay import Replay
from mv2mae.data.splits import ShardSplit
from mv2mae.data.workers import Batches, WorkerPids, in_shared_memory
from mv2mae.model.config import ModelConfig

PREFETCH = 2  # batches in flight per worker


def collate_samples(samples: list[dict]) -> dict:
    """Stage 6 (worker): samples in, a batch out, by ``default_collate`` (which, in a worker, stacks
    straight into shared memory; ints become an int64 tensor, strings a list), the fields in the samples'
    order. Two fields it would not do: a channels-last video (:func:`~mv2mae.data.pixels.to_video_tensor`)
    is stacked as the ``[T, H, W, C]`` memory it is, so it arrives as a ``[B, ..., C, T, H, W]`` view of
    channels-last memory with no planar shuffle on the CPU; the ragged JPEG fields of packed samples
    (:data:`~mv2mae.data.pixels.JPEG_FIELDS`) are concatenated. Video stays uint8: the model normalises it."""
    ragged = {k: torch.cat([s[k] for s in samples]) for k in JPEG_FIELDS if k in samples[0]}
    plain = [{k: v for k, v in s.items() if k not in ragged} for s in samples]
    videos = [channels_last(s["video"]) for s in plain if "video" in s]
    interleaved = bool(videos) and all(v is not None for v in videos)
    if interleaved:  # stacked as the [..., T, H, W, C] memory under each [..., C, T, H, W] view
        plain = [s | {"video": v} for s, v in zip(plain, videos, strict=True)]
    batch = default_collate(plain) | ragged
    if interleaved:
        batch["video"] = batch["video"].movedim(-1, -4)
    return {k: batch[k] for k in samples[0]}


def collate_clips(samples: list[dict]) -> dict:
    """Stage 6 as the DataLoader calls it: :func:`collate_samples` under the shared-memory guard
    (:func:`~mv2mae.data.workers.in_shared_memory`)."""
    return in_shared_memory(collate_samples, samples)


def _loader(dataset: ClipDataset, batch_size: int, pin_memory: bool, drop_last: bool, device: torch.device) -> Batches:
    """A DataLoader under the worker guards (``mv2mae.data.workers``); iterating the returned object yields
    batches the caller owns, decoded on ``device`` (and given their clip motion there) when the dataset
    is encoded."""
    workers = dataset.data.workers
    pids = WorkerPids(workers) if workers > 0 else None
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=pin_memory,
                        drop_last=drop_last, persistent_workers=workers > 0,
                        prefetch_factor=PREFETCH if workers > 0 else None, collate_fn=collate_clips,
                        timeout=dataset.data.timeout if workers > 0 else 0,
                        worker_init_fn=pids.record if pids is not None else None)
    stages = ()
    if dataset.encoded:
        stages = (DecodeOnDevice(dataset.geom, device),) + ((ClipMotion(dataset.geom),) if dataset.clip_motion else ())
    return Batches(loader, pids, stages)


def _split(data: DataConfig, split: str) -> ShardSplit:
    """A labelled split: ``train`` without the validation share ``val`` holds (``data.val_by``)."""
    return ShardSplit.open(data.root, data.protocol, split, data.val_by, data.val_fraction, data.train_subjects,
                           data.test_subjects)


def _dataset(cls: type[ClipDataset], split: ShardSplit, model: ModelConfig, data: DataConfig, device: torch.device,
             **kwargs) -> ClipDataset:
    return cls(split, ClipGeometry.of(model, data), data, encoded=data.decodes_on_device(device.type), **kwargs)


def build_pretrain_loader(model: ModelConfig, data: DataConfig, split: str = "train", *, batch_size: int, seed: int,
                          rank: int = 0, world_size: int = 1, pin_memory: bool = False,
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
    ds.replay = Replay(start, batch_size)
    return _loader(ds, batch_size, pin_memory, drop_last=True, device=device)


def build_finetune_loader(model: ModelConfig, data: DataConfig, split: str = "train", *, batch_size: int, seed: int,
                          rank: int = 0, world_size: int = 1, pin_memory: bool = False,
                          start: int = 0, device: torch.device | str = "cpu") -> Batches:
    """Infinite single-camera batches: ``video`` uint8 [B, C, T, H, W], ``label`` [B], ``camera`` [B], ``key``
    (``start`` as for :func:`build_pretrain_loader`)."""
    device = torch.device(device)
    ds = _dataset(FinetuneClips, _split(data, split), model, data, device, seed=seed, rank=rank,
                  world_size=world_size)
    ds.replay = Replay(start, batch_size)
    return _loader(ds, batch_size, pin_memory, drop_last=True, device=device)


def build_eval_loader(model: ModelConfig, data: DataConfig, split: str = "test", *, batch_size: int, rank: int = 0,
                      world_size: int = 1, pin_memory: bool = False,
                      device: torch.device | str = "cpu") -> Batches:
    """One exact pass (this rank's share) with ``data.eval_clips`` × ``data.eval_crops`` clips per video:
    ``video`` uint8 [B, C, T, H, W], ``label``, ``camera``, ``clip``, ``crop``, ``key`` and ``video_id`` for
    softmax averaging per video and per group."""
    device = torch.device(device)
    ds = _dataset(EvalClips, _split(data, split), model, data, device, rank=rank, world_size=world_size)
    return _loader(ds, batch_size, pin_memory, drop_last=False, device=device)
