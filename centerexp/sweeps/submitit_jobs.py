"""The submitit launchers of ``centerexp reproduce``, reached through ``launch.launch``:

  submitit-local  each run a job of submitit's LocalExecutor (N at a time): the Slurm code path, on
                  this machine, without a cluster.
  slurm           all runs as one Slurm job array through submitit (``--jobs N``: at most N at once).
                  Timeouts and preemption (submitit's USR2 hook) requeue the job with the same spec,
                  which resumes the run from its last checkpoint.

submitit pickles ``TrainJob`` by reference, so it must stay importable from this module. A Slurm job's
state comes from squeue, or from sacct once squeue has dropped it. The bookkeeping (``Sweep``,
``Outcome``, launcher.json) is jobs.py's.
"""

import logging
import shutil
import subprocess
import time
from collections import deque
from pathlib import Path

import submitit
from submitit.core.utils import FailedSubmissionError, pickle_load

from centerexp.errors import CenterexpError
from centerexp.rundir import status
from centerexp.rundir.folder import RunBusy
from centerexp.sweeps.jobs import (
    LaunchOptions,
    Outcome,
    Sweep,
    cpu_count,
    cuda_devices,
    package_first_python,
    planned_threads,
    tail_error,
)
from centerexp.sweeps.spec import RunSpec, train_spec

DEFAULT_TIME_MIN = {"slurm": 240, "submitit-local": 7 * 24 * 60}
# Slurm job states (squeue / sacct): waiting, running, or over. Anything else counts as over.
QUEUED_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED", "PREEMPTED"}
RUNNING_STATES = {"RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT", "RESIZING"}
LOST_AFTER_S = 120  # a Slurm job neither in squeue/sacct nor with a result for this long has been lost


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
        return {"status": status.BUSY, "error": str(e)}
    return {"status": summary.get("status"), "epochs_done": summary.get("epochs_done")}


def make_executor(options: LaunchOptions, log_dir: Path, n_jobs: int):
    folder = log_dir / "%j"
    minutes = options.time_min or DEFAULT_TIME_MIN[options.launcher]
    if options.launcher == "submitit-local":
        executor = submitit.LocalExecutor(folder, python=package_first_python())
        threads = max(1, cpu_count() // (options.jobs or 1))
        params = {"timeout_min": minutes, "setup": [f"export OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}"]}
        executor.update_parameters(**params)
        return executor
    if shutil.which("sbatch") is None:
        raise CenterexpError("--launcher slurm: sbatch not found (run this on a Slurm login node)", 2)
    executor = submitit.SlurmExecutor(folder, python=package_first_python())
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

    share = options.cpus_per_job if slurm else max(1, cpu_count() // (options.jobs or 1))

    def record(spec, job):
        jobs[job.job_id] = (spec, job, time.monotonic())
        threads = (
            {"threads": planned_threads(spec, share)} if share else {}
        )  # slurm without --cpus-per-job: its default
        sweep.submitted(spec, job.job_id, job.paths.stdout, job.paths.stderr, **threads)

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
                    sweep.set_state(spec, status.QUEUED if state in QUEUED_STATES else status.RUNNING)
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
        if kind == "success" and value.get("status") == status.BUSY:
            return Outcome(spec.name, status.BUSY, job.job_id, job.paths.stdout, value.get("error"))
        if kind == "success":
            return Outcome(spec.name, status.COMPLETED, job.job_id, job.paths.stdout)
        lines = [line for line in str(value).strip().splitlines() if line.strip()]
        error = lines[-1] if lines else "unknown error"
        return Outcome(spec.name, status.FAILED, job.job_id, job.paths.stderr, f"job {job.job_id}: {error}")
    if slurm and state is None:  # not known to squeue/sacct (yet, or any more)
        if time.monotonic() - since < LOST_AFTER_S:
            return None
        state = "LOST"
    tail = tail_error(job.paths.stderr)
    detail = f"job {job.job_id} ended {state} without a result" + (f": {tail}" if tail else "")
    return Outcome(spec.name, status.FAILED, job.job_id, job.paths.stderr, detail)


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
