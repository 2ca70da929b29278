"""``mv2mae bench motion``: how much each motion source spreads the loss weights, and the τ for ``flow``
that spreads them as τ = 60 spreads ``framediff``'s (``model.tau_flow``).

The two sources are in different units (framediff: 0-255 grey levels; flow: stored-frame pixels per
stored frame), so one τ cannot serve both. The benchmark renders a small synthetic set (every action
once, three cameras, the default 320×240), preprocesses it with both cached sources at the stored
short side 160, and draws the same pretraining samples under ``data.motion=framediff`` and ``flow``
(the motion source draws no random numbers, so the groups, frames and crops are the same). For every
view it draws a random mask (the model's ratio) and the weights ``w = |Ω| softmax(m / τ)`` over the
masked tokens Ω, which average 1, so their standard deviation is their relative spread. τ for flow is
found by bisection so that the mean of that spread over views equals framediff's at τ = 60.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from mv2mae.data import DataConfig, build_pretrain_loader
from mv2mae.model.config import ModelConfig
from mv2mae.model.masking import sample_mask
from mv2mae.model.objective import motion_weights
from mv2mae.preprocess.pipeline import run
from mv2mae.preprocess.synth import generate

TAU_FRAMEDIFF = 60.0  # the paper's τ, which the flow τ is matched to
SHORT_SIDE = 160
GEOMETRIES = {  # name -> (model overrides, stride)
    "16×128² s4": (dict(), 4),  # the paper presets
    "8×64² s3": (dict(frames=8, image_size=64, patch=16), 3),  # the tiny preset (make demo)
}


def prepare(work: Path, workers: int) -> Path:
    """Render and preprocess the set into ``work`` (reused when it is already there)."""
    raw, data = work / "raw", work / "shards"
    if not (data / "index.json").is_file():
        generate(raw, classes=12, cameras=3, subjects=1, replications=1, seed=0, workers=workers, progress=False)
        run("synth", raw, data, size=SHORT_SIDE, motion="both", workers=workers)
    return data


def draw(data: Path, model: ModelConfig, stride: int, motion: str, samples: int) -> tuple[list[str], torch.Tensor]:
    """Keys and motion ``[samples, views, N]`` of the first ``samples`` pretraining samples."""
    cfg = DataConfig(root=str(data), protocol="all", stride=stride, motion=motion, workers=0)
    it = iter(build_pretrain_loader(model, cfg, batch_size=samples, seed=0))
    batch = next(it)
    return list(batch["key"]), batch["motion"]


def spread(motion: torch.Tensor, mask: torch.Tensor, tau: float) -> dict[str, float]:
    """Mean over views of the weights' std over the masked tokens, and the median max/min ratio."""
    w = motion_weights(motion, mask, tau)
    masked = w[mask].view(*mask.shape[:-1], -1)
    ratio = masked.amax(-1) / masked.amin(-1)
    return dict(std=float(masked.std(-1).mean()), max_over_min=float(ratio.median()))


def match_tau(motion: torch.Tensor, mask: torch.Tensor, target: float) -> float:
    """τ at which ``spread(motion, mask, τ)["std"]`` equals ``target`` (bisection on log τ)."""
    lo, hi = math.log(1e-3), math.log(1e4)
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if spread(motion, mask, math.exp(mid))["std"] > target else (lo, mid)
    return math.exp((lo + hi) / 2)


def run_bench(work: Path, *, samples: int, workers: int) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    data = prepare(work, workers)
    rows = []
    for name, (overrides, stride) in GEOMETRIES.items():
        model = ModelConfig(**overrides)
        keys, framediff = draw(data, model, stride, "framediff", samples)
        flow_keys, flow = draw(data, model, stride, "flow", samples)
        if keys != flow_keys:
            raise RuntimeError("framediff and flow streams drew different groups")
        gen = torch.Generator().manual_seed(0)
        mask = sample_mask(model, framediff.shape[0] * framediff.shape[1], "cpu", gen).view(framediff.shape)
        target = spread(framediff, mask, TAU_FRAMEDIFF)
        tau_flow = match_tau(flow, mask, target["std"])
        rows.append(dict(geometry=name, stride=stride, views=int(framediff.shape[0] * framediff.shape[1]),
                         framediff=dict(median=float(framediff.median()), p99=float(framediff.quantile(0.99)),
                                        **target),
                         flow=dict(median=float(flow.median()), p99=float(flow.quantile(0.99)),
                                   at_tau_60=spread(flow, mask, TAU_FRAMEDIFF),
                                   at_matched_tau=spread(flow, mask, tau_flow)),
                         tau_flow=round(tau_flow, 3)))
    return dict(data=str(data), samples=samples, tau_framediff=TAU_FRAMEDIFF, rows=rows)


def print_report(r: dict) -> None:
    table = Table(title=f"motion weights over the masked tokens ({r['samples']} samples × 2 views, synthetic set)",
                  caption="std of the weights (mean over views) at τ = 60 for both sources; τ flow: the τ giving "
                          "flow framediff's std; max/min (median over views) at τ = 60 and at τ flow")
    for col in ("clips", "framediff median/p99", "flow median/p99", "std: framediff", "flow", "τ flow",
                "max/min: framediff", "flow"):
        table.add_column(col, justify="left" if col == "clips" else "right")
    for row in r["rows"]:
        fd, fl = row["framediff"], row["flow"]
        table.add_row(row["geometry"], f"{fd['median']:.2f} / {fd['p99']:.1f}", f"{fl['median']:.3f} / {fl['p99']:.2f}",
                      f"{fd['std']:.3f}", f"{fl['at_tau_60']['std']:.4f}", f"{row['tau_flow']:.2f}",
                      f"{fd['max_over_min']:.2f}", f"{fl['at_matched_tau']['max_over_min']:.2f}")
    Console().print(table)

