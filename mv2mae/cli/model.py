"""``mv2mae convert``, ``export`` and ``embed``: weights in and out, features of a video."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mv2mae.cli.errors import fail, reported

# what reading, converting and writing weights raises that the user can act on (CheckpointError is a
# ValueError; imported with the command, so torch stays out of ``--help``)
WEIGHT_ERRORS = (ValueError, FileNotFoundError)


def convert(
    source: Path = typer.Argument(..., help="MCG-NJU VideoMAE .pth file, or a Hugging Face VideoMAE directory."),
    from_: str = typer.Option(..., "--from", help="Source layout: 'videomae' (MCG-NJU) or 'hf' (transformers)."),
    out: Path = typer.Option(..., "--out", help="Checkpoint to write (an mv2mae MV2MAE checkpoint)."),
    frames: int = typer.Option(16, help="Clip length the VideoMAE weights were trained with (MCG-NJU files do not store it)."),
    image_size: int = typer.Option(224, help="Input size the VideoMAE weights were trained with (MCG-NJU only)."),
    heads: int = typer.Option(None, help="Encoder heads (MCG-NJU only; default width/64)."),
    decoder_heads: int = typer.Option(None, help="Decoder heads (MCG-NJU only; default width/64)."),
) -> None:
    """Import VideoMAE weights (encoder, and the self-view decoder where present) as an mv2mae checkpoint."""
    from mv2mae.interop import convert as do_convert

    with reported(*WEIGHT_ERRORS):
        model, parts = do_convert(from_, source, out, frames=frames, image_size=image_size, num_heads=heads,
                                  decoder_heads=decoder_heads)
    fresh = [p for p in ("encoder", "self_decoder", "cross_decoder") if p not in parts]
    typer.echo(f"wrote {out}: imported {', '.join(parts)}; freshly initialised {', '.join(fresh)}; "
               f"config {json.dumps(model.cfg.geometry())}")


def export(
    checkpoint: Path = typer.Argument(..., help="An mv2mae checkpoint."),
    out_dir: Path = typer.Argument(..., help="Directory to write config.json + model.safetensors into."),
    to: str = typer.Option("hf", "--to", help="Target layout (only 'hf': Hugging Face transformers)."),
    with_decoder: bool = typer.Option(False, "--with-decoder/--encoder-only",
                                      help="Write VideoMAEForPreTraining (with the self-view decoder) instead of VideoMAEModel."),
) -> None:
    """Write the encoder (and optionally the self-view decoder) in the Hugging Face VideoMAE layout."""
    from mv2mae.interop import export_hf
    from mv2mae.model.checkpoint import load_mv2mae

    if to != "hf":
        fail(f"--to {to!r}: only 'hf' is supported")
    with reported(*WEIGHT_ERRORS):
        export_hf(load_mv2mae(checkpoint), out_dir, with_decoder=with_decoder)
    typer.echo(f"wrote {out_dir}/config.json and {out_dir}/model.safetensors")


def embed(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="An mv2mae checkpoint (pretraining, finetuning or converted)."),
    video: Path = typer.Option(..., "--video", help="A video file OpenCV can decode."),
    out: Path = typer.Option(..., "--out", help="Where to save the features (.npy, float32)."),
    frames: int = typer.Option(None, help="Frames per clip (default: the checkpoint's)."),
    stride: int = typer.Option(4, help="Temporal stride between sampled frames."),
    size: int = typer.Option(None, help="Square crop size (default: the checkpoint's)."),
    clips: int = typer.Option(1, help="Evenly spaced clips to embed (rows of the output)."),
    pool: bool = typer.Option(True, "--pool/--tokens", help="Mean-pooled [clips, D] or every token [clips, N, D]."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
) -> None:
    """Features of a video from the frozen encoder — the feature-extraction entry point."""
    import numpy as np

    from mv2mae.eval.embed import embed_video

    with reported(*WEIGHT_ERRORS):
        feats = embed_video(checkpoint, video, frames, stride, size, clips, pool, device)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, feats)
    typer.echo(f"wrote {out}: features {list(feats.shape)}")


def register(app: typer.Typer, bench_app: typer.Typer, shards_app: typer.Typer) -> None:
    app.command("convert")(convert)
    app.command("export")(export)
    app.command("embed")(embed)
