"""The run folder: creating it safely, atomic writes, metrics.csv, summary.json, env.json.

Layout of ``runs/NAME/``::

    config.yaml          resolved config (file + overrides)
    command.txt          the command line that started (or resumed) the run
    env.json             python / torch / torchvision versions, device, precision, threads, git commit
    metrics.csv          one row per finished epoch, appended and flushed as it goes
    summary.json         status (running | completed | failed | interrupted), accuracies, timing
    checkpoints/last.pt  everything needed to resume after the last finished epoch
    features.pt          the last epoch's test features, labels and centers (for compare)
    plots/               loss_curves.png, features.png, features/epoch_NNN.png, features.gif
"""

import csv
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from centerexp.errors import CenterexpError

METRIC_COLUMNS = [
    "epoch",
    "lr",
    "train_loss",
    "train_ce",
    "train_center",
    "train_acc",
    "test_loss",
    "test_ce",
    "test_center",
    "test_acc",
    "intra_dist",
    "center_dist",
    "compactness",
    "epoch_seconds",
    "train_seconds",
    "eval_seconds",
    "wall_seconds",
    "images_per_second",
]
# Columns that measure time: they differ between otherwise identical runs.
TIMING_COLUMNS = {"epoch_seconds", "train_seconds", "eval_seconds", "wall_seconds", "images_per_second"}


def _file_mode() -> int:
    """The mode a plain open() would give a new file: mkstemp's 0600 would hide run outputs from others."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


def _write_error(path: Path, e: OSError) -> CenterexpError:
    return CenterexpError(f"cannot write {path}: {e.strerror or e}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then os.replace: readers never see half a file."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
        raise _write_error(path, e) from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def atomic_torch_save(obj: Any, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def is_run_dir(path: Path) -> bool:
    return (Path(path) / "config.yaml").is_file() and (Path(path) / "summary.json").is_file()


def create_run_dir(runs_dir: Path, name: str, overwrite: bool) -> Path:
    """Create ``runs_dir/name``; refuse to touch an existing folder unless ``overwrite``."""
    run_dir = Path(runs_dir) / name
    if run_dir.exists():
        if not overwrite:
            raise CenterexpError(
                f"run folder {run_dir} already exists: pass --overwrite to replace it, "
                f"--resume {run_dir} to continue it, or --name to pick another",
                exit_code=2,
            )
        if not is_run_dir(run_dir) and any(run_dir.iterdir()):
            raise CenterexpError(f"refusing to overwrite {run_dir}: it is not a centerexp run folder", exit_code=2)
        try:
            shutil.rmtree(run_dir)
        except OSError as e:
            raise CenterexpError(f"cannot remove {run_dir}: {e.strerror or e}") from None
    try:
        (run_dir / "checkpoints").mkdir(parents=True)
        (run_dir / "plots" / "features").mkdir(parents=True)
    except OSError as e:
        raise CenterexpError(f"cannot create run folder {run_dir}: {e.strerror or e}") from None
    return run_dir


def git_info() -> dict:
    """Commit and dirty flag of the source tree centerexp runs from (None outside a git checkout)."""
    src = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def env_info(device: torch.device, precision: str, channels_last: bool) -> dict:
    import torchvision

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "precision": precision,
        "channels_last": channels_last,
        "cuda": torch.version.cuda,
        "git": git_info(),
        "argv": sys.argv,
    }
    return info


class MetricsLog:
    """metrics.csv, one row per finished epoch, flushed and fsynced as each row lands."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def truncate_to(self, epoch: int) -> None:
        """Keep the header and the rows of epochs <= ``epoch`` (used on resume)."""
        rows = [r for r in read_metrics(self.path) if int(r["epoch"]) <= epoch] if self.path.exists() else []
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, buffer.getvalue())

    def append(self, row: dict) -> None:
        try:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=METRIC_COLUMNS, lineterminator="\n").writerow(
                    {k: _fmt(row[k]) for k in METRIC_COLUMNS}
                )
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise _write_error(self.path, e) from None


def _fmt(value: Any) -> str:
    # repr keeps every bit of a float, so reruns can be compared exactly.
    return repr(value) if isinstance(value, float) else str(value)


def read_metrics(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def metrics_columns(path: Path) -> dict[str, list[float]]:
    """metrics.csv as numeric columns (empty lists when there are no rows yet)."""
    rows = read_metrics(path)
    return {c: [float(r[c]) for r in rows] for c in (rows[0].keys() if rows else METRIC_COLUMNS)}
