"""What every launcher shares: the options, how a run ended (``Outcome``), the ``Sweep`` bookkeeping
(states, the progress bar, launcher.json), the registry of launchers, how many CPU threads and
which GPUs a job gets, and how a worker process imports this very centerexp. A launcher module
imports this; this imports no launcher.
"""

import os
import shlex
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from centerexp.errors import CenterexpError
from centerexp.rundir import files, status
from centerexp.rundir.folder import recorded_threads
from centerexp.rundir.io import read_json, write_json
from centerexp.sweeps.spec import RunSpec

# name -> "module:function" that trains a list of specs: fn(specs, options, log_dir, sweep). Adding a
# launcher is one module with such a function plus one entry here (launch.py imports it when used).
LAUNCHERS = {
    "local": "centerexp.sweeps.local:run_local",
    "submitit-local": "centerexp.sweeps.submitit_jobs:run_submitit",
    "slurm": "centerexp.sweeps.submitit_jobs:run_submitit",
}
LOG_DIR = "logs"  # under the runs dir: one log per local run, one folder per submitit job


# Where this process imported centerexp from. `python -m` would put the working directory first on a
# worker's sys.path, so a checkout there (another version of the code, or one being edited) would
# train instead of the code that planned the runs.
PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


def python_module_command(module: str, *args: str) -> list[str]:
    """``python -m module args`` that imports this process's centerexp, whatever the working directory."""
    run = (
        f"import runpy, sys; sys.path.insert(0, {PACKAGE_PARENT!r}); runpy.run_module({module!r}, run_name='__main__')"
    )
    return [sys.executable, "-c", run, *args]


def package_first_python() -> str:
    """A shell prefix that starts this Python so that it imports this process's centerexp, for
    launchers that add their own ``-m`` (submitit runs ``PYTHON -u -m submitit.core._submit``):
    PYTHONSAFEPATH (Python >= 3.11) keeps the working directory off sys.path, and PYTHONPATH puts
    this package's folder first."""
    path = os.pathsep.join([PACKAGE_PARENT, *filter(None, [os.environ.get("PYTHONPATH")])])
    return shlex.join(["env", "PYTHONSAFEPATH=1", f"PYTHONPATH={path}", sys.executable])


@dataclass(frozen=True)
class LaunchOptions:
    """How to launch a sweep (the `reproduce` command's --launcher, --jobs and Slurm options)."""

    launcher: str = "local"
    jobs: int | None = None  # local, submitit-local: runs at once [1]; slurm: array parallelism [no limit]
    partition: str | None = None
    time_min: int | None = None  # per job; a job that runs out is requeued and resumes
    gpus_per_job: int | None = None
    cpus_per_job: int | None = None
    mem_gb: float | None = None
    sbatch: tuple[str, ...] = ()  # extra sbatch options, KEY=VALUE (e.g. account=abc, qos=high)
    poll_s: float | None = None  # how often job states are checked [local 0.5 s, slurm 5 s]

    def check(self) -> "LaunchOptions":
        if self.launcher not in LAUNCHERS:
            raise CenterexpError(
                f"unknown launcher {self.launcher!r}: expected one of {', '.join(LAUNCHERS)}", exit_code=2
            )
        for name in ("jobs", "time_min", "cpus_per_job"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise CenterexpError(f"--{name.replace('_min', '').replace('_', '-')} must be >= 1, got {value}", 2)
        if self.gpus_per_job is not None and self.gpus_per_job < 0:
            raise CenterexpError(f"--gpus-per-job must be >= 0, got {self.gpus_per_job}", 2)
        slurm_only = {
            "partition": self.partition,
            "sbatch": self.sbatch,
            "mem_gb": self.mem_gb,
            "cpus_per_job": self.cpus_per_job,
            "gpus_per_job": self.gpus_per_job if self.launcher == "local" else None,
        }
        given = [k for k, v in slurm_only.items() if v is not None and v != ()]
        if given and self.launcher != "slurm":
            names = ", ".join("--" + ("slurm-option" if k == "sbatch" else k.replace("_", "-")) for k in given)
            also = " (--gpus-per-job: or submitit-local)" if "gpus_per_job" in given else ""
            raise CenterexpError(f"{names}: only with --launcher slurm{also}", 2)
        for item in self.sbatch:
            if "=" not in item or not item.split("=", 1)[0]:
                raise CenterexpError(f"--slurm-option {item!r}: expected KEY=VALUE, e.g. account=myproject", 2)
        return self

    @property
    def in_process(self) -> bool:
        return self.launcher == "local" and (self.jobs or 1) == 1


@dataclass
class Outcome:
    """How one run of the sweep ended (for the runs that were launched or skipped)."""

    name: str
    status: str  # rundir.status: COMPLETED, FAILED or BUSY
    job_id: str | None = None
    log: Path | None = None
    error: str | None = None

    def describe(self) -> str:
        where = f"; log: {self.log}" if self.log else ""
        if self.status == status.BUSY:
            return f"{self.name}: skipped, {self.error}"
        return f"{self.name}: {self.status}" + (f" ({self.error})" if self.error else "") + where


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Sweep:
    """Which run is queued, running or over; shows it as a tqdm bar on stderr and in launcher.json."""

    def __init__(self, specs: list[RunSpec], launcher: str, progress, echo):
        self.specs = {s.name: s for s in specs}
        self.state = {s.name: status.QUEUED for s in specs}
        self.records: dict[str, dict] = {}
        self.unwritten: set[str] = set()  # records waiting for their run folder to exist
        self.outcomes: dict[str, Outcome] = {}
        self.launcher = launcher
        self.echo = echo
        show = sys.stderr.isatty() if progress is None else progress
        self.bar = tqdm(total=len(specs), desc="runs", unit="run", file=sys.stderr, disable=not show, leave=True)
        self._show_counts()

    def say(self, message: str) -> None:
        with tqdm.external_write_mode(file=sys.stderr):
            self.echo(message)

    def submitted(self, spec: RunSpec, job_id: str, log: Path, stderr: Path | None = None, **extra) -> None:
        previous = []
        path = spec.run_dir / files.LAUNCHER
        if path.is_file():
            try:
                old = read_json(path)
                previous = [*old.pop("previous", []), old][-10:]
            except (OSError, ValueError):
                pass
        record = {"launcher": self.launcher, "job_id": job_id, "log": str(log)}
        if stderr is not None and stderr != log:
            record["stderr"] = str(stderr)
        record.update(extra, submitted=_now(), state=status.QUEUED, error=None, updated=_now())
        if previous:
            record["previous"] = previous
        self.records[spec.name] = record
        self._write(spec.name)

    def set_state(self, spec: RunSpec, state: str) -> None:
        if self.state[spec.name] != state:
            self.state[spec.name] = state
            if spec.name in self.records:
                self.records[spec.name].update(state=state, updated=_now())
                self._write(spec.name)
            self._show_counts()
        elif spec.name in self.unwritten:
            self._write(spec.name)  # the job may have created the run folder by now

    def finish(self, spec: RunSpec, outcome: Outcome) -> None:
        record = self.records.get(spec.name)
        if record is not None:
            outcome.job_id = outcome.job_id or record["job_id"]
            outcome.log = outcome.log or Path(record["log"])
            record.update(state=outcome.status, error=outcome.error, updated=_now())
            self._write(spec.name)
        self.outcomes[spec.name] = outcome
        self.state[spec.name] = outcome.status
        self._show_counts(refresh=False)
        self.bar.update(1)
        job = f" (job {outcome.job_id})" if outcome.job_id and outcome.status == status.COMPLETED else ""
        self.say(outcome.describe() + job if outcome.status != status.COMPLETED else f"{spec.run_dir}: completed{job}")

    def _write(self, name: str) -> None:
        run_dir = self.specs[name].run_dir
        try:
            if not run_dir.is_dir():
                raise FileNotFoundError  # the job has not created it yet
            write_json(run_dir / files.LAUNCHER, self.records[name])
            self.unwritten.discard(name)
        except (OSError, CenterexpError):  # bookkeeping: try again at the next state change, never stop the sweep
            self.unwritten.add(name)

    def _show_counts(self, refresh: bool = True) -> None:
        counts = {k: 0 for k in (status.COMPLETED, status.RUNNING, status.QUEUED, status.FAILED)}
        for state in self.state.values():
            key = status.FAILED if state in (status.FAILED, status.BUSY) else state
            counts[key] = counts.get(key, 0) + 1
        self.bar.set_postfix_str(", ".join(f"{k} {v}" for k, v in counts.items()), refresh=refresh)

    def close(self) -> None:
        for name in list(self.unwritten):
            self._write(name)
        self.bar.close()


def tail_error(log: Path, lines: int = 60) -> str | None:
    """The most telling line at the end of a job's log: its `error:` line, else the last line."""
    try:
        with open(log, errors="replace") as f:
            tail = [line.strip() for line in f.readlines()[-lines:] if line.strip()]
    except OSError:
        return None
    errors = [line for line in tail if line.startswith("error:")]
    if errors:
        return errors[-1][len("error:") :].strip()
    return tail[-1] if tail else None


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cuda_devices() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries ([] without CUDA)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        import torch

        count = torch.cuda.device_count()
    except Exception:  # a broken driver means: no GPU to hand out
        count = 0
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()][:count]
    return [str(i) for i in range(count)]


def planned_threads(spec: RunSpec, share: int) -> int:
    """Threads the run will train with, in the trainer's order: a ``train.threads`` the sweep sets,
    else its own recorded count when it resumes (bit-exact on this machine), else ``share`` (its
    1/N of the CPUs). launcher.json records it; env.json what was used."""
    told = [o.split("=", 1)[1] for o in spec.overrides if o.split("=", 1)[0].strip() == "train.threads"]
    if told and told[-1].strip().isdigit():
        return int(told[-1])
    return recorded_threads(spec.run_dir) or share
