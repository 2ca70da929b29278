"""Options of the run config that reach the data path: fixed (target, source) camera pairs and the
model's pixel statistics, on real shards (the loader and the evaluation loader both use them)."""

import re
from pathlib import Path

import pytest
import torch
from fixtures_data import session_synth_data
from train_helpers import TINY_MODEL

from mv2mae.config import PRESET_DIR, load_config, preset_names
from mv2mae.data.splits import ShardSplit
from mv2mae.eval.evaluate import eval_loader
from mv2mae.model import MV2MAE
from mv2mae.shards.protocols import PROTOCOLS, select
from mv2mae.shards.schema import DatasetIndex, ShardEntry, read_index
from mv2mae.train import checkpoint as ckpt_io
from mv2mae.train.distributed import setup
from mv2mae.train.tasks import ShardSource

ENV = setup("cpu")
REPO = Path(__file__).resolve().parents[1]
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    return session_synth_data(tmp_path_factory)


def tiny(synth_data, *extra):
    return load_config("tiny", "pretrain", [*TINY_MODEL, "model.image_size=32", "data.stride=2", "data.workers=0",
                                            "optim.batch_size=4", f"data.root={synth_data}",
                                            *extra])


def test_fixed_source_pairs_are_a_config_option_the_loader_follows(synth_data):
    cfg = tiny(synth_data, "data.source_policy=fixed", "data.fixed_pairs=[[3, 2]]")
    source = ShardSource(cfg, ENV, "pretrain")
    assert source.cfg.data.fixed_pairs == [[3, 2]]
    batch = next(iter(source.batches(0)))
    assert batch["cameras"].tolist() == [[3, 2]] * 4  # view 0 = target camera 3, view 1 = source camera 2


def test_training_and_test_clips_are_normalised_by_the_model_with_its_pixel_statistics(synth_data):
    cfg = tiny(synth_data, f"model.pixel_mean={list(MEAN)}", f"model.pixel_std={list(STD)}")
    normalize = MV2MAE(cfg.model).encoder.normalize
    train = next(iter(ShardSource(cfg, ENV, "pretrain").batches(0)))["video"]
    test = next(iter(eval_loader(cfg.model, cfg.data, ENV)))["video"]
    for video in (train, test):
        assert video.dtype == torch.uint8  # the loaders hand out pixels
        pixels = normalize(video) * torch.tensor(STD).view(3, 1, 1, 1) + torch.tensor(MEAN).view(3, 1, 1, 1)
        assert torch.allclose(pixels * 255, video.float(), atol=2e-3)  # undone exactly: the same levels


def test_every_preset_names_a_protocol_that_exists():
    for name in preset_names():
        stage = "finetune"  # every preset has a finetuning stage; transfer presets have no pretraining one
        assert load_config(name, stage).data.protocol in PROTOCOLS, name


def test_the_paper_presets_finetune_on_the_whole_training_split_and_tiny_holds_subjects_out():
    """The paper's protocol (VideoMAE's too): finetune on every training video, test at the last step;
    validation-based selection is the demo's (tiny) and one --set away for everyone else."""
    for name in preset_names():
        expected = "subject" if name == "tiny" else "none"
        assert load_config(name, "finetune").data.val_by == expected, name
    assert load_config("ntu60_xsub", "finetune", ["data.val_by=subject"]).data.val_by == "subject"


def test_every_checkpoint_file_the_docs_cite_is_one_a_run_writes():
    """Presets, README and Makefile name checkpoints users pass to --init and --checkpoint: each must be a
    file the loop writes (a step file, or one of the kept copies)."""
    written = {ckpt_io.LAST_STEP, ckpt_io.LOWEST_TRAIN_LOSS, ckpt_io.BEST_VAL_TOP1, ckpt_io.BEST_VAL_TOP1_EMA}
    docs = [*PRESET_DIR.glob("*.yaml"), REPO / "README.md", REPO / "Makefile"]
    cited = {(path.name, name) for path in docs for name in re.findall(r"checkpoints/([\w.-]+\.pt)", path.read_text())}
    assert {name for _, name in cited} & written  # the pattern finds what the docs cite
    assert not [(doc, name) for doc, name in cited if name not in written and not re.fullmatch(r"step-\d+\.pt", name)]


def test_rocog_protocol_splits_a_manifest_dataset_by_subject():
    shards = [ShardEntry(name=f"P{s:03d}-000000.tar", partition=f"P{s:03d}", samples=2, bytes=1, sha256="0" * 64,
                         subjects=[s], setups=[], cameras=[1, 2, 3], camera_sets={"1,2,3": 2},
                         keys=[f"g{s}a", f"g{s}b"]) for s in (1, 2, 3, 4)]
    index = DatasetIndex(dataset="manifest", classes=["a", "b"], fps=30.0, short_side=160, cell=8, motion=[],
                         shards=shards, args={})
    train, test = select(index, "rocog", "train"), select(index, "rocog", "test")
    assert [s.subjects for s in train.shards] == [[1], [3]] and [s.subjects for s in test.shards] == [[2], [4]]
    assert not set(train.keys) & set(test.keys)


def test_a_finetuning_epoch_is_a_pass_over_the_train_videos_not_the_groups(synth_data):
    """Finetuning draws one camera per group, so an epoch (schedule.epochs) counts every allowed camera
    of every group; a pretraining sample is a whole group."""
    train = select(read_index(synth_data), "synth_xview", "train")
    assert train.cameras == [2, 3] and train.groups > 0
    finetune = load_config("tiny", "finetune", [f"data.root={synth_data}", "data.workers=0", "data.val_by=none"])
    source = ShardSource(finetune, ENV, "finetune")
    assert source.samples_per_epoch() == 2 * train.groups
    # what its checkpoints record, and eval reports: the whole split, and how many videos that is
    assert source.training == {"protocol": "synth_xview", "val_by": "none", "train_videos": train.videos,
                               "split": "the whole official training split"}
    assert ShardSource(tiny(synth_data), ENV, "pretrain").samples_per_epoch() == train.groups


def test_finetuning_holds_out_validation_subjects_that_pretraining_keeps(synth_data):
    """The validation split is carved from the train split by subject (data.val_by): finetuning never trains
    on it, it holds no test video, and pretraining (no labels, no selection) still sees the whole train split."""
    index = read_index(synth_data)
    train, test = select(index, "synth_xview", "train"), select(index, "synth_xview", "test")
    finetune = load_config("tiny", "finetune", [f"data.root={synth_data}", "data.workers=0"])
    source = ShardSource(finetune, ENV, "finetune")
    fit = source.split.selection
    val = ShardSplit.open(synth_data, "synth_xview", "val", "subject", 0.1).selection
    assert source.training["train_videos"] == fit.videos == train.videos - val.videos
    assert source.training["held_out_videos"] == val.videos and source.training["val_by"] == "subject"
    assert f"less 1 subject(s) held out for validation ({val.videos} videos)" in source.training["split"]
    subjects = lambda sel: {v for s in sel.shards for v in s.subjects}  # noqa: E731
    assert subjects(fit) and subjects(val) and not subjects(fit) & subjects(val)
    assert subjects(fit) | subjects(val) == subjects(train) and val.cameras == train.cameras == [2, 3]
    assert not set(val.cameras) & set(test.cameras)  # cross-view: the test camera never validates
    assert ShardSource(tiny(synth_data), ENV, "pretrain").split.selection.groups == train.groups
    val_videos = {r["video_id"] for r in eval_loader(finetune.model, finetune.data, ENV, "val").dataset}
    assert len(val_videos) == val.videos and {v.split("/")[0] for v in val_videos} == set(val.keys)
