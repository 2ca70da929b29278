"""Untrusted input cannot crash, fool or escape (issue 22): names read from files stay inside their folder
in every command, sizes are bounded before anything is allocated, one contract check serves ``verify`` and
the loaders, and ``eval``/``probe``/``predict`` refuse what cannot give a true answer. Real shards, real
JPEG/PNG/WebP bytes, real Zarr stores, real checkpoints."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import zarr
from fixtures_data import SHORT_SIDE, session_synth_data
from train_helpers import TINY_MODEL, tiny_config
from typer.testing import CliRunner

from mv2mae.cli import app
from mv2mae.config import load_config
from mv2mae.data.config import ClipGeometry, DataConfig
from mv2mae.data.datasets import EvalClips, PretrainClips
from mv2mae.data.loaders import build_eval_loader
from mv2mae.data.splits import ShardSplit
from mv2mae.eval.metrics import aggregate
from mv2mae.model.checkpoint import save_model_state
from mv2mae.model.classifier import VideoClassifier
from mv2mae.preprocess.adapters import AdapterError, scan
from mv2mae.preprocess.decode import (
    BACKENDS,
    DecodeError,
    DecodeRequest,
    VideoInfo,
    conform_views,
    decode,
    ffmpeg_exe,
    probe,
)
from mv2mae.preprocess.pipeline import PreprocessError, run
from mv2mae.shards.motion import write_shard_motion
from mv2mae.shards.reader import BadSampleLimit
from mv2mae.shards.schema import ContractError, read_index
from mv2mae.tools.verify import verify

torch.set_num_threads(2)


@pytest.fixture()
def data(tmp_path_factory, tmp_path) -> Path:
    """A private copy of the session's synthetic dataset, to damage."""
    root = tmp_path / "data"
    shutil.copytree(session_synth_data(tmp_path_factory), root)
    return root


def _cli(*args, code: int = 1) -> str:
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == code, (args, res.output, res.exception)
    assert "Traceback" not in res.output
    return res.output


def _edit_index(root: Path, edit) -> None:
    index = json.loads((root / "index.json").read_text())
    edit(index)
    (root / "index.json").write_text(json.dumps(index))


def _eval_config(root: Path, **kwargs) -> DataConfig:
    return DataConfig(root=str(root), protocol="synth_xview", stride=2, workers=0, eval_clips=1, eval_crops=1,
                      **kwargs)


def _eval_pass(root: Path) -> tuple[set[str], dict[str, str]]:
    """The keys an exact pass over the test split yields, and the bad groups it skipped (where -> why)."""
    cfg = _eval_config(root)
    dataset = EvalClips(ShardSplit.open(root, cfg.protocol, "test"), ClipGeometry.of(tiny_config("finetune").model, cfg),
                        cfg)
    return {s["key"] for s in dataset}, dataset.bad.seen


def _rewrite_members(shard: Path, replace: dict[str, bytes]) -> None:
    with tarfile.open(shard) as tf:
        members = [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tf:
        for member, content in members:
            content = replace.get(member, content)
            info = tarfile.TarInfo(member)
            info.size = len(content)
            tf.addfile(info, io.BytesIO(content))


def _member(shard: Path, name: str) -> bytes:
    with tarfile.open(shard) as tf:
        return tf.extractfile(name).read()


# --- 1. names read from a file stay inside their folder, in every command ---------------------------

def test_a_shard_name_that_leaves_the_folder_is_refused_by_every_command(data, tmp_path):
    first = read_index(data).shards[0].name
    victim = tmp_path / "victim.tar"
    shutil.copy(data / first, victim)
    _edit_index(data, lambda ix: ix["shards"][0].update(name="../victim.tar"))
    for command in (["shards", "ls", data], ["shards", "stats", data], ["shards", "verify", data],
                    ["shards", "show", data, "--out", tmp_path / "m.png"],
                    ["shards", "merge", data, "--out", tmp_path / "merged"]):
        assert "a shard name is a plain" in _cli(*command), command
    with pytest.raises(ContractError, match="a shard name is a plain"):
        ShardSplit.open(data, "synth_xview", "test")
    assert victim.is_file() and not (tmp_path / "merged" / "victim.tar").exists()


def test_a_link_out_of_the_folder_is_refused_by_every_command(data, tmp_path):
    index = read_index(data)
    first, key = index.shards[0].name, index.shards[0].keys[0]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(data / first, outside / first)  # the same bytes, reached through a link out of the folder
    (data / first).symlink_to(outside / first)
    _, problems = verify(data, decode=False)
    assert f"{data}: shard '{first}' leads out of the folder (a link to {outside / first})" in problems
    assert "leads out of the folder" in _cli("shards", "stats", data)
    assert "leads out of the folder" in _cli("shards", "show", data, key, "--out", tmp_path / "m.png")
    with pytest.raises(ContractError, match="leads out of the folder"):
        _eval_pass(data)  # the loader opens no shard it cannot confine
    shutil.move(data / "motion.zarr", outside / "motion.zarr")  # the cache too
    (data / "motion.zarr").symlink_to(outside / "motion.zarr")
    assert "motion store 'motion.zarr' leads out of the folder" in _cli("shards", "ls", data)


def test_merge_moves_nothing_from_outside_the_folders_it_merges(data, tmp_path):
    """A part's ``.state`` folder linked elsewhere: merging must not move a file out of that other place."""
    part = tmp_path / "part"
    shutil.move(data, part)
    name = read_index(part).shards[0].name
    elsewhere = tmp_path / "someone-elses"
    elsewhere.mkdir()
    (elsewhere / f"{name}.json").write_text("theirs")
    shutil.rmtree(part / ".state", ignore_errors=True)
    (part / ".state").symlink_to(elsewhere)
    out = _cli("shards", "merge", part, "--out", tmp_path / "merged")
    assert "leads out of the folder" in out
    assert (elsewhere / f"{name}.json").read_text() == "theirs" and (part / name).is_file()


def test_a_resumed_preprocessing_takes_no_shard_name_from_a_run_record(data, tmp_path_factory):
    """A run record names its shard; that name goes into the index, so it must be the record's own."""
    name = read_index(data).shards[0].name
    record = data / ".state" / f"{name}.json"
    obj = json.loads(record.read_text())
    obj["entry"]["name"] = "../victim.tar"
    record.write_text(json.dumps(obj))
    raw = session_synth_data(tmp_path_factory).parent / "raw"
    with pytest.raises(PreprocessError, match=f"not the run record of shard {name}"):
        run("synth", raw, data, size=SHORT_SIDE, workers=1)


def test_manifest_video_paths_stay_inside_the_manifest_folder(tmp_path):
    (tmp_path / "set").mkdir()
    (tmp_path / "secret.mp4").write_bytes(b"not yours")
    csv = tmp_path / "set" / "m.csv"
    csv.write_text("group,camera,path,label,subject\n"
                   "g,1,a.mp4,wave,1\ng,2,../secret.mp4,wave,1\ng,3,/etc/passwd,wave,1\n")
    result = scan("manifest", csv)
    assert [v.path for v in result.groups[0].views] == [tmp_path / "set" / "a.mp4"]
    reasons = [f["reason"] for f in result.failures]
    assert reasons == ["line 3: " + f"{tmp_path / 'set'}: video path '../secret.mp4' is not a relative name inside the folder",
                       "line 4: " + f"{tmp_path / 'set'}: video path '/etc/passwd' is not a relative name inside the folder"]


# --- 2. bounds before allocation ---------------------------------------------------------------------

def test_deeply_nested_json_is_one_line_not_a_recursion_error(data):
    deep = "[" * 200_000 + "]" * 200_000
    text = (data / "index.json").read_text()
    (data / "index.json").write_text(text[:-1] + f', "bomb": {deep}}}')
    assert "JSON nested 200001 levels deep" in _cli("shards", "verify", data)
    (data / "index.json").write_text(text)
    shard, key = read_index(data).shards[0].name, read_index(data).shards[0].keys[0]
    _rewrite_members(data / shard, {f"{key}.json": deep.encode()})
    _, problems = verify(data, decode=False)
    assert f"{shard}:{key}.json: JSON nested 200000 levels deep, more than the 64 allowed" in problems
    assert "nested 200000 levels" in _eval_pass(data)[1][f"{shard}:{key}"]


def _bomb_header(jpeg: bytes) -> bytes:
    """``jpeg`` with a frame header declaring 60000x60000 (the pixels stay a few KB)."""
    at = jpeg.index(b"\xff\xc0")
    return jpeg[:at + 5] + (60000).to_bytes(2, "big") * 2 + jpeg[at + 9:]


@pytest.mark.parametrize("decode_on", ["cpu", "device"])
def test_a_frame_that_is_no_jpeg_of_the_stored_size_is_a_bad_group_on_both_decode_paths(data, decode_on):
    """PNG and WebP of the right size, and a JPEG whose header declares 60000x60000: each group is skipped and
    counted, on the workers' path and on the device path (decoding on the CPU here, as CI runs it), never
    decoded; ``verify`` names each, and ``show`` refuses in one line."""
    shard = read_index(data).shards[0]
    first = _member(data / shard.name, f"{shard.keys[0]}.c001.f0000.jpg")
    image = cv2.imdecode(np.frombuffer(first, np.uint8), cv2.IMREAD_COLOR)
    forgeries = {shard.keys[0]: cv2.imencode(".png", image)[1].tobytes(),
                 shard.keys[1]: cv2.imencode(".webp", image)[1].tobytes(), shard.keys[2]: _bomb_header(first)}
    with tarfile.open(data / shard.name) as tf:  # every frame of the test camera (1) of those groups
        names = [m.name for m in tf.getmembers() if ".c001.f" in m.name]
    _rewrite_members(data / shard.name, {n: forgeries[n.split(".")[0]] for n in names})
    loader = build_eval_loader(tiny_config("finetune").model, _eval_config(data, decode_on=decode_on), batch_size=2)
    keys = {k for batch in loader for k in batch["key"]}
    assert keys and not keys & set(forgeries)  # the rest of the split was read, the forged groups were not
    seen = loader.dataset.bad.seen
    assert "is not a JPEG (it starts with b'\\x89PNG" in seen[f"{shard.name}:{shard.keys[0]}"]
    assert "is not a JPEG (it starts with b'RIFF" in seen[f"{shard.name}:{shard.keys[1]}"]
    assert "is 60000x60000 by its header, metadata says" in seen[f"{shard.name}:{shard.keys[2]}"]
    if decode_on == "cpu":
        _, problems = verify(data)
        assert any("declares 60000x60000, beyond the 4096-pixel bound (not decoded)" in p for p in problems)
        assert any(f"{shard.keys[0]}.c001.f0000.jpg is not a JPEG" in p for p in problems)
        out = _cli("shards", "show", data, shard.keys[2], "--out", data.parent / "m.png")
        assert "is 60000x60000 by its header" in out


def test_manifest_numbers_are_bounded_before_anything_is_sized_by_them(tmp_path):
    csv = tmp_path / "m.csv"
    for rows, why in [("g,1,a.mp4,999999999,1", "label 999999999 is no class index"),
                      ("g,-1,a.mp4,0,1", "camera -1 must be 0..999"),
                      ("g,1,a.mp4,0,-3", "subject -3 must be >= 0")]:
        csv.write_text(f"group,camera,path,label,subject\n{rows}\n")
        with pytest.raises(AdapterError, match=why):
            scan("manifest", csv)
    for angle in ("inf", "nan", "-inf"):
        csv.write_text(f"group,camera,path,label,subject,angle\ng,1,a.mp4,0,1,{angle}\n")
        with pytest.raises(AdapterError, match=f"angle must be a finite number of degrees, got '{angle}'"):
            scan("manifest", csv)
    csv.write_text("group,camera,path,label,subject\ng,1,a.mp4,999999999,1\n")
    out = _cli("preprocess", "manifest", "--root", csv, "--out", tmp_path / "out")
    assert "label 999999999 is no class index" in out


def test_a_video_of_absurd_shape_or_length_is_a_per_video_failure(tmp_path):
    views = [VideoInfo(16000, 2, 30.0, 10), VideoInfo(64, 48, 30.0, 10)]
    size, _, planned = conform_views(views, [[0, 0, 16000, 2], [0, 0, 64, 48]], 160, None)
    assert planned[0] == "its stored frames would be 1280000x160 (a 16000x2 view at short side 160), beyond the " \
                         "4096-pixel bound"
    assert size == (213, 160) and planned[1] == (0, 0, 64, 48)  # the other view is kept, at its own ratio
    video = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (16, 16))
    for _ in range(3):
        writer.write(np.zeros((16, 16, 3), np.uint8))
    writer.release()
    with pytest.raises(DecodeError, match="more than the 10000 a stored view may hold"):
        decode(video, VideoInfo(16, 16, 30.0, 500_000), DecodeRequest((0, 0, 16, 16), (16, 16), 30.0))


# --- 3. one contract check, shared by verify and the loaders ----------------------------------------

def test_labels_outside_the_classes_are_named_by_verify_and_skipped_by_the_loaders(data):
    shard = read_index(data).shards[0]
    relabel = {}
    for key, label in zip(shard.keys[:2], (7, -1), strict=True):
        meta = json.loads(_member(data / shard.name, f"{key}.json"))
        relabel[f"{key}.json"] = json.dumps({**meta, "label": label}).encode()
    _rewrite_members(data / shard.name, relabel)
    _, problems = verify(data, decode=False)
    assert f"{shard.name}:{shard.keys[0]}.json: label 7 is outside the 3 classes (0..2)" in problems
    assert f"{shard.name}:{shard.keys[1]}.json: label -1 is outside the 3 classes (0..2)" in problems
    keys, bad = _eval_pass(data)
    assert not keys & set(shard.keys[:2]) and shard.keys[2] in keys
    assert "label -1 is outside the 3 classes" in bad[f"{shard.name}:{shard.keys[1]}"]


def test_an_index_that_contradicts_itself_is_named_by_verify_and_refused_by_the_loaders(data):
    shards = read_index(data).shards
    _edit_index(data, lambda ix: ix["shards"][1]["keys"].__setitem__(0, shards[0].keys[0]))
    _, problems = verify(data, decode=False)
    assert f"{shards[1].name}: group {shards[0].keys[0]} is also listed in {shards[0].name}" in problems
    with pytest.raises(ContractError, match=f"group {shards[0].keys[0]} is also listed in"):
        ShardSplit.open(data, "synth_xview", "test")
    for edit, why in [(lambda ix: ix.update(classes=[]), "classes must be a non-empty list of names"),
                      (lambda ix: ix.update(layout={"1": {"azimuth": "left"}}), "layout must map camera ids"),
                      (lambda ix: ix.update(layout={"1": {"azimuth": float("inf")}}), "layout must map camera ids")]:
        _edit_index(data, edit)
        assert why in _cli("shards", "ls", data)


def _flow_like_preprocessing(root: Path) -> list[str]:
    """Give every shard a ``flow`` array as preprocessing writes one (the framediff rows under that name, in
    the same sharded layout), so that the loaders read it; returns the shard stems."""
    _edit_index(root, lambda ix: ix.update(motion=sorted({*ix["motion"], "flow"})))
    stems = [s.name[:-4] for s in read_index(root).shards]
    for stem in stems:
        group = zarr.open_group(str(root / "motion.zarr" / stem), mode="r")
        rows = np.asarray(group["framediff"][...])
        write_shard_motion(root, stem, {"framediff": rows, "flow": rows}, dict(group.attrs))
    return stems


def _flow_array(root: Path, stem: str):
    return zarr.open_array(str(root / "motion.zarr" / stem / "flow"), mode="r+")


def test_motion_rows_that_are_incomplete_or_nonsense_are_named_by_verify_and_skipped_by_training(data):
    stems = _flow_like_preprocessing(data)
    nan, negative = np.asarray(_flow_array(data, stems[0])[...]), np.asarray(_flow_array(data, stems[1])[...])
    nan[0, 0, 0], negative[3, 1, 1] = np.nan, -2.0
    _flow_array(data, stems[0])[...], _flow_array(data, stems[1])[...] = nan, negative
    group = zarr.open_group(str(data / "motion.zarr" / stems[2]), mode="r+")
    rows = np.asarray(group["flow"][...], np.float32)
    del group["flow"]
    group.create_array("flow", data=rows)  # another dtype
    (data / "motion.zarr" / stems[3] / "flow" / "c" / "0" / "0" / "0").unlink()  # its one (sharded) chunk file
    damage = {stems[0]: "holds 1 non-finite values", stems[1]: "negative values", stems[2]: "is float32, want float16",
              stems[3]: "chunks (deleted or never written)"}
    _, problems = verify(data, decode=False)
    for stem, why in damage.items():
        assert any(f"motion.zarr/{stem}/flow" in p and why in p for p in problems), (stem, why)
    cfg = tiny_config("pretrain")
    train = DataConfig(root=str(data), protocol="synth_xview", stride=2, workers=0, shuffle_buffer=4, motion="flow",
                       max_bad_samples=11)
    dataset = PretrainClips(ShardSplit.open(data, train.protocol, "train"), ClipGeometry.of(cfg.model, train), train)
    with pytest.raises(BadSampleLimit, match="12 bad sample"):  # every group skipped and counted, none trained on
        for _ in dataset:
            pass
    for stem, why in damage.items():
        assert any(where.startswith(f"{stem}.tar:") and why in text for where, text in dataset.bad.seen.items())


# --- 4. eval, probe and predict refuse what cannot give a true answer ---------------------------------

def test_a_label_outside_the_classes_is_never_counted_as_one():
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    with pytest.raises(ValueError, match="label -1 is none of the 2 classes"):
        aggregate(probs, ["a", "b"], ["a", "b"], [1, 1], [0, -1], num_classes=2)


def _classifier(path: Path, classes: list[str], nan: bool = False) -> Path:
    cfg = load_config("tiny", "finetune", [*TINY_MODEL, "data.stride=2", "data.eval_clips=1", "data.eval_crops=1"])
    model = VideoClassifier(cfg.model, len(classes))
    if nan:
        with torch.no_grad():
            model.head.weight[0, 0] = float("nan")
    save_model_state(path, model, cfg.model, run_config=cfg.to_dict(), classes=classes, fps=15.0)
    return path


def test_eval_and_predict_refuse_a_checkpoint_of_other_classes_or_broken_weights(data, tmp_path):
    classes = read_index(data).classes
    other = _classifier(tmp_path / "four.pt", ["a", "b", "c", "d"])
    out = _cli("eval", "--checkpoint", other, "--data", data, "--protocol", "synth_xview", "--out", tmp_path / "e")
    assert f"was finetuned on 4 classes [a, b, c, d], but {data} has 3 [{', '.join(classes)}]" in out
    renamed = _classifier(tmp_path / "renamed.pt", ["x", "y", "z"])
    assert "3 classes [x, y, z], but" in _cli("eval", "--checkpoint", renamed, "--data", data, "--protocol",
                                               "synth_xview", "--out", tmp_path / "e")
    broken = _classifier(tmp_path / "nan.pt", classes, nan=True)
    for command in (["eval", "--checkpoint", broken, "--data", data, "--protocol", "synth_xview"],
                    ["probe", "--checkpoint", broken, "--data", data, "--protocol", "synth_xview"],
                    ["predict", data / "index.json", "--checkpoint", broken, "--device", "cpu"]):
        assert "weight head.weight holds 1 non-finite value(s)" in _cli(*command), command
    assert not (tmp_path / "e").exists()


# --- 8. variable frame rate -----------------------------------------------------------------------------

def _variable_rate_video(path: Path) -> None:
    """60 frames, frame n a grey level of 4n: the first 30 a second at 30 fps, the last 30 two seconds at
    15 fps (as a phone slows down in the dark), written by the imageio-ffmpeg binary with those times (in
    ticks of 1/30 s, so that they are exact)."""
    frames = np.repeat((np.arange(60, dtype=np.uint8) * 4)[:, None], 48 * 64 * 3, 1)
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "64x48",
                    "-r", "30", "-i", "pipe:", "-vf", "setpts='if(lt(N,30),N,30+2*(N-30))'",
                    "-fps_mode", "passthrough", "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv420p", str(path)],
                   input=frames.tobytes(), check=True)


@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_a_variable_frame_rate_video_is_resampled_by_its_frame_times(tmp_path, container):
    video = tmp_path / f"phone.{container}"
    _variable_rate_video(video)
    info = probe(video)
    assert info.times is not None and info.frames == 60
    # at 30 fps: 1 s of one frame per slot, then 2 s of each frame held for two slots
    want = [k if k < 30 else 30 + (k - 30) // 2 for k in range(89)]
    for backend in BACKENDS:
        frames = decode(video, info, DecodeRequest((0, 0, 64, 48), (64, 48), 30.0), backend)
        assert np.round(frames[:, 10, 10].mean(axis=1) / 4).astype(int).tolist() == want, backend
