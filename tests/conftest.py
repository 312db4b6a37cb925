import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    """One verified, unpacked MNIST cache for the whole session (real data, from the package)."""
    from centerexp.training.data import prepare_mnist

    return prepare_mnist(tmp_path_factory.mktemp("mnist"))


@pytest.fixture(autouse=True)
def _isolated_data(mnist_root, monkeypatch):
    """Every test reads MNIST from the session cache, never from the user's cache folder."""
    monkeypatch.setenv("CENTEREXP_DATA", str(mnist_root))
    monkeypatch.delenv("CENTEREXP_DEBUG", raising=False)


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
