"""Compare runs: a table grouped over seeds, overlaid curves, a feature grid, report.md.

Runs whose configs (read through the config loader, so a key added later with a default does not
split groups) differ only in ``train.seed`` form a group. Completed runs of a group are summarised
as mean ± sample std over seeds; failed and unfinished runs are shown on rows of their own, right
after their group, and never averaged. Values a run lacks (an older or newer run format) show as
"—". Given an experiment's claims (``ClaimSet``), compare judges them too and writes claims.json;
``analysis.report`` writes report.md and the figures.
"""

import csv
import io
import json
import math
import re
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from centerexp.analysis import DEFAULT_THRESHOLDS, report, survival
from centerexp.analysis.claims import ClaimSpec, arms_from_runs, judge_all
from centerexp.analysis.runs import Run, load_runs, run_figures
from centerexp.analysis.stats import finite
from centerexp.config import RUNTIME_ONLY_KEYS
from centerexp.errors import CenterexpError
from centerexp.rundir import status
from centerexp.rundir.io import atomic_write_text
from centerexp.rundir.schema import BY_NAME, TABLE_COLUMNS

GROUP_KEY_IGNORED = {"train.seed", *RUNTIME_ONLY_KEYS}  # runs that differ only in these share a group
# what compare writes: skipped without a warning when a glob over a report's folder passes them
COMPARE_OUTPUTS = {"report.md", "compare.csv", "claims.json", *report.FIGURE_FILES}


# --- grouping ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimSet:
    """What compare needs to judge an experiment's claims on its runs (built by the experiments layer)."""

    name: str  # the experiment's name
    file: str  # its experiment file (for the report's regenerate command)
    title: str
    arms: dict[str, str]  # arm name -> label, in the experiment's order
    claims: tuple[ClaimSpec, ...]
    arm_of: Callable[[Run], str | None]  # which arm a run is (run.json's, or by its config)
    coverage: dict = field(default_factory=dict)  # the full recipe: steps, batch_size, lamda
    protocol: str = ""  # how runs without run.json were matched to arms, when not by a profile
    unmatched: tuple[str, ...] = ()  # one line per run that matches no arm, with the keys that differ
    sequential: object | None = None  # analysis.sequential_design.SequentialDesign: seeds until decided


@dataclass
class Group:
    """Every run with one config (apart from the seed); only the completed ones are summarised."""

    config: dict
    runs: list[Run]

    @property
    def completed(self) -> list[Run]:
        return [r for r in self.runs if r.outcome == status.COMPLETED]

    @property
    def others(self) -> list[Run]:
        return [r for r in self.runs if r.outcome != status.COMPLETED]

    arm_label: str | None = None  # the experiment arm these runs are, when compare knows it

    @property
    def label(self) -> str:
        if self.arm_label:
            return self.arm_label
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


def group_runs(runs: list[Run], thresholds, claim_set: ClaimSet | None = None) -> list[Group]:
    """Runs with the same config apart from the seed share a group, whatever their status."""
    groups: list[Group] = []
    for run in runs:
        run.figures = run_figures(run, thresholds)
        key = {k: v for k, v in run.config.items() if k not in GROUP_KEY_IGNORED}
        group = next((g for g in groups if g.config == key), None)
        if group is None:
            arm = claim_set.arm_of(run) if claim_set else None
            groups.append(Group(key, [run], claim_set.arms.get(arm) if claim_set and arm else None))
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
        report.summary_cell(vals("acc_auc"), 4),
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
                [g.label, str(g.n), status.COMPLETED, *[str(first.config.get(k)) for k in keys]]
                + _row_values(g.completed, thresholds)
            )
        for run in g.others:
            epochs = f"{run.figures.get('epochs_done', 0):g}/{run.config.get('train.epochs')} epochs"
            state = f"{run.status} ({epochs})" if run.status != status.COMPLETED else "completed, non-finite values"
            rows.append(
                [f"{run.name} [{status.FAILED if run.outcome == status.FAILED else run.status}]", "1", state]
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


# --- the command ----------------------------------------------------------------------------


def judge_runs(runs: list[Run], claim_set: ClaimSet, warn, thresholds=()) -> list:
    """The experiment's claims judged on ``runs`` (fixed n, or by its sequential design)."""
    for run in runs:
        run.figures = run.figures or run_figures(run, thresholds)
    results = judge_all(claim_set.claims, arms_from_runs(runs, claim_set.arm_of, claim_set.arms, warn))
    if claim_set.sequential is not None:
        from centerexp.analysis.until_decided import apply_design

        apply_design(results, claim_set.sequential)
    return results


def compare(
    paths: list[Path],
    out: Path,
    thresholds=DEFAULT_THRESHOLDS,
    csv_path: str | None = None,
    all_keys: bool = False,
    echo=print,
    warn=None,
    claim_set: ClaimSet | None = None,
) -> dict:
    """Build the table, figures and report for ``paths`` (and claims.json when ``claim_set`` is given)."""
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    runs = load_runs(paths, warn, skip_quietly=COMPARE_OUTPUTS)
    if not runs:
        raise CenterexpError("compare: no run folders given (expected folders written by centerexp train)", exit_code=2)
    thresholds = tuple(sorted(thresholds))
    groups = group_runs(runs, thresholds, claim_set)
    header, rows = table_rows(groups, differing_keys(runs, all_keys), thresholds)
    table = report.markdown_table(header, rows)
    echo(table)

    results = judge_runs(runs, claim_set, warn, thresholds) if claim_set else []
    if results:
        echo("")
        if claim_set.protocol:
            echo(f"protocol: {claim_set.protocol}")
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
    if survival.plot_reached(groups, thresholds, out / survival.REACHED_FIGURE):
        figures.append(survival.REACHED_FIGURE)
    grid = report.plot_feature_grid(runs, out)
    if grid:
        figures.append(grid)
    command = report.regenerate_command(paths, thresholds, claim_set.file if claim_set else None)
    text = report.report_markdown(runs, table, claim_set, results, figures, thresholds, command)
    atomic_write_text(out / "report.md", text)
    echo(f"\nreport: {out / 'report.md'}")
    return {"groups": groups, "header": header, "rows": rows, "claims": results}
