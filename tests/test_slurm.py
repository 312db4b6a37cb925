"""reproduce --launcher slurm on a real (single-node, throwaway) Slurm cluster: `make test-slurm`.

Skipped unless CENTEREXP_SLURM=1. Needs root and Debian's slurm-wlm and munge (the make target
installs them). The cluster (munged, slurmctld, slurmd) runs from a temp dir for this module only.

The sweep: 3 configs x 2 seeds of a tiny linear run (30 short epochs each), as one job array with
1 CPU per job on a 2-CPU node. While it runs, one job gets USR2 (what Slurm sends before a time
limit: submitit checkpoints and requeues it, and the requeued job resumes the run) and another is
killed with scancel (reported as failed with its log; the next `reproduce` call resumes it).
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from centerexp.experiments.reproduce import find_experiment, plan
from centerexp.experiments.spec import load_experiment
from centerexp.rundir.io import read_json
from centerexp.rundir.records import read_metrics
from centerexp.sweeps.spec import train_spec

from .conftest import metrics_without_timing

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(os.environ.get("CENTEREXP_SLURM") != "1", reason="needs Slurm: run `make test-slurm`"),
]

CLUSTER_SH = Path(__file__).resolve().parent / "slurm" / "cluster.sh"
EPOCHS = 30
EXTRA = ["model.arch=linear", "data.train_subset=1024", "data.test_subset=256", f"train.epochs={EPOCHS}"]


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory):
    """Start the cluster; yield the environment its clients need (SLURM_CONF); stop it afterwards."""
    folder = tmp_path_factory.mktemp("cluster")
    subprocess.run([str(CLUSTER_SH), "start", str(folder)], check=True)
    try:
        yield {**os.environ, "SLURM_CONF": str(folder / "slurm.conf")}
    finally:
        subprocess.run([str(CLUSTER_SH), "stop", str(folder)], check=False)
        for log in sorted((folder / "log").glob("*.log")):
            print(f"--- {log}\n" + "".join(log.read_text(errors="replace").splitlines(keepends=True)[-20:]))


def reproduce_command(runs: Path) -> list[str]:
    command = [sys.executable, "-m", "centerexp", "reproduce", "v1", "--profile", "quick", "--seeds", "2"]
    command += ["--runs-dir", str(runs), "--launcher", "slurm", "--cpus-per-job", "1", "--time", "10"]
    for item in EXTRA:
        command += ["--set", item]
    return command


def slurm(env, *args: str) -> str:
    return subprocess.run(list(args), env=env, check=True, capture_output=True, text=True, timeout=60).stdout


def running_runs(runs: Path, min_epochs: int, max_epochs: int) -> dict[str, dict]:
    """Run name -> launcher record, for runs whose job is running, between min and max epochs done."""
    found = {}
    for record_path in sorted(runs.glob("*/launcher.json")):
        run_dir = record_path.parent
        try:
            record = read_json(record_path)
            epochs = len(read_metrics(run_dir / "metrics.csv"))
        except (OSError, ValueError):
            continue
        if record.get("state") == "running" and min_epochs <= epochs <= max_epochs:
            found[run_dir.name] = record
    return found


def send_usr2(env, job_id: str, stderr: Path) -> None:
    """``scancel --signal=USR2``: what Slurm sends a job before its time limit (submitit's --signal).

    scancel retries while the job is in transition, and submitit requeues the job at once: a retry
    would hit the requeued job again. So scancel is stopped once the job has caught the signal.
    """
    scancel = subprocess.Popen(["scancel", "--signal=USR2", job_id], env=env)
    try:
        deadline = time.monotonic() + 60
        while "Caught signal SIGUSR2" not in stderr.read_text(errors="replace"):
            assert time.monotonic() < deadline, f"job {job_id} did not get USR2 in 60 s"
            time.sleep(0.2)
    finally:
        scancel.kill()
        scancel.wait()


def test_slurm_sweep_requeues_a_timed_out_job_and_resumes_a_cancelled_one(slurm_env, tmp_path):
    runs = tmp_path / "runs"
    command = reproduce_command(runs)
    t0 = time.monotonic()
    with open(tmp_path / "first.out", "w") as out:
        first = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=slurm_env, text=True)
        try:
            deadline = time.monotonic() + 240
            while len(running := running_runs(runs, min_epochs=2, max_epochs=EPOCHS // 3)) < 2:
                assert first.poll() is None, (tmp_path / "first.out").read_text()
                assert time.monotonic() < deadline, "no two jobs running after 240 s:\n" + slurm(slurm_env, "squeue")
                time.sleep(0.2)
            (requeued, requeued_record), (cancelled, cancelled_record) = sorted(running.items())[:2]
            requeued_job, cancelled_job = requeued_record["job_id"], cancelled_record["job_id"]
            slurm(slurm_env, "scancel", cancelled_job)
            send_usr2(slurm_env, requeued_job, Path(requeued_record["stderr"]))
            first.wait(timeout=600)
        finally:
            if first.poll() is None:
                first.kill()
    output = (tmp_path / "first.out").read_text()
    print(f"first reproduce: {time.monotonic() - t0:.0f} s, exit {first.returncode}\n{output}")

    # The sweep ended (no hang), with the report, the cancelled run reported with its log.
    assert first.returncode == 1, output
    assert (runs / "report.md").is_file()
    assert "1 of 6 runs did not finish" in output
    assert (
        f"{cancelled}: failed (job {cancelled_job}: centerexp.training.train.Interrupted: stopped by SIGTERM" in output
    )
    cancelled_log = read_json(runs / cancelled / "launcher.json")["stderr"]
    assert f"log: {cancelled_log}" in output and Path(cancelled_log).is_file()
    summary = read_json(runs / cancelled / "summary.json")
    assert summary["status"] == "interrupted" and 2 <= summary["epochs_done"] < EPOCHS, summary

    # The USR2 job was checkpointed and requeued by submitit, and the requeued job resumed the run.
    record = read_json(runs / requeued / "launcher.json")
    assert record["state"] == "completed" and record["job_id"] == requeued_job
    assert "Requeued job" in Path(record["log"]).read_text()
    assert len((runs / requeued / "command.txt").read_text().splitlines()) == 2  # started, then resumed
    done = {p.parent.name for p in runs.glob("*/summary.json") if read_json(p)["status"] == "completed"}
    assert len(done) == 5 and cancelled not in done

    # A second call submits only the unfinished run; the new job resumes it.
    t1 = time.monotonic()
    second = subprocess.run(command, env=slurm_env, capture_output=True, text=True, timeout=600)
    print(f"second reproduce: {time.monotonic() - t1:.0f} s, exit {second.returncode}\n{second.stdout}{second.stderr}")
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.count("already completed, kept") == 5
    assert "submitted 1 run to Slurm" in second.stdout
    record = read_json(runs / cancelled / "launcher.json")
    assert record["state"] == "completed" and record["job_id"] != cancelled_job
    assert record["previous"][-1]["job_id"] == cancelled_job and record["previous"][-1]["state"] == "failed"
    for name in {p.parent.name for p in runs.glob("*/summary.json")}:
        assert read_json(runs / name / "summary.json")["status"] == "completed", name
        assert [int(r["epoch"]) for r in read_metrics(runs / name / "metrics.csv")] == list(range(1, EPOCHS + 1))
    assert (runs / "report.md").is_file()

    # Interrupted and resumed, both runs match the same runs trained in one go in this process.
    reference = tmp_path / "reference"
    for spec in plan(load_experiment(find_experiment("v1")), "quick", 2, reference, EXTRA):
        if spec.name in (requeued, cancelled):
            train_spec(spec, progress=False)
            assert metrics_without_timing(runs / spec.name) == metrics_without_timing(reference / spec.name)
