"""Run folders read back for analysis: config, summary, metrics, identity and environment of each.

A run of an older format lacks some columns: they read as NaN (shown as "—"). Format 2 and older
measured compactness against the learned centers; its class-mean columns are recomputed for the
last row from features.pt where it exists (the test features it kept), and stay NaN elsewhere.
"""

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from centerexp.analysis import curves
from centerexp.analysis.stats import finite
from centerexp.config import flatten, read_run_config
from centerexp.errors import CenterexpError
from centerexp.rundir import files, status
from centerexp.rundir.folder import NOT_A_RUN, is_run_dir, read_identity
from centerexp.rundir.io import read_json
from centerexp.rundir.records import run_metrics
from centerexp.rundir.schema import TABLE_COLUMNS

FRACTIONS = (0.25, 0.5, 1.0)  # where the secondaries are read, as fractions of the run's steps
CLASS_MEAN_COLUMNS = ("intra_class", "inter_class", "compactness_ratio", "center_lag")


@dataclass
class Run:
    path: Path
    name: str
    config: dict  # flattened, every key resolved: "train.epochs" -> 30
    summary: dict
    metrics: dict  # column -> list of floats, one per row (columns the run lacks: absent)
    dropped_keys: list[str] = field(default_factory=list)  # config keys this version does not know
    identity: dict = field(default_factory=dict)  # run.json: experiment, arm, profile, fingerprint
    env: list[dict] = field(default_factory=list)  # env.json: the first process, then each resume's
    recomputed: list[str] = field(default_factory=list)  # columns filled in from features.pt
    figures: dict = field(default_factory=dict)  # run_figures(...)

    @property
    def status(self) -> str:
        return status.status_of(self.summary) if self.summary.get("status") else "unknown"

    @property
    def rows(self) -> int:
        return max((len(v) for v in self.metrics.values()), default=0)

    def column(self, name: str) -> list[float]:
        """A metrics column, NaN for every row when the run's format lacks it."""
        values = self.metrics.get(name)
        return list(values) if values is not None and len(values) == self.rows else [math.nan] * self.rows

    @property
    def steps(self) -> list[float]:
        """Cumulative optimizer steps at each row: the ``step`` column, or derived from the config."""
        epochs = self.column("epoch")
        epochs = [e if finite(e) else i + 1 for i, e in enumerate(epochs)]
        derived = curves.steps_from_config(
            epochs, self.config.get("data.train_subset"), self.config.get("train.batch_size", 256)
        )
        return [s if finite(s) else d for s, d in zip(self.column("step"), derived)]

    @property
    def outcome(self) -> str:
        """How the run counts in a comparison: COMPLETED, FAILED (stopped with an error, diverged, or
        non-finite values) or RUNNING (not finished: running, killed or interrupted)."""
        if self.status in (status.FAILED, status.DIVERGED):
            return status.FAILED
        if self.status == status.COMPLETED:
            present = [v for c in ("test_acc", "train_loss") if c in self.metrics for v in self.metrics[c]]
            return status.COMPLETED if all(map(finite, present)) else status.FAILED
        return status.RUNNING

    def arithmetic(self) -> set[tuple]:
        """(precision, device type, torch version) of every process that trained the run."""
        return {(e.get("precision"), str(e.get("device", "?")).split(":")[0], e.get("torch")) for e in self.env} or {
            (self.config.get("train.precision"), "?", "?")
        }


def load_runs(paths: list[Path], warn=None, skip_quietly=()) -> list[Run]:
    """Read every run folder in ``paths``; other paths are skipped with a warning, except files
    named in ``skip_quietly`` (compare's own outputs, when a glob over its folder passes them)."""
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    runs, seen = [], set()
    for path in map(Path, paths):
        if path.resolve() in seen:  # runs/* runs/a must not count a twice
            continue
        seen.add(path.resolve())
        if not is_run_dir(path):
            if not (path.is_file() and path.name in skip_quietly):
                warn(f"skipping {path}: {NOT_A_RUN}")
            continue
        try:
            cfg, dropped = read_run_config(path / files.CONFIG)
            summary = read_json(path / files.SUMMARY)
            metrics = run_metrics(path)
        except (OSError, ValueError, KeyError, AttributeError, CenterexpError) as e:
            warn(f"skipping {path}: unreadable run files ({e})")
            continue
        run = Run(path, path.name, flatten(cfg.to_dict()), summary, metrics, dropped, read_identity(path))
        run.env = _env_history(path)
        _recompute_class_means(run)
        runs.append(run)
    return runs


def _env_history(path: Path) -> list[dict]:
    try:
        env = read_json(path / files.ENV)
    except (OSError, ValueError):
        return []
    return [env, *env.get("resumes", [])]


def _recompute_class_means(run: Run) -> None:
    """An older run lacks the class-mean compactness columns: fill in its last row from features.pt."""
    missing = [c for c in CLASS_MEAN_COLUMNS if not finite(run.column(c)[-1] if run.rows else math.nan)]
    if not missing or not run.rows or not (run.path / files.FEATURES).is_file() or run.outcome != status.COMPLETED:
        return
    import torch

    from centerexp.rundir.measures import compactness  # the trainer's own definition, not a copy

    try:
        data = torch.load(run.path / files.FEATURES, weights_only=True)
    except Exception:  # damaged: the columns stay missing, as for a run without the file
        return
    centers = data.get("centers")
    values = compactness(data["features"].float(), data["labels"], None if centers is None else centers.float())
    for c in missing:
        column = run.column(c)
        column[-1] = values[c]
        run.metrics[c] = column
    run.recomputed = [c for c in missing if finite(values[c])]


def run_figures(run: Run, thresholds) -> dict:
    """The numbers the table and the claims use, from one run's metrics (NaN where it lacks a column)."""
    steps, acc = run.steps, run.column("test_acc")
    if not steps:
        return {"epochs_done": 0, "steps_done": math.nan}
    wall, test_ce, ratio = run.column("wall_seconds"), run.column("test_ce"), run.column("compactness_ratio")
    seconds = [v for v in run.column("epoch_seconds") if finite(v)]
    epochs = run.column("epoch")
    figures = {
        "epochs_done": epochs[-1] if finite(epochs[-1]) else len(steps),
        "steps_done": steps[-1],
        "acc_auc": curves.accuracy_auc(steps, acc),
        "final_test_acc": acc[-1],
        "best_test_acc": max((a for a in acc if finite(a)), default=math.nan),
        **{f"final_{c.name}": run.column(c.name)[-1] for c in TABLE_COLUMNS},
        "sec_per_epoch": sum(seconds) / epochs[-1] if seconds and finite(epochs[-1]) and epochs[-1] > 0 else math.nan,
        "wall_seconds": wall[-1],
    }
    for t in thresholds:
        step = curves.first_step_reaching(steps, acc, t)
        figures[f"steps_to_{t:g}"] = step
        figures[f"seconds_to_{t:g}"] = wall[steps.index(step)] if step is not None else None
    for f in FRACTIONS:
        figures[f"test_ce_at_{f:g}"] = curves.value_at_fraction(steps, test_ce, f)
        figures[f"compactness_at_{f:g}"] = curves.value_at_fraction(steps, ratio, f)
    return figures
