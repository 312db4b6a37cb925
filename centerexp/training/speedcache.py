"""Speed measurements that choose how a run computes (precision.py, conv.py), and their cache.

A measurement depends on the machine, not on the run, so it is taken once per machine signature
(CPU model, cores, threads, torch version, architecture) and what was timed, and kept in
``DATA_ROOT/speed-cache.json``. A damaged cache is measured again; a read-only one only costs a
re-measurement next time.
"""

import contextlib
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from centerexp.config import Config
from centerexp.errors import CenterexpError

CACHE_FILE = "speed-cache.json"


def machine_signature(threads: int) -> dict:
    """What a CPU measurement depends on: CPU model, cores and threads, torch version, architecture."""
    from centerexp.rundir.provenance import cpu_model

    return {
        "device": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
    }


def cache_key(signature: dict, *what: str) -> str:
    return "|".join([*(str(v) for v in signature.values()), *what])


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # missing or damaged: measure again


def remembered(cfg: Config, what: list[str], measure: Callable[[], dict]) -> tuple[dict, bool, Path]:
    """(measurement, whether it came from the cache, the cache's path): ``measure()`` for ``what``
    on this machine, taken once and then read back."""
    from centerexp.rundir.io import write_json
    from centerexp.training.data import data_root

    signature = machine_signature(torch.get_num_threads())
    key = cache_key(signature, *what)
    path = data_root(cfg.data) / CACHE_FILE
    cache = _read(path)
    if key in cache:
        return cache[key]["measured"], True, path
    value = measure()
    cache = _read(path)  # another process may have added entries meanwhile
    cache[key] = {"measured": value, **signature, "what": list(what)}
    with contextlib.suppress(OSError, CenterexpError):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, cache)
    return value, False, path


def median_seconds(
    candidates: dict[str, Callable[[], None]], device: torch.device, min_repeats: int, min_seconds: float
) -> dict[str, float]:
    """Median seconds of each candidate's call, after one untimed warm-up call each (kernel choice,
    allocations). The candidates take turns, so that a slow moment of the machine hits all alike;
    each is timed ``min_repeats`` times at least, and for ``min_seconds`` at least in all."""

    def timed(call) -> float:
        start = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    for call in candidates.values():
        timed(call)
    times = {name: [] for name in candidates}
    start = time.perf_counter()
    while min(len(t) for t in times.values()) < min_repeats or time.perf_counter() - start < min_seconds:
        for name, call in candidates.items():
            times[name].append(timed(call))
    return {name: statistics.median(t) for name, t in times.items()}
