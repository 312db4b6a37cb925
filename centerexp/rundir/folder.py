"""The run folder: creating it safely, its lock, its header (config, command, env.json), run.json.

Layout of ``runs/NAME/``::

    config.yaml          resolved config (file + overrides)
    command.txt          the command line that started (or resumed) the run
    env.json             python / torch / torchvision versions, device, precision, threads, git commit
    run.json             experiment, arm and profile it belongs to (if any), fingerprint of its start
    metrics.csv          one row per evaluation (each epoch's end, every train.eval_every steps), flushed as it goes
    summary.json         status (running | completed | failed | interrupted), accuracies, timing
    checkpoints/last.pt  everything needed to resume after the last evaluation
    features.pt          the last evaluation's test features, labels and centers (for compare)
    plots/               loss_curves.png, features.png, features/epoch_NNN.png, features.gif
"""

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from centerexp.errors import CenterexpError
from centerexp.rundir import files
from centerexp.rundir.io import FILE_MODE, _write_error, atomic_write_text, now, read_json, write_json


class RunBusy(CenterexpError):
    """Another live process is training this run folder."""

    exit_code = 3


class RunExists(CenterexpError):
    """The run folder to create exists already."""

    exit_code = 2


class RunLock:
    """An advisory ``fcntl.flock`` on ``run_dir/.lock``, held for as long as a process trains the run.

    The kernel drops the lock when the process dies, however it dies, so a killed run never leaves
    a stale lock behind; the file itself stays and means nothing on its own.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / files.LOCK
        self._fd: int | None = None

    def acquire(self, where: Path | None = None) -> "RunLock":
        """Take the lock; ``where``: a folder that is about to be renamed to the run folder (the
        open file, and so the lock, move with it)."""
        import fcntl

        path = Path(where) / files.LOCK if where else self.path
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
    return (Path(path) / files.CONFIG).is_file() and (Path(path) / files.SUMMARY).is_file()


def create_run_dir(
    runs_dir: Path, name: str, overwrite: bool, contents: dict[str, str] | None = None, lock: RunLock | None = None
) -> Path:
    """Create ``runs_dir/name`` holding ``contents`` (relative path -> text); refuse to touch an
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
        (staging / files.CHECKPOINT).parent.mkdir()
        (staging / files.FEATURE_FRAMES).mkdir(parents=True)
    except OSError as e:
        raise CenterexpError(f"cannot create run folder {run_dir}: {e.strerror or e}") from None
    try:
        for rel, text in (contents or {}).items():
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
    """Delete the temp files of atomic writes that a killed trainer left behind (call with the lock held).

    launcher.json's are not the trainer's: the launcher writes it from another process, without the
    lock, possibly at this very moment (removing its temp file would fail that write)."""
    folders = (run_dir, (run_dir / files.CHECKPOINT).parent, run_dir / files.PLOTS, run_dir / files.FEATURE_FRAMES)
    theirs = f".{files.LAUNCHER}."
    stale = [p for folder in folders for p in folder.glob(".*.tmp") if not p.name.startswith(theirs)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


# ---------------------------------------------------------------------------------------------
# The run header: config.yaml, command.txt, env.json


def write_run_header(run_dir: Path, config_text: str, command: str, env: dict) -> None:
    """config.yaml, a line in command.txt and env.json: what is starting (or resuming) this run."""
    atomic_write_text(run_dir / files.CONFIG, config_text)
    try:
        with open(run_dir / files.COMMAND, "a") as f:
            f.write(f"{now()}  {command or ' '.join(sys.argv)}\n")
    except OSError as e:
        raise _write_error(run_dir / files.COMMAND, e) from None
    env_path = run_dir / files.ENV
    if env_path.exists():  # keep what produced the earlier epochs; note each resume's environment
        try:
            first = read_json(env_path)
        except (OSError, ValueError):
            first = {"note": "env.json of the earlier epochs was unreadable"}
        env = {**first, "resumes": [*first.get("resumes", []), {"time": now(), **env}]}
    write_json(env_path, env)


REUSED_FROM = "reused_from"  # run.json: the run folder a reused run was copied from (sweeps.reuse)


def read_identity(run_dir: Path) -> dict:
    """run.json: what the run is part of (experiment, arm, profile) and its fingerprint; {} if absent."""
    try:
        return read_json(Path(run_dir) / files.IDENTITY)
    except (OSError, ValueError):
        return {}


def write_identity(run_dir: Path, **fields: Any) -> None:
    write_json(Path(run_dir) / files.IDENTITY, {**read_identity(run_dir), **fields})


def recorded(run_dir: Path, key: str):
    """What env.json says the run last trained with (its latest resume first), e.g. "threads" or
    "precision"; None if unrecorded."""
    try:
        env = read_json(Path(run_dir) / files.ENV)
    except (OSError, ValueError):
        return None
    for entry in [*reversed(env.get("resumes", [])), env]:
        if entry.get(key) not in (None, ""):
            return entry[key]
    return None


def recorded_threads(run_dir: Path) -> int | None:
    value = recorded(run_dir, "threads")
    return value if isinstance(value, int) and value >= 1 else None
