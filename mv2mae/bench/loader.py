"""``mv2mae bench loader``: pretraining samples/s from shards against a VideoMAE-style raw-video loader.

Both loaders draw the same kind of sample — two views of one group, the same 16 frame indices at
stride 4 in both views, an independent random resized crop per view to 128², uint8 video (the model
normalises it) and per-token motion weights — with the same number of DataLoader workers on the same
machine. The baseline decodes the raw H.264 videos per sample (seek to the clip, decode through it,
resize to the stored short side); the shard loader decodes only the sampled JPEGs — in its workers
(``decode_on=cpu``), or, with ``decode_on=device``, the workers only plan and read bytes and this process
decodes each batch (on the GPU when there is one). Both compute the framediff motion from the cropped
clip (``clip_token_motion``; with ``decode_on=device``, after decoding). The benchmark renders and
preprocesses its own data.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, IterableDataset

from mv2mae.data import ClipGeometry, DataConfig, build_pretrain_loader
from mv2mae.data.loaders import collate_clips
from mv2mae.data.motion import clip_token_motion
from mv2mae.data.pixels import crop_resize, decode_jpeg_rgb, to_video_tensor
from mv2mae.data.sampling import Crop, choose_views, random_resized_box, train_frame_indices
from mv2mae.model.config import ModelConfig
from mv2mae.model.flops import pretrain_step_flops
from mv2mae.preprocess.pipeline import run
from mv2mae.preprocess.synth import generate
from mv2mae.shards.reader import current_slot
from mv2mae.shards.tarindex import iter_tar

SHORT_SIDE = 160  # stored short side (DESIGN.md default for 128-pixel crops)
BATCH = 8
REPEATS = 2  # the repeated-sampling row: pretraining samples per decoded group
# Labelled assumptions, used only when no measured ViT-S H100 rate is given: H100 SXM dense bf16 peak
# and a model-FLOPs utilisation typical of a small ViT; the FLOPs per sample are analytic (model.flops).
H100_BF16_PEAK = 989e12
ASSUMED_MFU = 0.20
HEADROOM = 1.25  # workers are provisioned 25% above the GPU's appetite so it never waits
_NTU_NAME = re.compile(r"^(S\d{3})C(\d{3})(P\d{3}R\d{3}A\d{3})_rgb\.avi$")


def prepare(work: Path, raw_size: tuple[int, int], groups: int, workers: int, short_side: int = SHORT_SIDE) -> dict:
    """Render ``groups`` three-camera groups at ``raw_size`` and preprocess them (cached in ``work``)."""
    tag = f"{raw_size[0]}x{raw_size[1]}-g{groups}" + ("" if short_side == SHORT_SIDE else f"-s{short_side}")
    raw, data = work / f"raw-{tag}", work / f"shards-{tag}"
    info_path = work / f"prepared-{tag}.json"
    if info_path.is_file() and (data / "index.json").is_file():
        return json.loads(info_path.read_text())
    t0 = time.perf_counter()
    generate(raw, classes=groups, cameras=3, subjects=1, replications=1, setups=1, frames=(72, 96),
             size=raw_size, seed=0, workers=workers, progress=False)
    t1 = time.perf_counter()
    summary = run("synth", raw, data, size=short_side, workers=workers)
    t2 = time.perf_counter()
    info = dict(raw=str(raw), shards=str(data), groups=summary.groups, render_s=round(t1 - t0, 1),
                preprocess_s=round(t2 - t1, 1), raw_bytes=_bytes(raw, "*.avi"), shard_bytes=_bytes(data, "*.tar"),
                motion_bytes=_bytes(data / "motion.zarr", "*"))
    info_path.write_text(json.dumps(info))
    return info


def _bytes(folder: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in folder.rglob(pattern) if p.is_file())


class RawVideoClips(IterableDataset):
    """The VideoMAE-style baseline: every sample decodes its views from the raw videos."""

    def __init__(self, raw: Path, geom: ClipGeometry, data_cfg: DataConfig, seed: int):
        super().__init__()
        groups: dict[str, dict[int, str]] = defaultdict(dict)
        for path in sorted(raw.rglob("*_rgb.avi")):
            m = _NTU_NAME.match(path.name)
            if m:
                groups[m.group(1) + m.group(3)][int(m.group(2))] = str(path)
        self.groups = [groups[k] for k in sorted(groups)]
        self.geom, self.data_cfg, self.seed = geom, data_cfg, seed

    def __iter__(self) -> Iterator[dict]:
        cv2.setNumThreads(1)
        rng = np.random.default_rng([self.seed, current_slot().index])
        while True:
            views = self.groups[int(rng.integers(len(self.groups)))]
            cams = choose_views(list(views), self.data_cfg, rng)
            counts = [self._count(views[c]) for c in cams]
            indices = train_frame_indices(min(counts), self.geom, rng)
            clips = []
            for cam in cams:
                frames = self._decode(views[cam], indices)
                h, w = next(iter(frames.values())).shape[:2]
                clips.append(crop_resize(frames, indices, Crop(random_resized_box(w, h, self.data_cfg, rng)),
                                         self.geom.size))
            video = to_video_tensor(np.stack(clips))
            yield {"video": video, "motion": clip_token_motion(video, self.geom.tubelet, self.geom.patch),
                   "cameras": torch.tensor(cams)}

    @staticmethod
    def _open(path: str) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])  # one thread per worker
        if not cap.isOpened():
            raise RuntimeError(f"{path}: cannot open")
        return cap

    def _count(self, path: str) -> int:
        cap = self._open(path)
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        cap.release()
        return n

    def _decode(self, path: str, indices: np.ndarray) -> dict[int, np.ndarray]:
        """Seek to the clip's first frame, decode through its last, keep the sampled ones resized to the
        stored short side (what decord's ``get_batch`` + a resize transform do)."""
        cap = self._open(path)
        wanted, frames = set(int(i) for i in indices), {}
        first, last = int(indices.min()), int(indices.max())
        cap.set(cv2.CAP_PROP_POS_FRAMES, first)
        for t in range(first, last + 1):
            if not cap.grab():
                raise RuntimeError(f"{path}: frame {t} does not decode")
            if t in wanted:
                ok, img = cap.retrieve()
                h, w = img.shape[:2]
                scale = SHORT_SIDE / min(h, w)
                frames[t] = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        cap.release()
        return frames


def _children() -> list[int]:
    me, pids = os.getpid(), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == me:
                pids.append(int(pid))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds consumed so far by ``pids`` (the DataLoader workers)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def _memory_mib(pids: list[int]) -> list[dict[str, float]]:
    """Resident and proportional (shared pages divided among sharers) memory of each worker."""
    out = []
    for pid in pids:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in rollup)
        out.append({k.lower(): int(fields[k].split()[0]) / 1024 for k in ("Rss", "Pss")})
    return out


def measure(loader: Iterable[dict], seconds: float, workers: int) -> dict:
    """Samples per wall-clock second, and per CPU-second of the workers: the machine may be shared,
    and the CPU-time figure is what one dedicated core would deliver. The main process's CPU time per
    sample is reported too (with ``decode_on=device`` on the CPU it includes the decoding). At least
    three batches per worker are counted, however long they take: the workers' CPU time includes the
    batches still in flight when the clock stops, which would dominate a slow loader's figure measured
    over one or two."""
    it = iter(loader)
    for _ in range(max(1, workers)):  # warm-up: every worker has started and delivered once
        next(it)
    pids = _children()
    samples, batches, cpu0, t0 = 0, 0, _cpu_seconds(pids), time.perf_counter()
    main0 = time.process_time()
    while time.perf_counter() - t0 < seconds or batches < 3 * max(1, workers):
        samples += len(next(it)["cameras"])  # (a batch of plans has no video yet)
        batches += 1
    _sync()
    elapsed, cpu, main = time.perf_counter() - t0, _cpu_seconds(pids) - cpu0, time.process_time() - main0
    memory = _memory_mib(pids)
    del it
    rate = samples / elapsed
    return dict(samples=samples, seconds=round(elapsed, 2), samples_per_s=round(rate, 2),
                samples_per_s_per_worker=round(rate / max(1, workers), 2),
                worker_cpu_s=round(cpu, 2), samples_per_cpu_s=round(samples / max(cpu, 1e-9), 2),
                worker_cpu_ms_per_sample=round(1e3 * cpu / samples, 3),
                main_cpu_ms_per_sample=round(1e3 * main / samples, 3),
                worker_rss_mib=round(float(np.mean([m["rss"] for m in memory])), 1) if memory else None,
                worker_pss_mib=round(float(np.mean([m["pss"] for m in memory])), 1) if memory else None)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def decode_floor(shards: Path, frames_per_sample: int, members: int = 256, repeats: int = 3) -> dict:
    """The ceiling JPEG decoding alone puts on any loader of these shards: CPU time of ``cv2.imdecode``
    over real frame members, as samples per CPU-second (everything else a worker does comes on top)."""
    shard = sorted(shards.glob("*.tar"))[0]
    with open(shard, "rb") as f:
        jpegs = [d for n, d in iter_tar(f, shard.name, lambda n: n.endswith(".jpg")) if d is not None][:members]
    cv2.setNumThreads(1)
    decode_jpeg_rgb(jpegs[0])
    start = time.process_time()
    for _ in range(repeats):
        for data in jpegs:
            decode_jpeg_rgb(data)
    per_frame = (time.process_time() - start) / (repeats * len(jpegs))
    return dict(frames=len(jpegs) * repeats, ms_per_frame=round(per_frame * 1e3, 4),
                ms_per_sample=round(per_frame * frames_per_sample * 1e3, 2),
                samples_per_cpu_s=round(1 / (per_frame * frames_per_sample), 1))


def device_decode_cost(model: ModelConfig, data_cfg: DataConfig, batches: int = 4) -> dict:
    """What ``decode_on=device`` costs the training process per sample without a GPU: CPU time of this
    process decoding, cropping and resizing batches of plans on the CPU with one torch thread."""
    loader = build_pretrain_loader(model, replace(data_cfg, workers=0, decode_on="device"), batch_size=BATCH,
                                   seed=1, device="cpu")
    stages, loader.stages = loader.stages, ()  # take the plans as the workers ship them

    def decoder(batch: dict) -> dict:
        for stage in stages:  # decoding, cropping and resizing, then the clip's motion
            batch = stage(batch)
        return batch

    it = iter(loader)
    plans = [next(it) for _ in range(batches + 1)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        decoder(plans[0])  # warm-up
        start = time.process_time()
        for plan in plans[1:]:
            decoder(plan)
        cpu = time.process_time() - start
    finally:
        torch.set_num_threads(threads)
    samples = batches * BATCH
    return dict(samples=samples, ms_per_sample=round(1e3 * cpu / samples, 2))


def gpu_demand(measured: float, model_json: Path | None) -> tuple[float, str]:
    """ViT-S 2-view pretraining samples/s of one GPU: measured if given (directly, or the ``gpu`` section of
    a ``mv2mae bench model`` or ``mv2mae bench gpu`` JSON file), otherwise the labelled analytic assumption
    for an H100."""
    if measured > 0:
        return measured, f"measured: {measured:.0f} samples/s (--gpu-samples-per-s)"
    if model_json is not None and model_json.is_file():
        doc = json.loads(model_json.read_text())
        gpu = doc.get("gpu") or doc.get("model") or {}  # bench model's section, or bench gpu's
        rates = [r["samples_per_s"] for r in gpu.get("rows", [])
                 if r["preset"] == "vit_small" and r["views"] == 2 and "samples_per_s" in r]
        if rates:  # eager or compiled, whichever is faster
            return max(rates), f"measured: {max(rates):.0f} samples/s on {gpu.get('device', 'GPU')} ({model_json})"
    flops = pretrain_step_flops(ModelConfig.preset("vit_small"), views=2, batch=1)
    rate = ASSUMED_MFU * H100_BF16_PEAK / flops
    return rate, (f"ASSUMPTION: {rate:.0f} samples/s = {ASSUMED_MFU:.0%} MFU × {H100_BF16_PEAK / 1e12:.0f} TFLOP/s "
                  f"÷ {flops / 1e9:.0f} GFLOP per ViT-S 2-view sample (no measured H100 figure given)")


def _loader_rows() -> dict[str, tuple[str, dict]]:
    """name -> (label, DataConfig changes)."""
    return {
        "cpu": ("shards, decode_on=cpu (uint8 video)", dict(decode_on="cpu")),
        "cpu_repeats": (f"shards, decode_on=cpu, data.repeats={REPEATS}", dict(decode_on="cpu", repeats=REPEATS)),
        "device": ("shards, decode_on=device (JPEG bytes + plan)", dict(decode_on="device")),
    }


def _shard_loader(model: ModelConfig, data_cfg: DataConfig, device: torch.device):
    loader = build_pretrain_loader(model, data_cfg, batch_size=BATCH, seed=0, device=device,
                                   pin_memory=device.type == "cuda")
    if device.type == "cpu":
        # decoding on this process's CPU would be the bottleneck and leave the workers idle: take their
        # plans as they come (what they cost is the row's figure); device_decode_cost times the decoding
        loader.stages = ()
    return loader


def run_bench(work: Path, *, workers: int, seconds: float, raw_size: tuple[int, int], groups: int,
              gpu_samples_per_s: float = 0.0, model_json: Path | None = None) -> dict:
    """Every loader row (:func:`_loader_rows`) and the raw-video baseline. ``decode_on=device`` decodes on
    CUDA when there is one (end-to-end samples/s of a GPU); without one its rows measure the workers'
    share alone, and :func:`device_decode_cost` what decoding on this process's CPU costs per sample."""
    work.mkdir(parents=True, exist_ok=True)
    data = prepare(work, raw_size, groups, workers)
    model = ModelConfig()  # the default geometry: 16 frames of 128 pixels, stride 4
    data_cfg = DataConfig(root=data["shards"], protocol="all", workers=workers)
    geom = ClipGeometry.of(model, data_cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loaders = {}
    for name, (_, changes) in _loader_rows().items():
        loader = _shard_loader(model, replace(data_cfg, **changes), device)
        loaders[name] = measure(loader, seconds, workers)
        del loader
    raw_loader = DataLoader(RawVideoClips(Path(data["raw"]), geom, data_cfg, seed=0), batch_size=BATCH,
                            num_workers=workers, persistent_workers=workers > 0, collate_fn=collate_clips)
    raw = measure(raw_loader, seconds, workers)
    del raw_loader
    floor = decode_floor(Path(data["shards"]), data_cfg.views * geom.frames)
    device_cost = device_decode_cost(model, data_cfg)
    gpu_rate, gpu_source = gpu_demand(gpu_samples_per_s, model_json)
    cpu, dev = loaders["cpu"], loaders["device"]

    def ratio(a: float, b: float) -> float:
        return round(a / max(b, 1e-9), 2)

    return dict(
        machine=dict(cpus=os.cpu_count(), processor=platform.processor() or platform.machine(),
                     torch=torch.__version__, opencv=cv2.__version__, load_average=list(os.getloadavg()),
                     decode_device=str(device),
                     gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None),
        settings=dict(workers=workers, batch=BATCH, seconds=seconds, views=data_cfg.views, frames=geom.frames,
                      stride=geom.stride, size=geom.size, motion=data_cfg.motion, raw_size=list(raw_size),
                      short_side=SHORT_SIDE),
        data=data, loaders=loaders, labels={k: v[0] for k, v in _loader_rows().items()}, raw_baseline=raw,
        jpeg_decode_floor=floor, device_decode_cpu=device_cost,
        speedup_wall=ratio(cpu["samples_per_s"], raw["samples_per_s"]),
        speedup_cpu=ratio(cpu["samples_per_cpu_s"], raw["samples_per_cpu_s"]),
        device_vs_cpu_per_worker_cpu_s=ratio(dev["samples_per_cpu_s"], cpu["samples_per_cpu_s"]),
        bars=dict(speedup_ge_20x=cpu["samples_per_s"] >= 20 * raw["samples_per_s"],
                  per_worker_cpu_ge_100=cpu["samples_per_cpu_s"] >= 100,
                  device_ge_3x_per_worker_cpu_s=dev["samples_per_cpu_s"] >= 3 * cpu["samples_per_cpu_s"]),
        gpu_workers=dict(gpu_samples_per_s=gpu_rate, source=gpu_source, headroom=HEADROOM,
                         formula="workers = ceil(headroom × GPU samples/s ÷ samples per worker CPU-second)",
                         needed={name: math.ceil(HEADROOM * gpu_rate / max(m["samples_per_cpu_s"], 1e-9))
                                 for name, m in loaders.items()}))


def resume_cost(work: Path, *, batches: int, workers: int, raw_size: tuple[int, int], groups: int) -> dict:
    """Seconds to the first batch of a pretraining stream resumed after ``batches`` batches: replaying their
    sampling decisions (``start``, what exact resume does) against consuming them, decoding included (what
    it did before). Both give the same batch; the per-sample costs extrapolate to any step."""
    data = prepare(work, raw_size, groups, workers)
    model = ModelConfig()
    data_cfg = DataConfig(root=data["shards"], protocol="all", workers=workers, decode_on="cpu")

    def first_batch(start: int, consume: int) -> tuple[float, dict]:
        t0 = time.perf_counter()
        stream = iter(build_pretrain_loader(model, data_cfg, batch_size=BATCH, seed=0, start=start))
        for _ in range(consume + 1):
            batch = next(stream)
        return time.perf_counter() - t0, batch

    empty_s, _ = first_batch(0, 0)  # start-up and the first batch: paid by any run
    replay_s, replayed = first_batch(batches, 0)
    decode_s, decoded = first_batch(0, batches)
    if replayed["key"] != decoded["key"] or not torch.equal(replayed["video"], decoded["video"]):
        raise RuntimeError("the replayed stream did not continue where the consumed one did")
    samples = batches * BATCH
    per_sample = {name: max(s - empty_s, 0.0) / samples * 1e3 for name, s in (("replay", replay_s), ("decode", decode_s))}
    return dict(batches=batches, batch=BATCH, workers=workers, samples=samples, groups=data["groups"],
                first_batch_s=round(empty_s, 2), replay_s=round(replay_s, 2), decode_s=round(decode_s, 2),
                replay_ms_per_sample=round(per_sample["replay"], 3), decode_ms_per_sample=round(per_sample["decode"], 3),
                speedup=round(per_sample["decode"] / max(per_sample["replay"], 1e-9), 1))


def print_report(r: dict) -> None:
    s = r["settings"]
    table = Table(title=f"pretraining loader: {s['views']} views × {s['frames']}×{s['size']}², stride {s['stride']}, "
                        f"{s['motion']} weights, {s['workers']} workers, {r['machine']['cpus']} CPUs "
                        f"(load {r['machine']['load_average'][0]:.1f}); decode_on=device "
                        + ("decodes on " + r["machine"]["decode_device"] if r["machine"]["gpu"] else
                           "rows: the workers' share (no GPU)"))
    for col in ("loader", "samples/s", "per worker CPU-s", "worker CPU-ms/sample", "main CPU-ms/sample",
                "worker RSS MiB", "workers per GPU"):
        table.add_column(col, justify="left" if col == "loader" else "right")
    rows = [(r["labels"][name], m, r["gpu_workers"]["needed"][name]) for name, m in r["loaders"].items()]
    rows.append((f"raw videos {s['raw_size'][0]}x{s['raw_size'][1]} (VideoMAE-style)", r["raw_baseline"], None))
    for label, m, need in rows:
        table.add_row(label, f"{m['samples_per_s']:.2f}", f"{m['samples_per_cpu_s']:.2f}",
                      f"{m['worker_cpu_ms_per_sample']:.2f}", f"{m['main_cpu_ms_per_sample']:.2f}",
                      str(m["worker_rss_mib"]), "" if need is None else str(need))
    table.add_section()
    table.add_row("shards (cpu) vs raw", f"{r['speedup_wall']}×", f"{r['speedup_cpu']}×", "", "", "", "")
    table.add_row("device vs cpu", "", f"{r['device_vs_cpu_per_worker_cpu_s']}×", "", "", "", "")
    console = Console()
    console.print(table)
    bars, mark = r["bars"], {True: "PASS", False: "FAIL"}
    console.print(f"bar ≥ 20× raw (wall clock): {mark[bars['speedup_ge_20x']]} · ≥ 100 samples per worker "
                  f"CPU-second (cpu): {mark[bars['per_worker_cpu_ge_100']]} · device ≥ 3× cpu per worker "
                  f"CPU-second: {mark[bars['device_ge_3x_per_worker_cpu_s']]}")
    f = r["jpeg_decode_floor"]
    console.print(f"JPEG decoding alone (cv2.imdecode, {f['ms_per_frame']} ms/frame, one process): {f['ms_per_sample']} "
                  f"ms per sample = at most {f['samples_per_cpu_s']} samples per CPU-second before any other work")
    console.print(f"decode_on=device without a GPU: the training process spends {r['device_decode_cpu']['ms_per_sample']} "
                  f"CPU-ms per sample decoding, cropping and resizing (one torch thread)")
    g = r["gpu_workers"]
    console.print(f"workers per GPU: {g['formula']}; GPU {g['source']}")
