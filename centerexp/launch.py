"""Launchers: how `centerexp reproduce` gets its runs trained, one process or many, here or on Slurm.

``launch(specs, options, runs_dir)`` trains every spec that is not finished and returns those that
did not finish. The launchers:

  local           ``--jobs 1``: one run after another in this process (``train_sequentially``).
                  ``--jobs N``: up to N runs at once, each a ``python -m centerexp.launch`` process on
                  this machine, with 1/N of the CPU threads and, when several GPUs exist, its own GPU
                  (round-robin over CUDA_VISIBLE_DEVICES).
  submitit-local  each run a job of submitit's LocalExecutor (N at a time): the Slurm code path, on
                  this machine, without a cluster.
  slurm           all runs as one Slurm job array through submitit (``--jobs N``: at most N at once).
                  Timeouts and preemption (submitit's USR2 hook) requeue the job with the same spec,
                  which resumes the run from its last finished epoch.

A job trains with ``train_spec`` in its own process, so a resumed run continues exactly as
``centerexp train --resume`` does. Each run folder gets ``launcher.json`` (launcher, job id, log
paths, state, earlier attempts). A failed job is reported with its log path and never stops the
others; a run that another process is training (``RunBusy``) is reported and skipped.
"""

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import submitit
from submitit.core.utils import FailedSubmissionError, pickle_load
from tqdm import tqdm

from centerexp.errors import CenterexpError
from centerexp.reproduce import RunSpec, train_sequentially, train_spec
from centerexp.runs import RunBusy, RunLock, is_run_dir, read_json, write_json

LAUNCHERS = ("local", "submitit-local", "slurm")
LOG_DIR = "logs"  # under the runs dir: one log per local run, one folder per submitit job
RECORD = "launcher.json"
BUSY_EXIT = RunBusy.exit_code  # a worker that finds its run locked by another process exits with this
DEFAULT_TIME_MIN = {"slurm": 240, "submitit-local": 7 * 24 * 60}
# Slurm job states (squeue / sacct): waiting, running, or over. Anything else counts as over.
QUEUED_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED", "PREEMPTED"}
RUNNING_STATES = {"RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT", "RESIZING"}
LOST_AFTER_S = 120  # a Slurm job neither in squeue/sacct nor with a result for this long has been lost


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
        train_sequentially(specs, progress, echo)
        return []
    todo = []
    for spec in specs:
        if spec.state == "completed":
            echo(f"{spec.run_dir}: already completed, kept")
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


def _tail_error(log: Path, lines: int = 60) -> str | None:
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
                sweep.submitted(spec, f"local-{proc.pid}", log, host=socket.gethostname(), pid=proc.pid, **gpu)
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
                    sweep.finish(spec, Outcome(spec.name, "busy", error=_tail_error(log)))
                else:
                    error = _tail_error(log) or "no output"
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


# ---------------------------------------------------------------------------------------------
# submitit: LocalExecutor (submitit-local) or SlurmExecutor (slurm)


class TrainJob(submitit.helpers.Checkpointable):
    """One run as a submitit job. On timeout or preemption submitit calls ``checkpoint`` (inherited),
    which requeues the same spec: the requeued job finds the run folder and resumes it."""

    def __call__(self, spec: RunSpec) -> dict:
        return train_job(spec)


def train_job(spec: RunSpec) -> dict:
    """The body of a submitit job: train the spec in this process; a busy run is a result, not an error."""
    try:
        summary = train_spec(spec, progress=False)
    except RunBusy as e:
        return {"status": "busy", "error": str(e)}
    return {"status": summary.get("status"), "epochs_done": summary.get("epochs_done")}


def make_executor(options: LaunchOptions, log_dir: Path, n_jobs: int):
    folder = log_dir / "%j"
    minutes = options.time_min or DEFAULT_TIME_MIN[options.launcher]
    if options.launcher == "submitit-local":
        executor = submitit.LocalExecutor(folder)
        threads = max(1, cpu_count() // (options.jobs or 1))
        params = {"timeout_min": minutes, "setup": [f"export OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}"]}
        executor.update_parameters(**params)
        return executor
    if shutil.which("sbatch") is None:
        raise CenterexpError("--launcher slurm: sbatch not found (run this on a Slurm login node)", 2)
    executor = submitit.SlurmExecutor(folder)
    params = {
        "job_name": "centerexp",
        "time": minutes,
        "nodes": 1,
        "ntasks_per_node": 1,
        "array_parallelism": options.jobs or n_jobs,
        "additional_parameters": dict(item.split("=", 1) for item in options.sbatch),
    }
    if options.partition:
        params["partition"] = options.partition
    if options.cpus_per_job:
        params["cpus_per_task"] = options.cpus_per_job
        params["setup"] = [f"export OMP_NUM_THREADS={options.cpus_per_job} MKL_NUM_THREADS={options.cpus_per_job}"]
    if options.gpus_per_job is not None:
        params["gpus_per_node"] = options.gpus_per_job
    if options.mem_gb:
        params["mem"] = f"{int(options.mem_gb * 1024)}M"
    try:
        executor.update_parameters(**params)
    except ValueError as e:
        raise CenterexpError(f"Slurm options: {e}", 2) from None
    return executor


def local_gpu(devices: list[str], in_use: list, gpus_per_job: int | None) -> dict:
    """GPU parameters of the next submitit-local job. Its LocalExecutor hides every GPU unless told
    (CUDA_VISIBLE_DEVICES=""): one GPU per job by default, the least used one; N with --gpus-per-job."""
    if not devices or gpus_per_job == 0:
        return {"gpus_per_node": 0}
    ids = [int(d) for d in devices if d.isdigit()] or list(range(len(devices)))  # UUIDs: by index
    if gpus_per_job not in (None, 1):
        return {"gpus_per_node": gpus_per_job, "visible_gpus": tuple(ids)}
    return {"gpus_per_node": 1, "visible_gpus": (min(ids, key=in_use.count),)}


def run_submitit(specs: list[RunSpec], options: LaunchOptions, log_dir: Path, sweep: Sweep) -> None:
    logging.getLogger("submitit").setLevel(logging.ERROR)  # its sacct warnings would drown the progress bar
    executor = make_executor(options, log_dir, len(specs))
    train = TrainJob()
    slurm = options.launcher == "slurm"
    poll = options.poll_s or (5.0 if slurm else 0.5)
    jobs: dict[str, tuple[RunSpec, object, float]] = {}  # job id -> (spec, job, submitted at)

    def record(spec, job):
        jobs[job.job_id] = (spec, job, time.monotonic())
        sweep.submitted(spec, job.job_id, job.paths.stdout, job.paths.stderr)

    if slurm:
        try:
            submitted = executor.map_array(train, specs)
        except (FailedSubmissionError, subprocess.CalledProcessError, OSError) as e:
            raise CenterexpError(f"sbatch failed: {e}") from None
        array_id = submitted[0].job_id.split("_")[0]
        runs = f"{len(specs)} run{'s' if len(specs) != 1 else ''}"
        sweep.say(f"submitted {runs} to Slurm as job {array_id} (logs under {log_dir})")
        for spec, job in zip(specs, submitted):
            record(spec, job)
        waiting = deque()
    else:
        waiting = deque(specs)
    limit = options.jobs or 1
    devices = [] if slurm else cuda_devices()
    gpus: dict[str, int | None] = {}  # submitit-local job id -> the GPU it was given
    try:
        while waiting or jobs:
            while waiting and len(jobs) < limit:  # submitit-local starts a job at once: throttle here
                spec = waiting.popleft()
                gpu = local_gpu(devices, [gpus.get(i) for i in jobs], options.gpus_per_job)
                executor.update_parameters(**gpu)
                job = executor.submit(train, spec)
                gpus[job.job_id] = gpu.get("visible_gpus", (None,))[0]
                record(spec, job)
            states = slurm_states([j for _, j, _ in jobs.values()]) if slurm else {}
            for job_id, (spec, job, since) in list(jobs.items()):
                state = states.get(job_id) if slurm else job.state.upper()
                outcome = _job_outcome(spec, job, state, since, slurm)
                if outcome is None:
                    sweep.set_state(spec, "queued" if state in QUEUED_STATES else "running")
                    continue
                del jobs[job_id]
                sweep.finish(spec, outcome)
            if jobs:
                time.sleep(poll)
    except BaseException:
        if slurm and jobs:
            ids = sorted({i.split("_")[0] for i in jobs})
            sweep.say(f"the Slurm jobs keep running; stop them with: scancel {' '.join(ids)}")
        else:
            for _, job, _ in jobs.values():
                job.cancel(check=False)
        raise


def _job_outcome(spec: RunSpec, job, state: str | None, since: float, slurm: bool) -> Outcome | None:
    """None while the job is queued or running, else how it ended."""
    if state in QUEUED_STATES or state in RUNNING_STATES:
        return None  # also when a result exists: Slurm requeued the job after it wrote one
    result = job.paths.result_pickle
    if result.exists():
        try:
            kind, value = pickle_load(result)
        except Exception as e:  # a half-written result: look again next time
            if time.monotonic() - since < LOST_AFTER_S:
                return None
            kind, value = "error", f"unreadable result {result}: {e}"
        if kind == "success" and value.get("status") == "busy":
            return Outcome(spec.name, "busy", job.job_id, job.paths.stdout, value.get("error"))
        if kind == "success":
            return Outcome(spec.name, "completed", job.job_id, job.paths.stdout)
        lines = [line for line in str(value).strip().splitlines() if line.strip()]
        error = lines[-1] if lines else "unknown error"
        return Outcome(spec.name, "failed", job.job_id, job.paths.stderr, f"job {job.job_id}: {error}")
    if slurm and state is None:  # not known to squeue/sacct (yet, or any more)
        if time.monotonic() - since < LOST_AFTER_S:
            return None
        state = "LOST"
    elif not slurm and state == "RUNNING":
        return None
    tail = _tail_error(job.paths.stderr)
    detail = f"job {job.job_id} ended {state} without a result" + (f": {tail}" if tail else "")
    return Outcome(spec.name, "failed", job.job_id, job.paths.stderr, detail)


def slurm_states(jobs: list) -> dict[str, str]:
    """Job id -> Slurm state: squeue for the jobs the controller holds (cheap, current), then sacct
    (through submitit's rate-limited watcher) for those it has dropped. A job known to neither is left out.
    """
    states = squeue_states([job.job_id for job in jobs]) if jobs else {}
    for job in jobs:
        if job.job_id not in states:
            state = job.watcher.get_state(job.job_id, mode="standard")  # sacct; UNKNOWN without accounting
            if state and state != "UNKNOWN":
                states[job.job_id] = state.split()[0].upper()  # "CANCELLED by 0" -> CANCELLED
    return states


def squeue_states(job_ids: list[str]) -> dict[str, str]:
    base = sorted({i.split("_")[0] for i in job_ids})
    command = ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(base)]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return parse_squeue(out)


def parse_squeue(text: str) -> dict[str, str]:
    """``squeue -h -r -o '%i|%T'`` lines (``123_4|RUNNING``, ``125|PENDING``) as a dict."""
    states = {}
    for line in text.splitlines():
        if "|" in line:
            job_id, state = line.strip().split("|", 1)
            states[job_id] = state.strip().upper()
    return states


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
