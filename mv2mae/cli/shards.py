"""``mv2mae shards ls|stats|show|verify``: inspecting shard directories."""

from __future__ import annotations

from pathlib import Path

import typer

from mv2mae.cli.choices import Overlay, Protocol
from mv2mae.cli.errors import fail, reported, write_json

DIR_ARG = typer.Argument(..., help="A preprocessed dataset directory (holds index.json).")


# what a damaged or mistyped shard directory raises (ContractError is a ValueError)
DIRECTORY_ERRORS = (FileNotFoundError, ValueError, KeyError)


def _guard(fn):
    """Run ``fn``; a damaged or missing directory is one red line and exit status 1, never a traceback."""
    with reported(*DIRECTORY_ERRORS):
        return fn()


def ls(
    directory: Path = DIR_ARG,
    protocol: Protocol = typer.Option(None, "--protocol", help="Also count the groups and videos of each split of "
                                                               "this protocol (train, validation, test)."),
    json_out: Path = typer.Option(None, "--json", help="Also write JSON here."),
) -> None:
    """A table of shards: groups, bytes, subjects, setups, cameras; with --protocol, the counts per split."""
    from rich.console import Console
    from rich.table import Table

    from mv2mae.tools.listing import human_bytes, list_shards, protocol_counts

    info = _guard(lambda: list_shards(directory))
    table = Table(title=f"{directory} — {info['dataset']}, {info['classes']} classes")
    for col in ("shard", "groups", "bytes", "subjects", "setups", "cameras"):
        table.add_column(col, justify="right" if col in ("groups", "bytes") else "left")
    for s in info["shards"]:
        table.add_row(s["name"], str(s["samples"]), human_bytes(s["bytes"]), s["subjects"], s["setups"], s["cameras"])
    table.add_section()
    table.add_row(f"{len(info['shards'])} shards", str(info["groups"]), human_bytes(info["bytes"]), "", "", "")
    table.add_row(f"motion.zarr ({', '.join(info['motion']) or 'none'})", "", human_bytes(info["motion_bytes"]),
                  "", "", "")
    Console().print(table)
    if protocol is not None:
        info["protocol"] = counts = _guard(lambda: protocol_counts(directory, protocol.value))
        split_table = Table(title=f"protocol {counts['protocol']} ({counts['note']})")
        for col in ("split", "shards", "groups", "videos", "cameras", "subjects"):
            split_table.add_column(col, justify="right" if col in ("shards", "groups", "videos") else "left")
        for name, row in counts["splits"].items():
            split_table.add_row(name, str(row["shards"]), str(row["groups"]), str(row["videos"]),
                                ",".join(map(str, row["cameras"])), row["subjects"])
        Console().print(split_table)
    write_json(json_out, info)


def stats(directory: Path = DIR_ARG, json_out: Path = typer.Option(None, "--json", help="Also write JSON here.")) -> None:
    """Groups per class × camera and per subject, frame counts, motion statistics, failures."""
    from rich.console import Console
    from rich.table import Table

    from mv2mae.tools.listing import dataset_stats

    st = _guard(lambda: dataset_stats(directory))
    console = Console()
    cams = list(st["groups_per_camera"])
    table = Table(title=f"{st['dataset']}: {st['groups']} groups, {st['views']} views — groups per class × camera")
    table.add_column("class")
    for c in cams:
        table.add_column(f"cam {c}", justify="right")
    for name, row in st["class_by_camera"].items():
        table.add_row(name, *(str(row[c]) for c in cams))
    console.print(table)
    subj = Table(title="groups per subject")
    for s in st["groups_per_subject"]:
        subj.add_column(f"S{s}", justify="right")
    subj.add_row(*(str(v) for v in st["groups_per_subject"].values()))
    console.print(subj)
    hist = st["frame_histogram"]
    frames = Table(title=f"frames per group (min {st['frames']['min']}, median {st['frames']['median']:g}, "
                         f"max {st['frames']['max']})")
    frames.add_column("frames")
    frames.add_column("groups", justify="right")
    for i, n in enumerate(hist["counts"]):
        frames.add_row(f"{hist['edges'][i]:g}–{hist['edges'][i + 1]:g}", str(n))
    console.print(frames)
    motion = Table(title="motion cache (cell energy, 0-255 units)")
    for col in ("source", "mean", "p50", "p95", "max", "zero cells"):
        motion.add_column(col, justify="right")
    for source, m in st["motion"].items():
        motion.add_row(source, f"{m['mean']:.2f}", f"{m['p50']:.2f}", f"{m['p95']:.2f}", f"{m['max']:.1f}",
                       f"{m['zero_fraction']:.1%}")
    console.print(motion)
    fails = st["failures"]
    console.print(f"failures: {fails['total']}" + "".join(f"\n  {n} × {r}" for r, n in fails["reasons"].items()))
    write_json(json_out, st)


def show(
    directory: Path = DIR_ARG,
    key: str = typer.Argument(None, help="Group key (default: the first group of the first shard)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .png (montage) or .gif (animation)."),
    columns: int = typer.Option(8, help="Sampled times (columns) in a PNG montage."),
    motion: Overlay = typer.Option(Overlay.auto, help="Motion overlay: auto (the first cached source), a source, "
                                                       "or none."),
) -> None:
    """A montage of one group: one row per camera, one column per sampled time, motion heat-map overlaid."""
    from mv2mae.shards.schema import read_index
    from mv2mae.tools.show import show as show_group

    def run() -> Path:
        group = key or read_index(directory).shards[0].keys[0]
        return show_group(directory, group, out, columns=columns,
                          source=None if motion == Overlay.none else motion.value)

    typer.echo(f"wrote {_guard(run)}")


def verify(
    directory: Path = DIR_ARG,
    decode: bool = typer.Option(True, "--decode/--no-decode", help="Decode every JPEG member (slower, thorough)."),
    workers: int = typer.Option(1, help="Shards checked in parallel."),
) -> None:
    """Checksums, members, metadata and motion-cache coverage; exits 1 naming every problem."""
    from mv2mae.tools.verify import verify as verify_dir

    checked, problems = _guard(lambda: verify_dir(directory, decode=decode, workers=workers))
    for p in problems:
        typer.echo(f"FAIL {p}", err=True)
    if problems:
        fail(f"{directory}: {len(problems)} problem(s) in {checked} shard(s)")
    typer.echo(f"ok: {checked} shard(s) verified in {directory}")


def register(app: typer.Typer, bench_app: typer.Typer, shards_app: typer.Typer) -> None:
    shards_app.command("ls")(ls)
    shards_app.command("stats")(stats)
    shards_app.command("show")(show)
    shards_app.command("verify")(verify)
