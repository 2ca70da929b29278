"""``mv2mae preprocess DATASET`` and ``mv2mae shards merge``."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from mv2mae.cli.choices import MOTION_CACHES, Backend, Crop, Dataset, MotionCache
from mv2mae.cli.errors import check_output, reported

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?)[bB]?\s*$")
_UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_bytes(text: str) -> int:
    """``'512MB'`` -> 512_000_000, ``'1GiB'`` -> 2**30, ``'4096'`` -> 4096."""
    m = _SIZE_RE.match(text)
    if not m:
        raise typer.BadParameter(f"{text!r} is not a size like 512MB, 2GiB or 100000")
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base ** _UNITS[m.group(2).lower()])


MOTION_HELP = ("Motion cache stored beside the shards. display: framediff rows, drawn only by `mv2mae shards "
               "show` (training computes framediff from each clip). train-flow: DIS optical flow, what "
               "data.motion=flow trains from (shards show draws it too). both: the two.")


def preprocess(
    dataset: Dataset = typer.Argument(..., help="Which dataset layout --root holds (manifest: a CSV file)."),
    root: Path = typer.Option(..., "--root", help="Dataset folder (for 'manifest': the CSV file)."),
    out: Path = typer.Option(..., "--out", help="Output shard directory (re-running resumes it)."),
    size: int = typer.Option(160, "--size", help="Stored short side in pixels."),
    fps: float = typer.Option(None, "--fps", help="Common output frame rate (default: the source rate)."),
    crop: Crop = typer.Option(Crop.none, "--crop", help="Stored view of each frame (person: a box around the "
                                                          "NTU skeletons)."),
    motion: str = typer.Option("display", "--motion", parser=MotionCache, metavar=MotionCache.metavar,
                               autocompletion=MotionCache.complete, help=MOTION_HELP),
    jpeg_quality: int = typer.Option(90, "--jpeg-quality", help="JPEG quality of stored frames (1-100)."),
    shard_size: str = typer.Option("512MB", "--shard-size", help="Target shard size (e.g. 512MB, 1GiB)."),
    workers: int = typer.Option(0, "--workers", help="Worker processes (0 = all cores)."),
    part: int = typer.Option(0, "--part", help="This machine's part, 0-based (with --parts)."),
    parts: int = typer.Option(1, "--parts", help="Split the partitions over this many machines."),
    limit: int = typer.Option(None, "--limit", help="Only the first N groups (in key order)."),
    max_lag: int = typer.Option(15, "--max-lag", help="Refine view lags within +-N frames (0: off)."),
    drop_missing_skeletons: bool = typer.Option(False, "--drop-missing-skeletons",
                                                help="NTU: leave out videos whose skeleton is missing."),
    cell: int = typer.Option(8, "--cell", help="Motion cell size in stored pixels."),
    backend: Backend = typer.Option(Backend.ffmpeg, "--backend", help="Video decoder."),
    classes: Path = typer.Option(None, "--classes", help="Text file of class names, one per line."),
    image_fps: float = typer.Option(30.0, "--image-fps", help="Frame rate of per-frame image folders."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Decode, align and store a multi-view dataset as WebDataset shards plus a Zarr motion cache."""
    from rich.console import Console

    from mv2mae.preprocess.adapters import AdapterError
    from mv2mae.preprocess.pipeline import PreprocessError, run

    console = Console(stderr=True)
    check_output(out)
    with reported(AdapterError, PreprocessError, ValueError, OSError):
        summary = run(dataset.value, root, out, size=size, fps=fps, crop=crop.value, motion=MOTION_CACHES[motion],
                      jpeg_quality=jpeg_quality, shard_size=parse_bytes(shard_size), workers=workers,
                      part=part, parts=parts, limit=limit, max_lag=max_lag,
                      drop_missing_skeletons=drop_missing_skeletons, cell=cell, backend=backend.value,
                      classes_file=str(classes) if classes else None, image_fps=image_fps, progress=progress)
    console.print(
        f"{summary.written} group(s) written ({summary.single_camera} with one camera: finetuning and "
        f"evaluation only), {summary.skipped} already done, {summary.failed} failed, "
        f"{summary.dropped_views} view(s) dropped, {summary.unlisted} left out as in no official split; "
        f"{summary.groups} groups in {summary.shards} shard(s); {summary.failures} failure record(s); "
        f"{summary.seconds:.1f} s -> {summary.index}")


def merge(
    sources: list[Path] = typer.Argument(..., help="Directories holding index.json or index.part-*.json."),
    out: Path = typer.Option(None, "--out", help="Destination (default: the single source directory)."),
    keep_sources: bool = typer.Option(False, "--keep-sources", help="With --out: leave the sources' shards where "
                                                                    "they are (they are removed once the "
                                                                    "destination is complete and indexed)."),
) -> None:
    """Join the indexes of `--part i --parts n` runs into one index.json."""
    from mv2mae.preprocess.merge import MergeError
    from mv2mae.preprocess.merge import merge as do_merge
    from mv2mae.shards.atomic import WriteError
    from mv2mae.shards.schema import ContractError

    if out is not None:
        check_output(out)
    with reported(MergeError, ContractError, OSError, WriteError):
        index = do_merge(list(sources), out, keep_sources)
    typer.echo(f"merged {len(index.shards)} shard(s), {index.groups} group(s) -> {out or sources[0]}/index.json")


def register(app: typer.Typer, bench_app: typer.Typer, shards_app: typer.Typer) -> None:
    app.command("preprocess")(preprocess)
    shards_app.command("merge")(merge)
