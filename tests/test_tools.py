"""``mv2mae shards ls|stats|show|verify`` on real shards, through the command line."""

import json
import math
import shutil

import cv2
import pytest
import torch
from fixtures_data import session_synth_data
from PIL import Image
from typer.testing import CliRunner

from mv2mae.cli import app
from mv2mae.shards.schema import read_index
from mv2mae.tools.shardio import iter_metas, read_group

runner = CliRunner()


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    return session_synth_data(tmp_path_factory)


def invoke(*args):
    return runner.invoke(app, ["shards", *map(str, args)])


def test_ls_and_stats_report_what_the_index_holds(synth_data, tmp_path):
    index = read_index(synth_data)
    res = invoke("ls", synth_data, "--json", tmp_path / "ls.json")
    assert res.exit_code == 0, res.output
    assert all(s.name in res.output for s in index.shards)
    listed = json.loads((tmp_path / "ls.json").read_text())
    assert listed["groups"] == index.groups and listed["motion_bytes"] > 0
    res = invoke("stats", synth_data, "--json", tmp_path / "stats.json")
    assert res.exit_code == 0, res.output
    st = json.loads((tmp_path / "stats.json").read_text())
    assert st["groups"] == index.groups and st["views"] == 3 * index.groups
    assert sum(row["1"] for row in st["class_by_camera"].values()) == index.groups
    assert set(st["class_by_camera"]) == set(index.classes)
    assert sum(st["frame_histogram"]["counts"]) == index.groups
    assert st["motion"]["framediff"]["max"] > st["motion"]["framediff"]["p50"] >= 0
    assert st["failures"]["total"] == 0


def test_ls_counts_the_groups_and_videos_of_each_split_of_a_protocol(synth_data, tmp_path):
    """What users compare with the official counts (NTU-60 xsub: 40,320 / 16,560 videos): each split's
    groups, and its videos (a group seen by each of the split's cameras), as the groups' metadata has them."""
    index = read_index(synth_data)
    metas = [m for s in index.shards for m in iter_metas(synth_data / s.name)]
    for protocol, is_train, cameras in (("synth_xsub", lambda m: m.subject % 2 == 1, {"train": {1, 2, 3}, "test": {1, 2, 3}}),
                                        ("synth_xview", lambda m: True, {"train": {2, 3}, "test": {1}})):
        res = invoke("ls", synth_data, "--protocol", protocol, "--json", tmp_path / "ls.json")
        assert res.exit_code == 0, res.output
        splits = json.loads((tmp_path / "ls.json").read_text())["protocol"]["splits"]
        for split, members in (("train", [m for m in metas if is_train(m)]),
                               ("test", [m for m in metas if protocol == "synth_xview" or not is_train(m)])):
            assert splits[split]["groups"] == len(members), (protocol, split)
            assert splits[split]["videos"] == sum(len(cameras[split] & set(m.cameras)) for m in members), (protocol, split)
    # synth_xview trains on both subjects: one is held out for validation; synth_xsub has one train subject
    assert splits["val"]["groups"] + splits["train without validation"]["groups"] == splits["train"]["groups"]
    res = invoke("ls", synth_data, "--protocol", "synth_xsub")
    assert "no validation split" in res.output


def test_show_writes_a_montage_and_an_animation(synth_data, tmp_path):
    index = read_index(synth_data)
    key = index.shards[-1].keys[0]
    res = invoke("show", synth_data, key, "--out", tmp_path / "m.png", "--columns", "6")
    assert res.exit_code == 0, res.output
    img = cv2.imread(str(tmp_path / "m.png"))
    assert img is not None and img.shape[1] > img.shape[0] > 200  # 3 camera rows × 6 time columns
    res = invoke("show", synth_data, key, "--out", tmp_path / "m.gif")
    assert res.exit_code == 0, res.output
    with Image.open(tmp_path / "m.gif") as gif:
        assert gif.n_frames == read_group(synth_data, index, key).meta.frames
    res = invoke("show", synth_data, "S999P999R999A999", "--out", tmp_path / "x.png")
    assert res.exit_code == 1 and "S999P999R999A999" in res.output


def test_verify_passes_clean_data_and_names_a_corrupted_shard(synth_data, tmp_path):
    res = invoke("verify", synth_data)
    assert res.exit_code == 0, res.output
    bad = tmp_path / "bad"
    shutil.copytree(synth_data, bad)
    victim = read_index(bad).shards[0].name
    raw = bytearray((bad / victim).read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 64] = bytes(b ^ 0xFF for b in raw[middle:middle + 64])
    (bad / victim).write_bytes(bytes(raw))
    res = invoke("verify", bad)
    assert res.exit_code == 1
    assert f"{victim}: sha256 does not match" in res.output
    assert all(s.name not in res.output for s in read_index(bad).shards[1:])  # only the victim is blamed


def test_verify_finds_a_missing_motion_subgroup(synth_data, tmp_path):
    bad = tmp_path / "nomotion"
    shutil.copytree(synth_data, bad)
    victim = read_index(bad).shards[-1].name
    shutil.rmtree(bad / "motion.zarr" / victim[:-4])
    res = invoke("verify", bad, "--no-decode")
    assert res.exit_code == 1 and f"{victim}: motion.zarr has no sub-group" in res.output


def test_verify_checks_the_camera_sets_the_index_counts(synth_data, tmp_path):
    """Protocols count multi-view groups from ``camera_sets`` without reading shards: verify holds the index
    to what the shards contain."""
    bad = tmp_path / "sets"
    shutil.copytree(synth_data, bad)
    index = json.loads((bad / "index.json").read_text())
    victim = index["shards"][0]
    victim["camera_sets"] = {"1": victim["samples"]}
    (bad / "index.json").write_text(json.dumps(index))
    res = invoke("verify", bad, "--no-decode")
    assert res.exit_code == 1 and f"{victim['name']}: groups by cameras {{'1,2,3'" in res.output


def test_bench_loader_runs_end_to_end_and_writes_its_figures(tmp_path):
    out = tmp_path / "loader.json"
    res = runner.invoke(app, ["bench", "loader", "--json", str(out), "--work", str(tmp_path / "work"),
                              "--raw-size", "224x160", "--groups", "1", "--seconds", "1", "--workers", "1",
                              "--gpu-samples-per-s", "500"])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    loaders = r["loaders"]
    assert set(loaders) == {"cpu", "cpu_repeats", "device"}
    for m in [*loaders.values(), r["raw_baseline"]]:
        assert m["samples"] > 0 and m["samples_per_cpu_s"] > 0 and m["worker_rss_mib"] > 0
        assert m["worker_cpu_ms_per_sample"] == pytest.approx(1e3 / m["samples_per_cpu_s"], rel=0.02)
    assert r["machine"]["decode_device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert r["device_decode_cpu"]["ms_per_sample"] > 0
    assert r["data"]["groups"] == 1 and r["settings"]["views"] == 2
    needed = r["gpu_workers"]["needed"]
    assert needed["cpu"] == math.ceil(1.25 * 500 / loaders["cpu"]["samples_per_cpu_s"])
    assert r["device_vs_cpu_per_worker_cpu_s"] == round(loaders["device"]["samples_per_cpu_s"] /
                                                       loaders["cpu"]["samples_per_cpu_s"], 2)
    assert "decode_on=device" in res.output and "PASS" in res.output
