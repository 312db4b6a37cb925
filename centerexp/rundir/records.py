"""The run's records: summary.json (its status and progress) and metrics.csv (one row per evaluation)."""

import contextlib
import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from centerexp.errors import CenterexpError
from centerexp.rundir import files, status
from centerexp.rundir.io import _write_error, atomic_write_text, now, read_json, write_json
from centerexp.rundir.schema import METRIC_COLUMNS, RUN_FORMAT

# summary.json: the run's status, rewritten atomically at every change


def progress_from_metrics(run_dir: Path) -> dict:
    """The summary's progress fields, derived from metrics.csv (the one record of evaluations)."""
    m = run_metrics(run_dir)
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
        self.path = self.run_dir / files.SUMMARY
        try:
            self.data = read_json(self.path) if self.path.exists() else {}
        except (OSError, ValueError):
            self.data = {}  # a damaged summary is rebuilt from metrics.csv below

    @staticmethod
    def initial() -> str:
        """The summary a new run folder is created with."""
        return (
            json.dumps({"started": now(), "status": status.RUNNING, "epochs_done": 0, "run_format": RUN_FORMAT}) + "\n"
        )

    def begin(self, **fields: Any) -> None:
        self.data.setdefault("started", now())
        self.data.pop("diverged", None)
        self.data.update(fields, run_format=RUN_FORMAT, **progress_from_metrics(self.run_dir))
        self._save(status.RUNNING)

    def epoch_finished(self) -> None:
        self.data.update(progress_from_metrics(self.run_dir))
        self._save(status.RUNNING)

    def completed(self) -> None:
        self._save(status.COMPLETED)

    def failed(self, error: str, **fields: Any) -> None:
        self.data.update(fields)  # e.g. diverged=True
        self._save_quietly(status.FAILED, error)

    def interrupted(self, error: str) -> None:
        self._save_quietly(status.INTERRUPTED, error)

    def _save(self, status: str, error: str | None = None) -> None:
        self.data.update(status=status, error=error, updated=now())
        write_json(self.path, self.data)

    def _save_quietly(self, status: str, error: str) -> None:
        with contextlib.suppress(CenterexpError):  # the disk may be the problem: keep the original error
            self._save(status, error)


# ---------------------------------------------------------------------------------------------
# metrics.csv: one row per evaluation, columns from schema.METRICS


class MetricsLog:
    """metrics.csv, one row per evaluation, flushed and fsynced as each row lands."""

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


def run_metrics(run_dir: Path) -> dict[str, list[float]]:
    """metrics_columns of the run's metrics.csv; {} for a run without one yet."""
    path = Path(run_dir) / files.METRICS
    return metrics_columns(path) if path.exists() else {}


def metrics_columns(path: Path) -> dict[str, list[float]]:
    """metrics.csv as numeric columns. Every column of schema.METRICS is present (NaN where a run
    of another version lacks it); columns this version does not know are kept as they are."""
    rows = read_metrics(path)
    names = list(METRIC_COLUMNS) + [c for c in (rows[0].keys() if rows else []) if c not in METRIC_COLUMNS]
    return {c: [_number(r.get(c)) for r in rows] for c in names}
