"""``mv2mae bench loader``: pretraining samples/s from shards against a VideoMAE-style raw-video loader.

Both loaders draw the same kind of sample — two views of one group, the same 16 frame indices at
stride 4 in both views, an independent random resized crop per view to 128², ImageNet-normalised
float video and per-token motion weights — with the same number of DataLoader workers on the same
machine. The baseline decodes the raw H.264 videos per sample (seek to the clip, decode through it,
resize to the stored short side); the shard loader decodes only the sampled JPEGs. Both compute the
framediff motion from the cropped clip (``clip_token_motion``). The benchmark renders and preprocesses
its own data.
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
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, IterableDataset

from mv2mae.data import ClipGeometry, DataConfig, build_pretrain_loader
from mv2mae.data.decode import collate_clips, crop_resize, decode_jpeg_rgb, to_video_tensor
from mv2mae.data.motion import clip_token_motion
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


def prepare(work: Path, raw_size: tuple[int, int], groups: int, workers: int) -> dict:
    """Render ``groups`` three-camera groups at ``raw_size`` and preprocess them (cached in ``work``)."""
    tag = f"{raw_size[0]}x{raw_size[1]}-g{groups}"
    raw, data = work / f"raw-{tag}", work / f"shards-{tag}"
    info_path = work / f"prepared-{tag}.json"
    if info_path.is_file() and (data / "index.json").is_file():
        return json.loads(info_path.read_text())
    t0 = time.perf_counter()
    generate(raw, classes=groups, cameras=3, subjects=1, replications=1, setups=1, frames=(72, 96),
             size=raw_size, seed=0, workers=workers, progress=False)
    t1 = time.perf_counter()
    summary = run("synth", raw, data, size=SHORT_SIDE, workers=workers)
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
    and the CPU-time figure is what one dedicated core would deliver. At least three batches per worker
    are counted, however long they take: the workers' CPU time includes the batches still in flight
    when the clock stops, which would dominate a slow loader's figure measured over one or two."""
    it = iter(loader)
    for _ in range(max(1, workers)):  # warm-up: every worker has started and delivered once
        next(it)
    pids = _children()
    samples, batches, cpu0, t0 = 0, 0, _cpu_seconds(pids), time.perf_counter()
    while time.perf_counter() - t0 < seconds or batches < 3 * max(1, workers):
        samples += len(next(it)["video"])
        batches += 1
    elapsed, cpu = time.perf_counter() - t0, _cpu_seconds(pids) - cpu0
    memory = _memory_mib(pids)
    del it
    rate = samples / elapsed
    ring = getattr(loader, "ring", None)  # reused worker buffers (mv2mae.data.transport)
    buffers = None if ring is None else dict(buffers=len(ring.leases), leased=sum(ring.leases.values()),
                                             fresh=ring.unleased)
    return dict(batch_buffers=buffers, samples=samples, seconds=round(elapsed, 2), samples_per_s=round(rate, 2),
                samples_per_s_per_worker=round(rate / max(1, workers), 2),
                worker_cpu_s=round(cpu, 2), samples_per_cpu_s=round(samples / max(cpu, 1e-9), 2),
                worker_rss_mib=round(float(np.mean([m["rss"] for m in memory])), 1) if memory else None,
                worker_pss_mib=round(float(np.mean([m["pss"] for m in memory])), 1) if memory else None)


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


def gpu_demand(measured: float, model_json: Path | None) -> tuple[float, str]:
    """ViT-S pretraining samples/s of one H100: measured if given (directly, or the ``gpu`` section of a
    ``mv2mae bench model --json`` file), otherwise the labelled analytic assumption."""
    if measured > 0:
        return measured, f"measured: {measured:.0f} samples/s (--gpu-samples-per-s)"
    if model_json is not None and model_json.is_file():
        gpu = json.loads(model_json.read_text()).get("gpu", {})
        rate = gpu.get("presets", {}).get("vit_small", {}).get("samples_per_s")
        if rate:
            return float(rate), f"measured: {rate:.0f} samples/s on {gpu.get('device', 'GPU')} ({model_json})"
    flops = pretrain_step_flops(ModelConfig.preset("vit_small"), views=2, batch=1)
    rate = ASSUMED_MFU * H100_BF16_PEAK / flops
    return rate, (f"ASSUMPTION: {rate:.0f} samples/s = {ASSUMED_MFU:.0%} MFU × {H100_BF16_PEAK / 1e12:.0f} TFLOP/s "
                  f"÷ {flops / 1e9:.0f} GFLOP per ViT-S 2-view sample (no measured H100 figure given)")


def run_bench(work: Path, *, workers: int, seconds: float, raw_size: tuple[int, int], groups: int,
              gpu_samples_per_s: float = 0.0, model_json: Path | None = None) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    data = prepare(work, raw_size, groups, workers)
    model = ModelConfig()  # the default geometry: 16 frames of 128 pixels, stride 4
    data_cfg = DataConfig(root=data["shards"], protocol="all", workers=workers, normalize_on="worker")
    geom = ClipGeometry.of(model, data_cfg)
    shard_loader = build_pretrain_loader(model, data_cfg, batch_size=BATCH, seed=0)
    shards = measure(shard_loader, seconds, workers)
    del shard_loader
    # The same stream handing uint8 video to the device, which normalises it (``normalize_video``).
    uint8_loader = build_pretrain_loader(model, replace(data_cfg, normalize_on="device"), batch_size=BATCH, seed=0)
    shards_uint8 = measure(uint8_loader, seconds, workers)
    del uint8_loader
    # Repeated sampling (``data.repeats``, off by default): two crops of every group decoded.
    repeat_loader = build_pretrain_loader(model, replace(data_cfg, normalize_on="device", repeats=REPEATS),
                                          batch_size=BATCH, seed=0)
    shards_repeats = measure(repeat_loader, seconds, workers)
    del repeat_loader
    raw_loader = DataLoader(RawVideoClips(Path(data["raw"]), geom, data_cfg, seed=0), batch_size=BATCH,
                            num_workers=workers, persistent_workers=workers > 0,
                            collate_fn=partial(collate_clips, mean=model.pixel_mean, std=model.pixel_std,
                                               normalize=True))
    raw = measure(raw_loader, seconds, workers)
    del raw_loader
    floor = decode_floor(Path(data["shards"]), data_cfg.views * geom.frames)
    gpu_rate, gpu_source = gpu_demand(gpu_samples_per_s, model_json)
    per_core = shards["samples_per_cpu_s"]
    return dict(
        machine=dict(cpus=os.cpu_count(), processor=platform.processor() or platform.machine(),
                     torch=torch.__version__, opencv=cv2.__version__, load_average=list(os.getloadavg())),
        settings=dict(workers=workers, batch=BATCH, seconds=seconds, views=data_cfg.views, frames=geom.frames,
                      stride=geom.stride, size=geom.size, motion=data_cfg.motion, raw_size=list(raw_size),
                      short_side=SHORT_SIDE),
        data=data, shards=shards, shards_uint8=shards_uint8, shards_uint8_repeats=shards_repeats, raw_baseline=raw,
        jpeg_decode_floor=floor,
        speedup_wall=round(shards["samples_per_s"] / max(raw["samples_per_s"], 1e-9), 1),
        speedup_cpu=round(per_core / max(raw["samples_per_cpu_s"], 1e-9), 1),
        bars=dict(speedup_ge_20x=shards["samples_per_s"] >= 20 * raw["samples_per_s"],
                  per_worker_wall_ge_100=shards["samples_per_s_per_worker"] >= 100,
                  per_worker_cpu_ge_100=per_core >= 100,
                  uint8_per_worker_cpu_ge_100=shards_uint8["samples_per_cpu_s"] >= 100),
        h100=dict(gpu_samples_per_s=gpu_rate, source=gpu_source, headroom=HEADROOM,
                  formula="workers = ceil(headroom × GPU samples/s ÷ shard-loader samples per worker CPU-second)",
                  workers_needed=math.ceil(HEADROOM * gpu_rate / max(per_core, 1e-9)),
                  workers_needed_uint8=math.ceil(HEADROOM * gpu_rate / max(shards_uint8["samples_per_cpu_s"], 1e-9)),
                  workers_needed_uint8_repeats=math.ceil(HEADROOM * gpu_rate /
                                                         max(shards_repeats["samples_per_cpu_s"], 1e-9))))


def resume_cost(work: Path, *, batches: int, workers: int, raw_size: tuple[int, int], groups: int) -> dict:
    """Seconds to the first batch of a pretraining stream resumed after ``batches`` batches: replaying their
    sampling decisions (``start``, what exact resume does) against consuming them, decoding included (what
    it did before). Both give the same batch; the per-sample costs extrapolate to any step."""
    data = prepare(work, raw_size, groups, workers)
    model = ModelConfig()
    data_cfg = DataConfig(root=data["shards"], protocol="all", workers=workers, normalize_on="device")

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
                        f"(load {r['machine']['load_average'][0]:.1f})")
    for col in ("loader", "samples/s", "per worker", "per worker CPU-s", "worker RSS MiB", "worker PSS MiB"):
        table.add_column(col, justify="left" if col == "loader" else "right")
    for name, m in ((f"shards (JPEG {s['short_side']}p)", r["shards"]),
                    ("shards, uint8 video (normalised on device)", r["shards_uint8"]),
                    (f"shards, uint8, repeats {REPEATS} (data.repeats)", r["shards_uint8_repeats"]),
                    (f"raw videos {s['raw_size'][0]}x{s['raw_size'][1]} (VideoMAE-style)", r["raw_baseline"])):
        table.add_row(name, f"{m['samples_per_s']:.2f}", f"{m['samples_per_s_per_worker']:.2f}",
                      f"{m['samples_per_cpu_s']:.2f}", str(m["worker_rss_mib"]), str(m["worker_pss_mib"]))
    table.add_section()
    table.add_row("speed-up", f"{r['speedup_wall']}×", "", f"{r['speedup_cpu']}×", "", "")
    console = Console()
    console.print(table)
    bars = r["bars"]
    mark = {True: "PASS", False: "FAIL"}
    console.print(f"bar ≥ 20× (wall clock): {mark[bars['speedup_ge_20x']]} · ≥ 100 samples/s per worker: "
                  f"wall clock {mark[bars['per_worker_wall_ge_100']]}, per worker CPU-second "
                  f"{mark[bars['per_worker_cpu_ge_100']]} (uint8: {mark[bars['uint8_per_worker_cpu_ge_100']]})")
    f = r["jpeg_decode_floor"]
    console.print(f"JPEG decoding alone (cv2.imdecode, {f['ms_per_frame']} ms/frame, one process): {f['ms_per_sample']} "
                  f"ms per sample = at most {f['samples_per_cpu_s']} samples per CPU-second before any other work")
    h = r["h100"]
    console.print(f"workers to feed one H100: {h['workers_needed']} (uint8 video: {h['workers_needed_uint8']}; "
                  f"uint8 with {REPEATS} repeats: {h['workers_needed_uint8_repeats']}) — "
                  f"{h['formula']}; GPU {h['source']}")
