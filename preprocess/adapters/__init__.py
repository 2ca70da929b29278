"""Dataset adapters: each turns a root folder (or a CSV manifest) into a sorted list of multi-view groups.

The shared types and helpers are in :mod:`mv2mae.preprocess.adapters.base`; ``ADAPTERS`` below names
every dataset a user can pass to ``mv2mae preprocess``.
"""

from __future__ import annotations

from pathlib import Path

from mv2mae.preprocess.adapters import etri, manifest, ntu, nucla, pkummd
from mv2mae.preprocess.adapters.base import (
    Adapter,
    AdapterError,
    AdapterOptions,
    GroupSpec,
    Scan,
    ViewSource,
)

ADAPTERS: dict[str, Adapter] = {
    "ntu60": ntu.scan_ntu60,
    "ntu120": ntu.scan_ntu120,
    "synth": ntu.scan_synth,
    "nucla": nucla.scan_nucla,
    "pkummd2": pkummd.scan_pkummd2,
    "etri": etri.scan_etri,
    "manifest": manifest.scan_manifest,
}

__all__ = ["ADAPTERS", "AdapterError", "AdapterOptions", "GroupSpec", "Scan", "ViewSource", "scan"]


def scan(dataset: str, root: str | Path, options: AdapterOptions | None = None) -> Scan:
    """Run the adapter registered as ``dataset`` on ``root``."""
    if dataset not in ADAPTERS:
        raise AdapterError(f"unknown dataset {dataset!r}; known: {', '.join(sorted(ADAPTERS))}")
    root = Path(root)
    if not root.exists():
        raise AdapterError(f"{root}: no such file or directory")
    result = ADAPTERS[dataset](root, options or AdapterOptions())
    result.groups.sort(key=lambda g: (g.partition, g.key))
    return result
