"""Reused shared-memory batch buffers (``mv2mae.data.transport``) with real DataLoader workers: the
batches are the same as without reuse, a batch the consumer keeps is never rewritten, buffers the
consumer dropped do go round again, and a worker whose buffers are all out falls back to fresh memory."""

import os

import pytest
import torch
from fixtures_data import session_synth_data

from mv2mae.data import DataConfig, build_eval_loader, build_pretrain_loader
from mv2mae.data.transport import BatchRing, Lease, _WorkerBuffers
from mv2mae.model.config import ModelConfig

MODEL = ModelConfig(frames=8, image_size=32, tubelet=2, patch=8)
TENSORS = ("video", "motion", "cameras", "label")


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    return session_synth_data(tmp_path_factory)


def loader(synth_data, reuse, decode_on="cpu"):
    options = DataConfig(root=synth_data, protocol="all", stride=2, workers=2, decode_on=decode_on)
    return build_pretrain_loader(MODEL, options, batch_size=3, seed=11, reuse_buffers=reuse)


def copies(batch):
    return {k: batch[k].clone() for k in TENSORS}


def stream(batches, n, keep):
    """Copies of the first ``n`` batches as they arrive, and the batches for which ``keep(i)`` holds."""
    it = iter(batches)
    seen, kept = [], {}
    for i in range(n):
        batch = next(it)
        seen.append(copies(batch))
        if keep(i):
            kept[i] = batch
        del batch
    return seen, kept


def assert_same(a, b):
    for k in TENSORS:
        assert a[k].shape == b[k].shape and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("decode_on", ["cpu", "device"])  # device: the plan's fixed-size fields go round
def test_reused_buffers_change_nothing_and_go_round(synth_data, decode_on):
    reference, _ = stream(loader(synth_data, reuse=False, decode_on=decode_on), 12, lambda i: False)
    ring_loader = loader(synth_data, reuse=True, decode_on=decode_on)
    seen, _ = stream(ring_loader, 12, lambda i: False)
    for a, b in zip(reference, seen, strict=True):
        assert_same(a, b)
    ring = ring_loader.ring
    assert max(ring.leases.values()) >= 2  # a dropped batch's buffer was written again
    assert {worker for worker, _, _ in ring.leases} == {0, 1}
    assert seen[0]["video"].dtype == torch.uint8


def test_kept_batches_are_never_rewritten(synth_data):
    reference, _ = stream(loader(synth_data, reuse=False), 18, lambda i: False)
    ring_loader = loader(synth_data, reuse=True)
    seen, kept = stream(ring_loader, 18, lambda i: i % 3 == 0)
    for i, batch in kept.items():  # still what arrived, while the dropped batches' buffers were reused
        assert_same(batch, seen[i])
        assert_same(batch, reference[i])
    assert max(ring_loader.ring.leases.values()) >= 2


def test_a_consumer_keeping_everything_gets_fresh_memory(synth_data):
    ring_loader = loader(synth_data, reuse=True)
    seen, kept = stream(ring_loader, 16, lambda i: True)
    for i, batch in kept.items():
        assert_same(batch, seen[i])
    ring = ring_loader.ring
    assert max(ring.leases.values()) == 1  # nothing released, so no buffer went round twice
    assert ring.unleased > 0  # the workers ran out of buffers and used fresh shared memory


def test_breaking_out_and_iterating_again_keeps_the_buffers_going_round(synth_data):
    """Persistent workers iterated again: the DataLoader drops the batches in flight when a consumer
    breaks out of its loop, so they are never released; a new pass retires them instead of running
    the workers out of buffers (and a late release of a retired slot frees nothing)."""
    batches = loader(synth_data, reuse=True)
    for _ in range(4):
        for i, batch in enumerate(batches):
            assert batch["video"].shape[0] == 3
            if i == 5:
                break
    ring = batches.ring
    assert ring.unleased == 0  # never fell back to one-off memory
    assert max(ring.leases.values()) >= 2


def test_the_exact_evaluation_pass_with_reused_buffers(synth_data):
    def ids(reuse):
        options = DataConfig(root=synth_data, protocol="synth_xview", stride=2, workers=2)
        batches = build_eval_loader(MODEL, options, batch_size=7, reuse_buffers=reuse)
        out = []
        for batch in batches:  # the last batch of each worker is partial: a second buffer shape
            columns = batch["video_id"], batch["clip"].tolist(), batch["crop"].tolist(), batch["video"]
            out += [(v, c, k, float(x.sum())) for v, c, k, x in zip(*columns, strict=True)]
        return sorted(out)

    assert ids(True) == ids(False)


def test_a_release_for_another_process_or_unknown_slot_frees_nothing():
    ring = BatchRing(workers=1, slots=2)
    worker = _WorkerBuffers(ring.ends, worker=0)  # this process plays the worker
    first = worker.acquire((4,), torch.uint8, "label")
    lease = worker.ship(first)
    assert isinstance(lease, Lease) and lease.slot == 0 and lease.pid == os.getpid()
    ring.release(Lease(None, ring.id, 0, os.getpid() + 1, 0))  # a predecessor's release
    ring.release(Lease(None, ring.id, 0, os.getpid(), 7))  # a slot this worker never had
    second = worker.acquire((4,), torch.uint8, "label")
    second_lease = worker.ship(second)
    assert second.data_ptr() != first.data_ptr() and second_lease.slot == 1
    other = worker.acquire((4,), torch.uint8, "camera")  # another field of the same shape: its own buffers
    assert isinstance(worker.ship(other), Lease)
    third = worker.acquire((4,), torch.uint8, "label")  # both buffers out: one-off memory, shipped as a tensor
    assert not isinstance(worker.ship(third), Lease)
    ring.release(lease)
    assert worker.acquire((4,), torch.uint8, "label").data_ptr() == first.data_ptr()
    worker.retire_out()  # a new pass: what is still out is never written again, even if released late
    ring.release(second_lease)
    assert worker.acquire((4,), torch.uint8, "label").data_ptr() not in (first.data_ptr(), second.data_ptr())


def test_a_worker_outliving_the_main_side_of_its_ring_just_stops_reading():
    ring = BatchRing(workers=1, slots=2)
    worker = _WorkerBuffers(ring.ends, worker=0)
    for w in ring._writers:  # as when the loader is gone and the worker holds no writer end (spawn)
        w.close()
    worker.acquire((4,), torch.uint8, "label")
    assert worker.reader is None and worker.acquire((4,), torch.uint8, "label") is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="page-locked memory needs CUDA")
def test_pinning_a_lease_copies_and_releases(synth_data):
    options = DataConfig(root=synth_data, protocol="all", stride=2, workers=2, decode_on="cpu")
    batches = build_pretrain_loader(MODEL, options, batch_size=3, seed=11, pin_memory=True)
    seen, kept = stream(batches, 12, lambda i: i % 2 == 0)
    reference, _ = stream(loader(synth_data, reuse=False), 12, lambda i: False)
    for i, batch in kept.items():
        assert batch["video"].is_pinned()
        assert_same(batch, reference[i])
    assert not batches.ring.leases and batches.ring.unleased > 0  # copied and released by the pin thread
