"""``mv2mae synth`` (render the built-in multi-view action dataset) and ``mv2mae bench synth``."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def _pair(text: str, sep: str, what: str) -> tuple[int, int]:
    parts = text.lower().split(sep)
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise typer.BadParameter(f"{what} must look like A{sep}B with whole numbers, got {text!r}")
    return int(parts[0]), int(parts[1])


def synth(
    out: Path = typer.Option(..., "--out", help="Output directory (NTU RGB+D layout)."),
    classes: int = typer.Option(12, help="Number of action classes (the first K of the built-in list)."),
    cameras: int = typer.Option(3, help="Cameras on a circle around the subject (1-8)."),
    subjects: int = typer.Option(8, help="Performers, each with own proportions, clothes and tempo."),
    replications: int = typer.Option(2, help="Repetitions per action; each faces another camera."),
    setups: int = typer.Option(1, help="Setups (rooms and lighting)."),
    frames: str = typer.Option("48:72", help="MIN:MAX length of a clip's world timeline, in frames."),
    size: str = typer.Option("320x240", help="Video size WxH (even numbers)."),
    seed: int = typer.Option(0, help="Random seed: same seed and arguments give identical frames."),
    workers: int = typer.Option(0, help="Parallel rendering processes (0 = one per core)."),
    skeletons: bool = typer.Option(True, "--skeletons/--no-skeletons",
                                   help="Write NTU .skeleton files (needed for --crop person; most of "
                                        "the output's bytes)."),
) -> None:
    """Render the built-in synthetic multi-view action dataset (NTU RGB+D layout).

    Writes H.264 videos and skeletons named as NTU RGB+D, classes.txt and ground_truth.json
    (3D joints per frame, camera parameters, per-view frame offsets)."""
    from rich.console import Console

    from mv2mae.preprocess.synth import generate

    try:
        summary = generate(out, classes=classes, cameras=cameras, subjects=subjects,
                           replications=replications, setups=setups, frames=_pair(frames, ":", "--frames"),
                           size=_pair(size, "x", "--size"), seed=seed, workers=workers,
                           skeletons=skeletons)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    Console().print(f"[green]synth[/]: {summary['videos']} videos ({summary['groups']} groups, "
                    f"{summary['frames']} frames) in {summary['seconds']:.1f} s -> {summary['out']}")


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
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n")


def register(app: typer.Typer, bench_app: typer.Typer, shards_app: typer.Typer) -> None:
    app.command("synth")(synth)
    bench_app.command("synth")(bench_synth)
