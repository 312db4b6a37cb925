"""Speed measurements that choose how a run computes (precision.py, conv.py), and their cache.

A measurement depends on the machine, not on the run, so it is taken once per machine signature
(CPU model, cores, threads, torch version, architecture, CPU code path) and what was timed, and kept in
``DATA_ROOT/speed-cache.json``. Processes measure one at a time (a lock file beside the cache), so
runs started together measure once. A damaged cache is measured again; a read-only one only costs
a re-measurement next time.
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
    """What a CPU measurement depends on: CPU model, cores and threads, torch version, architecture,
    and the code path (oneDNN capped at AVX2 runs bf16 on reference kernels, many times slower)."""
    from centerexp.rundir.provenance import cpu_code_path, cpu_model

    return {
        "device": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "code_path": cpu_code_path(),
    }


def cache_key(signature: dict, *what: str) -> str:
    return "|".join([*(str(v) for v in signature.values()), *what])


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # missing or damaged: measure again


def remembered(
    cfg: Config, what: list[str], measure: Callable[[], dict], replace: bool = False
) -> tuple[dict, bool, Path]:
    """(measurement, whether it came from the cache, the cache's path): ``measure()`` for ``what``
    on this machine, taken once and then read back; with ``replace``, taken now and stored."""
    values, cached, path = remembered_all(cfg, {"": (what, measure)}, replace)
    return values[""], cached[""], path


def remembered_all(
    cfg: Config, wanted: dict[str, tuple[list[str], Callable[[], dict]]], replace: bool = False
) -> tuple[dict[str, dict], dict[str, bool], Path]:
    """``remembered`` for several measurements at once (name -> (what, measure)): the cache is read
    once, and each missing measurement is taken and written as it comes. Returns (name ->
    measurement, name -> whether it came from the cache, the cache's path)."""
    from centerexp.rundir.io import write_json
    from centerexp.training.data import data_root

    path = data_root(cfg.data) / CACHE_FILE
    if not wanted:
        return {}, {}, path
    signature = machine_signature(torch.get_num_threads())
    values, cached = {}, {}
    with _measuring_alone(path):
        cache = _read(path)
        for name, (what, measure) in wanted.items():
            key = cache_key(signature, *what)
            cached[name] = key in cache and not replace
            if cached[name]:
                values[name] = cache[key]["measured"]
                continue
            values[name] = measure()
            cache[key] = {"measured": values[name], **signature, "what": list(what)}
            with contextlib.suppress(OSError, CenterexpError):
                write_json(path, cache)
    return values, cached, path


def lookup(cfg: Config, what: list[str]) -> dict | None:
    """The cached measurement of ``what`` on this machine (at this process's threads), or None.
    For a measurement that itself takes other cached measurements (which ``remembered`` would
    deadlock on: its lock is held while it measures): look up, measure, then ``remembered`` stores."""
    from centerexp.training.data import data_root

    key = cache_key(machine_signature(torch.get_num_threads()), *what)
    entry = _read(data_root(cfg.data) / CACHE_FILE).get(key)
    return entry["measured"] if isinstance(entry, dict) and "measured" in entry else None


@contextlib.contextmanager
def _measuring_alone(path: Path):
    """Hold an flock on ``path``'s lock file while reading, measuring and writing the cache. Two runs
    starting together (``reproduce --jobs 2``) would otherwise both measure, each timing the other's
    noise, and disagree; with it the second waits and reads the first's measurement. The kernel drops
    the lock when its holder dies. Where no lock file can be made (a read-only cache), go on without."""
    import fcntl

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def median_seconds(
    candidates: dict[str, Callable[[], None]],
    device: torch.device,
    min_repeats: int,
    min_seconds: float,
    drop_slower_than: float | None = None,
) -> dict[str, float]:
    """Median seconds of each candidate's call, after one untimed warm-up call each (kernel choice,
    allocations). The candidates take turns, so that a slow moment of the machine hits all alike;
    each is timed ``min_repeats`` times at least, and for ``min_seconds`` at least in all.

    ``drop_slower_than``: a candidate whose first timed call took this many times the fastest one's
    is timed no further; that one call is its result (bf16 on a CPU without bf16 units runs at a
    tenth of fp32's speed, and timing it 3 times would cost minutes to learn nothing more)."""

    def timed(call) -> float:
        start = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    for call in candidates.values():
        timed(call)
    times = {name: [] for name in candidates}
    timing = dict(candidates)
    start = time.perf_counter()
    while min(len(times[n]) for n in timing) < min_repeats or time.perf_counter() - start < min_seconds:
        for name, call in timing.items():
            times[name].append(timed(call))
        if drop_slower_than and len(timing) > 1 and min(len(t) for t in times.values()) == 1:
            fastest = min(t[0] for t in times.values())
            timing = {n: c for n, c in timing.items() if times[n][0] < drop_slower_than * fastest}
    return {name: statistics.median(t) for name, t in times.items()}
