"""``mv2mae bench synth|preprocess|loader|train|motion|model|resume|gpu``: every benchmark, each a table plus ``--json`` figures.

The measurements themselves live in :mod:`mv2mae.bench`; these commands only parse options and print.
"""

from __future__ import annotations

from pathlib import Path

import typer
import yaml

from mv2mae.cli.choices import DecodeOn, ModelPreset
from mv2mae.cli.errors import fail, parse_pair, reported, write_json


def bench_synth(
    json_path: Path = typer.Option(None, "--json", help="Write the figures to this JSON file."),
    groups: int = typer.Option(8, help="Groups (x3 cameras) rendered at the default size."),
    hd_groups: int = typer.Option(1, help="Groups rendered at 1920x1080 (0 to skip)."),
) -> None:
    """Rendered frames per second per core of `mv2mae synth` (one process, CPU time incl. ffmpeg)."""
    from rich.console import Console
    from rich.table import Table

    from mv2mae.bench.synth import benchmark

    sizes, counts = [(320, 240)], [groups]
    if hd_groups > 0:
        sizes.append((1920, 1080))
        counts.append(hd_groups)
    result = benchmark(sizes, counts)
    table = Table(title="mv2mae bench synth: frames/s per core", caption="render = drawing only; "
                  "+encode = render, x264, skeleton files; room = one-off background ray-cast")
    for col in ("size", "frames", "render", "+encode", "wall, 1 proc", "room ms/cam"):
        table.add_column(col, justify="right")
    for row in result["rows"]:
        table.add_row(row["size"], str(row["frames"]), f"{row['render_fps_per_core']:.0f}",
                      f"{row['end_to_end_fps_per_core']:.0f}", f"{row['end_to_end_fps_wall']:.0f}",
                      f"{row['background_ms_per_camera']:.0f}")
    Console().print(table)
    write_json(json_path, result)


def bench_preprocess(
    json_path: Path = typer.Option(None, "--json", help="Write the figures here as JSON."),
    groups: int = typer.Option(4, "--groups", help="Multi-view groups to render at 1080p."),
    frames: int = typer.Option(48, "--frames", help="Frames per video."),
    workers: int = typer.Option(2, "--workers", help="Workers of the multi-worker run."),
    work_dir: Path = typer.Option(None, "--work-dir", help="Keep the rendered videos and outputs here."),
    repeats: int = typer.Option(3, "--repeats", help="Runs per measurement; the best one counts."),
) -> None:
    """Full preprocessing vs decode-and-scale-only on 1080p H.264 multi-view videos."""
    from mv2mae.bench.preprocess import print_table, run_bench

    figures = run_bench(groups=groups, frames=frames, workers=workers, work_dir=work_dir, repeats=repeats)
    print_table(figures)
    write_json(json_path, figures)


def bench_loader(
    json_out: Path = typer.Option(None, "--json", help="Write the figures here."),
    work: Path = typer.Option(Path("bench-results/loader-data"), help="Scratch folder for the rendered set."),
    workers: int = typer.Option(2, help="DataLoader workers for both loaders."),
    seconds: float = typer.Option(20.0, help="Measured seconds per loader (after warm-up)."),
    raw_size: str = typer.Option("1920x1080", help="Raw video size the baseline decodes (WxH)."),
    groups: int = typer.Option(6, help="Multi-view groups rendered."),
    gpu_samples_per_s: float = typer.Option(0.0, help="Measured ViT-S pretraining samples/s of one H100 "
                                                      "(0 = from --model-json, else a labelled assumption)."),
    model_json: Path = typer.Option(None, help="A `mv2mae bench model` or `bench gpu` JSON file from a GPU machine."),
) -> None:
    """Pretraining samples/s from shards vs a raw-video (VideoMAE-style) loader; memory; workers per H100."""
    from mv2mae.bench.loader import print_report, run_bench

    w, h = parse_pair(raw_size, "x", "--raw-size")
    result = run_bench(work, workers=workers, seconds=seconds, raw_size=(w, h), groups=groups,
                       gpu_samples_per_s=gpu_samples_per_s, model_json=model_json)
    print_report(result)
    write_json(json_out, result)


def bench_train(
    json_out: Path = typer.Option(None, "--json", help="Write the figures here."),
    work: Path = typer.Option(Path("bench-results/train-data"), help="Scratch folder: the rendered set, the runs."),
    config: str = typer.Option("tiny", "--config", "-c", help="Preset or YAML of the pretraining (its geometry)."),
    sets: list[str] = typer.Option([], "--set", help="Override a config key, as for `mv2mae pretrain` (repeatable)."),
    workers: int = typer.Option(None, "--workers", help="Loader processes (default: the config's data.workers)."),
    decode_on: DecodeOn = typer.Option(None, "--decode-on", help="Where JPEGs are decoded (default: the config's)."),
    steps: int = typer.Option(40, "--steps", help="Optimizer steps per run."),
    warmup: int = typer.Option(10, "--warmup", help="Steps not measured at the start of each run (workers starting)."),
    rounds: int = typer.Option(2, "--rounds", help="Paired rounds: an end-to-end and a compute-only run each, "
                                                   "their order alternating."),
    raw_size: str = typer.Option("160x120", help="Raw video size rendered (WxH; `make demo`'s)."),
    groups: int = typer.Option(6, help="Multi-view groups rendered."),
    short_side: int = typer.Option(80, help="Stored short side of the shards (`make demo`'s --size)."),
) -> None:
    """Pretraining samples/s end to end (the loader feeding `mv2mae pretrain`'s loop) against the same steps on one
    batch held in memory: the ratio says how much of the model's speed the data path lets through."""
    from mv2mae.bench.train import TrainBenchSettings, print_report, run_bench
    from mv2mae.config import ConfigError

    w, h = parse_pair(raw_size, "x", "--raw-size")
    try:
        settings = TrainBenchSettings(config=config, sets=tuple(sets), workers=workers,
                                      decode_on=decode_on and decode_on.value, steps=steps, warmup_steps=warmup,
                                      rounds=rounds, raw_size=(w, h), groups=groups, short_side=short_side)
    except ValueError as e:
        fail(str(e), 2)
    with reported(ConfigError):
        result = run_bench(work, settings)
    print_report(result)
    write_json(json_out, result)


def bench_motion(
    json_out: Path = typer.Option(None, "--json", help="Write the figures here."),
    work: Path = typer.Option(Path("bench-results/motion-data"), help="Scratch folder for the rendered set."),
    samples: int = typer.Option(64, help="Pretraining samples (2 views each) per geometry and source."),
    workers: int = typer.Option(2, help="Processes rendering and preprocessing the set."),
) -> None:
    """Spread of the motion weights under framediff and flow; the flow τ matching framediff's τ = 60."""
    from mv2mae.bench.motion import print_report, run_bench

    result = run_bench(work, samples=samples, workers=workers)
    print_report(result)
    write_json(json_out, result)


def bench_resume(
    json_out: Path = typer.Option(None, "--json", help="Write the figures here."),
    work: Path = typer.Option(Path("bench-results/loader-data"), help="Scratch folder for the rendered set."),
    batches: int = typer.Option(200, help="Batches consumed before the resume."),
    workers: int = typer.Option(2, help="DataLoader workers."),
    raw_size: str = typer.Option("320x240", help="Raw video size rendered (the shards store 160 px)."),
    groups: int = typer.Option(6, help="Multi-view groups rendered."),
) -> None:
    """Time to the first batch of an exactly resumed stream: replayed sampling vs decoding the consumed batches."""
    from rich.console import Console

    from mv2mae.bench.loader import resume_cost

    w, h = parse_pair(raw_size, "x", "--raw-size")
    r = resume_cost(work, batches=batches, workers=workers, raw_size=(w, h), groups=groups)
    Console().print(f"resume after {r['batches']} batches ({r['samples']} samples, {r['workers']} workers): "
                    f"{r['replay_s']} s replaying the sampling vs {r['decode_s']} s decoding them "
                    f"(first batch alone {r['first_batch_s']} s); per consumed sample {r['replay_ms_per_sample']} ms vs "
                    f"{r['decode_ms_per_sample']} ms, {r['speedup']}x")
    write_json(json_out, r)


def _parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"--override {item!r}: expected KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    return out


def bench_model(
    json_path: Path = typer.Option(None, "--json", help="Write the figures here as JSON."),
    preset: ModelPreset = typer.Option(ModelPreset.vit_small, help="Model preset."),
    batch: int = typer.Option(2, help="Samples per step on the CPU/default device."),
    steps: int = typer.Option(5, help="Timed rounds per measurement (median reported; rounds interleave the variants)."),
    warmup: int = typer.Option(1, help="Untimed warm-up steps per measurement."),
    views: str = typer.Option("1,2,3,4", help="View counts to sweep."),
    compare_hf: bool = typer.Option(True, "--hf/--no-hf", help="Time transformers' VideoMAEForPreTraining too."),
    gpu_batch: int = typer.Option(32, help="Batch of the GPU section (bf16, MFU, memory, compile)."),
    device: str = typer.Option("auto", help="auto (cuda if available), cpu or cuda."),
    override: list[str] = typer.Option([], "--override", help="Model config override KEY=VALUE (repeatable)."),
    threads: int = typer.Option(0, help="CPU threads for torch (0 = torch's default)."),
) -> None:
    """Pretraining step speed: vs transformers VideoMAE, vs views and sources, analytic FLOPs, GPU figures."""
    import torch

    from mv2mae.bench.model import ModelBenchSettings, print_model_bench, run_model_bench

    if threads > 0:
        torch.set_num_threads(threads)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    settings = ModelBenchSettings(preset=preset.value, batch=batch, steps=steps, warmup=warmup,
                                  views=tuple(int(v) for v in views.split(",")), compare_hf=compare_hf,
                                  gpu_batch=gpu_batch, overrides=_parse_overrides(override))
    result = run_model_bench(settings, dev)
    print_model_bench(result)
    write_json(json_path, result)


def bench_gpu(
    json_out: Path = typer.Option(None, "--json", help="Write the figures here."),
    markdown_out: Path = typer.Option(None, "--markdown", help="Write the short Markdown table here."),
    work: Path = typer.Option(Path("bench-results/gpu-work"), help="Scratch folder: shards, run folders."),
    device: str = typer.Option("auto", help="auto or cuda[:N] (a GPU), or cpu (with --tiny: the smoke run)."),
    tiny: bool = typer.Option(False, "--tiny", help="Toy sizes: the same code in a minute or two (for CPU tests)."),
    data: Path = typer.Option(None, help="A preprocessed dataset to use instead of making synthetic shards."),
    budget_s: float = typer.Option(None, help="Seconds after which sections still to run are skipped."),
) -> None:
    """Every CUDA-only path in one run (`make gpu-check`): pinned channels-last batches and device-side
    normalisation, nvJPEG decoding, no host-device sync outside read steps, kill -9 + resume under bf16 +
    compile, loader throughput and data wait at 2/4/8 workers, and the model's bf16 step (MFU, memory,
    compile)."""
    import torch

    from mv2mae.bench.gpu import NO_CUDA, GpuCheckSettings, markdown, print_gpu_check, run_gpu_check

    if device != "cpu" and not torch.cuda.is_available():
        typer.echo(f"{NO_CUDA}: nothing to check (run it on a GPU machine, or --device cpu --tiny for the smoke run)")
        return
    if device == "cpu" and not tiny:
        fail("--device cpu runs only the --tiny smoke version (the full check is sized for a GPU)")
    settings = GpuCheckSettings.tiny() if tiny else GpuCheckSettings()
    if budget_s is not None:
        settings.budget_s = budget_s
    dev = torch.device("cuda" if device == "auto" else device)
    result = run_gpu_check(settings, dev, work, data)
    print_gpu_check(result)
    write_json(json_out, result)
    if markdown_out is not None:
        markdown_out.parent.mkdir(parents=True, exist_ok=True)
        markdown_out.write_text(markdown(result))
    if not result["passed"]:
        fail("gpu check failed: see the checks, syncs and resume rows above")


def register(app: typer.Typer, bench_app: typer.Typer, shards_app: typer.Typer) -> None:
    bench_app.command("synth")(bench_synth)
    bench_app.command("preprocess")(bench_preprocess)
    bench_app.command("loader")(bench_loader)
    bench_app.command("train")(bench_train)
    bench_app.command("motion")(bench_motion)
    bench_app.command("model")(bench_model)
    bench_app.command("resume")(bench_resume)
    bench_app.command("gpu")(bench_gpu)
