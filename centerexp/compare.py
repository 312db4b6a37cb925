"""Compare runs: a table grouped over seeds, overlaid curves, a feature grid, report.md.

Runs whose configs (read through the config loader, so a key added later with a default does not
split groups) differ only in ``train.seed`` form a group. Completed runs of a group are summarised
as mean ± sample std over seeds; failed and unfinished runs are shown on rows of their own, right
after their group, and never averaged. Values a run lacks (an older or newer run format) show as
"—". When the runs hold the V1.0 / V1.1 / V1.2 triple, the claims of ``centerexp.claims`` are
judged and written to claims.json as well. ``centerexp.report`` writes report.md and the figures.
"""

import csv
import io
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from centerexp import claims, report
from centerexp.claims import finite
from centerexp.config import flatten, read_run_config
from centerexp.errors import CenterexpError
from centerexp.runs import NOT_A_RUN, atomic_write_text, is_run_dir, metrics_columns, read_json
from centerexp.schema import BY_NAME, TABLE_COLUMNS

DEFAULT_THRESHOLDS = (0.98, 0.99)
GROUP_KEY_IGNORED = {"train.seed"}
# what compare writes: skipped without a warning when a glob over a report's folder passes them
COMPARE_OUTPUTS = {"report.md", "compare.csv", "claims.json", *report.FIGURE_FILES}


@dataclass
class Run:
    path: Path
    name: str
    config: dict  # flattened, every key resolved: "train.epochs" -> 30
    summary: dict
    metrics: dict  # column -> list of floats, one per finished epoch (columns the run lacks: absent)
    dropped_keys: list[str] = field(default_factory=list)  # config keys this version does not know
    figures: dict = field(default_factory=dict)  # run_figures(...)

    @property
    def status(self) -> str:
        return self.summary.get("status", "unknown")

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
        derived = claims.steps_from_config(
            epochs, self.config.get("data.train_subset"), self.config.get("train.batch_size", 256)
        )
        return [s if finite(s) else d for s, d in zip(self.column("step"), derived)]

    @property
    def outcome(self) -> str:
        """completed | failed (stopped with an error, or non-finite values) | unfinished (running, interrupted)."""
        if self.status == "failed":
            return "failed"
        if self.status == "completed":
            present = [v for c in ("test_acc", "train_loss") if c in self.metrics for v in self.metrics[c]]
            return "completed" if all(map(finite, present)) else "failed"
        return "unfinished"


def load_runs(paths: list[Path], warn=None) -> list[Run]:
    """Read every run folder in ``paths``; other folders are skipped with a warning."""
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    runs, seen = [], set()
    for path in map(Path, paths):
        if path.resolve() in seen:  # runs/* runs/v1_0 must not count v1_0 twice
            continue
        seen.add(path.resolve())
        if not is_run_dir(path):
            if not (path.is_file() and path.name in COMPARE_OUTPUTS):  # DIR/* after a compare into DIR
                warn(f"skipping {path}: {NOT_A_RUN}")
            continue
        try:
            cfg, dropped = read_run_config(path / "config.yaml")
            summary = read_json(path / "summary.json")
            metrics = metrics_columns(path / "metrics.csv") if (path / "metrics.csv").exists() else {}
        except (OSError, ValueError, KeyError, AttributeError, CenterexpError) as e:
            warn(f"skipping {path}: unreadable run files ({e})")
            continue
        runs.append(Run(path, path.name, flatten(cfg.to_dict()), summary, metrics, dropped))
    return runs


# --- per-run figures -----------------------------------------------------------------------


def run_figures(run: Run, thresholds) -> dict:
    """The numbers the table and the claims use, from one run's metrics (NaN where it lacks a column)."""
    steps, acc = run.steps, run.column("test_acc")
    if not steps:
        return {"epochs_done": 0, "steps_done": math.nan}
    wall, test_ce, compactness = run.column("wall_seconds"), run.column("test_ce"), run.column("compactness_ratio")
    seconds = [v for v in run.column("epoch_seconds") if finite(v)]
    figures = {
        "epochs_done": len(steps),
        "steps_done": steps[-1],
        claims.PRIMARY: claims.accuracy_auc(steps, acc),
        "final_test_acc": acc[-1],
        "best_test_acc": max((a for a in acc if finite(a)), default=math.nan),
        **{f"final_{c.name}": run.column(c.name)[-1] for c in TABLE_COLUMNS},
        "sec_per_epoch": statistics.fmean(seconds) if seconds else math.nan,
        "wall_seconds": wall[-1],
    }
    for t in thresholds:
        step = claims.first_step_reaching(steps, acc, t)
        figures[f"steps_to_{t:g}"] = step
        figures[f"seconds_to_{t:g}"] = wall[steps.index(step)] if step is not None else None
    for f in claims.FRACTIONS:
        figures[f"test_ce_at_{f:g}"] = claims.value_at_fraction(steps, test_ce, f)
        figures[f"compactness_at_{f:g}"] = claims.value_at_fraction(steps, compactness, f)
    return figures


# --- grouping ------------------------------------------------------------------------------


@dataclass
class Group:
    """Every run with one config (apart from the seed); only the completed ones are summarised."""

    config: dict
    runs: list[Run]

    @property
    def completed(self) -> list[Run]:
        return [r for r in self.runs if r.outcome == "completed"]

    @property
    def others(self) -> list[Run]:
        return [r for r in self.runs if r.outcome != "completed"]

    @property
    def label(self) -> str:
        names = [r.name for r in (self.completed or self.runs)]
        if len(names) == 1:
            return names[0]
        stems = {re.sub(r"[-_]?s(eed)?\d+$", "", n) for n in names}
        return stems.pop() if len(stems) == 1 else f"{names[0]} (+{len(names) - 1})"

    @property
    def n(self) -> int:
        return len(self.completed)

    def mean_curve(self, column: str) -> tuple[list[float], list[float], list[float], list[float]] | None:
        """(steps, mean, min, max) of ``column`` over the completed runs, on the steps all of them
        cover; None when a run lacks the column."""
        runs = self.completed
        if not runs:
            return None
        n = min(r.rows for r in runs)
        cols = [r.column(column)[:n] for r in runs]
        if not n or not all(finite(v) for col in cols for v in col):
            return None
        return (
            runs[0].steps[:n],
            [statistics.fmean(v) for v in zip(*cols)],
            [min(v) for v in zip(*cols)],
            [max(v) for v in zip(*cols)],
        )


def group_runs(runs: list[Run], thresholds) -> list[Group]:
    """Runs with the same config apart from the seed share a group, whatever their status."""
    groups: list[Group] = []
    for run in runs:
        run.figures = run_figures(run, thresholds)
        key = {k: v for k, v in run.config.items() if k not in GROUP_KEY_IGNORED}
        group = next((g for g in groups if g.config == key), None)
        if group is None:
            groups.append(Group(key, [run]))
        else:
            group.runs.append(run)
    return groups


def differing_keys(runs: list[Run], all_keys: bool = False) -> list[str]:
    keys = sorted({k for r in runs for k in r.config})
    if all_keys:
        return keys
    return [k for k in keys if len({repr(r.config.get(k)) for r in runs}) > 1 and k not in GROUP_KEY_IGNORED]


# --- the table -----------------------------------------------------------------------------


def _digits(column: str, default: int = 4) -> int:
    return BY_NAME[column].digits if column in BY_NAME else default


def _threshold_cells(runs: list[Run], t: float) -> list[str]:
    """Steps and seconds to ``t``: medians where never reaching counts as later than any run that did."""
    steps = [r.figures.get(f"steps_to_{t:g}") for r in runs]
    seconds = [r.figures.get(f"seconds_to_{t:g}") for r in runs]
    step_end = max((r.figures.get("steps_done", math.nan) for r in runs), default=math.nan)
    # seconds: runs end at different times, so "> the earliest end of a run that never got there"
    censored_ends = [r.figures.get("wall_seconds") for r, s in zip(runs, seconds) if s is None]
    second_end = min((e for e in censored_ends if finite(e)), default=math.nan)
    return [report.censored_cell(steps, step_end, 6), report.censored_cell(seconds, second_end, 4)]


def _row_values(runs: list[Run], thresholds) -> list[str]:
    def vals(key: str) -> list:
        return [r.figures.get(key, math.nan) for r in runs]

    row = [
        report.summary_cell(vals("steps_done"), _digits("step")),
        report.summary_cell(vals(claims.PRIMARY), 4),
        report.summary_cell(vals("final_test_acc"), pct=True),
        report.summary_cell(vals("best_test_acc"), pct=True),
    ]
    for t in thresholds:
        row += _threshold_cells(runs, t)
    row += [report.summary_cell(vals(f"final_{c.name}"), c.digits) for c in TABLE_COLUMNS]
    row.append(report.summary_cell(vals("sec_per_epoch"), _digits("epoch_seconds")))
    return row


def table_rows(groups: list[Group], keys: list[str], thresholds) -> tuple[list[str], list[list[str]]]:
    header = ["run", "n", "status", *keys, "steps", "acc AUC", "final test acc %", "best test acc %"]
    for t in thresholds:
        header += [f"steps to {t:g}", f"s to {t:g}"]
    header += [c.table for c in TABLE_COLUMNS] + ["s/epoch"]
    rows = []
    for g in groups:
        if g.completed:
            first = g.completed[0]
            rows.append(
                [g.label, str(g.n), "completed", *[str(first.config.get(k)) for k in keys]]
                + _row_values(g.completed, thresholds)
            )
        for run in g.others:
            epochs = f"{run.figures.get('epochs_done', 0)}/{run.config.get('train.epochs')} epochs"
            status = f"{run.status} ({epochs})" if run.status != "completed" else "completed, non-finite values"
            rows.append(
                [f"{run.name} [{'failed' if run.outcome == 'failed' else run.status}]", "1", status]
                + [str(run.config.get(k)) for k in keys]
                + _row_values([run], thresholds)
            )
    return header, rows


def csv_text(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


# --- the V1 claims ----------------------------------------------------------------------------


def arm(label: str, group: Group, warn) -> claims.Arm:
    """A V1 group as the claims see it: per seed, the primary metric (NaN: failed, None: unfinished)."""
    result = claims.Arm(label, {})
    for run in group.runs:
        seed = run.config.get("train.seed")
        if seed in result.values:
            warn(f"{label}: {run.name} repeats seed {seed} of {result.names[seed]}; only the first is used")
            continue
        result.names[seed] = run.name
        if run.outcome == "failed":
            result.values[seed] = math.nan
            result.failures[seed] = run.summary.get("error") or "non-finite values"
        elif run.outcome == "completed":
            value = run.figures.get(claims.PRIMARY)
            result.values[seed] = value if finite(value) else None
            result.figures[seed] = run.figures
        else:
            result.values[seed] = None
    return result


def judge_v1_groups(groups: list[Group], warn) -> tuple[dict[str, Group] | None, list[claims.ClaimResult]]:
    """The V1.0 / V1.1 / V1.2 groups (see ``claims.find_v1``) and both claims' verdicts; (None, []) without them."""
    found = claims.find_v1([g.config for g in groups])
    if not found:
        return None, []
    v1 = {label: groups[i] for label, i in found.items()}
    return v1, claims.judge_v1({label: arm(label, g, warn) for label, g in v1.items()})


# --- the command ----------------------------------------------------------------------------


def compare(
    paths: list[Path],
    out: Path,
    thresholds=DEFAULT_THRESHOLDS,
    csv_path: str | None = None,
    all_keys: bool = False,
    echo=print,
    warn=None,
) -> dict:
    """Build the table, figures and report for ``paths`` (and claims.json for the V1 triple)."""
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    runs = load_runs(paths, warn)
    if not runs:
        raise CenterexpError("compare: no run folders given (expected folders written by centerexp train)", exit_code=2)
    thresholds = tuple(sorted(thresholds))
    groups = group_runs(runs, thresholds)
    header, rows = table_rows(groups, differing_keys(runs, all_keys), thresholds)
    table = report.markdown_table(header, rows)
    echo(table)

    v1, results = judge_v1_groups(groups, warn)
    if results:
        echo("")
        for cr in results:
            echo(report.summary_line(cr))

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CenterexpError(f"cannot create {out}: {e.strerror or e}") from None
    csv_body = csv_text(header, rows)
    atomic_write_text(out / "compare.csv", csv_body)
    if csv_path == "-":
        echo(csv_body.rstrip("\n"))
    elif csv_path:
        atomic_write_text(Path(csv_path), csv_body)
    claims_path = out / "claims.json"
    if results:
        atomic_write_text(claims_path, json.dumps([cr.to_json() for cr in results], indent=2) + "\n")
    elif claims_path.exists():
        claims_path.unlink()  # a stale one from an earlier comparison would answer for these runs
    figures = report.plot_curves(groups, out)
    grid = report.plot_feature_grid(runs, out)
    if grid:
        figures.append(grid)
    command = report.regenerate_command(paths, thresholds)
    text = report.report_markdown(runs, table, v1, results, figures, thresholds, command)
    atomic_write_text(out / "report.md", text)
    echo(f"\nreport: {out / 'report.md'}")
    return {"groups": groups, "header": header, "rows": rows, "claims": results, "v1": v1}
