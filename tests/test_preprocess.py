"""End-to-end preprocessing of a small synthetic set: shards, index, motion cache, alignment, resume.

Real videos (rendered by ``mv2mae.preprocess.synth``), real ffmpeg decoding, real tars and Zarr stores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from mv2mae.cli import app
from mv2mae.preprocess.merge import merge
from mv2mae.preprocess.motion import framediff_grid
from mv2mae.preprocess.pipeline import PreprocessError, run
from mv2mae.preprocess.synth import generate
from mv2mae.shards.motion import MotionRows
from mv2mae.shards.reader import GroupSample
from mv2mae.shards.schema import GroupMeta, motion_grid, parse_frame_ext, read_index

SIZE = 72  # stored short side = the rendered height: decoding does not rescale
ARRAY_SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "cluster" / "preprocess_array.sbatch"


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate(root, classes=3, cameras=3, subjects=3, replications=2, setups=2, frames=(40, 56), size=(96, 72),
             seed=0, workers=2, progress=False)
    return root


@pytest.fixture(scope="module")
def prepared(synth_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    summary = run("synth", synth_root, out, size=SIZE, workers=2)
    assert summary.written == 36 and summary.failed == 0
    return out


def _motion(out: Path, shard: str, meta: GroupMeta, cam: int, frames=None) -> np.ndarray:
    """Camera ``cam``'s framediff rows of one group (all its stored frames, or ``frames`` in that order)."""
    idx = np.arange(meta.view_frames[str(cam)]) if frames is None else np.asarray(frames)
    rows, first = MotionRows(out, "framediff", read_index(out)).view(GroupSample(meta, shard, {}), cam, idx)
    return rows[idx - first]


def _metas(out: Path) -> dict[str, tuple[str, GroupMeta, list[str]]]:
    """key -> (shard name, metadata, member names) read back with the standard library's tarfile."""
    found = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tf:
            members = tf.getmembers()
            for m in members:
                if m.name.endswith(".json"):
                    meta = GroupMeta.from_json(tf.extractfile(m).read(), where=m.name)
                    names = [x.name for x in members if x.name.startswith(meta.key + ".")]
                    found[meta.key] = (shard.name, meta, names)
    return found


def test_index_lists_every_shard_and_gnu_tar_reads_them(prepared):
    index = read_index(prepared)
    assert index.dataset == "synth" and index.groups == 36 and index.motion == ["framediff"]
    assert sorted(s.name for s in index.shards) == sorted(p.name for p in prepared.glob("*.tar"))
    for entry in index.shards:
        listing = subprocess.run(["tar", "tf", str(prepared / entry.name)], capture_output=True, text=True,
                                 check=True).stdout.split()
        assert sum(name.endswith(".json") for name in listing) == entry.samples
        assert entry.bytes == (prepared / entry.name).stat().st_size
    assert (prepared / "failures.jsonl").read_text() == ""


def test_partitions_are_subject_by_setup_parity(prepared):
    index = read_index(prepared)
    for entry in index.shards:
        assert len(entry.subjects) == 1 and entry.partition == f"P{entry.subjects[0]:03d}-S{entry.setups[0] % 2}"
        assert len({s % 2 for s in entry.setups}) == 1


def test_members_follow_the_contract(prepared):
    for key, (_, meta, names) in _metas(prepared).items():
        frames = sorted(parse_frame_ext(n[len(key) + 1:]) for n in names if not n.endswith(".json"))
        assert frames == sorted((c, t) for c in meta.cameras for t in range(meta.view_frames[str(c)]))
        assert meta.size == [SIZE * 96 // 72, SIZE] and meta.fps == 30.0 and len(meta.cameras) == 3
        assert meta.label_name == read_index(prepared).classes[meta.label]


def test_offsets_match_ground_truth(prepared, synth_root):
    truth = json.loads((synth_root / "ground_truth.json").read_text())["groups"]
    good = 0
    metas = _metas(prepared)
    for key, (_, meta, _) in metas.items():
        world = {c: truth[key]["cameras"][f"C{c:03d}"]["offset"] for c in meta.cameras}
        ref = meta.cameras[0]
        # offsets[c] is where the common span starts in camera c's stored frames: it starts as many
        # frames later in c's video as c's recording started earlier.
        good += all(abs((meta.offsets[str(c)] - meta.offsets[str(ref)]) - (world[ref] - world[c])) <= 1
                    for c in meta.cameras)
        for c in meta.cameras:  # every view is stored whole: the test camera's video is the official one
            assert meta.view_frames[str(c)] == truth[key]["cameras"][f"C{c:03d}"]["frames"]
    assert good / len(metas) >= 0.95, f"{good}/{len(metas)} groups aligned within +-1 frame"


def test_views_are_aligned_to_a_training_camera(prepared):
    """synth_xview tests camera 1, so camera 2 (a training camera) is every group's reference: the test
    view never decides when a training view's span starts."""
    for _, meta, _ in _metas(prepared).values():
        align = meta.extra["align"]
        assert align["reference"] == 2 and align["lags"][meta.cameras.index(2)] == 0


def test_motion_cache_rows_match_metadata(prepared):
    root = zarr.open(str(prepared / "motion.zarr"), mode="r")  # plain zarr is enough to read it
    for shard, meta, _ in list(_metas(prepared).values())[:6]:
        arr = root[f"{shard[:-4]}/framediff"]
        gh, gw = motion_grid(meta.size[0], meta.size[1], 8)
        assert arr.dtype == np.float16 and arr.shape[1:] == (gh, gw)
        for cam in meta.cameras:
            rows = _motion(prepared, shard, meta, cam)
            first, count = meta.motion_rows[str(cam)], meta.view_frames[str(cam)]
            np.testing.assert_array_equal(rows, arr[first: first + count])
            assert rows.shape == (count, gh, gw)
            np.testing.assert_array_equal(rows[0], rows[1])  # row 0 repeats row 1 (contract)
            assert 0 <= rows.min() and rows.max() <= 255 and rows.max() > 0
            picked = _motion(prepared, shard, meta, cam, [5, 2])
            np.testing.assert_array_equal(picked, rows[[5, 2]])


def test_framediff_is_the_difference_of_the_stored_frames(synth_root, tmp_path):
    """Motion is computed from the frames before JPEG: at quality 100 it matches the decoded members."""
    run("synth", synth_root, tmp_path, size=SIZE, workers=1, limit=1, jpeg_quality=100)
    key, (shard, meta, _) = next(iter(_metas(tmp_path).items()))
    for cam in meta.cameras:
        with tarfile.open(tmp_path / shard) as tf:
            frames = np.stack([cv2.imdecode(np.frombuffer(tf.extractfile(f"{key}.c{cam:03d}.f{t:04d}.jpg").read(),
                                                          np.uint8), cv2.IMREAD_COLOR)
                           for t in range(meta.view_frames[str(cam)])])
        approx = framediff_grid(frames, 8).astype(np.float32)
        cached = _motion(tmp_path, shard, meta, cam).astype(np.float32)
        assert np.abs(approx - cached).mean() < 0.25 and np.corrcoef(approx.ravel(), cached.ravel())[0, 1] > 0.98


def _shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}


def test_byte_stable_across_runs_and_worker_counts(synth_root, prepared, tmp_path):
    # The first 12 groups are exactly partitions P001-S0 and P001-S1: the same shards as the full run.
    summary = run("synth", synth_root, tmp_path, size=SIZE, workers=1, limit=12)
    again = _shard_bytes(tmp_path)
    assert summary.written == 12 and sorted(again) == ["P001-S0-000000.tar", "P001-S1-000000.tar"]
    full = _shard_bytes(prepared)
    for name, data in again.items():
        assert data == full[name]


def test_resume_after_sigkill_yields_the_uninterrupted_groups(synth_root, tmp_path):
    args = ["--size", str(SIZE), "--limit", "12", "--shard-size", "40kB", "--workers", "1", "--no-progress"]
    reference = tmp_path / "reference"
    subprocess.run([sys.executable, "-m", "mv2mae.cli", "preprocess", "synth", "--root", str(synth_root),
                    "--out", str(reference), *args], check=True, capture_output=True)
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "mv2mae.cli", "preprocess", "synth", "--root", str(synth_root),
           "--out", str(killed), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(killed.glob("*.tar")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    ref_shards = _shard_bytes(reference)
    assert 0 < len(list(killed.glob("*.tar"))) < len(ref_shards), "the kill should land mid-run"
    subprocess.run(cmd, check=True, capture_output=True)
    resumed = _shard_bytes(killed)
    assert resumed == ref_shards  # same shards, same bytes: no group lost, none twice
    keys = [k for e in read_index(killed).shards for k in e.keys]
    assert len(keys) == len(set(keys)) == 12
    assert sorted(keys) == sorted(k for e in read_index(reference).shards for k in e.keys)
    assert not list(killed.glob("*.partial"))


def test_rerun_skips_finished_groups(synth_root, tmp_path):
    first = run("synth", synth_root, tmp_path, size=SIZE, workers=1, limit=6)
    second = run("synth", synth_root, tmp_path, size=SIZE, workers=1, limit=6)
    assert first.written == 6 and second.written == 0 and second.skipped == 6 and second.groups == 6


def test_resume_with_other_options_is_refused(synth_root, tmp_path):
    run("synth", synth_root, tmp_path, size=SIZE, workers=1, limit=3)
    with pytest.raises(PreprocessError, match="jpeg_quality"):
        run("synth", synth_root, tmp_path, size=SIZE, workers=1, limit=3, jpeg_quality=50)
    renamed = tmp_path / "names.txt"
    renamed.write_text("one\ntwo\nthree\n")  # other label names would be mixed into the same shards
    with pytest.raises(PreprocessError, match="classes"):
        run("synth", synth_root, tmp_path, size=SIZE, workers=1, limit=3, classes_file=str(renamed))


def test_the_array_job_recipe_on_two_parts_equals_one_run(synth_root, tmp_path):
    """tools/cluster/preprocess_array.sbatch run as a 2-task SLURM array runs it (array ids 1-2), then
    `mv2mae shards merge`: byte for byte the shards of one run."""
    whole = tmp_path / "whole"
    run("synth", synth_root, whole, size=SIZE, workers=1, limit=12)
    shared = tmp_path / "parts"

    def array_task(task_id: int) -> None:
        env = dict(os.environ, SLURM_ARRAY_TASK_ID=str(task_id), SLURM_ARRAY_TASK_MIN="1", SLURM_ARRAY_TASK_COUNT="2",
                   MV2MAE=str(Path(sys.executable).parent / "mv2mae"))
        subprocess.run(["bash", str(ARRAY_SCRIPT), "synth", str(synth_root), str(shared), "--size", str(SIZE),
                        "--workers", "1", "--limit", "12"], env=env, check=True, capture_output=True)

    array_task(1)
    result = CliRunner().invoke(app, ["shards", "merge", str(shared)])
    assert result.exit_code == 1 and "missing" in result.output
    array_task(2)
    result = CliRunner().invoke(app, ["shards", "merge", str(shared)])
    assert result.exit_code == 0, result.output
    merged, want = read_index(shared), read_index(whole)
    assert [(s.name, s.sha256, s.keys) for s in merged.shards] == [(s.name, s.sha256, s.keys) for s in want.shards]
    assert merged.groups == 12


def test_parts_in_separate_folders_merge_into_one(synth_root, tmp_path):
    for part in (0, 1):
        run("synth", synth_root, tmp_path / f"part{part}", size=SIZE, workers=1, limit=12, part=part, parts=2)
    dest = tmp_path / "merged"
    merged = merge([tmp_path / "part0", tmp_path / "part1"], dest)
    assert merged.groups == 12 and sorted(p.name for p in dest.glob("*.tar")) == [s.name for s in merged.shards]
    metas = _metas(dest)
    for entry in merged.shards:
        assert _motion(dest, entry.name, metas[entry.keys[0]][1], 1).shape[1:] == (9, 12)


def test_flow_and_framediff_together(synth_root, tmp_path):
    run("synth", synth_root, tmp_path, size=SIZE, workers=1, limit=2, motion="both", crop="center")
    index = read_index(tmp_path)
    assert index.motion == ["framediff", "flow"]
    root = zarr.open(str(tmp_path / "motion.zarr"), mode="r")
    shard = index.shards[0].name[:-4]
    flow, diff = root[f"{shard}/flow"][:], root[f"{shard}/framediff"][:]
    assert flow.shape == diff.shape == (sum(_frame_counts(tmp_path)), 9, 9)
    assert flow.dtype == np.float16 and flow.min() >= 0 and flow.max() > 0
    # both sources see motion in the same places
    assert np.corrcoef(flow.astype(np.float32).ravel(), diff.astype(np.float32).ravel())[0, 1] > 0.3


def test_motion_caches_named_for_their_readers_write_the_bytes_of_the_old_spellings(synth_root, tmp_path):
    """``--motion display|train-flow|both`` name the caches for what reads them; the stored sources keep their
    names (index.json's args and motion list, the Zarr arrays: the on-disk contract), so an old spelling and
    its new name write the same bytes, the old one with a one-line note, and a folder preprocessed under the
    old spelling resumes under the new one."""
    def preprocess(out: Path, *motion: str):
        result = CliRunner().invoke(app, ["preprocess", "synth", "--root", str(synth_root), "--out", str(out),
                                          "--size", "48", "--workers", "1", "--limit", "1", "--no-progress", *motion])
        assert result.exit_code == 0, result.output
        return result

    old = preprocess(tmp_path / "old", "--motion", "flow")
    (note,) = [line for line in old.stderr.splitlines() if "--motion" in line]  # one line
    assert note.startswith("note: --motion flow is now spelled --motion train-flow") and note.endswith("release)")
    new = preprocess(tmp_path / "new", "--motion", "train-flow")
    assert "note:" not in new.stderr
    index = (tmp_path / "old" / "index.json").read_text()
    assert (tmp_path / "new" / "index.json").read_text() == index
    assert json.loads(index)["args"]["motion"] == "flow" and read_index(tmp_path / "new").motion == ["flow"]
    shard = read_index(tmp_path / "new").shards[0].name[:-4]
    assert [k for k, _ in zarr.open_group(str(tmp_path / "new" / "motion.zarr"), mode="r")[shard].arrays()] == ["flow"]
    resumed = " ".join(preprocess(tmp_path / "old", "--motion", "train-flow").stderr.split())  # rich wraps lines
    assert "0 group(s) written" in resumed and "1 already done" in resumed
    assert (tmp_path / "old" / "index.json").read_text() == index
    preprocess(tmp_path / "default")  # display: the framediff rows, recorded as before the rename
    assert json.loads((tmp_path / "default" / "index.json").read_text())["args"]["motion"] == "framediff"
    assert read_index(tmp_path / "default").motion == ["framediff"]


def _frame_counts(out: Path) -> list[int]:
    """Stored frames of every view of every group."""
    return [n for _, meta, _ in _metas(out).values() for n in meta.view_frames.values()]


def test_person_crop_from_skeletons(synth_root, tmp_path):
    run("synth", synth_root, tmp_path, size=48, workers=1, limit=3, crop="person")
    for _, meta, _ in _metas(tmp_path).values():
        assert meta.size == [48, 48]
        for box in meta.crop.values():
            x0, y0, x1, y1 = box
            assert x1 - x0 == y1 - y0 and 0 <= x0 and 0 <= y0 and x1 <= 96 and y1 <= 72
    with pytest.raises(Exception, match="--motion must be one of"):
        run("synth", synth_root, tmp_path / "bad", motion="none")


def test_common_frame_rate_and_opencv_backend(synth_root, tmp_path):
    run("synth", synth_root, tmp_path / "ffmpeg", size=SIZE, workers=1, limit=1)
    run("synth", synth_root, tmp_path / "opencv", size=SIZE, workers=1, limit=1, backend="opencv")
    run("synth", synth_root, tmp_path / "fps15", size=SIZE, workers=1, limit=1, fps=15.0)
    (a,), (b,), (c,) = (list(_metas(tmp_path / d).values()) for d in ("ffmpeg", "opencv", "fps15"))
    assert (a[1].frames, a[1].offsets) == (b[1].frames, b[1].offsets)  # same decode, either backend
    assert c[1].fps == 15.0 and abs(c[1].frames - a[1].frames / 2) <= 2
    assert read_index(tmp_path / "fps15").fps == 15.0


def test_cli_merge_reports_missing_parts(synth_root, tmp_path):
    run("synth", synth_root, tmp_path, size=SIZE, workers=1, limit=6, part=0, parts=2)
    result = CliRunner().invoke(app, ["shards", "merge", str(tmp_path)])
    assert result.exit_code == 1 and "missing" in result.output
    help_text = CliRunner().invoke(app, ["preprocess", "--help"], env={"COLUMNS": "240"}).output
    for option in ("--max-lag", "--drop-missing-skeletons", "--part", "--shard-size", "--motion", "--crop"):
        assert option in help_text


def test_a_damaged_run_record_is_named(synth_root, tmp_path):
    (tmp_path / ".state").mkdir()
    (tmp_path / ".state" / "run.json").write_text("{truncated")
    with pytest.raises(PreprocessError, match=r"run\.json: unreadable run record"):
        run("synth", synth_root, tmp_path, size=SIZE, workers=1, limit=1)
