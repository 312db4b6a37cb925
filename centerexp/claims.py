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

The functions below take plain numbers and lists: compare turns its groups into ``Arm``s, and
``centerexp.report`` puts the results into words.
"""

import math
import statistics
import warnings
from dataclasses import dataclass, field

from centerexp.config import MNIST_TRAIN_IMAGES, steps_per_epoch

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


RECIPE_EPOCHS, RECIPE_BATCH, RECIPE_LAMDA = 30, 256, 1.0
RECIPE_STEPS = RECIPE_EPOCHS * steps_per_epoch(MNIST_TRAIN_IMAGES, RECIPE_BATCH)  # 30 x 235 = 7,050


def steps_from_config(epochs: list[float], train_subset: int | None, batch_size: int) -> list[float]:
    """Cumulative steps at the end of each epoch, for runs written before metrics.csv had ``step``."""
    n = min(train_subset or MNIST_TRAIN_IMAGES, MNIST_TRAIN_IMAGES)
    per_epoch = steps_per_epoch(n, batch_size)
    return [e * per_epoch for e in epochs]


# --- measuring one run's curve --------------------------------------------------------------------


def finite(x) -> bool:
    """A real number that is neither NaN nor infinite (None and strings are not)."""
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def accuracy_auc(steps: list[float], accs: list[float], chance: float = CHANCE) -> float:
    """Normalised area under test accuracy vs step, from (0, chance) to the last evaluation.

    NaN when there is no evaluation or a value is not finite (a diverged run has no area).
    """
    if not steps or len(steps) != len(accs) or not all(map(finite, [*steps, *accs])) or steps[-1] <= 0:
        return math.nan
    xs, ys = [0.0, *steps], [chance, *accs]
    area = sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]))
    return area / steps[-1]


def first_step_reaching(steps: list[float], accs: list[float], threshold: float) -> float | None:
    """The step of the first evaluation with test accuracy >= threshold; None if none did (censored)."""
    return next((s for s, a in zip(steps, accs) if finite(a) and a >= threshold), None)


def value_at_fraction(steps: list[float], values: list[float], fraction: float) -> float:
    """``values`` at ``fraction`` of the run's last step, joining evaluations by straight lines.

    NaN before the first evaluation (nothing is measured there) or where values are missing.
    """
    if not steps or not finite(steps[-1]):
        return math.nan
    target = fraction * steps[-1]
    for i, (x1, y1) in enumerate(zip(steps, values)):
        if x1 < target:
            continue
        if x1 == target:
            return y1 if finite(y1) else math.nan
        if i == 0:  # before the first evaluation
            return math.nan
        x0, y0 = steps[i - 1], values[i - 1]
        if not (finite(y0) and finite(y1)):
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
    done = [float(v) for v in values if finite(v)]
    failed = sum(1 for v in values if v is not None and not finite(v))
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


def _t_interval(result: TestResult, no_spread: bool, run_test, confidence: float):
    """Fill in the interval and p-value of ``result.diff``: zero width when the values have no spread
    at all (scipy gives NaN there), else from scipy's t test ``run_test()``, which is returned."""
    if no_spread:
        result.ci_low = result.ci_high = result.diff
        result.p_value = 0.0 if result.diff else 1.0
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        t = run_test()
    ci = t.confidence_interval(confidence)
    result.ci_low, result.ci_high, result.p_value = float(ci.low), float(ci.high), float(t.pvalue)
    return t


def paired_test(a: list[float | None], b: list[float | None], confidence: float = CONFIDENCE) -> TestResult:
    """Mean of the per-seed differences a[i] - b[i] with a t interval, df = n - 1 (scipy.stats.ttest_rel).

    a and b are aligned by seed. A NaN marks a failed run: its pair is left out and the failure
    counted. None marks a seed with no finished run in that group (still running, or not trained):
    left out, not counted as a failure.
    """
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"paired_test: {len(a)} values for a, {len(b)} for b; they must be aligned by seed")
    failed_a, failed_b = _split(a)[1], _split(b)[1]
    pairs = [(float(x), float(y)) for x, y in zip(a, b) if finite(x) and finite(y)]
    n = len(pairs)
    result = TestResult("", "paired t", math.nan, math.nan, math.nan, n, n, failed_a, failed_b)
    if n:
        xs, ys = zip(*pairs)
        result.mean_a, result.mean_b = statistics.fmean(xs), statistics.fmean(ys)
        diffs = [x - y for x, y in pairs]
        result.diff = statistics.fmean(diffs)
        if n >= 2:
            result.df = n - 1
            _t_interval(result, max(diffs) == min(diffs), lambda: stats.ttest_rel(xs, ys), confidence)
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
            no_spread = max(xs) == min(xs) and max(ys) == min(ys)  # in either group
            t = _t_interval(result, no_spread, lambda: stats.ttest_ind(xs, ys, equal_var=False), confidence)
            result.df = len(xs) + len(ys) - 2 if t is None else float(t.df)
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
        """claims.json's entry for the claim; None where there is no number (JSON has no NaN)."""
        c, r = self.claim, self.result

        def num(x: float) -> float | None:
            return float(x) if finite(x) else None

        head = {"id": c.id, "title": c.title, "a": c.a, "b": c.b, "verdict": r.verdict, "metric": PRIMARY_NAME}
        interval = {k: num(getattr(r, k)) for k in ("diff", "ci_low", "ci_high")}
        counts = {k: getattr(r, k) for k in ("n_a", "n_b", "failed_a", "failed_b")}
        more = {k: num(getattr(r, k)) for k in ("df", "p_value", "mean_a", "mean_b")}
        return {**head, "test": r.test, "confidence": CONFIDENCE, **interval, **counts, **more, "notes": r.notes}


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
