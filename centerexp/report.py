"""What compare writes for a reader: the table's cells, report.md and its figures.

compare measures and groups the runs and ``centerexp.claims`` judges the V1 claims; this module
only puts their numbers into words: table cells, where the runs were produced, what the metrics
mean, each claim's section, and the figures the report shows. Nothing here changes a number.
"""

import math
import statistics
from pathlib import Path

from centerexp import claims
from centerexp.claims import (
    CHANCE,
    CONFIDENCE,
    FRACTIONS,
    MIN_RUNS,
    PRIMARY_NAME,
    RECIPE_BATCH,
    RECIPE_EPOCHS,
    RECIPE_LAMDA,
    RECIPE_STEPS,
    Arm,
    Claim,
    ClaimResult,
    finite,
)
from centerexp.config import MNIST_TRAIN_IMAGES, steps_per_epoch
from centerexp.runs import read_json
from centerexp.schema import MISSING, format_value

# --- cells --------------------------------------------------------------------------------------


def number(x: float, digits: int = 4, sign: bool = False) -> str:
    if not finite(x):
        return MISSING
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


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
    """A table cell: "450 (2/3 reached)", "> 540 (1/3 reached)"; one run: "450" or "> 540 (not reached)"."""
    if not values:
        return MISSING
    median, reached, n = claims.censored_median(values)
    bound = f"> {end:.{digits}g}" if finite(end) else "never"
    shown = f"{median:.{digits}g}" if math.isfinite(median) else bound
    if n == 1:
        return shown if reached else f"{bound} (not reached)"
    return f"{shown} ({reached}/{n} reached)"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def summary_line(cr: ClaimResult) -> str:
    """One claim's verdict on one line, for the terminal."""
    r = cr.result
    return (
        f"claim {cr.claim.id}. {cr.claim.title}: {r.verdict} (AUC {cr.claim.a} - {cr.claim.b} "
        f"{number(r.diff, sign=True)}, {CONFIDENCE:.0%} CI [{number(r.ci_low, sign=True)}, "
        f"{number(r.ci_high, sign=True)}], {r.test}, n = {r.n_a}, {r.n_b}, failed = {r.failed_a}, {r.failed_b})"
    )


# --- report.md --------------------------------------------------------------------------------------


def provenance(runs: list) -> list[str]:
    """Machine, device, precision, software and commit of the runs, and their total training time."""
    envs = []
    for r in runs:
        try:
            env = read_json(r.path / "env.json")
        except (OSError, ValueError):
            continue
        envs += [env, *env.get("resumes", [])]  # a resumed run may have continued elsewhere

    def describe(env: dict) -> str:
        git = env.get("git") or {}
        commit = f"commit {str(git.get('commit'))[:10]}" + (" (dirty)" if git.get("dirty") else "")
        device = f"{env.get('device_name')} ({env.get('device', '?')}, {env.get('threads')} threads)"
        tf32 = (
            " (cuDNN TF32 convolutions, PyTorch's default on CUDA)"
            if str(env.get("device", "")).startswith("cuda") and env.get("precision") == "fp32"
            else ""
        )
        return f"{device}, precision {env.get('precision')}{tf32}, torch {env.get('torch')}, {commit}"

    if envs:
        lines = [f"Produced on: {'; '.join(sorted({describe(e) for e in envs}))}."]
    else:
        asked = sorted({f"{r.config.get('train.device')} / {r.config.get('train.precision')}" for r in runs})
        lines = [f"Device and precision: not recorded (no env.json); the configs ask for {', '.join(asked)}."]
    total = sum(r.column("wall_seconds")[-1] for r in runs if r.rows and finite(r.column("wall_seconds")[-1]))
    lines.append(f"Training wall time of all runs together: {total / 60:.1f} min.")
    return [" ".join(lines)]


def regenerate_command(paths: list[Path], thresholds) -> str:
    flags = "".join(f" --threshold {t:g}" for t in thresholds)
    return f"centerexp compare {' '.join(str(p) for p in paths)}{flags}"


TABLE_NOTE = (
    "Rows group completed runs whose configs differ only in `train.seed` (mean ± sample std over seeds, "
    "n = completed seeds); failed and unfinished runs follow their group on rows of their own and are "
    f"never averaged. {MISSING}: a value the run's format does not record. steps: optimizer steps trained. "
    "acc AUC: the primary metric below. final test CE: test cross-entropy after the last epoch. "
    "'steps to t' / 's to t': optimizer steps and training wall-clock seconds until test accuracy first "
    "reached t, as a median where a run that never reached t counts as later than every run that did, "
    "with how many reached it. intra dist: mean distance of a test feature to its class center; center "
    "dist: mean distance between centers; intra/center: their ratio (lower = tighter, better separated "
    "clusters). The center loss itself is not compared: squared and sqrt forms are in different units."
)


def report_markdown(runs, table, v1, results, figures, thresholds, command) -> str:
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
    parts += [TABLE_NOTE, "", table, "", *definitions_markdown(thresholds)]
    if results:
        cfg = v1["V1.0"].config
        batch = cfg.get("train.batch_size")
        planned = claims.steps_from_config([cfg.get("train.epochs")], cfg.get("data.train_subset"), batch)[0]
        parts += [
            "## The V1 experiments' claims",
            "",
            *coverage_markdown(planned, batch, cfg.get("loss.lamda"), cfg.get("data.train_subset")),
            *claims_markdown(results, thresholds),
        ]
    parts += ["## Figures", "", *[f"![{f}]({f})" for f in figures], ""]
    return "\n".join(parts)


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
        '## What "converges faster" means here',
        "",
        f"- **Primary metric: {PRIMARY_NAME}** (`acc AUC`). Test accuracy is plotted against cumulative "
        f"optimizer steps, starting at (step 0, chance = {CHANCE:g}: no evaluation is made before training and "
        "an untrained 10-class net is at chance in expectation); the evaluations are joined by straight lines "
        "(trapezoid rule) and the area is divided by the last step. It is the mean test accuracy over training, "
        "in [0, 1]: higher means the accuracy rose earlier. Steps, not epochs or seconds, because the arms of a "
        "claim take the same steps and steps do not depend on the machine. Runs written before metrics.csv had "
        "a `step` column get their steps from the config (batches per epoch x epochs).",
        f"- **Verdicts** come from a {CONFIDENCE:.0%} t confidence interval of (claimed faster) - (other) on the "
        "primary metric: `supported` when it excludes 0 on the claimed side, `contradicted` when it excludes 0 "
        f"on the other side, `inconclusive` otherwise, `insufficient evidence` when fewer than {MIN_RUNS} "
        "completed (for claim 1: paired) runs remain in either group. Failed runs (diverged, NaN, stopped with "
        "an error) are listed and counted, not used in the interval; the report says when they change n.",
        f"- **Secondaries** (no verdict): test cross-entropy and compactness (intra/center distance of the test "
        f"features, lower is tighter) at {fractions} of each run's steps, joining evaluations by straight "
        "lines (— before the first evaluation); steps to each accuracy threshold as the median over runs "
        'where a run that never reached it counts as later than every run that did, with "k/n reached".',
        f"- **Thresholds** {', '.join(f'{t:g}' for t in thresholds)}: {threshold_rationale(thresholds)}.",
        "",
    ]


def coverage_markdown(steps_done: float, batch_size: int, lamda: float, train_subset: int | None = None) -> list[str]:
    """How much of the recipe these runs cover, and whether their center-loss dynamics match it."""
    lines = []
    fraction = steps_done / RECIPE_STEPS if finite(steps_done) else math.nan
    recipe = (
        f"{RECIPE_EPOCHS} epochs x {steps_per_epoch(MNIST_TRAIN_IMAGES, RECIPE_BATCH)} steps of batch {RECIPE_BATCH}"
    )
    if finite(fraction):
        lines.append(
            f"These runs train for {steps_done:,.0f} optimizer steps: {fraction:.1%} of the recipe's "
            f"{RECIPE_STEPS:,} ({recipe})."
        )
    if finite(fraction) and fraction < 0.99:
        lines.append(
            "**This is a pipeline check, not a test of the claims**: the verdicts below describe only this "
            "early part of training" + (f", on a {train_subset:,}-image training subset." if train_subset else ".")
        )
    effective = lamda * RECIPE_BATCH / batch_size
    if math.isclose(effective, RECIPE_LAMDA):
        if batch_size != RECIPE_BATCH:
            lines.append(
                f"Batch {batch_size} with lamda {lamda:g} = {RECIPE_LAMDA:g} x {batch_size}/{RECIPE_BATCH}: the "
                "center pull on each feature relative to cross-entropy, and each center's SGD step, are the "
                "recipe's (the count-normalised loss scales as lamda / batch)."
            )
    else:
        lines.append(
            f"Batch {batch_size} with lamda {lamda:g} acts like lamda {effective:g} at the recipe's batch "
            f"{RECIPE_BATCH} (the count-normalised loss scales as lamda / batch): not the recipe's dynamics."
        )
    return [part for line in lines for part in (line, "")]  # one paragraph each


def claims_markdown(results: list[ClaimResult], thresholds) -> list[str]:
    """The claims section: a summary table, then each claim's test, runs and secondaries."""
    lines = [
        "| claim | verdict | metric | test | n (a, b) | failed (a, b) | effect: AUC a - b | 95% CI |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cr in results:
        r = cr.result
        lines.append(
            f"| {cr.claim.id}. {cr.claim.title} | **{r.verdict}** | acc AUC | {r.test} | {r.n_a}, {r.n_b} | "
            f"{r.failed_a}, {r.failed_b} | {number(r.diff, sign=True)} | "
            f"[{number(r.ci_low, sign=True)}, {number(r.ci_high, sign=True)}] |"
        )
    lines.append("")
    for cr in results:
        lines += _claim_details(cr, thresholds)
    return lines


def _claim_details(cr: ClaimResult, thresholds) -> list[str]:
    c, r, a, b = cr.claim, cr.result, cr.a, cr.b
    p_value = format_value(r.p_value, 2)
    lines = [
        f"### {c.id}. {c.title}",
        "",
        f"**{r.verdict}**. {c.a} - {c.b} on the {PRIMARY_NAME}: {number(r.diff, sign=True)}, "
        f"{CONFIDENCE:.0%} CI [{number(r.ci_low, sign=True)}, {number(r.ci_high, sign=True)}] "
        f"({r.test}, n = {r.n_a} and {r.n_b}, df = {number(r.df, 2)}, p = {p_value}; "
        f"means {number(r.mean_a)} and {number(r.mean_b)}).",
        "",
        f"Test: {c.why_test}",
        "",
        *[f"- {n}" for n in r.notes],
        *([""] if r.notes else []),
    ]
    seeds = sorted(set(a.values) | set(b.values))

    def cell(arm: Arm, s: int) -> str:
        if s not in arm.values or arm.values[s] is None:
            return "not finished"
        v = arm.values[s]
        if not finite(v):
            return f"failed: {arm.failures.get(s, 'non-finite metric')}"
        return f"{v:.4f}"

    header = f"| seed | {c.a} AUC | {c.b} AUC |" + (" difference |" if c.paired else "")
    lines += [header, "|---|---|---|" + ("---|" if c.paired else "")]
    for s in seeds:
        row = f"| {s} | {cell(a, s)} | {cell(b, s)} |"
        if c.paired:
            va, vb = a.values.get(s), b.values.get(s)
            row += f" {number(va - vb, sign=True) if finite(va) and finite(vb) else 'not paired'} |"
        lines.append(row)
    if not c.paired:
        lines += ["", "(Listed by seed for reference; not paired.)"]
    lines += ["", *_secondaries(c, a, b, thresholds), ""]
    return lines


def _secondaries(c: Claim, a: Arm, b: Arm, thresholds) -> list[str]:
    def vals(arm: Arm, key: str) -> list:
        return [f.get(key) for f in arm.figures.values()]

    lines = [f"| secondary (no verdict) | {c.a} | {c.b} |", "|---|---|---|"]
    for key, name in (("test_ce", "test cross-entropy"), ("compactness", "compactness (intra/inter class)")):
        for f in FRACTIONS:
            k = f"{key}_at_{f:g}"
            lines.append(f"| {name} at {f:.0%} of training | {summary_cell(vals(a, k))} | {summary_cell(vals(b, k))} |")
    for t in thresholds:
        k = f"steps_to_{t:g}"
        ends = [f.get("steps_done") for f in [*a.figures.values(), *b.figures.values()]]
        end = max((e for e in ends if finite(e)), default=None)
        lines.append(
            f"| steps to test accuracy {t:g} (median) | {censored_cell(vals(a, k), end)} | "
            f"{censored_cell(vals(b, k), end)} |"
        )
    return lines


# --- the figures --------------------------------------------------------------------------------


CURVE_FIGURES = (
    ("accuracy.png", [("test_acc", "test accuracy", False)]),
    ("cross_entropy.png", [("train_ce", "training cross-entropy", None), ("test_ce", "test cross-entropy", None)]),
    ("compactness.png", [("compactness_ratio", "compactness: intra / inter class distance (lower = tighter)", None)]),
)
FIGURE_FILES = ("features_grid.png", *(f for f, _ in CURVE_FIGURES))  # every figure compare may write


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
        if not (run.path / "features.pt").is_file():
            continue
        data = torch.load(run.path / "features.pt", weights_only=True)
        acc = run.figures.get("final_test_acc", math.nan)
        title = f"{run.name}: epoch {data['epoch']}, test acc {acc:.3f}"
        panels.append((data["features"], data["labels"], data["centers"], title))
    if not panels:
        return None
    plot_feature_panels(panels, out / "features_grid.png", "final test features (2-D) with class centers")
    return "features_grid.png"
