"""The preprocessing run: adapter scan -> parallel group processing -> ordered, resumable shard writing.

Workers process groups in any order, but the parent consumes their results in the scan's order
(partition, key) and alone writes shards, so shard boundaries, names and bytes depend only on the input
and the options. That is what makes a resumed run identical to an uninterrupted one: within a partition
shards finish in order, so the groups of finished shards (and the failures seen while they were open)
are exactly a prefix of that partition, which a re-run skips before starting the next shard number.

Per finished shard, ``DIR/.state/<stem>.json`` records its manifest entry and failures. Commit order:
motion sub-group -> state record -> tar rename; a shard whose tar exists is therefore complete, and
anything else left by a killed run (``*.partial``, stray state or motion) is cleaned up on the next run.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing as mp
import os
import shutil
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from mv2mae.preprocess.adapters import AdapterOptions, GroupSpec, Scan
from mv2mae.preprocess.adapters import scan as scan_dataset
from mv2mae.preprocess.crop import Geometry
from mv2mae.preprocess.decode import DEFAULT_BACKEND
from mv2mae.preprocess.group import GroupResult, WorkConfig, process
from mv2mae.shards.motion import TMP_DIR, write_shard_motion
from mv2mae.shards.protocols import reference_cameras
from mv2mae.shards.schema import (
    FAILURES_FILE,
    FORMAT_VERSION,
    INDEX_FILE,
    MOTION_SOURCES,
    MOTION_STORE,
    DatasetIndex,
    ShardEntry,
    camera_set_key,
    motion_grid,
    shard_name,
    shard_stem,
)
from mv2mae.shards.untrusted import MAX_INDEX_BYTES, read_json_file
from mv2mae.shards.writer import PARTIAL_SUFFIX, Member, ShardWriter

STATE_DIR = ".state"
TMP_SUFFIX = ".tmp"  # a small record (state, index, failures) being written; the next run deletes strays
SKELETON_DATASETS = ("synth", "ntu60", "ntu120")
RUN_FILE = "run.json"
# Every dataset gets a motion cache (readers rely on it); ``both`` stores the two sources. These are the
# stored sources' names, which index.json (``motion``, ``args``) and the Zarr arrays keep: the command line
# names the caches for their readers (``--motion display|train-flow|both``, mv2mae.cli.choices.MOTION_CACHES).
# Training computes framediff from each clip, so only ``mv2mae shards show`` reads the framediff rows;
# data.motion=flow trains from the flow rows.
MOTION_CHOICES = {"framediff": ("framediff",), "flow": ("flow",), "both": MOTION_SOURCES}
# Options that change the bytes written: a resumed run must use the same values (and format version).
OUTPUT_OPTIONS = ("dataset", "size", "fps", "crop", "margin", "motion", "jpeg_quality", "shard_size", "cell",
                  "max_lag", "backend", "drop_missing_skeletons", "image_fps", "limit", "part", "parts")
FORMAT_KEY = "format_version"  # in the run record beside the options
# bounds of --size and the frame rates: beyond them a frame or a clip is nonsense (or a memory bomb)
MIN_SIZE, MAX_SIZE, MAX_FPS = 16, 4096, 1000.0


class PreprocessError(RuntimeError):
    """The run cannot start or wrote nothing; the message says why."""


class OptionError(PreprocessError):
    """An option value the run cannot use."""

    exit_code = 2  # a usage error (the command line's exit status)


@dataclass
class Options:
    size: int = 160  # stored short side
    fps: float | None = None  # common output frame rate (None: the source rate)
    crop: str = "none"
    motion: str = "framediff"  # a stored source: framediff (display only) | flow (data.motion=flow) | both
    jpeg_quality: int = 90
    shard_size: int = 512 * 1000 * 1000  # bytes
    workers: int = 0  # 0 = all cores
    part: int = 0
    parts: int = 1
    limit: int | None = None
    max_lag: int = 15  # frames searched each way when refining the lag between views
    drop_missing_skeletons: bool = False
    cell: int = 8
    backend: str = DEFAULT_BACKEND
    image_fps: float = 30.0
    margin: float = 0.15
    classes_file: str | None = None
    progress: bool = False


@dataclass
class Summary:
    dataset: str
    out: str
    written: int = 0  # groups written by this run
    skipped: int = 0  # groups found in finished shards of an earlier run
    failed: int = 0  # groups that could not be written (this run)
    dropped_views: int = 0  # views left out of groups that were written (this run)
    single_camera: int = 0  # groups written with one camera: finetuning/evaluation only (this run)
    unlisted: int = 0  # groups the official split lists in neither split, left out (the whole scan)
    failures: int = 0  # lines in failures.jsonl
    shards: int = 0  # shards in the index
    groups: int = 0  # groups in the index
    seconds: float = 0.0
    index: str = ""


@dataclass
class _ShardRecord:
    entry: ShardEntry
    failures: list[dict[str, Any]] = field(default_factory=list)
    fps: float = 0.0


def _options(options: dict[str, Any]) -> Options:
    known = set(Options.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown preprocess options {unknown}")
    opts = Options(**options)
    if opts.motion not in MOTION_CHOICES:
        raise OptionError(f"--motion must be one of {sorted(MOTION_CHOICES)}, got {opts.motion!r}")
    if not 0 <= opts.part < opts.parts:
        raise OptionError(f"--part {opts.part} must be in 0..{opts.parts - 1}")
    if not 1 <= opts.jpeg_quality <= 100:
        raise OptionError(f"--jpeg-quality must be in 1..100, got {opts.jpeg_quality}")
    _check_counts(opts)
    return opts


def _check_counts(opts: Options) -> None:
    """Sizes, rates and counts that mean nothing (or everything but one group) are usage errors."""
    rates = {"--fps": opts.fps, "--image-fps": opts.image_fps}
    bad_rate = [f"{k} {v}" for k, v in rates.items() if v is not None and not (math.isfinite(v) and 0 < v <= MAX_FPS)]
    if bad_rate:
        raise OptionError(f"{', '.join(bad_rate)}: a frame rate must be > 0 and <= {MAX_FPS:g}")
    if not MIN_SIZE <= opts.size <= MAX_SIZE:
        raise OptionError(f"--size {opts.size}: the stored short side must be in {MIN_SIZE}..{MAX_SIZE} pixels")
    if not 1 <= opts.cell <= opts.size:
        raise OptionError(f"--cell {opts.cell}: a motion cell must be 1..{opts.size} stored pixels (--size)")
    if opts.limit is not None and opts.limit < 1:
        raise OptionError(f"--limit {opts.limit}: give at least 1 group (leave it out for all of them)")
    if min(opts.workers, opts.max_lag) < 0 or opts.shard_size < 1:
        raise OptionError(f"--workers {opts.workers}, --max-lag {opts.max_lag} and --shard-size {opts.shard_size} "
                          f"must not be negative (and a shard holds at least one byte)")


def run(dataset: str, root: str | Path, out: str | Path, *, executor: Executor | None = None,
        **options: Any) -> Summary:
    """Preprocess ``dataset`` found at ``root`` into the shard directory ``out`` (resuming if present).

    ``options`` are the fields of ``Options``; ``executor`` is an optional warm process pool.
    """
    opts = _options(options)
    t0 = time.perf_counter()
    root, out = Path(root), Path(out)
    scan = _scan(dataset, root, opts)
    groups = _select(scan.groups, opts)
    out.mkdir(parents=True, exist_ok=True)
    for name in (_index_name(opts), _failures_name(opts)):  # left by a run that failed while writing them
        (out / (name + TMP_SUFFIX)).unlink(missing_ok=True)
    _check_run_options(out, dataset, opts, scan.classes)
    records = _recover(out, {g.partition for g in groups})
    done = done_keys(records)
    todo = [g for g in groups if g.key not in done]
    next_seq = _next_seq(records)
    summary = Summary(dataset=dataset, out=str(out), skipped=len(groups) - len(todo), unlisted=scan.unlisted)
    cfg = work_config(dataset, root, opts, scan.meta)
    sink = _ShardSink(out, opts, next_seq, records)
    loose = _write_all(todo, cfg, opts, sink, summary, executor)
    summary.index = _finish(out, scan, opts, records, loose, summary)
    summary.seconds = time.perf_counter() - t0
    if summary.groups == 0:
        raise PreprocessError(f"nothing could be written to {out}: {summary.failed} group(s) failed, "
                              f"see {out / _failures_name(opts)}")
    return summary


def _scan(dataset: str, root: Path, opts: Options) -> Scan:
    adapter_opts = AdapterOptions(need_person_crop=opts.crop == "person",
                                  drop_missing_skeletons=opts.drop_missing_skeletons)
    if opts.crop == "person" and dataset not in SKELETON_DATASETS:
        raise PreprocessError(f"--crop person needs skeleton files, which only {SKELETON_DATASETS} have")
    result = scan_dataset(dataset, root, adapter_opts)
    if opts.classes_file:
        names = [ln.strip() for ln in Path(opts.classes_file).read_text().splitlines() if ln.strip()]
        if len(names) < len(result.classes):
            raise PreprocessError(f"{opts.classes_file}: {len(names)} class names, "
                                  f"the dataset has {len(result.classes)}")
        result.classes = names[: len(result.classes)]
        for g in result.groups:
            g.label_name = result.classes[g.label]
    return result


def _select(groups: list[GroupSpec], opts: Options) -> list[GroupSpec]:
    """``--limit`` first (over the whole sorted scan), then whole partitions for ``--part i --parts n``."""
    if opts.limit is not None:
        groups = groups[: opts.limit]
    partitions = sorted({g.partition for g in groups})
    mine = {p for i, p in enumerate(partitions) if i % opts.parts == opts.part}
    return [g for g in groups if g.partition in mine]


def work_config(dataset: str, root: Path, opts: Options, meta: dict[str, Any] | None = None) -> WorkConfig:
    """What every worker needs to process one group of ``dataset`` under ``opts`` (``meta``: the adapter's
    dataset facts, which may hold an official cross-view split)."""
    workers = _workers(opts)
    return WorkConfig(
        dataset=dataset, root=root if root.is_dir() else root.parent,
        geometry=Geometry(crop=opts.crop, short_side=opts.size, margin=opts.margin), fps=opts.fps,
        max_lag=opts.max_lag, motion=MOTION_CHOICES[opts.motion], cell=opts.cell,
        jpeg_quality=opts.jpeg_quality, backend=opts.backend,
        threads=max(1, (os.cpu_count() or 1) // workers),
        drop_missing_skeletons=opts.drop_missing_skeletons, image_fps=opts.image_fps,
        reference=tuple(reference_cameras(dataset, meta or {})))


def _workers(opts: Options) -> int:
    return opts.workers if opts.workers > 0 else (os.cpu_count() or 1)


def _run_options(dataset: str, opts: Options) -> dict[str, Any]:
    d = asdict(opts)
    d["dataset"] = dataset
    return {k: d[k] for k in OUTPUT_OPTIONS}


def _check_run_options(out: Path, dataset: str, opts: Options, classes: list[str]) -> None:
    state = out / STATE_DIR
    state.mkdir(exist_ok=True)
    path = state / (RUN_FILE if opts.parts == 1 else f"run.part-{opts.part:03d}-of-{opts.parts:03d}.json")
    # The class names too: they are written into every group's metadata (``--classes``, classes.txt).
    want = {**_run_options(dataset, opts), "classes": classes, FORMAT_KEY: FORMAT_VERSION}
    path.with_name(path.name + TMP_SUFFIX).unlink(missing_ok=True)
    if path.exists():
        have = _read_json(path)
        if have.get(FORMAT_KEY, 1) != FORMAT_VERSION:
            raise PreprocessError(f"{out} holds shards of format {have.get(FORMAT_KEY, 1)}; this mv2mae writes "
                                  f"format {FORMAT_VERSION}: preprocess into a new --out")
        diff = sorted(k for k in want if have.get(k) != want[k])
        if diff:
            changes = ", ".join("classes: other class names" if k == "classes" else
                                f"{k}: {have.get(k)!r} -> {want[k]!r}" for k in diff)
            raise PreprocessError(f"{out} was written with other options ({changes}); "
                                  f"use the same options to resume, or a new --out")
        return
    _atomic_write(path, json.dumps(want, sort_keys=True, indent=1))


def _recover(out: Path, mine: set[str]) -> dict[str, _ShardRecord]:
    """Finished shards of earlier runs; removes what a killed run left half-done in ``mine`` partitions.

    Only this run's partitions are cleaned: other ``--part`` runs may be writing into the same folder.
    """
    def ours(stem: str) -> bool:
        return stem.rsplit("-", 1)[0] in mine

    for partial in out.glob(f"*.tar{PARTIAL_SUFFIX}"):
        if ours(partial.name[: -len(f".tar{PARTIAL_SUFFIX}")]):
            partial.unlink()
    for tmp in (out / TMP_DIR).glob("motion-*"):
        if ours(tmp.name[len("motion-"):]):
            shutil.rmtree(tmp)
    for tmp in (out / STATE_DIR).glob(f"*.tar.json{TMP_SUFFIX}"):
        if ours(shard_stem(tmp.name[: -len(f".json{TMP_SUFFIX}")])):
            tmp.unlink()
    records: dict[str, _ShardRecord] = {}
    for path in sorted((out / STATE_DIR).glob("*.tar.json")):
        name = path.name[: -len(".json")]
        if not (out / name).exists():  # killed between the state record and the rename
            if ours(shard_stem(name)):
                path.unlink()
            continue
        obj = _read_json(path)
        if not isinstance(obj.get("entry"), dict) or obj["entry"].get("name") != name:  # its name goes into the index
            raise PreprocessError(f"{path}: not the run record of shard {name}; delete it to redo that part")
        records[name] = _ShardRecord(entry=ShardEntry(**obj["entry"]), failures=obj["failures"], fps=obj["fps"])
    store = out / MOTION_STORE
    if store.is_dir():
        for sub in store.iterdir():
            if sub.is_dir() and f"{sub.name}.tar" not in records and ours(sub.name):
                shutil.rmtree(sub)
    return records


def done_keys(records: dict[str, _ShardRecord]) -> set[str]:
    """Groups a re-run skips: those in finished shards, and those whose failure a finished shard recorded."""
    done = {k for r in records.values() for k in r.entry.keys}
    return done | {f["group"] for r in records.values() for f in r.failures if "group" in f and not f.get("kept")}


def _next_seq(records: dict[str, _ShardRecord]) -> dict[str, int]:
    seq: dict[str, int] = {}
    for name, rec in records.items():
        n = int(shard_stem(name).rsplit("-", 1)[1])
        seq[rec.entry.partition] = max(seq.get(rec.entry.partition, 0), n + 1)
    return seq


def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = read_json_file(path, MAX_INDEX_BYTES)
    except (OSError, ValueError) as e:  # ContractError (too large, too deep, not JSON) is a ValueError
        raise PreprocessError(f"{path}: unreadable run record ({e}); delete it to redo that part") from None
    if not isinstance(obj, dict):
        raise PreprocessError(f"{path}: unreadable run record (not a JSON object); delete it to redo that part")
    return obj


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """An ``OSError`` inside the block (a full disk, a file-size limit, a read-only folder) becomes one
    line naming ``path``; what the block left half-written is cleaned up by the next run."""
    try:
        yield
    except OSError as e:
        raise PreprocessError(f"{path}: cannot write ({e.strerror or e}); nothing half-written is kept — free "
                              f"space and re-run the same command to resume") from None


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with _writing(tmp):
        tmp.write_text(text)
        os.replace(tmp, path)


class _ShardSink:
    """Receives group results in order and writes them into per-partition, size-capped shards."""

    def __init__(self, out: Path, opts: Options, next_seq: dict[str, int], records: dict[str, _ShardRecord]):
        self.out, self.opts, self.next_seq, self.records = out, opts, next_seq, records
        self.partition: str | None = None
        self.writer: ShardWriter | None = None
        self.pending_failures: list[dict[str, Any]] = []
        self._reset()

    def _reset(self) -> None:
        self.metas: list = []
        self.motion: dict[str, list[np.ndarray]] = {s: [] for s in MOTION_CHOICES[self.opts.motion]}
        self.rows = 0

    def add(self, res: GroupResult) -> None:
        if res.partition != self.partition:
            self.close()
            self.partition = res.partition
        if res.failed or res.meta is None:
            self.pending_failures.extend(res.failures)
            return
        size = sum(len(b) for _, b in res.frames) + 512 * (len(res.frames) + 1)
        if self.writer is not None and self.writer.bytes + size > self.opts.shard_size:
            self.close()
        # After the roll-over: a written group's failures (dropped views) must be committed with the
        # shard that holds it, or a kill before that shard finishes would make a re-run skip the group.
        self.pending_failures.extend(res.failures)
        if self.writer is None:
            seq = self.next_seq.get(res.partition, 0)
            self.next_seq[res.partition] = seq + 1
            path = self.out / shard_name(res.partition, seq)
            with _writing(path.with_name(path.name + PARTIAL_SUFFIX)):
                self.writer = ShardWriter(path)
        with _writing(self.writer.tmp):
            self._append(res)

    def _append(self, res: GroupResult) -> None:
        meta = res.meta
        for cam in meta.cameras:  # each view's rows follow the previous view's, one row per stored frame
            meta.motion_rows[str(cam)] = self.rows
            self.rows += meta.view_frames[str(cam)]
        for source, per_cam in res.motion.items():
            self.motion[source].extend(per_cam)
        members = [Member(f"{meta.key}.json", meta.to_json())]
        members += [Member(f"{meta.key}.{ext}", data) for ext, data in res.frames]
        self.writer.add_sample(members)
        self.metas.append(meta)

    def close(self) -> None:
        """Finish the open shard: motion sub-group, state record, then the tar rename (commit order)."""
        if self.writer is None:
            return
        with _writing(self.writer.tmp):
            size, digest = self.writer.close()
        name = self.writer.path.name
        with _writing(self.out / TMP_DIR / f"motion-{shard_stem(name)}"):
            self._write_motion(shard_stem(name))
        metas = self.metas
        entry = ShardEntry(name=name, partition=self.partition, samples=len(metas), bytes=size, sha256=digest,
                           subjects=sorted({m.subject for m in metas}),
                           setups=sorted({m.setup for m in metas if m.setup is not None}),
                           cameras=sorted({c for m in metas for c in m.cameras}),
                           camera_sets=dict(sorted(Counter(camera_set_key(m.cameras) for m in metas).items())),
                           keys=[m.key for m in metas])
        rec = _ShardRecord(entry=entry, failures=self.pending_failures, fps=metas[0].fps)
        _atomic_write(self.out / STATE_DIR / f"{name}.json",
                      json.dumps({"entry": asdict(entry), "failures": rec.failures, "fps": rec.fps}, sort_keys=True))
        self.writer.commit()
        self.records[name] = rec
        self.writer, self.pending_failures = None, []
        self._reset()

    def _write_motion(self, stem: str) -> None:
        if not self.motion:
            return
        grids = {m.key: list(motion_grid(m.size[0], m.size[1], self.opts.cell)) for m in self.metas}
        gh = max(g[0] for g in grids.values())
        gw = max(g[1] for g in grids.values())
        arrays = {}
        for source, rows in self.motion.items():
            padded = [np.pad(r, ((0, 0), (0, gh - r.shape[1]), (0, gw - r.shape[2]))) for r in rows]
            arrays[source] = np.concatenate(padded, axis=0)
        attrs = {"rows": {m.key: m.motion_rows for m in self.metas}, "frames": {m.key: m.view_frames for m in self.metas},
                 "grid": grids, "cell": self.opts.cell}
        write_shard_motion(self.out, stem, arrays, attrs)


def map_groups(todo: list[GroupSpec], cfg: WorkConfig, workers: int, executor: Executor | None = None,
             fn: Callable[[GroupSpec, WorkConfig], Any] = process) -> Iterator[Any]:
    """``fn(spec, cfg)`` for every group, in ``todo`` order, on ``workers`` processes.

    ``executor`` reuses a warm pool (the benchmark times work, not process start-up); ``fn`` replaces the
    whole per-group work (the benchmark's decode-only ceiling).
    """
    if executor is not None:
        yield from _ordered(executor, fn, todo, cfg, workers)
        return
    if workers <= 1:
        _init_worker()
        for spec in todo:
            yield fn(spec, cfg)
        return
    with make_pool(workers) as pool:
        yield from _ordered(pool, fn, todo, cfg, workers)


def make_pool(workers: int) -> ProcessPoolExecutor:
    # spawn, not fork: the parent may hold zarr's I/O threads, which a forked child must not inherit.
    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker)


def _ordered(pool: Executor, fn, todo: list[GroupSpec], cfg: WorkConfig, workers: int) -> Iterator[Any]:
    """Results in submission order with a bounded look-ahead, so memory stays flat on huge datasets."""
    pending: deque = deque()
    it = iter(todo)
    for spec in it:
        pending.append(pool.submit(fn, spec, cfg))
        if len(pending) >= 3 * workers:
            break
    while pending:
        res = pending.popleft().result()
        nxt = next(it, None)
        if nxt is not None:
            pending.append(pool.submit(fn, nxt, cfg))
        yield res


def _init_worker() -> None:
    cv2.setNumThreads(1)  # parallelism comes from the worker processes


def _write_all(todo: list[GroupSpec], cfg: WorkConfig, opts: Options, sink: _ShardSink,
               summary: Summary, executor: Executor | None) -> list[dict[str, Any]]:
    """Process and write every group; returns failures not attached to any finished shard."""
    with _Progress(len(todo), opts.progress) as bar:
        for res in map_groups(todo, cfg, min(_workers(opts), max(1, len(todo))), executor):
            sink.add(res)
            if res.failed:
                summary.failed += 1
            else:
                summary.written += 1
                summary.dropped_views += sum(1 for f in res.failures if not f.get("kept"))
                summary.single_camera += len(res.meta.cameras) == 1
            bar.advance(res.failed)
        sink.close()
    loose = sink.pending_failures
    sink.pending_failures = []
    return loose


class _Rate(TextColumn):
    def render(self, task):
        return Text(f"{task.speed or 0.0:.2f} groups/s")


class _Progress:
    """A rich progress bar (groups/s, ETA, failures so far), or nothing when disabled."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.failures = total, enabled, 0

    def __enter__(self):
        if self.enabled:
            self.bar = Progress(TextColumn("[bold]preprocess"), BarColumn(), MofNCompleteColumn(),
                                _Rate(""),
                                TimeRemainingColumn(), TextColumn("failed: {task.fields[failed]}"))
            self.bar.start()
            self.task = self.bar.add_task("groups", total=self.total, failed=0)
        return self

    def advance(self, failed: bool) -> None:
        self.failures += int(failed)
        if self.enabled:
            self.bar.update(self.task, advance=1, failed=self.failures)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.stop()


def _index_name(opts: Options) -> str:
    return INDEX_FILE if opts.parts == 1 else f"index.part-{opts.part:03d}-of-{opts.parts:03d}.json"


def _failures_name(opts: Options) -> str:
    return FAILURES_FILE if opts.parts == 1 else f"failures.part-{opts.part:03d}-of-{opts.parts:03d}.jsonl"


def _finish(out: Path, scan: Scan, opts: Options, records: dict[str, _ShardRecord],
            loose: list[dict[str, Any]], summary: Summary) -> str:
    """Write the index (or this part's index) and failures.jsonl; fill the summary's totals."""
    mine = {g.partition for g in _select(scan.groups, opts)}
    recs = [records[n] for n in sorted(records) if records[n].entry.partition in mine]
    failures = list(scan.failures) if opts.part == 0 else []
    failures += [f for r in recs for f in r.failures] + loose
    index = DatasetIndex(
        dataset=scan.dataset, classes=scan.classes, fps=float(opts.fps or (recs[0].fps if recs else 0.0)),
        short_side=opts.size, cell=opts.cell, motion=list(MOTION_CHOICES[opts.motion]),
        shards=[r.entry for r in recs], layout=scan.layout, tool_version=_version(),
        args={**_run_options(scan.dataset, opts), "meta": scan.meta}, flip_classes=scan.flip_classes)
    path = out / _index_name(opts)
    _atomic_write(path, index.to_json())
    _atomic_write(out / _failures_name(opts), "".join(json.dumps(f, sort_keys=True) + "\n" for f in failures))
    summary.failures, summary.shards, summary.groups = len(failures), len(recs), index.groups
    return str(path)


def _version() -> str:
    try:
        return f"mv2mae {version('mv2mae')}"
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "mv2mae (not installed)"
