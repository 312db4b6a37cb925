"""What compare writes for a reader: the table's cells, report.md and its figures.

compare measures and groups the runs and ``analysis.claims`` judges an experiment's claims; this
module only puts their numbers into words: table cells, where the runs were produced, what the
metrics mean, each claim's section, and the figures the report shows. Nothing here changes a number.
"""

import math
import statistics
from pathlib import Path

from centerexp.analysis import claim_text
from centerexp.analysis.claim_text import number, p_text
from centerexp.analysis.claims import Arm, ClaimResult
from centerexp.analysis.curves import CHANCE
from centerexp.analysis.metrics import METRICS
from centerexp.analysis.origin import provenance
from centerexp.analysis.runs import FRACTIONS
from centerexp.analysis.stats import CONFIDENCE, censored_median, finite
from centerexp.analysis.survival import REACHED_FIGURE, horizon
from centerexp.analysis.until_decided import design_lines
from centerexp.rundir import files, status
from centerexp.rundir.schema import MISSING, format_value

# --- cells --------------------------------------------------------------------------------------


def summary_cell(values: list, digits: int = 4, pct: bool = False) -> str:
    """Mean ± sample std of the finite values (MISSING if none); one value, or all equal: the value.
    When some runs lack the value, "(k/n)" says how many the mean is over."""
    present = [v * (100 if pct else 1) for v in values if finite(v)]
    if not present:
        return MISSING
    num = (lambda x: f"{x:.2f}") if pct else (lambda x: format_value(x, digits))
    text = num(present[0])
    if len(present) > 1 and max(present) != min(present):
        sd = statistics.stdev(present)
        text = f"{num(statistics.fmean(present))} ± {num(sd) if pct else format_value(sd, 2)}"
    return text if len(present) == len(values) else f"{text} ({len(present)}/{len(values)})"


def censored_cell(values: list[float | None], end: float | None, digits: int = 4) -> str:
    """A table cell: "450 (2/3 reached)", "> 540 (1/3 reached)"; one run: "450" or "> 540 (not reached)".

    ``end``: where the runs that never reached it stopped (the earliest, if they differ); the median
    of an even number of runs may lie between a time and that end: "> 82.5 (2/4 reached)"."""
    if not values:
        return MISSING
    median, reached, n, beyond = censored_median(values, end)
    shown = f"{median:.{digits}g}" if not beyond else f"> {median:.{digits}g}" if math.isfinite(median) else "never"
    if n == 1:
        return shown if reached else f"{shown} (not reached)"
    return f"{shown} ({reached}/{n} reached)"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def summary_line(cr: ClaimResult) -> str:
    """One claim's verdict on one line, for the terminal."""
    r, c = cr.result, cr.claim
    return (
        f"claim {c.id}. {c.says}: {r.verdict} ({c.metric_text()} {cr.a.label} - {cr.b.label} "
        f"{number(r.diff, sign=True)}, {CONFIDENCE:.0%} CI [{number(r.ci_low, sign=True)}, "
        f"{number(r.ci_high, sign=True)}], {r.test}, n = {r.n_a}, {r.n_b}, failed = {r.failed_a}, {r.failed_b})"
    )


# --- report.md --------------------------------------------------------------------------------------


def regenerate_command(paths: list[Path], thresholds, experiment_file: str | None = None) -> str:
    flags = "".join(f" --threshold {t:g}" for t in thresholds)
    flags += f" --experiment {experiment_file}" if experiment_file else ""
    return f"centerexp compare {' '.join(str(p) for p in paths)}{flags}"


TABLE_NOTE = (
    "Rows group completed runs whose configs differ only in `train.seed` (mean ± sample std over seeds, "
    "n = completed seeds); failed and unfinished runs follow their group on rows of their own and are "
    f"never averaged. {MISSING}: a value the run's format does not record. steps: optimizer steps trained. "
    "acc AUC: normalised area under test accuracy vs step (below). final test CE: test cross-entropy at the "
    "last evaluation. 'steps to t' / 's to t': optimizer steps and training wall-clock seconds until test "
    "accuracy first reached t, as a median where a run that never reached t counts as later than every run "
    "that did, with how many reached it. intra / inter / intra/inter / center lag: see below."
)


def report_markdown(runs, table, claim_set, results, figures, thresholds, command) -> str:
    dropped = sorted({k for r in runs for k in r.dropped_keys})
    parts = [
        "# centerexp comparison",
        "",
        f"{len(runs)} runs: {', '.join(r.name for r in runs)}.",
        "",
        *provenance(runs),
        "",
        f"Regenerate this report: `{command}`",
        "",
    ]
    if dropped:
        parts += [f"Config keys this version does not know were ignored: {', '.join(dropped)}.", ""]
    recomputed = sorted(r.name for r in runs if r.recomputed)
    if recomputed:
        parts += [
            f"Runs of an older format ({', '.join(recomputed)}) measured compactness against the learned centers; "
            "their class-mean columns were recomputed for the last evaluation from features.pt (the test "
            "features it kept: all of them up to plot.max_points) and are missing before it.",
            "",
        ]
    parts += [TABLE_NOTE, "", table, "", *definitions_markdown(thresholds)]
    if results:
        first = next((r for r in runs if claim_set.arm_of(r) == results[0].claim.better), runs[0])
        cfg = first.config
        parts += [
            f"## The claims of experiment `{claim_set.name}`: {claim_set.title}",
            "",
            *coverage_markdown(first.figures.get("steps_done", math.nan), cfg, claim_set.coverage),
            *matching_markdown(claim_set),
            *claims_markdown(results, thresholds),
        ]
    parts += ["## Figures", "", *[f"![{f}]({f})" for f in figures], ""]
    return "\n".join(parts)


def matching_markdown(claim_set) -> list[str]:
    """How runs without run.json were matched to arms, and the runs that match none."""
    lines = []
    if claim_set.protocol:
        lines += [
            f"**protocol: {claim_set.protocol}.** These runs' run.json names no experiment and they match "
            "none of its profiles; they share every config key except those the arms set, and each is judged as the "
            "arm whose own config and overrides give its values of those keys.",
            "",
        ]
    if claim_set.unmatched:
        lines += ["Runs that match no arm (not judged):", "", *[f"- {u}" for u in claim_set.unmatched], ""]
    return lines


# --- the claims' words ------------------------------------------------------------------------------


def threshold_rationale(thresholds) -> str:
    """Each threshold as its share of the way from chance to perfect accuracy: a property of the
    metric's scale, not of where any run ended."""
    parts = [f"{t:g} = chance + {(t - CHANCE) / (1 - CHANCE):.0%} of the way from chance to 1" for t in thresholds]
    return "; ".join(parts)


def definitions_markdown(thresholds) -> list[str]:
    """What the report's numbers mean, written into the report itself."""
    fractions = ", ".join(f"{f:.0%}" for f in FRACTIONS)
    return [
        "## What the numbers mean",
        "",
        f"- **acc AUC**: {METRICS['acc_auc'].meaning}. Test accuracy is plotted against cumulative optimizer "
        f"steps, starting at (step 0, chance = {CHANCE:g}: no evaluation is made before training and an "
        "untrained 10-class net is at chance in expectation); the evaluations are joined by straight lines "
        "(trapezoid rule) and the area is divided by the last step, so it lies in [0, 1] and is higher when "
        "the accuracy rose earlier. Steps, not epochs or seconds: the arms of a claim take the same steps, and "
        "steps do not depend on the machine. Runs written before metrics.csv had a `step` column get their "
        "steps from the config (batches per epoch x epochs).",
        "- **intra / inter**: mean distance of a test feature to its class's mean test feature, and mean "
        "distance between two class means; **intra/inter** is their ratio (lower = tighter, better separated "
        "classes), in the full feature dimension. **center lag**: mean distance of a learned center to its "
        "class mean (how far the centers trail the features). The center loss itself is not compared: the "
        "squared and sqrt forms are in different units.",
        *claim_text.definitions(),
        f"- **Secondaries** (no verdict): test cross-entropy and compactness (intra/inter) at {fractions} of "
        "each run's steps, joining evaluations by straight lines (— before the first evaluation); steps to "
        "each accuracy threshold as the median over runs where a run that never reached it counts as later "
        'than every run that did, with "k/n reached" ("> x": the median lies beyond x, for an even count '
        f"possibly between a time and the step where the runs stopped); {REACHED_FIGURE}: the share of each "
        "group's runs that had reached each threshold, against step.",
        "- **`steps_to` claims** (time to a threshold): a run that never reached it is censored at its last "
        "step, so there is no t interval. The verdict is an exact test of which run reached it first (a sign "
        "test over paired seeds, a rank test over independent runs), each arm's median comes with its "
        "Kaplan-Meier interval, the effect is the difference of the medians with a bootstrap interval, and "
        "arms whose runs stopped at different steps are not compared.",
        f"- **Thresholds** {', '.join(f'{t:g}' for t in thresholds)}: {threshold_rationale(thresholds)}.",
        "",
    ]


def coverage_markdown(steps_done: float, cfg: dict, recipe: dict) -> list[str]:
    """How much of the full recipe these runs cover, and whether their center-loss dynamics match it.
    ``recipe``: the experiment's full profile (steps, batch_size, lamda); ``cfg``: a run's flat config."""
    if not recipe:
        return []
    lines = []
    full_steps, full_batch, full_lamda = recipe["steps"], recipe["batch_size"], recipe["lamda"]
    batch_size, lamda, subset = cfg.get("train.batch_size"), cfg.get("loss.lamda"), cfg.get("data.train_subset")
    fraction = steps_done / full_steps if finite(steps_done) and full_steps else math.nan
    if finite(fraction):
        lines.append(
            f"These runs train for {steps_done:,.0f} optimizer steps: {fraction:.1%} of the full profile's "
            f"{full_steps:,} (batch {full_batch})."
        )
    if finite(fraction) and fraction < 0.99:
        where = f", on a {subset:,}-image training subset" if subset else ""
        lines.append(
            f"**The verdicts below describe only the first {steps_done:,.0f} steps of training{where}**, not "
            "the end of a full run."
        )
    effective = lamda * full_batch / batch_size if lamda else lamda
    if lamda and math.isclose(effective, full_lamda) and batch_size != full_batch:
        lines.append(
            f"Batch {batch_size} with lamda {lamda:g} = {full_lamda:g} x {batch_size}/{full_batch}: the center "
            "pull on each feature relative to cross-entropy, and each center's SGD step, are the full recipe's "
            "(the count-normalised loss scales as lamda / batch)."
        )
    elif lamda and not math.isclose(effective, full_lamda):
        lines.append(
            f"Batch {batch_size} with lamda {lamda:g} acts like lamda {effective:g} at the full profile's batch "
            f"{full_batch} (the count-normalised loss scales as lamda / batch): not its dynamics."
        )
    return [part for line in lines for part in (line, "")]  # one paragraph each


def claims_markdown(results: list[ClaimResult], thresholds) -> list[str]:
    """The claims section: a summary table, then each claim's test, runs and secondaries."""
    lines = [
        *claim_text.family_lines(results),
        "| claim | verdict | metric (better) | test | n (a, b) | failed (a, b) | effect: a - b | 95% CI "
        "| P(a better) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cr in results:
        r, c = cr.result, cr.claim
        lines.append(
            f"| {c.id}. {c.says} | **{r.verdict}** | {c.metric_text()} ({c.direction}) | {r.test} | "
            f"{r.n_a}, {r.n_b} | {r.failed_a}, {r.failed_b} | {number(r.diff, sign=True)} | "
            f"[{number(r.ci_low, sign=True)}, {number(r.ci_high, sign=True)}] | "
            f"{claim_text.improvement_cell(cr.improvement)} |"
        )
    lines.append("")
    for cr in results:
        lines += _claim_details(cr, thresholds)
    return lines


def _claim_details(cr: ClaimResult, thresholds) -> list[str]:
    c, r, a, b = cr.claim, cr.result, cr.a, cr.b
    p_value, more = p_text(r.p_value), claim_text.p_sentences(cr)
    lines = [
        f"### {c.id}. {c.says}",
        "",
        f"**{r.verdict}**. {a.label} - {b.label} on {c.metric_text()} ({METRICS[c.metric].meaning}; "
        f"{c.direction} is better): {number(r.diff, sign=True)}, {CONFIDENCE:.0%} CI "
        f"[{number(r.ci_low, sign=True)}, {number(r.ci_high, sign=True)}] ({r.test}, n = {r.n_a} and {r.n_b}, "
        f"df = {number(r.df, 2)}, p = {p_value}; means {number(r.mean_a)} and {number(r.mean_b)}).{more}",
        "",
        *([f"Design: {c.design}. {c.why}", ""] if c.why else [f"Design: {c.design}.", ""]),
        *[f"- {n}" for n in r.notes],
        *([""] if r.notes else []),
        *claim_text.decide_lines(cr),
        *design_lines(cr),
    ]
    seeds = sorted(set(a.values) | set(b.values))
    paired = cr.design_used == "paired"

    def cell(arm: Arm, s: int) -> str:
        if s in arm.no_value:
            return "no value"
        if s not in arm.values or arm.values[s] is None:
            return "not finished"
        v = arm.values[s]
        if v == math.inf:  # steps_to: never reached, censored at the run's last step (analysis.survival)
            return censored_cell([None], horizon(arm.runs[s]))
        if not finite(v):
            return f"failed: {arm.failures.get(s, 'non-finite metric')}"
        return f"{v:.4f}"

    header = f"| seed | {a.label} | {b.label} |" + (" difference |" if paired else "")
    lines += [header, "|---|---|---|" + ("---|" if paired else "")]
    for s in seeds:
        row = f"| {s} | {cell(a, s)} | {cell(b, s)} |"
        if paired:
            va, vb = a.values.get(s), b.values.get(s)
            censored = math.inf in (va, vb) and all(v is not None and not math.isnan(v) for v in (va, vb))
            shown = number(va - vb, sign=True) if finite(va) and finite(vb) else "not paired"
            row += f" {'censored' if censored else shown} |"
        lines.append(row)
    if not paired:
        lines += ["", "(Listed by seed for reference; not paired.)"]
    lines += ["", *_secondaries(a, b, thresholds), ""]
    return lines


def _secondaries(a: Arm, b: Arm, thresholds) -> list[str]:
    def vals(arm: Arm, key: str) -> list:
        return [run.figures.get(key) for run in arm.runs.values() if run.outcome == status.COMPLETED]

    lines = [f"| secondary (no verdict) | {a.label} | {b.label} |", "|---|---|---|"]
    for key, name in (("test_ce", "test cross-entropy"), ("compactness", "compactness (intra/inter)")):
        for f in FRACTIONS:
            k = f"{key}_at_{f:g}"
            lines.append(f"| {name} at {f:.0%} of training | {summary_cell(vals(a, k))} | {summary_cell(vals(b, k))} |")

    def end(arm: Arm, k: str) -> float | None:
        """Where the arm's runs that never reached the threshold stopped (the earliest): each arm its own,
        so that an arm that trained fewer steps is never shown as "> " the other arm's last step."""
        ends = [e for e, v in zip(vals(arm, "steps_done"), vals(arm, k)) if v is None and finite(e)]
        return min(ends, default=None)

    for t in thresholds:
        k = f"steps_to_{t:g}"
        lines.append(
            f"| steps to test accuracy {t:g} (median) | {censored_cell(vals(a, k), end(a, k))} | "
            f"{censored_cell(vals(b, k), end(b, k))} |"
        )
    return lines


# --- the figures --------------------------------------------------------------------------------


CURVE_FIGURES = (
    ("accuracy.png", [("test_acc", "test accuracy", False)]),
    ("cross_entropy.png", [("train_ce", "training cross-entropy", None), ("test_ce", "test cross-entropy", None)]),
    ("compactness.png", [("compactness_ratio", "compactness: intra / inter class distance (lower = tighter)", None)]),
)
FIGURE_FILES = ("features_grid.png", REACHED_FIGURE, *(f for f, _ in CURVE_FIGURES))  # every figure compare may write


def plot_curves(groups: list, out: Path) -> list[str]:
    """Group means against training step, with a min-max band over seeds (completed runs only)."""
    from centerexp.plots import plot_step_curves

    written = []
    for filename, panels in CURVE_FIGURES:
        series = []
        for g in groups:
            curves = {column: g.mean_curve(column) for column, _, _ in panels}
            curves = {k: v for k, v in curves.items() if v is not None}
            if curves:
                series.append({"label": f"{g.label} (n={g.n})" if g.n > 1 else g.label, "n": g.n, "curves": curves})
        if series and plot_step_curves(series, panels, out / filename):
            written.append(filename)
    return written


def plot_feature_grid(runs: list, out: Path) -> str | None:
    """The last epoch's test features of every run that kept them (features.pt)."""
    import torch

    from centerexp.plots import plot_feature_panels

    panels = []
    for run in runs:
        if not (run.path / files.FEATURES).is_file():
            continue
        try:
            data = torch.load(run.path / files.FEATURES, weights_only=True)
        except Exception:  # damaged: no panel for this run, the rest of the report stands
            continue
        acc = run.figures.get("final_test_acc", math.nan)
        title = f"{run.name}: epoch {data['epoch']}, test acc {acc:.3f}"
        panels.append((data["features"], data["labels"], data["centers"], title))
    if not panels:
        return None
    wide = any(p[0].shape[1] > 2 for p in panels)
    what = "top two principal components of each run's" if wide else "2-D"
    plot_feature_panels(panels, out / "features_grid.png", f"final test features ({what}) with class centers")
    return "features_grid.png"
