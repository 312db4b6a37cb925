"""The run folder: creating it safely, atomic writes, metrics.csv, summary.json, env.json.

Layout of ``runs/NAME/``::

    config.yaml          resolved config (file + overrides)
    command.txt          the command line that started (or resumed) the run
    env.json             python / torch / torchvision versions, device, precision, threads, git commit
    run.json             experiment, arm and profile it belongs to (if any), fingerprint of its start
    metrics.csv          one row per evaluation (each epoch's end, every train.eval_every steps), flushed as it goes
    summary.json         status (running | completed | failed | interrupted), accuracies, timing
    checkpoints/last.pt  everything needed to resume after the last finished epoch
    features.pt          the last epoch's test features, labels and centers (for compare)
    plots/               loss_curves.png, features.png, features/epoch_NNN.png, features.gif
"""

import contextlib
import csv
import io
import json
import math
import os
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from centerexp.errors import CenterexpError
from centerexp.schema import METRIC_COLUMNS, RUN_FORMAT


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


# The modes a plain open() / mkdir() would give: mkstemp's and mkdtemp's 0600 / 0700 would hide run outputs.
FILE_MODE = 0o666 & ~_umask()


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
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


class RunBusy(CenterexpError):
    """Another live process is training this run folder."""

    exit_code = 3


class RunExists(CenterexpError):
    """The run folder to create exists already."""

    exit_code = 2


LOCK_NAME = ".lock"


class RunLock:
    """An advisory ``fcntl.flock`` on ``run_dir/.lock``, held for as long as a process trains the run.

    The kernel drops the lock when the process dies, however it dies, so a killed run never leaves
    a stale lock behind; the file itself stays and means nothing on its own.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, where: Path | None = None) -> "RunLock":
        """Take the lock; ``where``: a folder that is about to be renamed to the run folder (the
        open file, and so the lock, move with it)."""
        import fcntl

        path = Path(where) / LOCK_NAME if where else self.path
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        except OSError as e:
            raise _write_error(path, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_lock_holder(fd)
            os.close(fd)
            raise RunBusy(
                f"{self.path.parent} is being trained by another process{holder}: wait for it or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # for the message above only; the flock is what counts
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_lock_holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


NOT_A_RUN = "not a centerexp run folder (no config.yaml and summary.json)"


def is_run_dir(path: Path) -> bool:
    """A folder written by `centerexp train` (from the moment it exists: see create_run_dir)."""
    return (Path(path) / "config.yaml").is_file() and (Path(path) / "summary.json").is_file()


def create_run_dir(
    runs_dir: Path, name: str, overwrite: bool, files: dict[str, str] | None = None, lock: RunLock | None = None
) -> Path:
    """Create ``runs_dir/name`` holding ``files`` (relative path -> text); refuse to touch an
    existing folder unless ``overwrite``, and never one that a live process is training.

    The folder is assembled under a hidden temporary name and renamed into place, so a process
    killed while creating it leaves either no run folder or a complete one (config.yaml and
    summary.json), which ``--resume`` and ``--overwrite`` both accept. ``lock`` (a RunLock for the
    new folder) is taken before the rename, so no other process can take the new run first.
    """
    runs_dir = Path(runs_dir)
    run_dir = runs_dir / name
    if run_dir.exists():
        if not overwrite:
            raise RunExists(
                f"run folder {run_dir} already exists: pass --overwrite to replace it, "
                f"--resume {run_dir} to continue it, or --name to pick another"
            )
        if not is_run_dir(run_dir) and any(run_dir.iterdir()):
            raise CenterexpError(f"refusing to overwrite {run_dir}: it is not a centerexp run folder", exit_code=2)
        with RunLock(run_dir):  # RunBusy if another process is training it
            doomed = _side_name(runs_dir, name, "deleting")
            _rename(run_dir, doomed)  # one atomic step: a kill mid-delete leaves no half run folder
        _remove_tree(doomed)
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(runs_dir, name)
        staging = _side_name(runs_dir, name, "creating")
        staging.mkdir()
        (staging / "checkpoints").mkdir()
        (staging / "plots" / "features").mkdir(parents=True)
    except OSError as e:
        raise CenterexpError(f"cannot create run folder {run_dir}: {e.strerror or e}") from None
    try:
        for rel, text in (files or {}).items():
            atomic_write_text(staging / rel, text)
        if lock is not None:
            lock.acquire(where=staging)
        os.rename(staging, run_dir)  # atomic; fails if run_dir appeared meanwhile
    except (OSError, CenterexpError) as e:
        if lock is not None:
            lock.release()
        _remove_tree(staging)
        if run_dir.exists():
            raise RunExists(f"run folder {run_dir} was created by another process meanwhile") from None
        if isinstance(e, CenterexpError):
            raise
        raise CenterexpError(f"cannot create run folder {run_dir}: {e.strerror or e}") from None
    return run_dir


def _side_name(runs_dir: Path, name: str, what: str) -> Path:
    """A hidden sibling of the run folder for a half-done create or delete, named after this process."""
    return runs_dir / f".{name}.{what}-{os.getpid()}-{os.urandom(4).hex()}"


def _rename(src: Path, dst: Path) -> None:
    try:
        os.rename(src, dst)
    except OSError as e:
        raise CenterexpError(f"cannot remove {src}: {e.strerror or e}") from None


def _remove_abandoned(runs_dir: Path, name: str) -> None:
    """Remove half-made or half-deleted folders of ``name`` whose process is gone (killed meanwhile)."""
    for side in [*runs_dir.glob(f".{name}.creating-*"), *runs_dir.glob(f".{name}.deleting-*")]:
        pid = side.name.rsplit("-", 2)[-2]
        if pid.isdigit() and not _alive(int(pid)):
            _remove_tree(side)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _remove_tree(path: Path) -> None:
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise CenterexpError(f"cannot remove {path}: {e.strerror or e}") from None


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Delete the temp files of atomic writes that a killed process left behind (call with the lock held)."""
    folders = (run_dir, run_dir / "checkpoints", run_dir / "plots", run_dir / "plots" / "features")
    stale = [p for folder in folders for p in folder.glob(".*.tmp")]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


# ---------------------------------------------------------------------------------------------
# The run header: config.yaml, command.txt, env.json


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_run_header(run_dir: Path, config_text: str, command: str, env: dict) -> None:
    """config.yaml, a line in command.txt and env.json: what is starting (or resuming) this run."""
    atomic_write_text(run_dir / "config.yaml", config_text)
    try:
        with open(run_dir / "command.txt", "a") as f:
            f.write(f"{now()}  {command or ' '.join(sys.argv)}\n")
    except OSError as e:
        raise _write_error(run_dir / "command.txt", e) from None
    env_path = run_dir / "env.json"
    if env_path.exists():  # keep what produced the earlier epochs; note each resume's environment
        try:
            first = read_json(env_path)
        except (OSError, ValueError):
            first = {"note": "env.json of the earlier epochs was unreadable"}
        env = {**first, "resumes": [*first.get("resumes", []), {"time": now(), **env}]}
    write_json(env_path, env)


IDENTITY = "run.json"


def read_identity(run_dir: Path) -> dict:
    """run.json: what the run is part of (experiment, arm, profile) and its fingerprint; {} if absent."""
    try:
        return read_json(Path(run_dir) / IDENTITY)
    except (OSError, ValueError):
        return {}


def write_identity(run_dir: Path, **fields: Any) -> None:
    write_json(Path(run_dir) / IDENTITY, {**read_identity(run_dir), **fields})


def recorded_threads(run_dir: Path) -> int | None:
    """The thread count the run last trained with (env.json, its latest resume first); None if unrecorded."""
    try:
        env = read_json(Path(run_dir) / "env.json")
    except (OSError, ValueError):
        return None
    for entry in [*reversed(env.get("resumes", [])), env]:
        if isinstance(entry.get("threads"), int) and entry["threads"] >= 1:
            return entry["threads"]
    return None


# ---------------------------------------------------------------------------------------------
# summary.json: the run's status, rewritten atomically at every change


def progress_from_metrics(run_dir: Path) -> dict:
    """The summary's progress fields, derived from metrics.csv (the one record of finished epochs)."""
    path = Path(run_dir) / "metrics.csv"
    m = metrics_columns(path) if path.exists() else {}
    if not m.get("epoch"):
        return {"epochs_done": 0}
    accs, epochs = m["test_acc"], m["epoch"]
    best = max(range(len(accs)), key=lambda i: -math.inf if math.isnan(accs[i]) else accs[i])  # first best row

    def whole(x: float) -> float | int:
        return int(x) if x == int(x) else x

    return {
        "epochs_done": int(epochs[-1]),  # whole epochs; a row inside an epoch has a fractional epoch
        **({"steps_done": int(m["step"][-1])} if not math.isnan(m["step"][-1]) else {}),
        "final_test_acc": accs[-1],
        "best_test_acc": accs[best],
        "best_epoch": whole(epochs[best]),
        "wall_seconds": m["wall_seconds"][-1],
        "seconds_per_epoch": m["wall_seconds"][-1] / epochs[-1] if epochs[-1] > 0 else math.nan,
    }


class RunSummary:
    """summary.json. Status: ``running`` while a process trains the run (or was killed doing so),
    then ``completed``, ``failed`` or ``interrupted``; a resume sets it back to ``running``."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "summary.json"
        try:
            self.data = read_json(self.path) if self.path.exists() else {}
        except (OSError, ValueError):
            self.data = {}  # a damaged summary is rebuilt from metrics.csv below

    @staticmethod
    def initial() -> str:
        """The summary a new run folder is created with."""
        return json.dumps({"started": now(), "status": "running", "epochs_done": 0, "run_format": RUN_FORMAT}) + "\n"

    def begin(self, **fields: Any) -> None:
        self.data.setdefault("started", now())
        self.data.pop("diverged", None)
        self.data.update(fields, run_format=RUN_FORMAT, **progress_from_metrics(self.run_dir))
        self._save("running")

    def epoch_finished(self) -> None:
        self.data.update(progress_from_metrics(self.run_dir))
        self._save("running")

    def completed(self) -> None:
        self._save("completed")

    def failed(self, error: str, **fields: Any) -> None:
        self.data.update(fields)  # e.g. diverged=True
        self._save_quietly("failed", error)

    def interrupted(self, error: str) -> None:
        self._save_quietly("interrupted", error)

    def _save(self, status: str, error: str | None = None) -> None:
        self.data.update(status=status, error=error, updated=now())
        write_json(self.path, self.data)

    def _save_quietly(self, status: str, error: str) -> None:
        with contextlib.suppress(CenterexpError):  # the disk may be the problem: keep the original error
            self._save(status, error)


# ---------------------------------------------------------------------------------------------
# metrics.csv: one row per finished epoch, columns from schema.METRICS


class MetricsLog:
    """metrics.csv, one row per finished epoch, flushed and fsynced as each row lands."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def truncate_to(self, epoch: int, step: int) -> None:
        """Keep the header and the rows up to the checkpoint at ``step`` (used on resume); a row
        without a step (an older run format) is kept when its epoch is <= ``epoch``.

        Rows are rewritten with this version's columns: ones an older version lacked stay empty,
        ones this version does not know are dropped.
        """
        rows = [r for r in read_metrics(self.path) if _committed(r, epoch, step)] if self.path.exists() else []
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, buffer.getvalue())

    def append(self, row: dict) -> None:
        if set(row) != set(METRIC_COLUMNS):  # a programming error: schema.METRICS and the row disagree
            missing, extra = set(METRIC_COLUMNS) - set(row), set(row) - set(METRIC_COLUMNS)
            raise ValueError(f"metrics row does not match schema.METRICS: missing {missing}, unknown {extra}")
        try:
            with open(self.path, "a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, lineterminator="\n")
                writer.writerow({k: _exact(row[k]) for k in METRIC_COLUMNS})
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise _write_error(self.path, e) from None


def _committed(row: dict, epoch: int, step: int) -> bool:
    row_step = _number(row.get("step"))
    return row_step <= step if not math.isnan(row_step) else _number(row.get("epoch")) <= epoch


def _exact(value: Any) -> str:
    # repr keeps every bit of a float, so reruns can be compared exactly.
    return repr(value) if isinstance(value, float) else str(value)


def read_metrics(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def metrics_columns(path: Path) -> dict[str, list[float]]:
    """metrics.csv as numeric columns. Every column of schema.METRICS is present (NaN where a run
    of another version lacks it); columns this version does not know are kept as they are."""
    rows = read_metrics(path)
    names = list(METRIC_COLUMNS) + [c for c in (rows[0].keys() if rows else []) if c not in METRIC_COLUMNS]
    return {c: [_number(r.get(c)) for r in rows] for c in names}
