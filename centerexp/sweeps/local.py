"""The local launcher: ``--jobs 1`` trains in this process; ``--jobs N`` runs up to N worker
processes (``centerexp.sweeps.local SPEC_JSON``) on this machine, each with 1/N of the CPU threads
(a resumed run keeps its own count) and, when several GPUs exist, its own GPU."""

import json
import os
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import asdict
from pathlib import Path

from centerexp.errors import CenterexpError
from centerexp.rundir import status
from centerexp.rundir.folder import RunBusy
from centerexp.sweeps.jobs import (
    LaunchOptions,
    Outcome,
    Sweep,
    _now,
    cpu_count,
    cuda_devices,
    planned_threads,
    python_module_command,
    tail_error,
)
from centerexp.sweeps.spec import RunSpec, train_spec

BUSY_EXIT = RunBusy.exit_code  # a worker that finds its run locked by another process exits with this


def spec_to_json(spec: RunSpec) -> str:
    def plain(v):
        return v if isinstance(v, dict) else list(v) if isinstance(v, tuple) else str(v)

    return json.dumps({k: plain(v) for k, v in asdict(spec).items()})


def spec_from_json(text: str) -> RunSpec:
    raw = json.loads(text)
    paths = {k: Path(raw[k]) for k in ("config", "run_dir")}
    return RunSpec(**{**raw, **paths, "overrides": tuple(raw["overrides"])})


def worker_command(spec: RunSpec) -> list[str]:
    """The process that trains one spec for the local launcher (tests replace it to inject failures)."""
    return python_module_command("centerexp.sweeps.local", spec_to_json(spec))


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
                threads = planned_threads(spec, int(env["OMP_NUM_THREADS"]))
                sweep.submitted(
                    spec, f"local-{proc.pid}", log, host=socket.gethostname(), pid=proc.pid, threads=threads, **gpu
                )
                sweep.set_state(spec, status.RUNNING)
            for slot, (spec, proc, log) in list(running.items()):
                code = proc.poll()
                if code is None:
                    sweep.set_state(spec, status.RUNNING)
                    continue
                del running[slot]
                if code == 0:
                    sweep.finish(spec, Outcome(spec.name, status.COMPLETED))
                elif code == BUSY_EXIT:
                    sweep.finish(spec, Outcome(spec.name, status.BUSY, error=tail_error(log)))
                else:
                    error = tail_error(log) or "no output"
                    sweep.finish(spec, Outcome(spec.name, status.FAILED, error=f"exit status {code}: {error}"))
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
            proc.terminate()  # the trainer stops after the current step, keeping its last checkpoint
    deadline = time.monotonic() + 60
    for _, proc, _ in running.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()


def worker_main(argv: list[str]) -> int:
    """``python -m centerexp.sweeps.local SPEC_JSON``: train one spec; exit 0, 3 (busy) or the error's status."""
    if len(argv) != 1:
        print("usage: python -m centerexp.sweeps.local SPEC_JSON (started by centerexp reproduce)", file=sys.stderr)
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
