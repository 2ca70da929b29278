"""The documented Python API: README's example imports exactly ``mv2mae.api``'s names and runs as written."""

import ast
import re
from pathlib import Path

import pytest
import torch
from fixtures_data import session_synth_data
from train_helpers import TINY_MODEL

import mv2mae.api
from mv2mae.config import load_config
from mv2mae.model import MV2MAE, VideoClassifier
from mv2mae.model.checkpoint import save_model_state

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    section = README.read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_imports_exactly_the_stable_names():
    imported = [a.name for node in ast.walk(ast.parse(readme_example())) if isinstance(node, ast.ImportFrom)
                and node.module.startswith("mv2mae") for a in node.names]
    assert sorted(imported) == sorted(mv2mae.api.__all__)
    assert all(callable(getattr(mv2mae.api, name)) for name in mv2mae.api.__all__)


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    return session_synth_data(tmp_path_factory)


def test_the_readme_example_runs_on_the_paths_make_demo_leaves(synth_data, tmp_path, monkeypatch, capsys):
    cfg = load_config("tiny", "finetune", [*TINY_MODEL, "data.stride=2"])
    classes = ["a", "b", "c"]
    runs = tmp_path / "runs" / "demo"
    save_model_state(runs / "pretrain" / "checkpoints" / "lowest-train-loss.pt", MV2MAE(cfg.model), cfg.model)
    save_model_state(runs / "finetune" / "checkpoints" / "best-val-top1.pt", VideoClassifier(cfg.model, 3), cfg.model,
                     run_config=cfg.to_dict(), classes=classes, fps=15.0)
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "synth-demo").symlink_to(synth_data)
    (tmp_path / "data" / "raw" / "synth-demo").symlink_to(synth_data.parent / "raw")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(readme_example(), "README.md (Python API)", "exec"), namespace)
    assert namespace["features"].shape == (8, cfg.model.embed_dim) and namespace["logits"].shape == (8, 3)
    assert capsys.readouterr().out.split()[0] in classes
