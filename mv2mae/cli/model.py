"""``mv2mae convert``, ``export``, ``embed`` and ``bench model``: weights in and out, features, speed."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def _fail(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(1)


def _known_errors() -> tuple[type[BaseException], ...]:
    from mv2mae.model.checkpoint import CheckpointError

    return (CheckpointError, ValueError, FileNotFoundError)


# ----------------------------------------------------------------------------- video -> clips
def clip_starts(total: int, span: int, clips: int) -> list[int]:
    """Evenly spaced clip starts over the video (all at 0 when it is shorter than one clip)."""
    room = max(total - span, 0)
    if clips == 1:
        return [room // 2]
    return [round(i * room / (clips - 1)) for i in range(clips)]


def read_video_clips(path: Path, frames: int, stride: int, size: int, clips: int):
    """Decode ``clips`` clips of ``frames`` frames (every ``stride``-th) -> uint8 [clips, T, size, size, 3] RGB,
    short side resized to ``size`` and centre-cropped. Short videos repeat their last frame; only the
    sampled frames are kept in memory (the others are skipped with ``grab``)."""
    import cv2
    import numpy as np

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"{path}: cannot open video (missing file or unsupported format)")
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    if total <= 0:
        cap.release()
        raise ValueError(f"{path}: the container reports no frame count; re-encode it (e.g. to mp4)")
    span = (frames - 1) * stride + 1
    wanted = [[min(start + i * stride, total - 1) for i in range(frames)] for start in clip_starts(total, span, clips)]
    needed, kept = set(sum(wanted, [])), {}
    for index in range(max(needed) + 1):
        if not cap.grab():
            break  # the header over-counted: later indices reuse the last decoded frame
        if index in needed:
            ok, image = cap.retrieve()
            if ok:
                kept[index] = _square(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), size)
    cap.release()
    if not kept:
        raise ValueError(f"{path}: no decodable frames")
    fallback = kept[max(kept)]
    return np.stack([np.stack([kept.get(i, fallback) for i in clip]) for clip in wanted])


def _square(image, size: int):
    import cv2

    h, w = image.shape[:2]
    scale = size / min(h, w)
    resized = cv2.resize(image, (max(size, round(w * scale)), max(size, round(h * scale))),
                         interpolation=cv2.INTER_AREA)
    top, left = (resized.shape[0] - size) // 2, (resized.shape[1] - size) // 2
    return resized[top:top + size, left:left + size]


def embed_video(checkpoint: Path, video: Path, frames: int | None, stride: int, size: int | None, clips: int,
                pool: bool, device: str):
    """Features of ``clips`` clips of a video from the frozen encoder: [clips, D] (or [clips, N, D])."""
    import numpy as np
    import torch

    from mv2mae.data.decode import normalize_video, to_video_tensor
    from mv2mae.model.checkpoint import load_checkpoint, load_encoder

    ckpt = load_checkpoint(checkpoint)
    saved = ckpt["config"]
    frames, size = frames or saved["frames"], size or saved["image_size"]
    encoder, cfg = load_encoder(ckpt, frames=frames, image_size=size)
    encoder = encoder.to(device).eval()
    rgb = read_video_clips(video, frames, stride, size, clips)  # [clips, T, H, W, 3]
    x = normalize_video(to_video_tensor(rgb).to(device), cfg.pixel_mean, cfg.pixel_std)  # as the loaders do
    with torch.inference_mode():
        tokens = encoder(x)
    feats = tokens.mean(dim=1) if pool else tokens
    return feats.float().cpu().numpy().astype(np.float32)


# ----------------------------------------------------------------------------- commands
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

    try:
        model, parts = do_convert(from_, source, out, frames=frames, image_size=image_size, num_heads=heads,
                                  decoder_heads=decoder_heads)
    except _known_errors() as exc:
        _fail(str(exc))
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
        _fail(f"--to {to!r}: only 'hf' is supported")
    try:
        export_hf(load_mv2mae(checkpoint), out_dir, with_decoder=with_decoder)
    except _known_errors() as exc:
        _fail(str(exc))
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

    try:
        feats = embed_video(checkpoint, video, frames, stride, size, clips, pool, device)
    except _known_errors() as exc:
        _fail(str(exc))
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, feats)
    typer.echo(f"wrote {out}: features {list(feats.shape)}")


def register(app: typer.Typer, bench_app: typer.Typer, shards_app: typer.Typer) -> None:
    app.command("convert")(convert)
    app.command("export")(export)
    app.command("embed")(embed)
