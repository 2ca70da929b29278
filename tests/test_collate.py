"""How batches cross from DataLoader workers (``mv2mae.data.loaders.collate_clips``, under the guards of
``mv2mae.data.workers``): the same batches as made in the training process itself, the video a view of
channels-last memory (no planar shuffle on the CPU), every tensor in shared memory as it leaves a
worker, and the JPEG bytes of a ``decode_on=device`` batch concatenated into one tensor."""

from dataclasses import replace

import pytest
import torch
from fixtures_data import session_synth_data
from torch.utils.data import DataLoader

from mv2mae.data import DataConfig, build_eval_loader, build_pretrain_loader
from mv2mae.data.loaders import collate_clips
from mv2mae.model.config import ModelConfig

MODEL = ModelConfig(frames=8, image_size=32, tubelet=2, patch=8)
TENSORS = ("video", "motion", "cameras", "label")


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    return session_synth_data(tmp_path_factory)


def first(batches, n):
    it = iter(batches)
    return [next(it) for _ in range(n)]


def assert_channels_last(video: torch.Tensor) -> None:
    assert video.dtype == torch.uint8 and video.movedim(-4, -1).is_contiguous(), video.stride()


def test_batches_from_workers_are_those_made_in_process_with_channels_last_video(synth_data):
    """One worker draws the stream the training process draws without workers (the same slot)."""
    options = DataConfig(root=synth_data, protocol="all", stride=2, workers=1)
    from_worker = first(build_pretrain_loader(MODEL, options, batch_size=3, seed=11), 4)
    in_process = first(build_pretrain_loader(MODEL, replace(options, workers=0), batch_size=3, seed=11), 4)
    for a, b in zip(from_worker, in_process, strict=True):
        assert list(a) == list(b)
        for k in TENSORS:
            assert a[k].shape == b[k].shape and torch.equal(a[k], b[k]), k
        assert a["key"] == b["key"]
        assert_channels_last(a["video"])
        assert_channels_last(b["video"])


def collate_and_list_unshared(samples):
    """:func:`collate_clips` as a worker runs it, plus the names of the batch's tensors not in shared memory."""
    batch = collate_clips(samples)
    return batch | {"unshared": [k for k, v in batch.items() if isinstance(v, torch.Tensor) and not v.is_shared()]}


def test_a_worker_hands_every_tensor_over_in_shared_memory(synth_data):
    """What :func:`collate_clips` returns in a worker is already shared (a tensor that is not would be
    moved while queued, where running out of shared memory leaves the loader waiting); the JPEG bytes of
    the samples arrive concatenated."""
    options = DataConfig(root=synth_data, protocol="all", stride=2, workers=0, decode_on="device")
    dataset = build_pretrain_loader(MODEL, options, batch_size=3, seed=0).dataset
    reference = next(iter(build_pretrain_loader(MODEL, options, batch_size=3, seed=0).loader))
    batch = next(iter(DataLoader(dataset, batch_size=3, num_workers=1, collate_fn=collate_and_list_unshared)))
    assert {"jpeg", "jpeg_sizes", "jpeg_members", "frames", "boxes", "jpeg_count"} <= set(batch)
    assert batch["unshared"] == []
    assert torch.equal(batch["jpeg"], reference["jpeg"]) and batch["jpeg"].dim() == 1
    assert batch["jpeg_sizes"].sum() == len(batch["jpeg"]) == len(reference["jpeg"])


def test_the_exact_evaluation_pass_is_the_same_from_workers(synth_data):
    def ids(workers):
        options = DataConfig(root=synth_data, protocol="synth_xview", stride=2, workers=workers)
        out = []
        for batch in build_eval_loader(MODEL, options, batch_size=7):  # each worker's last batch is partial
            assert_channels_last(batch["video"])
            columns = batch["video_id"], batch["clip"].tolist(), batch["crop"].tolist(), batch["video"]
            out += [(v, c, k, float(x.sum())) for v, c, k, x in zip(*columns, strict=True)]
        return sorted(out)

    assert ids(2) == ids(0)
