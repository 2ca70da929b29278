"""Invariants of the pieces: cell grid means, lag recovery, stable tars, atomic motion sub-groups, sizes."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import zarr

from mv2mae.cli.preprocess import parse_bytes
from mv2mae.preprocess.align import align, best_lag
from mv2mae.preprocess.crop import center_box, stored_size
from mv2mae.preprocess.decode import DecodeRequest, decode, ffmpeg_exe, probe
from mv2mae.preprocess.group import GroupResult, reference_view
from mv2mae.preprocess.merge import MergeError, merge
from mv2mae.preprocess.motion import cell_means, framediff_grid, pixel_framediff
from mv2mae.preprocess.pipeline import (
    STATE_DIR,
    Options,
    PreprocessError,
    _recover,
    _ShardSink,
    done_keys,
    run,
)
from mv2mae.shards.motion import MotionRows, write_shard_motion
from mv2mae.shards.reader import GroupSample
from mv2mae.shards.schema import (
    INDEX_FILE,
    ContractError,
    DatasetIndex,
    GroupMeta,
    ShardEntry,
    frame_ext,
    read_index,
)
from mv2mae.shards.writer import FIXED_MTIME, Member, ShardWriter


def test_cell_means_edge_cells_average_only_covered_pixels():
    values = np.arange(2 * 10 * 13, dtype=np.float32).reshape(2, 10, 13)
    grid = cell_means(values, 8)
    assert grid.shape == (2, 2, 2)
    np.testing.assert_allclose(grid[1, 0, 0], values[1, :8, :8].mean())
    np.testing.assert_allclose(grid[1, 1, 1], values[1, 8:, 8:].mean())  # a 2x5 corner cell
    np.testing.assert_allclose(grid[0, 0, 1], values[0, :8, 8:].mean())


def test_framediff_rows_follow_the_contract():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 16, 24, 3), dtype=np.uint8)
    rows = framediff_grid(frames, 8)
    want = np.abs(frames[1:].astype(int) - frames[:-1]).mean(-1)
    assert rows.dtype == np.float16 and rows.shape == (5, 2, 3)
    np.testing.assert_allclose(pixel_framediff(frames), want, atol=1e-4)
    np.testing.assert_allclose(rows[1:], cell_means(want.astype(np.float32), 8), rtol=1e-3, atol=0.05)
    np.testing.assert_array_equal(rows[0], rows[1])
    assert framediff_grid(frames[:1], 8).shape == (1, 2, 3) and not framediff_grid(frames[:1], 8).any()


def test_best_lag_recovers_a_known_shift():
    rng = np.random.default_rng(1)
    world = np.convolve(rng.random(120), np.ones(3) / 3, mode="same")
    ref, late = world[10:80], world[17:90]  # ``late`` starts 7 frames after ``ref``
    assert best_lag(ref, late, 15)[0] == 7
    assert best_lag(late, ref, 15)[0] == -7
    al = align([71, 74], [ref, late], max_lag=15)
    assert al.lags == [0, 7] and al.offsets == [7, 0] and al.frames == 64
    flat = np.zeros(40)
    assert best_lag(flat, flat, 5)[0] == 0  # nothing moves: stay start-aligned
    assert align([30, 28, 33], None, 0).frames == 28


def test_alignment_reference_is_a_preferred_camera_when_present():
    assert reference_view([1, 2, 3], (2, 3)) == 1  # NTU cross-view: camera 2, never the test camera 1
    assert reference_view([1, 3], (2, 3)) == 1  # camera 2 failed: camera 3 is the reference
    assert reference_view([1], (2, 3)) == 0 and reference_view([4, 5], ()) == 0  # else the first view
    al = align([30, 36], [np.zeros(29), np.zeros(35)], max_lag=0, reference=1)
    assert (al.offsets, al.frames) == ([0, 0], 30)


def test_group_timeline_is_checked_as_it_is_read():
    def meta(**timeline):
        return GroupMeta(key="K", dataset="t", label=0, subject=1, cameras=[1, 2], fps=30.0, size=[8, 8],
                         partition="p", **timeline)

    assert meta(frames=10, view_frames={"1": 12, "2": 10}, offsets={"1": 2, "2": 0}).span([1]) == ({1: 0}, 12)
    for bad, why in [({"frames": 10, "view_frames": {"1": 12}, "offsets": {"1": 2, "2": 0}}, "view_frames"),
                     ({"frames": 10, "view_frames": {"1": 12, "2": 11}, "offsets": {"1": 2, "2": 1}}, "offset 0"),
                     ({"frames": 9, "view_frames": {"1": 12, "2": 10}, "offsets": {"1": 2, "2": 0}}, "span of 9")]:
        with pytest.raises(ContractError, match=why):
            meta(**bad)
    with pytest.raises(ContractError, match=r"missing fields \['view_frames', 'offsets'\]"):
        GroupMeta.from_json({"key": "K", "dataset": "t", "label": 0, "subject": 1, "cameras": [1], "fps": 30.0,
                             "frames": 3, "size": [8, 8], "partition": "p"})


def test_format_1_directories_are_refused_with_what_to_do(tmp_path):
    index = DatasetIndex(dataset="synth", classes=["a"], fps=30.0, short_side=72, cell=8, motion=[], shards=[])
    obj = json.loads(index.to_json())
    (tmp_path / INDEX_FILE).write_text(json.dumps({**obj, "version": 1}))
    with pytest.raises(ContractError, match="format version 1 unsupported.*preprocess` again into a new --out"):
        read_index(tmp_path)
    (tmp_path / STATE_DIR).mkdir()
    (tmp_path / STATE_DIR / "run.json").write_text("{}")  # a run record of format 1 (before the key existed)
    (tmp_path / "m.csv").write_text("group,camera,path,label,subject\ng,1,a.mp4,wave,1\n")
    with pytest.raises(PreprocessError, match="holds shards of format 1.*new --out"):
        run("manifest", tmp_path / "m.csv", tmp_path, workers=1)


def test_stored_sizes():
    assert stored_size([0, 0, 1920, 1080], 160) == (284, 160)
    assert stored_size(center_box(1920, 1080), 160) == (160, 160)
    assert center_box(1920, 1080) == [420, 0, 1500, 1080]


def _write(path, samples):
    w = ShardWriter(path)
    for key, n in samples:
        w.add_sample([Member(f"{key}.json", b"{}")] + [Member(f"{key}.c001.f{t:04d}.jpg", bytes([t]) * 100)
                                                       for t in range(n)])
    size, digest = w.close()
    assert not path.exists()  # invisible until committed
    w.commit()
    return size, digest


def test_shards_are_byte_stable_and_gnu_tar_lists_them(tmp_path):
    a = _write(tmp_path / "a.tar", [("K1", 3), ("K2", 2)])
    b = _write(tmp_path / "b.tar", [("K1", 3), ("K2", 2)])
    assert a == b and (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    listing = subprocess.run(["tar", "tvf", str(tmp_path / "a.tar")], capture_output=True, text=True,
                             check=True).stdout.splitlines()
    assert len(listing) == 7 and all("2000-01-01" in line and "0/0" in line for line in listing)
    assert FIXED_MTIME == 946684800
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize("table", [[0, 0], [1, 2], [1, 0, 2]])
def test_an_index_with_a_bad_class_swap_table_is_refused_naming_the_file(tmp_path, table):
    index = DatasetIndex(dataset="t", classes=["right", "left"], fps=30.0, short_side=32, cell=8, motion=[],
                         shards=[], flip_classes=[1, 0])
    obj = json.loads(index.to_json())
    assert DatasetIndex.from_dict(obj).flip_classes == [1, 0]
    with pytest.raises(ContractError, match=r"index.json: malformed index \(flip_classes .* not a class-swap table"):
        DatasetIndex.from_dict({**obj, "flip_classes": table}, where=str(tmp_path / "index.json"))


def test_motion_subgroup_is_replaced_atomically_and_readable_with_zarr(tmp_path):
    rows = np.arange(3 * 4 * 5, dtype=np.float16).reshape(3, 4, 5)
    attrs = {"rows": {"K": {"1": 0}}, "frames": {"K": 3}, "grid": {"K": [4, 5]}, "cell": 8}
    write_shard_motion(tmp_path, "P001-000000", {"framediff": rows * 0}, attrs)
    write_shard_motion(tmp_path, "P001-000000", {"framediff": rows}, attrs)  # a re-run's rewrite
    plain = zarr.open(str(tmp_path / "motion.zarr"), mode="r")
    np.testing.assert_array_equal(plain["P001-000000/framediff"][:], rows)
    index = DatasetIndex(dataset="t", classes=["a"], fps=30.0, short_side=32, cell=8, motion=["framediff"], shards=[])
    meta = GroupMeta(key="K", dataset="t", label=0, subject=1, cameras=[1], fps=30.0, frames=3, size=[40, 32],
                     partition="P001", view_frames={"1": 3}, offsets={"1": 0}, motion_rows={"1": 0})
    group = GroupSample(meta=meta, shard="P001-000000.tar", members={})
    got, first = MotionRows(tmp_path, "framediff", index).view(group, 1, np.array([2, 0]))
    np.testing.assert_array_equal(got[np.array([2, 0]) - first], rows[[2, 0]])
    with pytest.raises(ContractError, match="no motion rows for camera 2"):
        MotionRows(tmp_path, "framediff", index).view(group, 2, np.array([0]))
    assert not list((tmp_path / ".tmp").glob("*"))


def test_shard_size_parsing():
    assert parse_bytes("512MB") == 512_000_000 and parse_bytes("1GiB") == 2**30 and parse_bytes("4096") == 4096
    with pytest.raises(Exception, match="not a size"):
        parse_bytes("lots")


@pytest.mark.parametrize("backend", ["ffmpeg", "opencv"])
def test_odd_crop_boxes_are_cut_exactly(tmp_path, backend):
    """A box with odd corners (person crops) is cut where it says, even from a 4:2:0 H.264 source."""
    w, h = 64, 48
    grey = (np.arange(w)[None, :] * 3 + np.arange(h)[:, None]).astype(np.uint8)
    path = tmp_path / "ramp.avi"
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "gray", "-s", f"{w}x{h}",
                    "-r", "30", "-i", "pipe:", "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv420p", str(path)],
                   input=np.stack([grey] * 3).tobytes(), check=True)
    box = (7, 5, 28, 26)
    frames = decode(path, probe(path), DecodeRequest(box=box, size=(21, 21), fps=30.0), backend)
    # one pixel of shift would be 3 grey levels (columns) or 1 (rows) everywhere
    assert np.abs(frames[0, ..., 1].astype(int) - grey[5:26, 7:28]).mean() < 1.0


def _written_group(key: str, failures: list[dict]):
    meta = GroupMeta(key=key, dataset="t", label=0, subject=1, cameras=[1, 2], fps=30.0, frames=2, size=[16, 16],
                     partition="P001-S1", view_frames={"1": 2, "2": 2}, offsets={"1": 0, "2": 0})
    frames = [(frame_ext(c, t), bytes([t]) * 3000) for c in (1, 2) for t in range(2)]
    motion = {"framediff": [np.zeros((2, 2, 2), np.float16)] * 2}
    return GroupResult(key=key, partition="P001-S1", meta=meta, frames=frames, motion=motion, failures=failures)


def test_a_dropped_view_is_committed_with_the_shard_of_its_group(tmp_path):
    """The group that fills a shard opens the next one; its failure records must go there too, or a
    kill before that shard finishes would leave the group recorded as failed and skipped on resume."""
    (tmp_path / STATE_DIR).mkdir()
    records: dict = {}
    sink = _ShardSink(tmp_path, Options(shard_size=15_000), {}, records)
    sink.add(_written_group("A", []))
    dropped = {"file": "B.c003.avi", "group": "B", "reason": "empty file (0 bytes)"}
    sink.add(_written_group("B", [dropped]))  # does not fit: shard 0 is finished, B opens shard 1
    assert list(records) == ["P001-S1-000000.tar"] and records["P001-S1-000000.tar"].failures == []
    assert done_keys(records) == {"A"}  # killed now, a re-run would process B again
    sink.close()
    assert records["P001-S1-000001.tar"].failures == [dropped] and records["P001-S1-000001.tar"].entry.keys == ["B"]
    assert done_keys(_recover(tmp_path, {"P001-S1"})) == {"A", "B"}


def _part(folder, part: int, shard: str | None, fps: float):
    """A part's index as ``--part i --parts 2`` writes it, with its shard file (if any)."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    if shard:
        (folder / shard).write_bytes(b"tar bytes")
        shards.append(ShardEntry(name=shard, partition=shard[:-11], samples=1, bytes=9, sha256="0" * 64,
                                 subjects=[part + 1], setups=[1], cameras=[1, 2], camera_sets={"1,2": 1},
                                 keys=[f"K{part}"]))
    ix = DatasetIndex(dataset="synth", classes=["wave"], fps=fps, short_side=72, cell=8, motion=["framediff"],
                      shards=shards, args={"part": part, "parts": 2})
    (folder / f"index.part-{part:03d}-of-002.json").write_text(ix.to_json())


def test_merge_takes_the_frame_rate_of_a_part_that_holds_shards(tmp_path):
    _part(tmp_path, 0, None, 0.0)  # every group of part 0 failed: no shard, no frame rate
    _part(tmp_path, 1, "P002-S1-000000.tar", 30.0)
    assert merge([tmp_path]).fps == 30.0


def test_a_refused_merge_moves_nothing(tmp_path):
    _part(tmp_path / "a", 0, "P001-S1-000000.tar", 30.0)
    _part(tmp_path / "b", 1, "P002-S1-000000.tar", 30.0)
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "P002-S1-000000.tar").write_bytes(b"another run")
    with pytest.raises(MergeError, match="already exists"):
        merge([tmp_path / "a", tmp_path / "b"], tmp_path / "dest")
    assert (tmp_path / "a" / "P001-S1-000000.tar").is_file() and not (tmp_path / "dest" / "P001-S1-000000.tar").exists()
