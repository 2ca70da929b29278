"""Process-group set-up for ``torchrun`` (NCCL on GPU, gloo on CPU) and the few collectives we use."""

from __future__ import annotations

import datetime
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    # the group for host-to-host collectives on CPU tensors (gloo beside an NCCL default group; None: the
    # default group, or no process group)
    host_group: Any = field(default=None, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


# what batch schedulers and MPI launchers set for the number of tasks they started (SLURM: the job
# step's tasks, else the allocation's), none of which torchrun's RANK/WORLD_SIZE replaces
SCHEDULER_TASK_COUNTS = ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


class LaunchError(ValueError):
    """The processes were started in a way that would have them clobber one run."""


def check_launch(environ: dict[str, str] = os.environ) -> None:
    """Refuse a scheduler's several tasks started without torchrun: each would be a world of one, think
    it is rank 0, and write the same run folder. Under torchrun (RANK/WORLD_SIZE set) anything goes."""
    if "RANK" in environ or "WORLD_SIZE" in environ:
        return
    for name in SCHEDULER_TASK_COUNTS:
        if name in environ:
            tasks = int(environ[name] or 1)
            if tasks > 1:
                raise LaunchError(f"{name}={tasks}: the scheduler started {tasks} tasks but none through torchrun "
                                  f"(no RANK/WORLD_SIZE), so each would train alone as rank 0 into the same run "
                                  f"folder. Start one task per node that runs `torchrun --nnodes N "
                                  f"--nproc_per_node GPUS --rdzv_backend c10d …` (README: Clusters), or one task.")
            return  # the first variable present is the launcher's own count


def pick_device(pref: str, local_rank: int = 0) -> torch.device:
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.version.cuda is not None:  # a CUDA build that sees no GPU: almost always a mistake
            warnings.warn(f"device auto: this torch is built for CUDA {torch.version.cuda} but sees no GPU (none "
                          f"visible, or the driver is older than CUDA {torch.version.cuda} needs; see `nvidia-smi`), "
                          f"so everything runs on the CPU, many times slower. Pass --device cpu (or "
                          f"--set loop.device=cpu) if that is what you want.", RuntimeWarning, stacklevel=2)
        return torch.device("cpu")
    device = torch.device(pref)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {pref!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def setup(device_pref: str = "auto", timeout: float | None = None) -> DistEnv:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1); else one process.

    ``timeout`` (seconds; None: the backend's default) bounds every collective: a rank that stopped,
    hangs or died makes the others fail after that long instead of waiting (``loop.collective_timeout``)."""
    check_launch()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_pref, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    bound = datetime.timedelta(seconds=timeout) if timeout else None
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                rank=rank, world_size=world, timeout=bound)
    host_group = None
    if dist.is_initialized() and dist.get_backend() != "gloo":
        host_group = dist.new_group(backend="gloo", timeout=bound)
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=device, host_group=host_group)


class RankLost(RuntimeError):
    """A collective failed: another rank stopped, died or hangs (or the network between them broke)."""


def lost_rank(e: BaseException, timeout: float | None) -> RankLost | None:
    """``e`` as a :class:`RankLost` when it is a failed or timed-out collective of this process group
    (torch raises those as ``DistError`` or as a plain ``RuntimeError`` from gloo/NCCL), else None."""
    if not dist.is_initialized() or not isinstance(e, RuntimeError) or isinstance(e, RankLost):
        return None
    text = str(e)
    if not isinstance(e, dist.DistError) and not any(s in text for s in ("gloo", "NCCL", "Timed out")):
        return None
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    bound = f"{timeout:g} s" if timeout else "the backend's default"
    return RankLost(f"rank {dist.get_rank()}: a collective with the other ranks failed — one of them stopped, died "
                    f"or hangs (loop.collective_timeout: {bound}): {first}")


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (in place on a copy); identity in a single process."""
    if not dist.is_initialized():
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / dist.get_world_size()


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if not dist.is_initialized():
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


class HostMax:
    """The MAX over ranks of a host int, reduced host to host (gloo, a CPU tensor): the host waits for the
    other hosts, never for its device. The value goes in and out through a numpy view of the tensor made
    once, so no tensor method reads it; identity in a single process."""

    def __init__(self, group: Any = None) -> None:
        self.group = group
        self.tensor = torch.zeros(1, dtype=torch.int64)
        self.value = self.tensor.numpy()

    def __call__(self, value: int) -> int:
        if not dist.is_initialized():
            return value
        self.value[0] = value
        dist.all_reduce(self.tensor, op=dist.ReduceOp.MAX, group=self.group)
        return int(self.value[0])


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (only small, picklable-by-torch objects: lists of numbers)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out

