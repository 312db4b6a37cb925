import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

# make test runs 2 pytest workers, and a run trains with all cores' threads by default: on 2 cores
# that is 4 OpenMP threads, and threads that spin while they wait steal the other worker's core. Let
# them sleep instead (read when torch loads, so before any test imports it; CLI subprocesses inherit
# it). The wait policy does not change how work is split, so no number changes; the suite runs ~20 %
# faster.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    """One verified, unpacked MNIST cache for the whole session (real data, from the package). The
    pytest-xdist workers share it, and with it the speed cache (seeded: see seed_speed_cache)."""
    from centerexp.training.data import prepare_mnist

    if not os.environ.get("PYTEST_XDIST_WORKER"):  # not under xdist
        return prepare_mnist(tmp_path_factory.mktemp("mnist"))
    shared = tmp_path_factory.getbasetemp().parent / "mnist"  # the parent of every worker's basetemp
    return prepare_mnist(shared)  # safe when both workers unpack at once (a temp file per process)


@pytest.fixture(scope="session", autouse=True)
def _isolated_data(mnist_root):
    """Every test, and every module-scoped fixture (they start before function-scoped ones), reads
    MNIST and keeps its speed measurements in the session cache, never in the user's cache folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CENTEREXP_DATA", str(mnist_root))
        patch.delenv("CENTEREXP_DEBUG", raising=False)
        seed_speed_cache(mnist_root)
        yield


# The conv-net runs of the suite with train.precision / train.conv_algo left at auto (test_train_cli's
# V1.0 at batch 64, the conv runs of test_reliability at batch 16 and 1 thread): their archs, batch
# sizes and thread counts. Each combination would otherwise time the bf16 probe and every layer shape
# for real, once per session and code path (make test-portable runs 3 more): minutes on a CPU without
# bf16 units, where bf16 runs on oneDNN's reference kernels.
SEEDED_SPEEDS = [(arch, batch, threads) for arch in ("deep", "shallow") for batch in (16, 64) for threads in (1, None)]


FAKE_RATES = {"train": 1000.0, "eval": 4000.0}  # images/s the suite's speed cache holds for every model


def fp32_wins(cfg, device, channels_last) -> dict:
    """Stands in for precision.measure_step_rates: equal rates, so auto keeps fp32."""
    return {"fp32": 1.0, "bf16": 1.0}


def library_wins(c_in, c_out, kernel, padding, height, width, batch, precision, device, channels_last) -> dict:
    """Stands in for conv.measure_layer: every other algorithm that applies takes twice the library's time."""
    from centerexp.training import conv

    return {
        a: 1.0 if a == conv.LIBRARY else 2.0 for a in conv.candidates_for(kernel, padding, height, width, precision)
    }


def seed_speed_cache(root: Path) -> None:
    """Fill the session's speed cache (root/speed-cache.json) for SEEDED_SPEEDS with fp32_wins and
    library_wins, through the package's own Runtime.from_config, so the keys are exactly those a run
    looks up. Runs then read fp32 and the library from the cache, in this process or in a CLI
    subprocess, instead of timing them; the tests about the measurement itself (test_runtime.py,
    test_conv.py, test_bench.py, the auto case of test_faults.py) use caches of their own or call it
    directly. Under xdist every worker calls this; the cache's lock makes the second one a reader."""
    import torch

    from centerexp.config import Config
    from centerexp.training.runtime import DEFAULT_THREADS, Runtime

    before = torch.get_num_threads()
    try:
        for arch, batch, threads in SEEDED_SPEEDS:
            cfg = Config()
            cfg.data.root, cfg.model.arch, cfg.train.device = str(root), arch, "cpu"
            cfg.train.batch_size, cfg.train.threads = batch, threads or DEFAULT_THREADS
            Runtime.from_config(cfg, measure=fp32_wins, measure_conv=library_wins)
    finally:
        torch.set_num_threads(before)
    # reproduce prices its plan at these rates instead of timing each model at batch 256
    from centerexp.experiments.rates import store_rates
    from centerexp.sweeps.jobs import cpu_count

    for arch in ("linear", "deep", "shallow"):
        for precision in ("fp32", "bf16"):
            for threads in range(1, cpu_count() + 1):
                store_rates(arch, precision, threads, FAKE_RATES)


def write_config(path: Path, base: str = "baseline", **sections) -> Path:
    """A config file: configs/<base>.yaml with some keys replaced, e.g. train={"epochs": 2}."""
    raw = yaml.safe_load((CONFIGS / f"{base}.yaml").read_text())
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(raw))
    return path


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    """Run `python -m centerexp ...` in a subprocess; returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "centerexp", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes, to prove nothing was changed."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def metrics_without_timing(run: Path) -> list[dict]:
    """A run's metrics.csv rows without the wall-clock columns: what must match between reruns."""
    from centerexp.rundir.records import read_metrics
    from centerexp.rundir.schema import TIMING_COLUMNS

    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in read_metrics(Path(run) / "metrics.csv")]


def read_events(run: Path):
    """A run's tb/ as TensorBoard reads it (orphaned events of a resumed run purged), all of it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(Path(run) / "tb"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    return accumulator.Reload()


def assert_events_match_metrics(run: Path) -> None:
    """Every metrics.csv column is a scalar with the same values (as float32) at the same steps, once
    each; a column an older run lacks (or leaves empty) has no tag."""
    import torch

    from centerexp.rundir.records import read_metrics
    from centerexp.rundir.schema import METRICS

    events, rows = read_events(run), read_metrics(Path(run) / "metrics.csv")
    for column in METRICS:
        if column.name == "step":
            continue
        present = [r for r in rows if r.get(column.name) not in (None, "")]
        logged = [(e.step, e.value) for e in events.Scalars(column.tag)] if present else []
        assert present or column.tag not in events.Tags()["scalars"]
        expected = [(int(r["step"]), torch.tensor(float(r[column.name])).float().item()) for r in present]
        assert logged == expected, f"{column.tag}: {logged} != {expected}"
