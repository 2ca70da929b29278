"""``mv2mae bench model``: the pretraining step of MV2MAE, against transformers' VideoMAE.

Measured on the same machine and config: forward + backward of one pretraining step (no optimiser
step), median over timed steps after warm-up. On CPU the default stays within a few minutes on two
cores; the GPU section (bf16, MFU, peak memory at batch 32, torch.compile) runs only with CUDA.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from mv2mae.model.config import ModelConfig
from mv2mae.model.flops import pretrain_forward_flops, pretrain_step_flops
from mv2mae.model.masking import sample_mask, split_indices
from mv2mae.model.mv2mae import MV2MAE

# Dense (no 2:4 sparsity) bf16 tensor-core peaks in FLOP/s from the vendors' datasheets, for MFU; the
# first entry whose name occurs in the device's name wins, so a variant precedes its family. Unknown
# cards report throughput only.
PEAK_BF16 = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12,
             "L4": 121e12, "A10": 125e12, "4090": 165e12}
PEAK_KIND = "dense bf16 tensor-core peak, vendor datasheet"
NO_GPU = "not measured (no GPU)"


@dataclass
class ModelBenchSettings:
    preset: str = "vit_small"
    batch: int = 2
    warmup: int = 1
    steps: int = 5
    views: tuple[int, ...] = (1, 2, 3, 4)
    sources: tuple[int, ...] = (1, 2, 3)
    compare_hf: bool = True
    gpu_batch: int = 32
    gpu_presets: tuple[str, ...] = ("vit_small", "vit_base")
    gpu_views: tuple[int, ...] = (1, 2)
    seed: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], None], warmup: int, steps: int, device: torch.device,
               cpu_times: list[float] | None = None) -> list[float]:
    """Wall seconds per call; ``cpu_times`` (if given) collects this process's CPU seconds per call,
    which a busy shared machine inflates far less than wall time."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        _sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
        if cpu_times is not None:
            cpu_times.append(time.process_time() - cpu_start)
    return times


def interleaved_times(fns: dict[Any, Callable[[], None]], warmup: int, steps: int,
                      device: torch.device) -> tuple[dict[Any, list[float]], dict[Any, list[float]]]:
    """(wall, CPU) seconds per call of every function, timed once per round, round after round, so
    that load from other processes on a shared machine falls on all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    wall: dict[Any, list[float]] = {name: [] for name in fns}
    cpu: dict[Any, list[float]] = {name: [] for name in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            wall[name] += time_calls(fn, 0, 1, device, cpu[name])
    return wall, cpu


def _video(cfg: ModelConfig, batch: int, views: int, device: torch.device, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (batch, views, cfg.channels, cfg.frames, cfg.image_size, cfg.image_size)
    return torch.randn(shape, generator=g).to(device)


def ours_step(model: MV2MAE, video: torch.Tensor, seed: int, autocast: bool = False) -> Callable[[], None]:
    gen = torch.Generator(device=video.device)

    def step() -> None:
        gen.manual_seed(seed)
        with torch.autocast(video.device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(video, generator=gen)
        out.loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def hf_pretraining_model(cfg: ModelConfig, device: torch.device):
    """transformers' VideoMAEForPreTraining with our depth, widths, heads, tokens and eps."""
    from transformers import VideoMAEConfig, VideoMAEForPreTraining  # optional: the `interop` extra

    hf_cfg = VideoMAEConfig(
        image_size=cfg.image_size, patch_size=cfg.patch, num_channels=cfg.channels, num_frames=cfg.frames,
        tubelet_size=cfg.tubelet, hidden_size=cfg.embed_dim, num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.num_heads, intermediate_size=int(cfg.embed_dim * cfg.mlp_ratio),
        layer_norm_eps=cfg.norm_eps, qv_bias=cfg.qkv_bias, use_mean_pooling=not cfg.encoder_final_norm,
        decoder_hidden_size=cfg.decoder_dim, decoder_num_hidden_layers=cfg.decoder_depth,
        decoder_num_attention_heads=cfg.decoder_heads, decoder_intermediate_size=int(cfg.decoder_dim * cfg.mlp_ratio),
        norm_pix_loss=cfg.norm_pix, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return VideoMAEForPreTraining._from_config(hf_cfg, attn_implementation="sdpa").to(device).train()


def compare_single_view(cfg: ModelConfig, s: ModelBenchSettings, device: torch.device) -> dict[str, Any]:
    """Ours (1 view) vs transformers' VideoMAEForPreTraining, timed in alternation for fairness."""
    torch.manual_seed(s.seed)
    ours = MV2MAE(cfg).to(device).train()
    hf = hf_pretraining_model(cfg, device)
    video = _video(cfg, s.batch, 1, device, s.seed)
    mask = sample_mask(cfg, s.batch, device, torch.Generator(device=device).manual_seed(s.seed))
    hf_video = video[:, 0].transpose(1, 2).contiguous()  # transformers wants [B, T, C, H, W]

    def hf_step() -> None:
        hf(hf_video, bool_masked_pos=mask).loss.backward()
        hf.zero_grad(set_to_none=True)

    times, cpu = interleaved_times({"ours": ours_step(ours, video, s.seed), "hf": hf_step}, s.warmup, s.steps,
                                   device)
    ours_s, hf_s = statistics.median(times["ours"]), statistics.median(times["hf"])
    # each round times both back to back, so the per-round ratio cancels slow swings in machine load
    paired = statistics.median([h / o for h, o in zip(times["hf"], times["ours"], strict=True)])
    return {"batch": s.batch, "ours_step_s": ours_s, "hf_step_s": hf_s, "ours_samples_per_s": s.batch / ours_s,
            "hf_samples_per_s": s.batch / hf_s, "speedup": paired, "speedup_of_medians": hf_s / ours_s,
            "speedup_best_of": min(times["hf"]) / min(times["ours"]),
            "speedup_cpu_time": statistics.median(cpu["hf"]) / statistics.median(cpu["ours"]),
            "ours_cpu_s": statistics.median(cpu["ours"]), "hf_cpu_s": statistics.median(cpu["hf"]),
            "hf_attn": "sdpa",
            "ours_step_times_s": times["ours"], "hf_step_times_s": times["hf"]}


def views_sweep(cfg: ModelConfig, s: ModelBenchSettings, device: torch.device) -> list[dict[str, Any]]:
    torch.manual_seed(s.seed)
    model = MV2MAE(cfg).to(device).train()
    fns = {v: ours_step(model, _video(cfg, s.batch, v, device, s.seed), s.seed) for v in s.views}
    times, _ = interleaved_times(fns, s.warmup, s.steps, device)
    rows = []
    for views in s.views:
        step = statistics.median(times[views])
        flops = pretrain_step_flops(cfg, views, s.batch)
        rows.append({"views": views, "sources": views - 1, "step_s": step, "best_step_s": min(times[views]),
                     "samples_per_s": s.batch / step, "step_gflop": flops / 1e9,
                     "achieved_gflop_per_s": flops / step / 1e9})
    base = rows[0]["step_s"]
    for row in rows:
        row["relative_to_1_view"] = row["step_s"] / base
    return rows


def cross_decoder_sweep(cfg: ModelConfig, s: ModelBenchSettings, device: torch.device,
                        full_two_view_step_s: float | None) -> list[dict[str, Any]]:
    """Forward + backward of the cross-view decoder alone, on fixed encodings, for K sources."""
    torch.manual_seed(s.seed)
    decoder = MV2MAE(cfg).cross_decoder.to(device).train()
    mask = sample_mask(cfg, s.batch * (1 + max(s.sources)), device).view(s.batch, 1 + max(s.sources), -1)
    ids_vis, ids_mask = split_indices(mask, cfg.num_visible)
    fns = {}
    for k in s.sources:
        enc = torch.randn(s.batch, 1 + k, cfg.num_visible, cfg.embed_dim, device=device, requires_grad=True)

        def step(enc=enc, k=k) -> None:
            pred = decoder(enc[:, 0], ids_vis[:, 0], ids_mask[:, 0], enc[:, 1:], ids_vis[:, 1:k + 1])
            pred.float().pow(2).mean().backward()
            decoder.zero_grad(set_to_none=True)
            enc.grad = None

        fns[k] = step
    times, _ = interleaved_times(fns, s.warmup, s.steps, device)
    rows = []
    for k in s.sources:
        t = statistics.median(times[k])
        flops = 3 * s.batch * pretrain_forward_flops(cfg, 1 + k)["cross_decoder"]
        row = {"sources": k, "cross_decoder_s": t, "cross_decoder_gflop": flops / 1e9}
        if k == 1 and full_two_view_step_s:
            row["share_of_2_view_step"] = t / full_two_view_step_s
        rows.append(row)
    return rows


def peak_flops(device: torch.device) -> tuple[str, float] | None:
    """(table entry, dense bf16 FLOP/s) of a CUDA device, from :data:`PEAK_BF16`; None when unknown."""
    name = torch.cuda.get_device_name(device)
    return next(((k, v) for k, v in PEAK_BF16.items() if k in name), None)


def gpu_section(s: ModelBenchSettings, device: torch.device, compile_model: bool = True,
                compile_backend: str = "inductor", deadline: float = math.inf) -> dict[str, Any]:
    """bf16 autocast at the GPU batch for every preset × view count (``gpu_views``), eager and compiled:
    step time, samples/s, MFU against the device's dense bf16 peak, peak memory. The video is uint8, so
    the model's own normalisation runs on the device as in training. Rows not started by ``deadline``
    (``time.monotonic()``) are reported as skipped.

    Only run on CUDA by :func:`run_model_bench` and ``mv2mae bench gpu``; it works on any device (the
    tests smoke-run it on CPU, with the ``eager`` compile backend)."""
    cuda = device.type == "cuda"
    peak = peak_flops(device) if cuda else None
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if cuda else str(device),
                           "batch": s.gpu_batch, "peak": None if peak is None else
                           {"entry": peak[0], "tflop_per_s": peak[1] / 1e12, "kind": PEAK_KIND}, "rows": []}
    for name in s.gpu_presets:
        cfg = ModelConfig.preset(name, **s.overrides)
        for views in s.gpu_views:
            for compiled in (False, True) if compile_model else (False,):
                row = {"preset": name, "views": views, "compiled": compiled}
                if time.monotonic() > deadline:
                    out["rows"].append(row | {"skipped": "time budget"})
                    continue
                out["rows"].append(row | _gpu_row(cfg, views, compiled, compile_backend, s, device, peak))
                if cuda:
                    torch.cuda.empty_cache()
    return out


def _gpu_row(cfg: ModelConfig, views: int, compiled: bool, backend: str, s: ModelBenchSettings,
             device: torch.device, peak: tuple[str, float] | None) -> dict[str, Any]:
    cuda = device.type == "cuda"
    torch.manual_seed(s.seed)
    model = MV2MAE(cfg).to(device).train()
    g = torch.Generator().manual_seed(s.seed)
    shape = (s.gpu_batch, views, cfg.channels, cfg.frames, cfg.image_size, cfg.image_size)
    video = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8).to(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    warmup = max(s.warmup, 3) if cuda else s.warmup  # allocator and kernel autotuning settle first
    try:
        step_fn = ours_step(torch.compile(model, backend=backend) if compiled else model, video, s.seed,
                            autocast=True)
        times = time_calls(step_fn, warmup + (2 if compiled else 0), s.steps, device)
    except Exception as exc:  # noqa: BLE001 - a compiler failure is a finding to report, not a crash
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    step = statistics.median(times)
    flops = pretrain_step_flops(cfg, views, s.gpu_batch)
    return {"step_s": step, "samples_per_s": s.gpu_batch / step, "tflop_per_s": flops / step / 1e12,
            "mfu": flops / step / peak[1] if peak else None,
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None}


def gpu_rows_table(gpu: dict[str, Any]) -> Table:
    peak = gpu["peak"]
    note = f"MFU vs {peak['tflop_per_s']:.0f} TFLOP/s ({peak['entry']}, {peak['kind']})" if peak else "peak unknown"
    t = Table(title=f"{gpu['device']}, bf16 autocast, uint8 input, batch {gpu['batch']}; {note}")
    for col in ("preset", "views", "compile", "step ms", "samples/s", "TFLOP/s", "MFU", "peak GiB"):
        t.add_column(col)
    for r in gpu["rows"]:
        head = (r["preset"], str(r["views"]), "yes" if r["compiled"] else "no")
        if "step_s" not in r:
            t.add_row(*head, r.get("skipped") or r.get("error", ""), "", "", "", "")
            continue
        t.add_row(*head, f"{1e3 * r['step_s']:.1f}", f"{r['samples_per_s']:.1f}", f"{r['tflop_per_s']:.1f}",
                  f"{r['mfu']:.1%}" if r["mfu"] else "n/a",
                  f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "n/a")
    return t


def run_model_bench(s: ModelBenchSettings, device: torch.device) -> dict[str, Any]:
    cfg = ModelConfig.preset(s.preset, **s.overrides)
    result: dict[str, Any] = {
        "benchmark": "model", "settings": asdict(s), "config": cfg.to_dict(), "device": str(device),
        "cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "analytic_forward_gflop_per_sample": {v: {k: x / 1e9 for k, x in pretrain_forward_flops(cfg, v).items()}
                                              for v in s.views},
    }
    result["load_average_before"] = load_average()
    if s.compare_hf:
        result["single_view_vs_transformers"] = compare_single_view(cfg, s, device)
    result["views"] = views_sweep(cfg, s, device)
    two = next((r["step_s"] for r in result["views"] if r["views"] == 2), None)
    result["cross_decoder"] = cross_decoder_sweep(cfg, s, device, two)
    result["gpu"] = gpu_section(s, device) if device.type == "cuda" else {"status": NO_GPU}
    result["load_average_after"] = load_average()
    return result


def load_average() -> list[float] | None:
    """1/5/15-minute load: on a shared machine it says how much to trust CPU timings."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # not available on every platform
        return None


def print_model_bench(result: dict[str, Any]) -> None:
    console = Console()
    s = result["settings"]
    if result.get("load_average_before"):
        console.print(f"machine load (1/5/15 min) before {result['load_average_before']}, "
                      f"after {result['load_average_after']}")
    head = f"mv2mae bench model — {s['preset']}, {result['config']['frames']}×{result['config']['image_size']}², " \
           f"ρ={result['config']['mask_ratio']}, batch {s['batch']}, {result['device']} ({result['torch_threads']} threads)"
    cmp_ = result.get("single_view_vs_transformers")
    if cmp_:
        t = Table(title=head + " — single view vs transformers VideoMAEForPreTraining")
        for col in ("model", "step s", "samples/s"):
            t.add_column(col)
        t.add_row("mv2mae", f"{cmp_['ours_step_s']:.3f}", f"{cmp_['ours_samples_per_s']:.2f}")
        t.add_row("transformers", f"{cmp_['hf_step_s']:.3f}", f"{cmp_['hf_samples_per_s']:.2f}")
        t.add_row("speed-up (median of paired rounds)", "", f"{cmp_['speedup']:.2f}×")
        t.add_row("speed-up (best of each)", "", f"{cmp_['speedup_best_of']:.2f}×")
        t.add_row("speed-up (process CPU time)", "", f"{cmp_['speedup_cpu_time']:.2f}×")
        console.print(t)
    t = Table(title="step time vs views (K = V−1 source views)")
    for col in ("views", "step s", "samples/s", "× 1-view", "GFLOP/step", "GFLOP/s"):
        t.add_column(col)
    for r in result["views"]:
        t.add_row(str(r["views"]), f"{r['step_s']:.3f}", f"{r['samples_per_s']:.2f}", f"{r['relative_to_1_view']:.2f}",
                  f"{r['step_gflop']:.0f}", f"{r['achieved_gflop_per_s']:.1f}")
    console.print(t)
    t = Table(title="cross-view decoder alone (forward+backward) vs source count")
    for col in ("sources", "time s", "GFLOP", "share of 2-view step"):
        t.add_column(col)
    for r in result["cross_decoder"]:
        share = r.get("share_of_2_view_step")
        t.add_row(str(r["sources"]), f"{r['cross_decoder_s']:.3f}", f"{r['cross_decoder_gflop']:.1f}",
                  f"{share:.1%}" if share is not None else "")
    console.print(t)
    gpu = result["gpu"]
    if "status" in gpu:
        console.print(f"GPU (bf16, MFU, peak memory, torch.compile): {gpu['status']}")
        return
    console.print(gpu_rows_table(gpu))
