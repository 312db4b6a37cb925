"""The V1 science in one place: the two claims, what "converges faster" means, and the verdicts.

The seed experiment claims (1) the squared center loss converges faster than the sqrt form (V1.0
vs V1.1) and (2) the deeper net converges faster (V1.1 vs V1.2). Here:

* **Primary metric** (``accuracy_auc``): the normalised area under test accuracy against
  training *step*. The curve starts at (step 0, chance = 0.1): no evaluation is made before
  training, and an untrained 10-class net is at chance in expectation, so the first epoch's area
  is counted rather than dropped. The points are joined by straight lines (trapezoid rule) and
  the area is divided by the run's last step, so the value is the mean test accuracy over
  training, in [0, 1]; higher means the accuracy rose earlier, i.e. converged faster. Steps, not
  epochs or seconds: optimizer steps are what the two arms of a claim share, and they do not
  depend on the machine.
* **Secondaries**, shown with no verdict: test cross-entropy and compactness (intra/center
  distance) at fixed fractions of training, and steps to each accuracy threshold with censoring.
* **Verdicts**, exactly one of ``supported`` / ``contradicted`` / ``inconclusive`` /
  ``insufficient evidence``, from a 95% t confidence interval of the claimed-faster group's AUC
  minus the other's. Claim 1 pairs runs by ``train.seed`` (same initial weights, centers, subset
  and batch order: only the distance differs) and uses the per-seed differences (paired t,
  df = n - 1). Claim 2's architectures start from different initial weights, so the seeds pair
  only the data order; it uses Welch's t (unequal variances, no pairing).

The functions below take plain numbers and lists; ``judge_v1`` adapts compare's groups to them.
"""

import math
import statistics
import warnings
from dataclasses import dataclass, field

from centerexp.schema import MISSING, format_value

CHANCE = 0.1  # test accuracy of a 10-class guess: the curve's start
CONFIDENCE = 0.95
MIN_RUNS = 3  # fewer completed (paired) runs in either group: insufficient evidence
FRACTIONS = (0.25, 0.5, 1.0)  # where the secondaries are read, as fractions of the run's steps

SUPPORTED, CONTRADICTED, INCONCLUSIVE, INSUFFICIENT = (
    "supported",
    "contradicted",
    "inconclusive",
    "insufficient evidence",
)
VERDICTS = (SUPPORTED, CONTRADICTED, INCONCLUSIVE, INSUFFICIENT)

PRIMARY = "acc_auc"  # the figure compare computes per run with accuracy_auc
PRIMARY_NAME = "normalised area under test accuracy vs training step"


# --- counting steps ----------------------------------------------------------------------------


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimizer steps in one epoch, as the trainer takes them: one per batch start, except a lone
    trailing sample (BatchNorm cannot train on one)."""
    return sum(1 for s in range(0, n_train, batch_size) if n_train - s > 1)


MNIST_TRAIN = 60_000
RECIPE_EPOCHS, RECIPE_BATCH, RECIPE_LAMDA = 30, 256, 1.0
RECIPE_STEPS = RECIPE_EPOCHS * steps_per_epoch(MNIST_TRAIN, RECIPE_BATCH)  # 30 x 235 = 7,050


def steps_from_config(epochs: list[float], train_subset: int | None, batch_size: int) -> list[float]:
    """Cumulative steps at the end of each epoch, for runs written before metrics.csv had ``step``."""
    n = min(train_subset or MNIST_TRAIN, MNIST_TRAIN)
    per_epoch = steps_per_epoch(n, batch_size)
    return [e * per_epoch for e in epochs]


# --- measuring one run's curve --------------------------------------------------------------------


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def accuracy_auc(steps: list[float], accs: list[float], chance: float = CHANCE) -> float:
    """Normalised area under test accuracy vs step, from (0, chance) to the last evaluation.

    NaN when there is no evaluation or a value is not finite (a diverged run has no area).
    """
    if not steps or len(steps) != len(accs) or not all(map(_finite, [*steps, *accs])) or steps[-1] <= 0:
        return math.nan
    xs, ys = [0.0, *steps], [chance, *accs]
    area = sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]))
    return area / steps[-1]


def first_step_reaching(steps: list[float], accs: list[float], threshold: float) -> float | None:
    """The step of the first evaluation with test accuracy >= threshold; None if none did (censored)."""
    return next((s for s, a in zip(steps, accs) if _finite(a) and a >= threshold), None)


def value_at_fraction(steps: list[float], values: list[float], fraction: float) -> float:
    """``values`` at ``fraction`` of the run's last step, joining evaluations by straight lines.

    NaN before the first evaluation (nothing is measured there) or where values are missing.
    """
    if not steps or not _finite(steps[-1]):
        return math.nan
    target = fraction * steps[-1]
    for i, (x1, y1) in enumerate(zip(steps, values)):
        if x1 < target:
            continue
        if x1 == target:
            return y1 if _finite(y1) else math.nan
        if i == 0:  # before the first evaluation
            return math.nan
        x0, y0 = steps[i - 1], values[i - 1]
        if not (_finite(y0) and _finite(y1)):
            return math.nan
        return y0 + (y1 - y0) * (target - x0) / (x1 - x0)
    return math.nan


def censored_median(values: list[float | None]) -> tuple[float, int, int]:
    """(median, reached, n) of times to a threshold where None means "never reached".

    A run that never got there counts as later than every run that did (+inf), so it is neither
    left out nor given a made-up time; the median is inf when half or more never got there.
    """
    times = [math.inf if v is None else v for v in values]
    reached = sum(v is not None for v in values)
    return (statistics.median(times) if times else math.nan), reached, len(values)


def censored_cell(values: list[float | None], end: float | None, digits: int = 4) -> str:
    """A table cell: "450 (2/3 reached)", "> 540 (1/3 reached)"; one run: "450" or "> 540 (not reached)"."""
    if not values:
        return MISSING
    median, reached, n = censored_median(values)
    bound = f"> {end:.{digits}g}" if _finite(end) else "never"
    shown = f"{median:.{digits}g}" if math.isfinite(median) else bound
    if n == 1:
        return shown if reached else f"{bound} (not reached)"
    return f"{shown} ({reached}/{n} reached)"


# --- the statistics -----------------------------------------------------------------------------


@dataclass
class TestResult:
    """One comparison of group a (claimed faster) with group b on one metric."""

    verdict: str
    test: str  # "paired t" | "Welch t"
    diff: float  # mean(a) - mean(b), over the runs used
    ci_low: float
    ci_high: float
    n_a: int  # runs of a used (for a paired test: the pairs)
    n_b: int
    failed_a: int  # runs of a that failed (diverged, NaN): shown, counted, not used
    failed_b: int
    df: float = math.nan
    p_value: float = math.nan
    mean_a: float = math.nan
    mean_b: float = math.nan
    notes: list[str] = field(default_factory=list)


def verdict_from_ci(ci_low: float, ci_high: float) -> str:
    """supported / contradicted / inconclusive for a claim that a - b > 0."""
    if ci_low > 0:
        return SUPPORTED
    if ci_high < 0:
        return CONTRADICTED
    return INCONCLUSIVE


def _split(values: list) -> tuple[list[float], int]:
    """Completed values and the count of failed runs (NaN or inf); None entries are ignored."""
    done = [float(v) for v in values if _finite(v)]
    failed = sum(1 for v in values if v is not None and not _finite(v))
    return done, failed


def _failure_notes(failed_a: int, failed_b: int, n_a: int, n_b: int, enough: bool) -> list[str]:
    if not (failed_a or failed_b):
        return []
    counts = f"{failed_a} run(s) of a and {failed_b} of b failed (diverged or stopped with an error)"
    if enough:
        return [f"{counts}; they are shown, not used: the interval is over the {n_a} and {n_b} runs that remain."]
    return [f"{counts}; fewer than {MIN_RUNS} remain, so there is not enough evidence for a verdict."]


def _finish(result: TestResult, n_a: int, n_b: int) -> TestResult:
    enough = n_a >= MIN_RUNS and n_b >= MIN_RUNS
    result.notes += _failure_notes(result.failed_a, result.failed_b, n_a, n_b, enough)
    if not enough:
        result.verdict = INSUFFICIENT
        result.notes.append(f"{n_a} and {n_b} runs usable; a verdict needs at least {MIN_RUNS} in each group.")
    else:
        result.verdict = verdict_from_ci(result.ci_low, result.ci_high)
    return result


def paired_test(a: list[float | None], b: list[float | None], confidence: float = CONFIDENCE) -> TestResult:
    """Mean of the per-seed differences a[i] - b[i] with a t interval, df = n - 1 (scipy.stats.ttest_rel).

    a and b are aligned by seed. A NaN marks a failed run: its pair is left out and the failure
    counted. None marks a seed with no finished run in that group (still running, or not trained):
    left out, not counted as a failure.
    """
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"paired_test: {len(a)} values for a, {len(b)} for b; they must be aligned by seed")
    failed_a = sum(1 for x in a if x is not None and not _finite(x))
    failed_b = sum(1 for x in b if x is not None and not _finite(x))
    pairs = [(float(x), float(y)) for x, y in zip(a, b) if _finite(x) and _finite(y)]
    n = len(pairs)
    result = TestResult("", "paired t", math.nan, math.nan, math.nan, n, n, failed_a, failed_b)
    if n:
        xs, ys = zip(*pairs)
        result.mean_a, result.mean_b = statistics.fmean(xs), statistics.fmean(ys)
        diffs = [x - y for x, y in pairs]
        result.diff = statistics.fmean(diffs)
        if n >= 2:
            result.df = n - 1
            if max(diffs) == min(diffs):  # no spread at all: a zero-width interval (scipy gives NaN)
                result.ci_low = result.ci_high = result.diff
                result.p_value = 0.0 if result.diff else 1.0
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    t = stats.ttest_rel(xs, ys)
                ci = t.confidence_interval(confidence)
                result.ci_low, result.ci_high, result.p_value = float(ci.low), float(ci.high), float(t.pvalue)
    return _finish(result, n, n)


def welch_test(a: list[float | None], b: list[float | None], confidence: float = CONFIDENCE) -> TestResult:
    """mean(a) - mean(b) with Welch's t interval (unequal variances, Welch-Satterthwaite df):
    scipy.stats.ttest_ind(equal_var=False). NaN marks a failed run (counted, left out); None is ignored."""
    from scipy import stats

    xs, failed_a = _split(a)
    ys, failed_b = _split(b)
    result = TestResult("", "Welch t", math.nan, math.nan, math.nan, len(xs), len(ys), failed_a, failed_b)
    if xs and ys:
        result.mean_a, result.mean_b = statistics.fmean(xs), statistics.fmean(ys)
        result.diff = result.mean_a - result.mean_b
        if len(xs) >= 2 and len(ys) >= 2:
            if max(xs) == min(xs) and max(ys) == min(ys):  # no spread in either group
                result.ci_low = result.ci_high = result.diff
                result.p_value = 0.0 if result.diff else 1.0
                result.df = len(xs) + len(ys) - 2
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    t = stats.ttest_ind(xs, ys, equal_var=False)
                ci = t.confidence_interval(confidence)
                result.ci_low, result.ci_high = float(ci.low), float(ci.high)
                result.p_value, result.df = float(t.pvalue), float(t.df)
    return _finish(result, len(xs), len(ys))


# --- the V1 claims ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    id: str
    title: str
    a: str  # the group claimed to converge faster
    b: str
    paired: bool
    why_test: str


CLAIMS = (
    Claim(
        "1",
        "squared center loss converges faster than sqrt (V1.0 vs V1.1)",
        "V1.0",
        "V1.1",
        True,
        "paired t over seeds: with the same train.seed, V1.0 and V1.1 start from the same initial weights "
        "and centers and see the same subset and batch order; only the distance form differs, so the "
        "per-seed difference is the unit of analysis (df = n - 1).",
    ),
    Claim(
        "2",
        "the deeper network converges faster (V1.1 vs V1.2)",
        "V1.1",
        "V1.2",
        False,
        "Welch's t (unequal variances): the two architectures have different parameters, so the same "
        "seed gives them different initial weights and shares only the data order; pairing by seed is "
        "not justified, and the two nets need not vary alike.",
    ),
)


def find_v1(configs: list[dict]) -> dict[str, int] | None:
    """Indices of V1.0 / V1.1 / V1.2 in ``configs`` (flattened configs without the seed): a deep +
    squared config, the one differing from it only in loss.distance (sqrt), and the one differing
    from that only in model.arch (shallow). The first complete triple, or None."""
    for i, base in enumerate(configs):
        if (base.get("model.arch"), base.get("loss.distance")) != ("deep", "squared"):
            continue
        v11 = next((j for j, c in enumerate(configs) if c == {**base, "loss.distance": "sqrt"}), None)
        v12 = next(
            (j for j, c in enumerate(configs) if c == {**base, "loss.distance": "sqrt", "model.arch": "shallow"}),
            None,
        )
        if v11 is not None and v12 is not None:
            return {"V1.0": i, "V1.1": v11, "V1.2": v12}
    return None


@dataclass
class Arm:
    """One V1 group as the claims see it: per seed, the primary metric (NaN: failed; None: not
    finished), the run names, why a run failed, and the per-run figures for the secondaries."""

    label: str
    values: dict[int, float | None]  # seed -> primary metric
    names: dict[int, str] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)  # seed -> error of a failed run
    figures: dict[int, dict] = field(default_factory=dict)  # seed -> compare's figures of a completed run


@dataclass
class ClaimResult:
    claim: Claim
    result: TestResult
    a: Arm
    b: Arm

    def to_json(self) -> dict:
        r = self.result

        def num(x: float) -> float | None:
            return float(x) if _finite(x) else None

        return {
            "id": self.claim.id,
            "title": self.claim.title,
            "a": self.claim.a,
            "b": self.claim.b,
            "verdict": r.verdict,
            "metric": PRIMARY_NAME,
            "test": r.test,
            "confidence": CONFIDENCE,
            "diff": num(r.diff),
            "ci_low": num(r.ci_low),
            "ci_high": num(r.ci_high),
            "n_a": r.n_a,
            "n_b": r.n_b,
            "failed_a": r.failed_a,
            "failed_b": r.failed_b,
            "df": num(r.df),
            "p_value": num(r.p_value),
            "mean_a": num(r.mean_a),
            "mean_b": num(r.mean_b),
            "notes": r.notes,
        }

    def summary_line(self) -> str:
        r = self.result
        return (
            f"claim {self.claim.id}. {self.claim.title}: {r.verdict} (AUC {self.claim.a} - {self.claim.b} "
            f"{number(r.diff, sign=True)}, {CONFIDENCE:.0%} CI [{number(r.ci_low, sign=True)}, "
            f"{number(r.ci_high, sign=True)}], {r.test}, n = {r.n_a}, {r.n_b}, failed = {r.failed_a}, {r.failed_b})"
        )


def judge(claim: Claim, a: Arm, b: Arm) -> ClaimResult:
    """The claim's test on the primary metric of the two arms."""
    if claim.paired:
        seeds = sorted(set(a.values) | set(b.values))
        result = paired_test([a.values.get(s) for s in seeds], [b.values.get(s) for s in seeds])
        unpaired = [s for s in seeds if (a.values.get(s) is None) != (b.values.get(s) is None)]
        if unpaired:
            result.notes.append(
                f"seed(s) {', '.join(map(str, unpaired))} have a finished run in only one group: not paired, left out."
            )
    else:
        result = welch_test(list(a.values.values()), list(b.values.values()))
    for arm in (a, b):
        unfinished = sorted(s for s, v in arm.values.items() if v is None)
        if unfinished:
            result.notes.append(
                f"{arm.label}: seed(s) {', '.join(map(str, unfinished))} not finished (running or interrupted): "
                "left out, not counted as failed."
            )
    return ClaimResult(claim, result, a, b)


def judge_v1(arms: dict[str, Arm]) -> list[ClaimResult]:
    """Both claims, given the arms "V1.0", "V1.1" and "V1.2"."""
    return [judge(c, arms[c.a], arms[c.b]) for c in CLAIMS]


# --- the report's words ---------------------------------------------------------------------------


def number(x: float, digits: int = 4, sign: bool = False) -> str:
    if not _finite(x):
        return MISSING
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def summary_cell(values: list, digits: int = 4, pct: bool = False) -> str:
    """Mean ± sample std of the finite values (MISSING if none); one value, or all equal: the value.
    When some runs lack the value, "(k/n)" says how many the mean is over."""
    present = [v * (100 if pct else 1) for v in values if _finite(v)]
    if not present:
        return MISSING
    num = (lambda x: f"{x:.2f}") if pct else (lambda x: format_value(x, digits))
    text = num(present[0])
    if len(present) > 1 and max(present) != min(present):
        sd = statistics.stdev(present)
        text = f"{num(statistics.fmean(present))} ± {num(sd) if pct else format_value(sd, 2)}"
    return text if len(present) == len(values) else f"{text} ({len(present)}/{len(values)})"


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
    fraction = steps_done / RECIPE_STEPS if _finite(steps_done) else math.nan
    recipe = f"{RECIPE_EPOCHS} epochs x {steps_per_epoch(MNIST_TRAIN, RECIPE_BATCH)} steps of batch {RECIPE_BATCH}"
    if _finite(fraction):
        lines.append(
            f"These runs train for {steps_done:,.0f} optimizer steps: {fraction:.1%} of the recipe's "
            f"{RECIPE_STEPS:,} ({recipe})."
        )
    if _finite(fraction) and fraction < 0.99:
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
        if not _finite(v):
            return f"failed: {arm.failures.get(s, 'non-finite metric')}"
        return f"{v:.4f}"

    header = f"| seed | {c.a} AUC | {c.b} AUC |" + (" difference |" if c.paired else "")
    lines += [header, "|---|---|---|" + ("---|" if c.paired else "")]
    for s in seeds:
        row = f"| {s} | {cell(a, s)} | {cell(b, s)} |"
        if c.paired:
            va, vb = a.values.get(s), b.values.get(s)
            row += f" {number(va - vb, sign=True) if _finite(va) and _finite(vb) else 'not paired'} |"
        lines.append(row)
    if not c.paired:
        lines += ["", "(Listed by seed for reference; not paired.)"]
    lines += ["", *_secondaries(c, a, b, thresholds), ""]
    return lines


def _secondaries(c: Claim, a: Arm, b: Arm, thresholds) -> list[str]:
    def vals(arm: Arm, key: str) -> list:
        return [f.get(key) for f in arm.figures.values()]

    lines = [f"| secondary (no verdict) | {c.a} | {c.b} |", "|---|---|---|"]
    for key, name in (("test_ce", "test cross-entropy"), ("compactness", "compactness (intra/center)")):
        for f in FRACTIONS:
            k = f"{key}_at_{f:g}"
            lines.append(f"| {name} at {f:.0%} of training | {summary_cell(vals(a, k))} | {summary_cell(vals(b, k))} |")
    for t in thresholds:
        k = f"steps_to_{t:g}"
        ends = [f.get("steps_done") for f in [*a.figures.values(), *b.figures.values()]]
        end = max((e for e in ends if _finite(e)), default=None)
        lines.append(
            f"| steps to test accuracy {t:g} (median) | {censored_cell(vals(a, k), end)} | "
            f"{censored_cell(vals(b, k), end)} |"
        )
    return lines
