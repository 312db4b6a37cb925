"""Launchers: how `centerexp reproduce` gets its runs trained, one process or many, here or on Slurm.

``launch(specs, options, runs_dir)`` trains every spec that is not finished and returns those that
did not finish. The launchers:

  local           ``--jobs 1``: one run after another in this process (``train_sequentially``).
                  ``--jobs N``: up to N runs at once, each a ``python -m centerexp.launch`` process on
                  this machine, with 1/N of the CPU threads and, when several GPUs exist, its own GPU
                  (round-robin over CUDA_VISIBLE_DEVICES).
  submitit-local  each run a job of submitit's LocalExecutor (N at a time), and
  slurm           all runs as one Slurm job array: both in submit.py, imported only when used.

This module holds what all of them share: the options, the outcomes, the dispatch and the ``Sweep``
bookkeeping. A job trains with ``train_spec`` in its own process, so a resumed run continues exactly as
``centerexp train --resume`` does. Each run folder gets ``launcher.json`` (launcher, job id, log
paths, state, earlier attempts). A failed job is reported with its log path and never stops the
others; a run that another process is training (``RunBusy``) is reported and skipped.
"""

import json
import os
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from centerexp.errors import CenterexpError
from centerexp.reproduce import DONE_STATES, RunSpec, train_sequentially, train_spec
from centerexp.runs import RunBusy, RunLock, is_run_dir, read_json, recorded_threads, write_json

LAUNCHERS = ("local", "submitit-local", "slurm")
LOG_DIR = "logs"  # under the runs dir: one log per local run, one folder per submitit job
RECORD = "launcher.json"
BUSY_EXIT = RunBusy.exit_code  # a worker that finds its run locked by another process exits with this


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
    status: str  # completed | failed | busy
    job_id: str | None = None
    log: Path | None = None
    error: str | None = None

    def describe(self) -> str:
        where = f"; log: {self.log}" if self.log else ""
        if self.status == "busy":
            return f"{self.name}: skipped, {self.error}"
        return f"{self.name}: {self.status}" + (f" ({self.error})" if self.error else "") + where


def launch(specs: list[RunSpec], options: LaunchOptions, runs_dir: Path, progress=None, echo=print) -> list[Outcome]:
    """Train the specs that are not completed; return the outcomes of those that did not complete."""
    options.check()
    if options.in_process:
        problems = train_sequentially(specs, progress, echo)
        return [Outcome(spec.name, status, error=message) for spec, status, message in problems]
    todo = []
    for spec in specs:
        if spec.state in DONE_STATES:
            echo(f"{spec.run_dir}: already {spec.state}, kept")
        else:
            todo.append(spec)
    if not todo:
        return []
    sweep = Sweep(todo, options.launcher, progress, echo)
    for spec in list(todo):
        busy = busy_elsewhere(spec)
        if busy:
            sweep.finish(spec, Outcome(spec.name, "busy", error=busy))
            todo.remove(spec)
        elif spec.state == "unfinished":
            sweep.say(f"{spec.run_dir}: resuming")
    log_dir = Path(runs_dir) / LOG_DIR
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        if todo and options.launcher == "local":
            run_local(todo, options, log_dir, sweep)
        elif todo:
            from centerexp.submit import run_submitit  # submitit is imported only when it is used

            run_submitit(todo, options, log_dir, sweep)
    finally:
        sweep.close()
    return [o for o in sweep.outcomes.values() if o.status != "completed"]


def busy_elsewhere(spec: RunSpec) -> str | None:
    """The RunBusy message when another live process holds the run's lock, else None."""
    if not is_run_dir(spec.run_dir):
        return None
    try:
        RunLock(spec.run_dir).acquire().release()
    except RunBusy as e:
        return str(e)
    return None


# ---------------------------------------------------------------------------------------------
# Bookkeeping shared by the launchers: states, the progress bar, launcher.json, outcomes


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Sweep:
    """Which run is queued, running or over; shows it as a tqdm bar on stderr and in launcher.json."""

    def __init__(self, specs: list[RunSpec], launcher: str, progress, echo):
        self.specs = {s.name: s for s in specs}
        self.state = {s.name: "queued" for s in specs}
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
        path = spec.run_dir / RECORD
        if path.is_file():
            try:
                old = read_json(path)
                previous = [*old.pop("previous", []), old][-10:]
            except (OSError, ValueError):
                pass
        record = {"launcher": self.launcher, "job_id": job_id, "log": str(log)}
        if stderr is not None and stderr != log:
            record["stderr"] = str(stderr)
        record.update(extra, submitted=_now(), state="queued", error=None, updated=_now())
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
        job = f" (job {outcome.job_id})" if outcome.job_id and outcome.status == "completed" else ""
        self.say(outcome.describe() + job if outcome.status != "completed" else f"{spec.run_dir}: completed{job}")

    def _write(self, name: str) -> None:
        run_dir = self.specs[name].run_dir
        if run_dir.is_dir():
            write_json(run_dir / RECORD, self.records[name])
            self.unwritten.discard(name)
        else:
            self.unwritten.add(name)

    def _show_counts(self, refresh: bool = True) -> None:
        counts = {k: 0 for k in ("completed", "running", "queued", "failed")}
        for state in self.state.values():
            key = "failed" if state in ("failed", "busy") else state
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


# ---------------------------------------------------------------------------------------------
# local: plain processes on this machine, at most N at once


def spec_to_json(spec: RunSpec) -> str:
    return json.dumps({k: (list(v) if isinstance(v, tuple) else str(v)) for k, v in asdict(spec).items()})


def spec_from_json(text: str) -> RunSpec:
    raw = json.loads(text)
    return RunSpec(Path(raw["config"]), tuple(raw["overrides"]), Path(raw["run_dir"]), raw["state"], raw["command"])


def worker_command(spec: RunSpec) -> list[str]:
    """The process that trains one spec for the local launcher (tests replace it to inject failures)."""
    return [sys.executable, "-m", "centerexp.launch", spec_to_json(spec)]


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


def worker_env(slot: int, jobs: int, devices: list[str]) -> dict:
    """Environment of the run in ``slot``: 1/jobs of the CPU threads, and its own GPU when there are several."""
    threads = str(max(1, cpu_count() // jobs))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
    if len(devices) > 1:
        env["CUDA_VISIBLE_DEVICES"] = devices[slot % len(devices)]
    return env


def planned_threads(spec: RunSpec, share: int) -> int:
    """Threads the run will train with: its own recorded count when it resumes (bit-exact on this
    machine), else ``share`` (its 1/N of the CPUs). launcher.json records it; env.json what was used."""
    return recorded_threads(spec.run_dir) or share


def run_local(specs: list[RunSpec], options: LaunchOptions, log_dir: Path, sweep: Sweep) -> None:
    jobs = options.jobs or 1
    poll = options.poll_s or 0.5
    devices = cuda_devices()
    waiting = deque(specs)
    running: dict[int, tuple[RunSpec, subprocess.Popen, Path]] = {}  # slot -> run
    try:
        while waiting or running:
            for slot in range(jobs):
                if slot in running or not waiting:
                    continue
                spec = waiting.popleft()
                log = log_dir / f"{spec.name}.log"
                env = worker_env(slot, jobs, devices)
                with open(log, "a") as f:
                    f.write(f"\n=== {_now()} {spec.name}: local launcher on {socket.gethostname()}\n")
                    f.flush()
                    proc = subprocess.Popen(worker_command(spec), stdout=f, stderr=subprocess.STDOUT, env=env)
                running[slot] = (spec, proc, log)
                gpu = {"cuda_visible_devices": env["CUDA_VISIBLE_DEVICES"]} if len(devices) > 1 else {}
                threads = planned_threads(spec, int(env["OMP_NUM_THREADS"]))
                sweep.submitted(
                    spec, f"local-{proc.pid}", log, host=socket.gethostname(), pid=proc.pid, threads=threads, **gpu
                )
                sweep.set_state(spec, "running")
            for slot, (spec, proc, log) in list(running.items()):
                code = proc.poll()
                if code is None:
                    sweep.set_state(spec, "running")
                    continue
                del running[slot]
                if code == 0:
                    sweep.finish(spec, Outcome(spec.name, "completed"))
                elif code == BUSY_EXIT:
                    sweep.finish(spec, Outcome(spec.name, "busy", error=tail_error(log)))
                else:
                    error = tail_error(log) or "no output"
                    sweep.finish(spec, Outcome(spec.name, "failed", error=f"exit status {code}: {error}"))
            if running:
                time.sleep(poll)
    finally:
        _stop_local(running)


def _stop_local(running: dict) -> None:
    """On the way out with runs still going (Ctrl-C, an error here): SIGTERM, which they survive cleanly."""
    if not running:
        return
    for _, proc, _ in running.values():
        if proc.poll() is None:
            proc.terminate()  # the trainer stops after the current step, keeping the last finished epoch
    deadline = time.monotonic() + 60
    for _, proc, _ in running.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()


def worker_main(argv: list[str]) -> int:
    """``python -m centerexp.launch SPEC_JSON``: train one spec; exit 0, 3 (busy) or the error's status."""
    if len(argv) != 1:
        print("usage: python -m centerexp.launch SPEC_JSON (started by centerexp reproduce)", file=sys.stderr)
        return 2
    spec = spec_from_json(argv[0])
    try:
        summary = train_spec(spec, progress=False)
    except CenterexpError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"{spec.run_dir}: {summary.get('status')} after {summary.get('epochs_done', 0)} epochs")
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
