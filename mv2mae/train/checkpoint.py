"""Run checkpoints: atomic writes (temporary file, then rename), the last k kept plus the best.

A checkpoint is a plain dict saved with :func:`torch.save` and read back by the one reader,
:func:`mv2mae.model.checkpoint.load_checkpoint` (``weights_only=True``: tensors, numbers, strings, lists
and dicts only — no pickled objects). It is a superset of the model checkpoint (``format``, ``model``,
``config`` = the ModelConfig), so every model-side loader (classifier initialisation, ``embed``,
probes) reads run checkpoints as is::

    format, model, config, run_config (RunConfig.to_dict()), stage, step, optimizer, scheduler,
    scaler, data ({"micro_batches": n}: position in the training stream), rng, metrics
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mv2mae.model.checkpoint import TMP_MARK, CheckpointError, load_checkpoint, write_checkpoint

RUN_KEYS = ("run_config", "stage", "step", "optimizer", "scheduler", "scaler", "data", "rng")
CKPT_DIR = "checkpoints"
# what the kept copies are: the last step (what the paper's protocol tests, and what a transfer finetune
# starts from), the lowest training loss (pretraining, or finetuning without validation), the best
# validation top-1 (finetuning), and the same for the EMA weights when finetune.ema_decay > 0
LAST_STEP = "last-step.pt"
LOWEST_TRAIN_LOSS = "lowest-train-loss.pt"
BEST_VAL_TOP1 = "best-val-top1.pt"
BEST_VAL_TOP1_EMA = "best-val-top1-ema.pt"
_NAME_RE = re.compile(r"^step-(\d{8})\.pt$")


def step_name(step: int) -> str:
    return f"step-{step:08d}.pt"


def load_run(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint that can resume a run (model-only checkpoints cannot)."""
    ckpt = load_checkpoint(path, map_location)
    missing = [k for k in RUN_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: a model-only checkpoint cannot resume a run (lacks {', '.join(missing)})")
    return ckpt


def step_checkpoints(run_dir: str | Path) -> list[Path]:
    """Step checkpoints of a run, oldest first."""
    folder = Path(run_dir) / CKPT_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME_RE.match(p.name))


def remove_stale(run_dir: str | Path) -> list[Path]:
    """Delete what killed or failed checkpoint writes left (``.<name>.tmp<pid>``); the removed paths.
    Only the run's main process calls this, before it writes anything."""
    folder = Path(run_dir) / CKPT_DIR
    stale = sorted(folder.glob(f".*{TMP_MARK}*")) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def latest(run_dir: str | Path) -> Path | None:
    found = step_checkpoints(run_dir)
    return found[-1] if found else None


def save_step(run_dir: str | Path, state: dict[str, Any], keep_last: int, copies: tuple[str, ...] = ()) -> Path:
    """Write ``step-N.pt`` atomically, refresh each of ``copies`` (e.g. ``best-val-top1.pt``) with it, prune
    older step files."""
    folder = Path(run_dir) / CKPT_DIR
    path = folder / step_name(int(state["step"]))
    write_checkpoint(state, path)
    for name in copies:
        tmp = folder / f".{name}{TMP_MARK}{os.getpid()}"
        try:
            _link_or_copy(path, tmp)
            os.replace(tmp, folder / name)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise CheckpointError(f"{folder / name}: could not write the checkpoint ({e.strerror or e}); "
                                  f"{path} is complete") from None
    for old in step_checkpoints(run_dir)[:-max(1, keep_last)]:
        old.unlink(missing_ok=True)
    return path


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` as a second name of ``src`` (no bytes written: a step file is never changed once renamed into
    place, only unlinked), or a copy where the file system has no hard links."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


# ---------------------------------------------------------------------------- RNG states
def rng_state() -> dict[str, Any]:
    """Global RNG states as tensors and plain numbers (loadable with ``weights_only``)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": [list(random.getstate()[1]), random.getstate()[0]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    words, version = state["python"]
    random.setstate((version, tuple(words), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
