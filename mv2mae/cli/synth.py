"""``mv2mae synth``: render the built-in multi-view action dataset."""

from __future__ import annotations

from pathlib import Path

import typer

from mv2mae.cli.errors import check_output, parse_pair


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

    check_output(out)
    try:
        summary = generate(out, classes=classes, cameras=cameras, subjects=subjects,
                           replications=replications, setups=setups, frames=parse_pair(frames, ":", "--frames"),
                           size=parse_pair(size, "x", "--size"), seed=seed, workers=workers,
                           skeletons=skeletons)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    Console().print(f"[green]synth[/]: {summary['videos']} videos ({summary['groups']} groups, "
                    f"{summary['frames']} frames) in {summary['seconds']:.1f} s -> {summary['out']}")


def register(app: typer.Typer, bench_app: typer.Typer, shards_app: typer.Typer) -> None:
    app.command("synth")(synth)
