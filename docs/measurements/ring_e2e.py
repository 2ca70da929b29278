"""End-to-end training throughput with the shared-memory batch ring on and off (the measurement that removed it).

Needs a commit that still has the ring: ``git worktree add /tmp/ring 56fd118``, then, from there,
``python docs/measurements/ring_e2e.py DATA OUT WORKERS STEPS ROUNDS`` (DATA: ``make demo``'s
``data/synth-demo``). Runs the real pretraining (``fit_stage``, tiny preset) for STEPS steps per run,
ring on and off in paired rounds of alternating order, and reads samples/s from each run's log.jsonl
between step WARM and the last step; CPU time is the whole process tree's (training process + workers).
BENCHMARKS.md ("The shared-memory batch ring is gone") quotes the output kept in ring_e2e.txt.
"""

import functools
import json
import os
import resource
import shutil
import statistics
import sys
from pathlib import Path

import mv2mae.train.tasks as tasks
from mv2mae.config import load_config
from mv2mae.train.distributed import setup

WARM = 20


def cpu_seconds() -> float:
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def one_run(data: str, run: Path, workers: int, steps: int) -> dict:
    shutil.rmtree(run, ignore_errors=True)
    cfg = load_config("tiny", "pretrain", [f"data.root={data}", f"data.workers={workers}", f"steps={steps}",
                                           "loop.log_every=10", "loop.recon_every=0", f"loop.ckpt_every={steps}"])
    start = cpu_seconds()
    tasks.fit_stage(cfg, run, setup("cpu"))
    cpu = cpu_seconds() - start
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    first, last = next(r for r in log if r["step"] == WARM), log[-1]
    measured = [r for r in log if r["step"] > WARM]
    return dict(sps=(last["step"] - first["step"]) * cfg.optim.batch_size / (last["time"] - first["time"]),
                wait=sum(r["data_wait"] for r in measured) / len(measured),
                cpu_ms_per_sample=1e3 * cpu / (steps * cfg.optim.batch_size), load=os.getloadavg()[0])


def main() -> None:
    data, out, workers, steps, rounds = sys.argv[1], Path(sys.argv[2]), *map(int, sys.argv[3:6])
    build = tasks.build_pretrain_loader
    results: dict[str, list[dict]] = {"on": [], "off": []}
    for r in range(rounds):
        for mode in ("on", "off") if r % 2 == 0 else ("off", "on"):
            tasks.build_pretrain_loader = functools.partial(build, reuse_buffers=mode == "on")
            row = one_run(data, out / f"{mode}-{r}", workers, steps)
            results[mode].append(row)
            print(mode, r, f"{row['sps']:.1f} samples/s  data_wait {row['wait']:.3f}  "
                  f"cpu {row['cpu_ms_per_sample']:.2f} ms/sample  load {row['load']:.2f}", flush=True)
    pairs = list(zip(results["on"], results["off"], strict=True))
    wall = [on["sps"] / off["sps"] for on, off in pairs]
    per_cpu = [off["cpu_ms_per_sample"] / on["cpu_ms_per_sample"] for on, off in pairs]
    print("samples per CPU-second, ring on/off per round:", [f"{x:.3f}" for x in per_cpu],
          "median", f"{statistics.median(per_cpu):.3f}")
    print("ring on/off ratio per round:", [f"{x:.3f}" for x in wall], "median", f"{statistics.median(wall):.3f}")
    (out / f"result-w{workers}.json").write_text(json.dumps(dict(results=results, wall=wall, per_cpu=per_cpu)))


if __name__ == "__main__":
    main()
