"""Every shipped dataset preset finetunes on its own dataset with its own defaults: each adapter's layout
is built from a few tiny real videos (as the adapter tests do), preprocessed once, and each preset runs
two finetuning steps through the CLI with only its model shrunk and its length cut by ``--set``, so
no preset ships whose protocol, validation or sampling defaults fail on the data it is for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from layout_helpers import pku_tree, video
from typer.testing import CliRunner

from mv2mae.cli import app
from mv2mae.config import load_config, preset_names
from mv2mae.data.splits import ShardSplit
from mv2mae.preprocess.pipeline import run
from mv2mae.train import checkpoint as ckpt_io

# preset -> the dataset (adapter) it is for; every shipped preset but the CPU one
PRESET_DATASETS = {"ntu60_xsub": "ntu60", "ntu60_xview": "ntu60", "ntu120_xsub": "ntu120", "ntu120_xset": "ntu120",
                   "etri_xsub": "etri", "nucla_xview": "nucla", "pkummd2_xsub": "pkummd2", "pkummd2_xview": "pkummd2",
                   "rocog": "manifest"}
SHRINK = ["model.frames=4", "model.image_size=32", "model.patch=8", "model.embed_dim=48", "model.depth=2",
          "model.num_heads=3", "model.decoder_dim=32", "model.decoder_heads=2", "model.decoder_depth=1",
          "model.cross_decoder_depth=1"]
TWO_STEPS = ["schedule.epochs=0", "steps=2", "schedule.warmup_steps=1", "loop.device=cpu"]


def _ntu(root: Path) -> Path:
    """Setup 2 (an even, cross-setup training one), performers 1 and 2 (cross-subject training ones), three
    cameras, two actions."""
    for p in (1, 2):
        for a in (1, 2):
            for c in (1, 2, 3):
                video(root / "nturgb+d_rgb" / f"S002C00{c}P00{p}R001A00{a}_rgb.avi", 24, seed=c)
    return root


def _nucla(root: Path) -> Path:
    for s in (1, 2):
        for v in (1, 2, 3):
            video(root / "a01" / f"v0{v}_s0{s}_e00.avi", 24, seed=v)
    return root


def _etri(root: Path) -> Path:
    """Subjects 1 and 2 train (3 would test), two of the eight cameras (the others recorded as missing)."""
    for p in (1, 2):
        for c in (1, 2):
            video(root / f"A001_P00{p}_G001_C00{c}.mp4", 24, seed=c)
    return root


def _manifest(root: Path) -> Path:
    """ROCOG-v2 through the manifest: subjects 1 (odd: train) and 2, two cameras."""
    rows = ["group,camera,path,label,subject"]
    for s in (1, 2):
        for cam in ("ground", "aerial"):
            video(root / f"g{s}_{cam}.mp4", 24, seed=s)
            rows.append(f"g{s},{cam},g{s}_{cam}.mp4,wave,{s}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


def _pkummd2(root: Path) -> Path:
    pku_tree(root)
    return root


LAYOUTS = {"ntu60": _ntu, "ntu120": _ntu, "nucla": _nucla, "etri": _etri, "manifest": _manifest, "pkummd2": _pkummd2}


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    """dataset -> its preprocessed directory, built on first use (one preprocessing per dataset)."""
    made: dict[str, Path] = {}

    def get(dataset: str) -> Path:
        if dataset not in made:
            base = tmp_path_factory.mktemp(dataset)
            source = LAYOUTS[dataset](base / "raw")
            made[dataset] = base / "data"
            run(dataset, source, made[dataset], size=40, workers=1, max_lag=0)
        return made[dataset]

    return get


def test_every_dataset_preset_is_tested_here():
    assert set(PRESET_DATASETS) == set(preset_names()) - {"tiny"}


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(PRESET_DATASETS))
def test_each_preset_finetunes_on_its_own_dataset_with_its_own_defaults(preset, preprocessed, tmp_path):
    data = preprocessed(PRESET_DATASETS[preset])
    out = tmp_path / "run"
    args = ["finetune", "--config", preset, "--data", str(data), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, *(a for s in [*SHRINK, *TWO_STEPS] for a in ("--set", s))])
    assert result.exit_code == 0, result.output[-3000:]
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()][-1] == 2
    cfg = load_config(preset, "finetune")
    last = ckpt_io.load_run(out / "checkpoints" / ckpt_io.LAST_STEP)
    train = ShardSplit.open(data, cfg.data.protocol, "train").selection
    # the paper's protocol: every video of the official training split, and the run says how many
    assert last["training"]["split"] == "the whole official training split"
    assert last["training"]["train_videos"] == train.videos > 0
    assert f"{train.videos:,} videos; tested at the last step" in result.output
