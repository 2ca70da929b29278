"""The model benchmark runs end to end and reports every figure it promises (timings are not asserted)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from mv2mae.bench.model import ModelBenchSettings, gpu_section, print_model_bench, run_model_bench
from mv2mae.cli import app

TINY = dict(frames=4, image_size=32, depth=1, decoder_depth=1, cross_decoder_depth=1)


def test_model_bench_reports_every_section(capsys):
    pytest.importorskip("transformers")
    settings = ModelBenchSettings(preset="vit_tiny", batch=1, warmup=0, steps=1, views=(1, 2, 3),
                                  sources=(1, 2), overrides=TINY)
    result = run_model_bench(settings, torch.device("cpu"))
    json.dumps(result)  # the --json file is plain JSON
    cmp_ = result["single_view_vs_transformers"]
    assert cmp_["ours_step_s"] > 0 and cmp_["hf_step_s"] > 0
    assert cmp_["speedup_of_medians"] == pytest.approx(cmp_["hf_step_s"] / cmp_["ours_step_s"])
    assert cmp_["speedup"] == pytest.approx(cmp_["hf_step_times_s"][0] / cmp_["ours_step_times_s"][0])
    assert [r["views"] for r in result["views"]] == [1, 2, 3]
    flops = [r["step_gflop"] for r in result["views"]]
    assert flops == sorted(flops) and flops[0] > 0
    assert [r["sources"] for r in result["cross_decoder"]] == [1, 2]
    assert 0 < result["cross_decoder"][0]["share_of_2_view_step"]
    # the CPU default never pretends to have GPU figures
    assert result["gpu"] == {"status": "not measured (no GPU)"}
    print_model_bench(result)
    assert "transformers" in capsys.readouterr().out


def test_accelerator_section_runs_on_any_device():
    settings = ModelBenchSettings(gpu_batch=1, warmup=0, steps=1, gpu_presets=("vit_tiny",), overrides=TINY)
    out = gpu_section(settings, torch.device("cpu"), compile_model=False)
    assert [(r["preset"], r["views"], r["compiled"]) for r in out["rows"]] == [("vit_tiny", 1, False),
                                                                             ("vit_tiny", 2, False)]
    for row in out["rows"]:
        assert row["samples_per_s"] > 0 and row["tflop_per_s"] > 0 and row["mfu"] is None
    late = gpu_section(settings, torch.device("cpu"), compile_model=False, deadline=0.0)
    assert all(r["skipped"] == "time budget" for r in late["rows"])  # past the budget: reported, not run


def test_bench_model_command_writes_json(tmp_path):
    out = tmp_path / "model.json"
    args = ["bench", "model", "--preset", "vit_tiny", "--batch", "1", "--steps", "1", "--warmup", "0",
            "--views", "1,2", "--no-hf", "--device", "cpu", "--json", str(out)]
    for key, value in TINY.items():
        args += ["--override", f"{key}={value}"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert result["config"]["frames"] == 4 and result["config"]["depth"] == 1
    assert "single_view_vs_transformers" not in result and len(result["views"]) == 2
    bad = CliRunner().invoke(app, ["bench", "model", "--override", "frames"])
    assert bad.exit_code == 1 and "KEY=VALUE" in bad.output
