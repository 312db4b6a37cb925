"""The one vocabulary of run status, for the trainer, the sweeps, the launchers and compare.

summary.json stores RUNNING, COMPLETED, FAILED or INTERRUPTED (plus ``diverged: true`` on a run
whose loss became NaN/inf). The others are derived: NEW (no run folder yet), QUEUED (a launcher
has it waiting for a slot), DIVERGED (a failed
run that diverged: a result of its config and seed, kept, never retrained), BUSY (a live process
holds its lock).
"""

from pathlib import Path

NEW = "new"
QUEUED = "queued"  # a launcher holds it: waiting for a slot, or for a Slurm node
RUNNING = "running"  # a process trains it, or was killed doing so (resumable)
COMPLETED = "completed"
FAILED = "failed"
DIVERGED = "diverged"
INTERRUPTED = "interrupted"  # stopped by a signal, recorded; resumable
BUSY = "busy"

DONE = (COMPLETED, DIVERGED)  # every sweep keeps these as they are
RESUMABLE = (RUNNING, INTERRUPTED, FAILED)


def status_of(summary: dict) -> str:
    """A run's status from its summary.json contents."""
    status = summary.get("status", RUNNING)
    return DIVERGED if status == FAILED and summary.get("diverged") else status


def run_status(run_dir: Path) -> str:
    """NEW, or the status recorded in the run folder (BUSY is found by taking its lock, elsewhere)."""
    from centerexp.rundir import files
    from centerexp.rundir.folder import is_run_dir
    from centerexp.rundir.io import read_json

    if not is_run_dir(run_dir):
        return NEW
    try:
        return status_of(read_json(Path(run_dir) / files.SUMMARY))
    except (OSError, ValueError):
        return RUNNING  # damaged: the trainer rebuilds it from metrics.csv on resume
