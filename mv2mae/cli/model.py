"""``mv2mae convert``, ``export``, ``embed`` and ``predict``: weights in and out, features and classes of videos."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import typer

from mv2mae.cli.choices import ExportFormat, WeightsLayout
from mv2mae.cli.errors import check_output, reported
from mv2mae.shards.atomic import WriteError, check_publishable, publish_dir, write_atomic

# what reading, converting and writing weights raises that the user can act on (CheckpointError is a
# ValueError; imported with the command, so torch stays out of ``--help``)
WEIGHT_ERRORS = (ValueError, FileNotFoundError)


def convert(
    source: Path = typer.Argument(..., help="MCG-NJU VideoMAE .pth file, or a Hugging Face VideoMAE directory."),
    from_: WeightsLayout = typer.Option(..., "--from", help="Source layout: videomae (MCG-NJU .pth) or hf "
                                                              "(a transformers directory)."),
    out: Path = typer.Option(..., "--out", help="Checkpoint to write (an mv2mae MV2MAE checkpoint)."),
    frames: int = typer.Option(16, help="Clip length the VideoMAE weights were trained with (MCG-NJU files do not store it)."),
    image_size: int = typer.Option(224, help="Input size the VideoMAE weights were trained with (MCG-NJU only)."),
    heads: int = typer.Option(None, help="Encoder heads (MCG-NJU only; default width/64)."),
    decoder_heads: int = typer.Option(None, help="Decoder heads (MCG-NJU only; default width/64)."),
) -> None:
    """Import VideoMAE weights (encoder, and the self-view decoder where present) as an mv2mae checkpoint."""
    from mv2mae.interop import convert as do_convert

    with reported(*WEIGHT_ERRORS):
        model, parts = do_convert(from_.value, source, out, frames=frames, image_size=image_size, num_heads=heads,
                                  decoder_heads=decoder_heads)
    fresh = [p for p in ("encoder", "self_decoder", "cross_decoder") if p not in parts]
    typer.echo(f"wrote {out}: imported {', '.join(parts)}; freshly initialised {', '.join(fresh)}; "
               f"config {json.dumps(model.cfg.geometry())}")


def export(
    checkpoint: Path = typer.Argument(..., help="An mv2mae checkpoint: a finetuned classifier, or a pretraining one."),
    out_dir: Path = typer.Argument(..., help="Directory to write config.json, model.safetensors and "
                                             "preprocessor_config.json into."),
    to: ExportFormat = typer.Option(ExportFormat.hf, "--to", help="Target layout (hf: Hugging Face transformers)."),
    with_decoder: bool = typer.Option(False, "--with-decoder/--encoder-only",
                                      help="Pretraining checkpoints: write VideoMAEForPreTraining (with the self-view "
                                           "decoder) instead of VideoMAEModel."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT_DIR even when it holds files an export "
                                                              "did not write."),
) -> None:
    """Write a model in the Hugging Face VideoMAE layout: a classifier as VideoMAEForVideoClassification
    (labels from the dataset's class names), an encoder as VideoMAEModel; checked against transformers
    when it is installed. The folder is written beside OUT_DIR and put in its place when complete."""
    from mv2mae.interop import EXPORT_TOLERANCE, check_export, export_hf, is_export
    from mv2mae.model.checkpoint import load_checkpoint, load_classifier, load_mv2mae

    with reported(*WEIGHT_ERRORS):
        check_publishable(out_dir, is_export, overwrite)
        check_output(out_dir)
        ckpt = load_checkpoint(checkpoint)
        if "head.weight" in ckpt["model"]:
            model = load_classifier(ckpt, str(checkpoint))
            publish_dir(out_dir, lambda tmp: export_hf(model, tmp, class_names=ckpt.get("classes")), is_export,
                        overwrite)
        else:
            model = load_mv2mae(ckpt)
            publish_dir(out_dir, lambda tmp: export_hf(model, tmp, with_decoder=with_decoder), is_export, overwrite)
        diff = check_export(model, out_dir)
    typer.echo(f"wrote {out_dir}: config.json, model.safetensors, preprocessor_config.json")
    if diff is None:
        typer.echo("not checked: transformers is not installed (pip install 'mv2mae[interop]')")
    else:
        typer.echo(f"checked: transformers reproduces our outputs within {diff:.1e} (tolerance {EXPORT_TOLERANCE:g})")


def embed(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="An mv2mae checkpoint (pretraining, finetuning or converted)."),
    video: Path = typer.Option(..., "--video", help="A video file OpenCV can decode."),
    out: Path = typer.Option(..., "--out", help="Where to save the features (.npy, float32)."),
    frames: int = typer.Option(None, help="Frames per clip (default: the checkpoint's)."),
    stride: int = typer.Option(4, help="Temporal stride between sampled frames."),
    size: int = typer.Option(None, help="Square crop size (default: the checkpoint's)."),
    clips: int = typer.Option(1, help="Evenly spaced clips to embed (rows of the output)."),
    pool: bool = typer.Option(True, "--pool/--tokens", help="Mean-pooled features, one row per clip (clips × D), "
                                                             "or every token (clips × N × D)."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
) -> None:
    """Features of a video from the frozen encoder — the feature-extraction entry point."""
    import numpy as np

    from mv2mae.eval.embed import embed_video

    check_output(out, folder=False)
    with reported(*WEIGHT_ERRORS):
        feats = embed_video(checkpoint, video, frames, stride, size, clips, pool, device)
        npy = io.BytesIO()
        np.save(npy, feats)
        write_atomic(out, npy.getvalue())
    typer.echo(f"wrote {out}: features {list(feats.shape)}")


def predict(
    videos: list[Path] = typer.Argument(..., help="Video files, or folders of them."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A finetuned classifier (e.g. "
                                                               "RUN/finetune/checkpoints/last-step.pt)."),
    views: bool = typer.Option(False, "--views/--separate",
                               help="The videos are synchronised views of one recording: also give their fused "
                                    "prediction (probabilities averaged, as eval fuses cameras)."),
    top_k: int = typer.Option(5, "--top-k", help="Classes listed per video."),
    clips: int = typer.Option(None, "--clips", help="Temporal clips per video (default: the run's data.eval_clips)."),
    crops: int = typer.Option(None, "--crops", help="Spatial crops per clip (default: the run's data.eval_crops)."),
    out: Path = typer.Option(None, "--out", help="Also write the predictions to this .json or .csv file."),
    device: str = typer.Option("auto", "--device", help="auto (cuda if available), cpu, cuda or cuda:N."),
) -> None:
    """Classify videos with a finetuned model: top classes with their scores, sampled as eval samples."""
    from mv2mae.eval.predict import Predictor, predict_videos, video_files
    from mv2mae.train.distributed import pick_device

    if out is not None and out.suffix not in (".json", ".csv"):
        raise typer.BadParameter(f"{out}: write .json or .csv", param_hint="--out")
    if out is not None:
        check_output(out, folder=False)
    with reported(*WEIGHT_ERRORS, RuntimeError):  # RuntimeError: a CUDA device asked for and not there
        predictor = Predictor.load(checkpoint, pick_device(device))
        rows = predict_videos(predictor, video_files(videos), views=views, top_k=top_k, clips=clips, crops=crops)
    for row in rows:
        typer.echo(f"{row['video']}: " + ", ".join(f"{t['class']} {100 * t['score']:.1f}%" for t in row["top"]))
    if out is not None:
        with reported(WriteError):
            write_atomic(out, _predictions_json(checkpoint, rows) if out.suffix == ".json" else _predictions_csv(rows))
        typer.echo(f"wrote {out}")


def _predictions_json(checkpoint: Path, rows: list[dict]) -> str:
    return json.dumps({"checkpoint": str(checkpoint), "predictions": rows}, indent=2) + "\n"


def _predictions_csv(rows: list[dict]) -> str:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["video", "rank", "class", "score"])
    writer.writerows([r["video"], k + 1, t["class"], t["score"]] for r in rows for k, t in enumerate(r["top"]))
    return text.getvalue()


def register(app: typer.Typer, bench_app: typer.Typer, shards_app: typer.Typer) -> None:
    app.command("convert")(convert)
    app.command("export")(export)
    app.command("embed")(embed)
    app.command("predict")(predict)
