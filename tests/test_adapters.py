"""Each adapter on a synthetic tree shaped like the real layout (names, nesting, label and split files).

Trees whose frames matter are made of real videos/images (ffmpeg's test source) and go through the whole
pipeline; the others only need the file names, which is all an adapter reads.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from layout_helpers import pku_tree, video
from shard_helpers import group_metas

from mv2mae.preprocess.adapters import AdapterError, AdapterOptions, scan
from mv2mae.preprocess.adapters.ntu import read_skeleton_box
from mv2mae.preprocess.crop import full_box, person_box
from mv2mae.preprocess.decode import DecodeRequest, decode, probe
from mv2mae.preprocess.pipeline import run
from mv2mae.shards.protocols import select
from mv2mae.shards.schema import read_index


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


# --- NTU RGB+D -------------------------------------------------------------------------------------

SKELETON = """2
1
72057594037931101 0 1 1 1 1 0 0.1 0.2 2
2
0.1 0.2 3.0 250.0 200.0 {x0} {y0} 0 0 0 0 2
0.1 0.2 3.0 250.0 200.0 {x1} {y1} 0 0 0 0 2
0
"""


def test_ntu_naming_classes_partitions_and_skeletons(tmp_path):
    for part in ("nturgb+d_rgb_s001", "nturgb+d_rgb_s002"):  # the release is split over several archives
        for c in (1, 2, 3):
            _touch(tmp_path / part / "nturgb+d_rgb" / f"S{part[-3:]}C00{c}P007R002A061_rgb.avi")
            _touch(tmp_path / part / "nturgb+d_rgb" / f"S{part[-3:]}C00{c}P007R002A005_rgb.avi")
    _touch(tmp_path / "nturgb+d_rgb_s001" / "nturgb+d_rgb" / "S001C001P008R001A001_rgb.avi")  # lone camera
    ntu60 = scan("ntu60", tmp_path)
    ntu120 = scan("ntu120", tmp_path)
    assert len(ntu60.classes) == 60 and len(ntu120.classes) == 120
    assert ntu120.classes[0] == "drink water" and ntu120.classes[60] == "put on headphone"
    # P007-S0 first; the lone camera's group is kept (a valid finetuning / test video), its absences recorded
    assert [g.key for g in ntu60.groups] == ["S002P007R002A005", "S001P007R002A005", "S001P008R001A001"]
    assert {g.partition for g in ntu120.groups} == {"P007-S1", "P007-S0", "P008-S1"}
    assert sum("outside the 60 classes" in f["reason"] for f in ntu60.failures) == 6
    assert [f["reason"][:16] for f in ntu120.failures if f.get("group") == "S001P008R001A001"] == [
        "camera 2 missing", "camera 3 missing"]
    assert ntu60.layout == {"1": {"azimuth": 0.0}, "2": {"azimuth": -45.0}, "3": {"azimuth": 45.0}}
    g = next(g for g in ntu120.groups if g.key == "S001P007R002A061")
    assert g.label == 60 and g.subject == 7 and g.setup == 1 and g.replication == 2
    assert [v.camera for v in g.views] == [1, 2, 3]


def test_ntu_skeleton_box_and_drop_missing(tmp_path):
    for c in (1, 2, 3):
        _touch(tmp_path / "nturgb+d_rgb" / f"S001C00{c}P001R001A001_rgb.avi")
    sk = tmp_path / "nturgb+d_skeletons"
    sk.mkdir()
    (sk / "S001C001P001R001A001.skeleton").write_text(SKELETON.format(x0=900, y0=300, x1=1000, y1=700))
    (sk / "S001C002P001R001A001.skeleton").write_text(SKELETON.format(x0=500, y0=310, x1=650, y1=690))
    assert read_skeleton_box(sk / "S001C001P001R001A001.skeleton") == (900.0, 300.0, 1000.0, 700.0)
    kept = scan("ntu60", tmp_path, AdapterOptions(drop_missing_skeletons=True))
    assert [v.camera for v in kept.groups[0].views] == [1, 2]
    assert "skeleton file missing" in kept.failures[0]["reason"]
    every = scan("ntu60", tmp_path, AdapterOptions(need_person_crop=True))
    assert [v.skeleton is not None for v in every.groups[0].views] == [True, True, False]
    (sk / "S001C002P001R001A001.skeleton").write_text("1\n1\nbody\n")
    with pytest.raises(ValueError, match="malformed skeleton"):
        read_skeleton_box(sk / "S001C002P001R001A001.skeleton")


def test_person_box_is_a_square_inside_the_frame():
    x0, y0, x1, y1 = person_box(1920, 1080, (900.0, 300.0, 1000.0, 700.0), 0.15)
    assert x1 - x0 == y1 - y0 == 520 and (x0 + x1) / 2 == 950 and (y0 + y1) / 2 == 500
    x0, y0, x1, y1 = person_box(1920, 1080, (1800.0, 0.0, 1919.0, 1079.0), 0.15)
    assert (x1 - x0, y1 - y0) == (1080, 1080) and x1 == 1920 and y0 == 0


# --- N-UCLA ----------------------------------------------------------------------------------------

def _image_folder(folder: Path, frames: int, seed: int) -> None:
    """N-UCLA's per-frame layout: frame_NNN_tc_TTTTTT_rgb.jpg plus depth/skeleton distractors."""
    src = video(folder.parent / f"src{seed}.avi", frames, seed=seed)
    info = probe(src)
    rgb = decode(src, info, DecodeRequest(box=tuple(full_box(64, 48)), size=(64, 48), fps=30))
    folder.mkdir(parents=True)
    for i, frame in enumerate(rgb):
        cv2.imwrite(str(folder / f"frame_{i:03d}_tc_{1000 + 33 * i:06d}_rgb.jpg"), frame[..., ::-1])
        (folder / f"frame_{i:03d}_tc_{1000 + 33 * i:06d}_depth.png").write_bytes(b"")
    (folder / "fileList.txt").write_text("")
    src.unlink()


def test_nucla_image_folders_end_to_end(tmp_path):
    root = tmp_path / "multiview_action"
    for view in (1, 2, 3):
        _image_folder(root / f"view_{view}" / "a08_s03_e01", 20 + view, seed=view)
    _image_folder(root / "view_1" / "a01_s01_e00", 20, seed=4)  # only one view: kept, its absences recorded
    result = scan("nucla", tmp_path)
    assert [g.key for g in result.groups] == ["a01_s01_e00", "a08_s03_e01"]
    g = result.groups[1]
    assert g.label == 6 and g.label_name == "donning" and g.partition == "s03" and g.subject == 3
    assert [f["file"] for f in result.failures] == ["a01_s01_e00: view 2", "a01_s01_e00: view 3"]
    out = tmp_path / "out"
    summary = run("nucla", tmp_path, out, size=48, workers=1, image_fps=30.0)
    assert (summary.written, summary.single_camera, summary.failed) == (2, 1, 0)
    metas = group_metas(out)
    meta = metas["a08_s03_e01"]
    assert meta.cameras == [1, 2, 3] and 20 <= meta.frames <= 21 and meta.size == [64, 48]
    assert meta.view_frames == {"1": 21, "2": 22, "3": 23}  # whole views, whatever the common span
    assert meta.source["1"] == "multiview_action/view_1/a08_s03_e01"
    lone = metas["a01_s01_e00"]  # a one-camera group is a whole, usable video
    assert (lone.cameras, lone.frames, lone.view_frames, lone.offsets) == ([1], 20, {"1": 20}, {"1": 0})


def test_nucla_video_layout(tmp_path):
    for v in (1, 2, 3):
        _touch(tmp_path / "a12" / f"v0{v}_s10_e04.avi")
    _touch(tmp_path / "a07" / "v01_s01_e00.avi")  # a07 is not an N-UCLA class
    _touch(tmp_path / "a07" / "v02_s01_e00.avi")
    result = scan("nucla", tmp_path)
    assert [(g.key, g.label, g.partition) for g in result.groups] == [("a12_s10_e04", 9, "s10")]
    assert sum("not one of the 10" in f["reason"] for f in result.failures) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError, match="no N-UCLA data"):
        scan("nucla", tmp_path / "empty")


# --- PKU-MMD Phase II -----------------------------------------------------------------------------

def test_pkummd2_instances_splits_end_to_end(tmp_path):
    pku_tree(tmp_path)
    result = scan("pkummd2", tmp_path)
    assert result.classes == ["action 03", "action 12"]
    # sorted by (partition, key); A03N02 is in neither official list: in no split, not in "test"
    assert [(g.key, g.partition, g.label) for g in result.groups] == [
        ("A02N03_i000", "xsub_test", 1), ("A02N03_i001", "xsub_test", 0),
        ("A01N01_i000", "xsub_train", 1), ("A01N01_i001", "xsub_train", 0)]
    assert result.unlisted == 2
    assert [f["reason"] for f in result.failures] == [
        "sequence A03N02 is in neither list of cross_subject_v2.txt: its 2 instance(s) are left out of every split"]
    views = {v.camera: (v.start, v.end) for v in result.groups[0].views}
    assert views == {1: (5, 25), 2: (5, 25), 3: (6, 26)}
    assert result.meta["splits"]["cross_view"] == {"train_cameras": [1, 3], "test_cameras": [2]}
    out = tmp_path / "out"
    summary = run("pkummd2", tmp_path, out, size=48, workers=1, max_lag=0)
    assert (summary.written, summary.unlisted) == (4, 2)
    meta = group_metas(out)["A02N03_i001"]
    assert meta.frames == 20 and meta.source_start == {"1": 30, "2": 30, "3": 31}
    assert meta.extra["sequence"] == "A02N03" and meta.extra["label_id"] == 3
    index = read_index(out)
    assert index.args["meta"]["splits"]["cross_subject"]["test_partitions"] == ["xsub_test"]
    # the protocol reads the split the adapter recorded: whole shards, one per official side
    test_keys = select(index, "pkummd2_xsub", "test").keys
    train_keys = select(index, "pkummd2_xsub", "train").keys
    assert sorted(test_keys) == ["A02N03_i000", "A02N03_i001"]
    assert sorted(train_keys) == ["A01N01_i000", "A01N01_i001"]
    (tmp_path / "Split" / "cross_subject_v2.txt").write_text(
        "Training videos: \nA01N01-L, A02N03-M\nValidation videos: \nA02N03-L\n")
    with pytest.raises(AdapterError, match="sequence A02N03 has views in both splits"):
        scan("pkummd2", tmp_path)


def test_pkummd2_cut_starts_on_the_labelled_frame(tmp_path):
    """The first stored frame of an instance is source frame ``start`` (frame-exact cutting)."""
    pku_tree(tmp_path)
    out = tmp_path / "out"
    run("pkummd2", tmp_path, out, size=48, workers=1, limit=2, max_lag=0, jpeg_quality=100)
    meta = group_metas(out)["A02N03_i001"]
    cap = cv2.VideoCapture(str(tmp_path / "RGB_VIDEO" / "A02N03-L.avi"))
    frames = [cap.read()[1] for _ in range(32)]
    with tarfile.open(next(out.glob("*.tar"))) as tf:
        stored = cv2.imdecode(np.frombuffer(tf.extractfile("A02N03_i001.c001.f0000.jpg").read(), np.uint8), 1)
    errors = [np.abs(cv2.resize(f, (64, 48), interpolation=cv2.INTER_AREA).astype(int) - stored).mean()
              for f in frames]
    assert int(np.argmin(errors)) == meta.source_start["1"] == 30


# --- ETRI-Activity3D -------------------------------------------------------------------------------

def test_etri_flat_and_nested(tmp_path):
    for c in range(1, 9):
        _touch(tmp_path / "P001-P010" / "P003" / f"A017_P003_G002_C{c:03d}.mp4")
        _touch(tmp_path / f"A055_P101_G001_C{c:03d}.mp4")
    result = scan("etri", tmp_path)
    assert [(g.key, g.partition, g.label, len(g.views)) for g in result.groups] == [
        ("A017_P003_G002", "P003", 16, 8), ("A055_P101_G001", "P101", 54, 8)]
    assert result.groups[0].extra == {"group_id": 2}


def test_missing_views_are_recorded_not_silent(tmp_path):
    for c in range(1, 9):
        _touch(tmp_path / "etri" / f"A017_P003_G002_C{c:03d}.mp4")
        if c != 5:
            _touch(tmp_path / "etri" / f"A018_P003_G002_C{c:03d}.mp4")
    etri = scan("etri", tmp_path / "etri")
    assert [len(g.views) for g in etri.groups] == [8, 7]
    assert [(Path(f["file"]).name, f["group"]) for f in etri.failures] == [("A018_P003_G002_C005.mp4",
                                                                             "A018_P003_G002")]
    for v in (1, 2, 3):
        _touch(tmp_path / "nucla" / "a12" / f"v0{v}_s10_e04.avi")
    _touch(tmp_path / "nucla" / "a12" / "v01_s10_e05.avi")
    _touch(tmp_path / "nucla" / "a12" / "v03_s10_e05.avi")
    nucla = scan("nucla", tmp_path / "nucla")
    assert [f["file"] for f in nucla.failures] == ["a12_s10_e05: view 2"]
    for seq, views in (("A01N01", "LMR"), ("A02N01", "LR")):  # PKU-MMD: view M lacks a few sequences
        for view in views:
            _touch(tmp_path / "pku" / "RGB_VIDEO" / f"{seq}-{view}.avi")
            (tmp_path / "pku" / f"{seq}-{view}.txt").write_text("3,5,24,1\n")
    pku = scan("pkummd2", tmp_path / "pku")
    assert len(pku.groups) == 2 and [Path(f["file"]).name for f in pku.failures] == ["A02N01-M.avi"]


# --- generic manifest ------------------------------------------------------------------------------

def test_manifest_relative_paths_names_and_ranges(tmp_path):
    for i, cam in enumerate(("front", "side", "top")):
        video(tmp_path / "clips" / f"take1_{cam}.mp4", 40, seed=i)
        video(tmp_path / "clips" / f"take2_{cam}.mp4", 30, seed=i)
    csv = tmp_path / "manifest.csv"
    rows = ["group,camera,path,label,subject,start,end"]
    rows += [f"take1,{cam},clips/take1_{cam}.mp4,wave,alice,10,34" for cam in ("front", "side", "top")]
    rows += [f"take 2,{cam},clips/take2_{cam}.mp4,clap,bob,," for cam in ("front", "side")]
    csv.write_text("\n".join(rows) + "\n")
    result = scan("manifest", csv)
    assert result.classes == ["clap", "wave"]
    assert [(g.key, g.label, g.subject, g.partition) for g in result.groups] == [
        ("take1", 1, 1, "P001"), ("take_2", 0, 2, "P002")]
    assert result.meta["cameras"] == {"front": 1, "side": 2, "top": 3}
    out = tmp_path / "out"
    assert run("manifest", csv, out, size=48, workers=1, max_lag=0).written == 2
    metas = group_metas(out)
    assert metas["take1"].frames == 24 and metas["take1"].source["2"] == "clips/take1_side.mp4"
    assert metas["take_2"].frames == 30 and metas["take_2"].cameras == [1, 2]


def test_manifest_angle_column_places_the_cameras(tmp_path):
    csv = tmp_path / "m.csv"
    rows = ["group,camera,path,label,subject,angle", "g1,front,a.mp4,wave,1,0", "g1,left,b.mp4,wave,1,-60",
            "g2,front,c.mp4,clap,2,", "g2,top,d.mp4,clap,2,"]
    csv.write_text("\n".join(rows) + "\n")
    assert scan("manifest", csv).layout == {"1": {"azimuth": 0.0}, "2": {"azimuth": -60.0}}  # top: no angle
    csv.write_text("\n".join(rows[:2] + ["g2,front,c.mp4,clap,2,10"]) + "\n")
    with pytest.raises(AdapterError, match="m.csv:3: camera 'front' at angle 10, but line 2 puts it at 0"):
        scan("manifest", csv)


def test_manifest_errors_name_the_line(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("group,camera,path,label\n")
    with pytest.raises(AdapterError, match="lacks \\['subject'\\]"):
        scan("manifest", csv)
    csv.write_text("group,camera,path,label,subject\ng,1,a.mp4,,1\n")
    with pytest.raises(AdapterError, match="m.csv:2: empty \\['label'\\]"):
        scan("manifest", csv)
    csv.write_text("group,camera,path,label,subject,start,end\ng,1,a.mp4,wave,1,40,40\n")
    with pytest.raises(AdapterError, match="m.csv:2: end 40 must be after start 40"):
        scan("manifest", csv)
    with pytest.raises(AdapterError, match="unknown dataset"):
        scan("kinetics", csv)
