"""Shards from strangers: tampered, truncated or damaged shards are named by ``shards verify`` problem by
problem, and the training and evaluation streams never execute their data, skip each bad group with a
warning and a counter, and stop with a clear error once too many are bad."""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import os
import pickle
import shutil
import tarfile
import time
from pathlib import Path

import pytest
import zarr
from fixtures_data import session_synth_data
from train_helpers import tiny_config
from typer.testing import CliRunner

from mv2mae.cli import app
from mv2mae.data.config import ClipGeometry, DataConfig
from mv2mae.data.datasets import EvalClips, PretrainClips
from mv2mae.data.loaders import build_eval_loader, build_pretrain_loader
from mv2mae.data.splits import ShardSplit
from mv2mae.shards.reader import BadSampleLimit
from mv2mae.shards.schema import ContractError, GroupMeta, read_index
from mv2mae.tools.verify import verify

SENTINEL = "pickle-was-executed"


class _Exploit:
    """Unpickling this runs a shell command: a shard member holding it must never be unpickled."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


def _members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]


def _special(name: str, kind: bytes, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def _rewrite(path: Path, edit) -> None:
    """Rewrite shard ``path``: ``edit(name, data)`` returns what replaces a member (a list of
    ``(name, bytes)`` or ``TarInfo`` entries)."""
    entries = [e for name, data in _members(path) for e in edit(name, data)]
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for e in entries:
            if isinstance(e, tarfile.TarInfo):
                tf.addfile(e)
            else:
                info = tarfile.TarInfo(e[0])
                info.size = len(e[1])
                tf.addfile(info, io.BytesIO(e[1]))


def _cache_as_flow(root: Path) -> None:
    """Training reads cached motion rows only for ``flow`` (``framediff`` comes from the clip itself): give
    a copied dataset a flow cache, the framediff rows under that name, so a damaged cache is read."""
    index = json.loads((root / "index.json").read_text())
    index["motion"] = sorted({*index["motion"], "flow"})
    (root / "index.json").write_text(json.dumps(index))
    for sub in (root / "motion.zarr").iterdir():
        if sub.is_dir() and not sub.name.startswith("."):
            group = zarr.open_group(str(sub), mode="r+")
            rows = group["framediff"]
            group.create_array("flow", shape=rows.shape, dtype=rows.dtype, fill_value=0.0)[...] = rows[...]


@pytest.fixture(scope="module")
def tampered(tmp_path_factory) -> tuple[Path, dict[str, str], set[str]]:
    """A copy of the synthetic dataset with one kind of damage per group: (directory, bad
    ``shard:key`` -> what is wrong, keys of the usable groups)."""
    root = tmp_path_factory.mktemp("tampered") / "data"
    shutil.copytree(session_synth_data(tmp_path_factory), root)
    _cache_as_flow(root)
    shards = {s.name: s.keys for s in read_index(root).shards}
    names = sorted(shards)
    a, b, c, d = names
    (k0, k1, k2), (m0, m1, m2), (n0, n1, n2) = shards[a], shards[b], shards[c]
    sentinel = root.parent / SENTINEL

    def edit_a(name, data):
        if name == f"{k0}.c002.f0003.jpg":
            return [_special(name, tarfile.SYMTYPE, "/etc/passwd")]  # a symlink replacing a frame
        if name == f"{k1}.json":
            return [(name, data[: len(data) // 2])]  # malformed JSON
        if name.startswith(f"{k2}.") and name.endswith(".jpg"):
            return [(name, b"\xff\xd8 not really a JPEG")]  # no frame of the group decodes
        return [(name, data)]

    def edit_b(name, data):
        if name == f"{m0}.json":
            return [("../escape.json", b"{}"), (name, data)]  # a member outside the directory
        if name == f"{m1}.json":
            return [(name, data), _special(f"{m1}.c001.f0000.dev", tarfile.CHRTYPE)]  # a device
        if name == f"{m2}.json":  # a pickle: harmless unless someone unpickles it
            return [(name, data), (f"{m2}.pyd", pickle.dumps(_Exploit(sentinel)))]
        return [(name, data)]

    def edit_c(name, data):
        if name == f"{n0}.json":
            return [("/etc/absolute.json", b"{}"), (name, data)]
        return [(name, data)]

    _rewrite(root / a, edit_a)
    _rewrite(root / b, edit_b)
    _rewrite(root / c, edit_c)
    raw = (root / c).read_bytes()
    (root / c).write_bytes(raw[: int(len(raw) * 0.85)])  # cut inside its last group
    shutil.rmtree(root / "motion.zarr" / d[:-4])  # a shard without its motion cache
    bad = {f"{a}:{k0}": "is a symbolic link", f"{a}:{k1}": "not valid JSON", f"{a}:{k2}": "corrupt JPEG header",
           f"{b}:{m0}": "'../escape.json' is not KEY.EXT", f"{b}:{m1}": "is a character device",
           f"{c}:{n0}": "'/etc/absolute.json' is not KEY.EXT", f"{c}:{n2}": "truncated tar",
           **{f"{d}:{k}": f"no flow rows for shard {d[:-4]}" for k in shards[d]}}
    return root, bad, {m2, n1}


def _data(root: Path, **kwargs) -> DataConfig:
    return DataConfig(**{"root": str(root), "protocol": "synth_xview", "stride": 2, "workers": 0,
                         "shuffle_buffer": 4, **kwargs})


def test_verify_names_every_problem_and_checks_every_shard(tampered):
    root, _, _ = tampered
    _, problems = verify(root)
    text = "\n".join(problems)
    shards = sorted(s.name for s in read_index(root).shards)
    for expected in ["is a symbolic link, not a file", ".json: not valid JSON", "corrupt JPEG header",
                     "'../escape.json' is not KEY.EXT", "is a character device, not a file", ".pyd",
                     "'/etc/absolute.json' is not KEY.EXT", "truncated tar",
                     f"motion.zarr has no sub-group {shards[3][:-4]}"]:
        assert expected in text, expected
    for name in shards:  # every shard was checked to the end: each has its checksum problem named
        assert f"{name}: sha256 does not match" in text or name == shards[3]
    res = CliRunner().invoke(app, ["shards", "verify", str(root)])
    assert res.exit_code == 1 and "problem(s) in 4 shard(s)" in res.output and "Traceback" not in res.output


def test_the_training_stream_skips_each_bad_group_once_with_a_warning_and_never_unpickles(tampered, caplog):
    root, bad, good = tampered
    cfg = tiny_config("pretrain")
    data = _data(root, motion="flow")
    dataset = PretrainClips(ShardSplit.open(root, data.protocol, "train"), ClipGeometry.of(cfg.model, data), data)
    with caplog.at_level(logging.WARNING, logger="mv2mae.shards.reader"):
        stream = iter(dataset)
        keys = {next(stream)["key"] for _ in range(40)}
    assert keys == good  # nothing else came through, and the stream kept going
    assert sorted(dataset.bad.seen) == sorted(bad)
    for where, why in bad.items():
        assert why in dataset.bad.seen[where], (where, dataset.bad.seen[where])
    warned = [r.getMessage() for r in caplog.records if "skipped bad sample" in r.getMessage()]
    assert len(warned) == len(bad)  # each bad group logged once, however often the stream drew it
    assert not (root.parent / SENTINEL).exists()


def test_the_evaluation_pass_skips_bad_groups_and_covers_the_rest(tampered):
    root, bad, good = tampered
    cfg = tiny_config("finetune")
    data = _data(root, eval_clips=1, eval_crops=1)
    dataset = EvalClips(ShardSplit.open(root, data.protocol, "test"), ClipGeometry.of(cfg.model, data), data)
    keys = {s["key"] for s in dataset}
    # the test camera's frames of the damaged-motion shard are fine: evaluation reads no motion
    motion_only = {w.split(":")[1] for w, why in bad.items() if "flow rows" in why}
    assert keys == good | motion_only
    assert sorted(dataset.bad.seen) == sorted(w for w, why in bad.items() if "flow rows" not in why)


def test_decoding_on_the_device_skips_a_frame_that_is_no_jpeg_like_the_cpu_path(tampered):
    """With ``data.decode_on=device`` the training process decodes, but the workers read each frame's header
    first: a frame that is no JPEG is a bad group there, skipped and counted like every other kind, and the
    pass covers the rest (README: a bad group never stops a run below ``data.max_bad_samples``)."""
    root, bad, good = tampered
    (where,) = [w for w, why in bad.items() if "JPEG" in why]
    data = _data(root, eval_clips=1, eval_crops=1, decode_on="device")
    loader = build_eval_loader(tiny_config("finetune").model, data, batch_size=1)
    keys = {k for batch in loader for k in batch["key"]}
    assert where.split(":")[1] not in keys and good <= keys
    assert "corrupt JPEG header" in loader.dataset.bad.seen[where]


def test_too_many_bad_groups_stop_the_run_with_one_clear_line(tampered):
    root, _, _ = tampered
    cfg = tiny_config("pretrain")
    data = _data(root, max_bad_samples=3)
    dataset = PretrainClips(ShardSplit.open(root, data.protocol, "train"), ClipGeometry.of(cfg.model, data), data)
    stream = iter(dataset)
    with pytest.raises(BadSampleLimit, match=r"4 bad sample\(s\) \(data.max_bad_samples=3.*shards verify"):
        for _ in range(200):
            next(stream)
    # from a loader worker, the error reaches the main process as the worker's one line, not a traceback
    loader = build_pretrain_loader(cfg.model, _data(root, max_bad_samples=1, workers=1), batch_size=2, seed=0)
    with pytest.raises(BadSampleLimit) as caught:
        for _ in loader:
            pass
    message = str(caught.value)
    assert "data.max_bad_samples=1" in message and "Traceback" not in message and "\n" not in message
    # and the loader is done: its worker ends now, though the error (held here) keeps its traceback, rather
    # than at exit, where the SIGTERM it would be sent holds the process for the worker's grace
    deadline = time.monotonic() + 10
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not multiprocessing.active_children()


def test_a_motion_cache_of_the_wrong_shape_or_metadata_of_the_wrong_type_is_a_bad_sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("shape") / "data"
    shutil.copytree(session_synth_data(tmp_path_factory), root)
    index = json.loads((root / "index.json").read_text())
    index["groups"] += 1  # the manifest's total disagrees with its shards
    (root / "index.json").write_text(json.dumps(index))
    name = read_index(root).shards[0].name
    _cache_as_flow(root)
    group = zarr.open_group(str(root / "motion.zarr" / name[:-4]), mode="r+")
    rows = group["flow"].shape[0]
    del group["flow"]
    group.create_array("flow", shape=(rows, 2, 2), dtype="float16", fill_value=0.0)[...] = 1.0
    _, problems = verify(root, decode=False)
    assert any(f"{name}: " in p and "motion grid" in p and "exceeds" in p for p in problems)
    assert any(p == f"index.json: says {read_index(root).groups + 1} groups, its shards hold "
                    f"{read_index(root).groups}" for p in problems)
    cfg = tiny_config("pretrain")
    data = _data(root, motion="flow")
    with pytest.raises(ContractError, match=r"index.json: says \d+ groups, its shards hold \d+; run `mv2mae shards"):
        ShardSplit.open(root, data.protocol, "train")  # a loader refuses an index that disagrees with itself
    index = json.loads((root / "index.json").read_text())
    index["groups"] -= 1
    (root / "index.json").write_text(json.dumps(index))
    dataset = PretrainClips(ShardSplit.open(root, data.protocol, "train"), ClipGeometry.of(cfg.model, data), data)
    stream = iter(dataset)
    assert {next(stream)["key"] for _ in range(30)} <= set(read_index(root).shards[1].keys) | {
        k for s in read_index(root).shards[2:] for k in s.keys}
    assert any("cannot hold the" in why for why in dataset.bad.seen.values())
    with pytest.raises(ContractError, match=r"s.tar:K.json: fields of the wrong type: frames \(str\)"):
        GroupMeta.from_json({"key": "K", "dataset": "d", "label": 0, "subject": 1, "cameras": [1], "fps": 30.0,
                             "frames": "9", "size": [4, 4], "partition": "p", "view_frames": {"1": 9},
                             "offsets": {"1": 0}}, where="s.tar:K.json")
