"""Statistics for claims over seeds: paired and Welch t intervals, verdicts, censored medians.

Plain numbers in, plain numbers out; scipy does the t distributions. A verdict is exactly one of
``supported`` / ``contradicted`` / ``inconclusive`` / ``insufficient evidence`` (fewer than
MIN_RUNS usable runs in a group), or ``not comparable`` when the arms cannot be compared (different
arithmetic or steps) and a difference would not mean what it says.

Values with no spread at all (every paired difference equal, or both groups constant: common for
step counts on an evaluation grid) get no t interval, which would have zero width and p = 0 at any
n. They get an exact test instead: the sign test for pairs, the rank (Mann-Whitney) test for two
groups, whose interval exists only when the complete separation seen is rare enough by chance.
"""

import math
import statistics
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE  # two-sided: a verdict is decided when its p is below this
MIN_RUNS = 3  # fewer completed (paired) runs in either group: insufficient evidence

SUPPORTED, CONTRADICTED, INCONCLUSIVE, INSUFFICIENT = (
    "supported",
    "contradicted",
    "inconclusive",
    "insufficient evidence",
)
NOT_COMPARABLE = "not comparable"
VERDICTS = (SUPPORTED, CONTRADICTED, INCONCLUSIVE, INSUFFICIENT, NOT_COMPARABLE)


def finite(x) -> bool:
    """A real number that is neither NaN nor infinite (None and strings are not)."""
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


class CensoredMedian(NamedTuple):
    median: float  # the median, or when ``beyond``, a bound it lies beyond (inf without a horizon)
    reached: int
    n: int
    beyond: bool = False  # only a lower bound is known: a middle time is a run that never reached


def censored_median(values: list[float | None], end: float | None = None) -> CensoredMedian:
    """The median of times to a threshold where None (or +inf) means "never reached by ``end``".

    A run that never got there counts as later than every run that did, so it is neither left out
    nor given a made-up time. When a middle time is such a run the median is only bounded: it lies
    beyond the mean of the middle times with each never-reached one put at ``end``, the step where
    every run stopped: [60, 75, never, never] at end 90 has median > (75 + 90) / 2 = 82.5, not > 90.
    """
    times = sorted(math.inf if v is None else v for v in values)
    reached, n = sum(map(math.isfinite, times)), len(times)
    if not n:
        return CensoredMedian(math.nan, 0, 0)
    middle = times[(n - 1) // 2], times[n // 2]
    if all(map(math.isfinite, middle)):
        return CensoredMedian(statistics.fmean(middle), reached, n)
    bound = statistics.fmean(t if math.isfinite(t) else end for t in middle) if finite(end) else math.inf
    return CensoredMedian(bound, reached, n, True)


@dataclass
class TestResult:
    """One comparison of group a (claimed better) with group b on one metric."""

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
    p_value: float = math.nan  # two-sided, against no difference
    mean_a: float = math.nan
    mean_b: float = math.nan
    se: float = math.nan  # standard error of diff (t tests): p against another value comes from it
    spread: tuple[float, ...] = ()  # sample sd used: (of the differences,) paired; (of a, of b) Welch
    exact_tail: float = math.nan  # no spread: chance of so complete a separation in one given direction
    notes: list[str] = field(default_factory=list)


def verdict_from_ci(ci_low: float, ci_high: float, direction: str = "higher", margin: float = 0.0) -> str:
    """supported / contradicted / inconclusive for a claim on the interval of a - b.

    ``direction``: which way is better for the metric. The claim is that a improves on b, or with a
    ``margin`` m > 0 that a is not worse than b by more than m (non-inferiority): supported when the
    whole interval of the improvement lies above -m (of a - b: above -m when higher is better, below
    +m when lower is), contradicted when it lies wholly on the other side.
    """
    if direction == "lower":
        ci_low, ci_high = -ci_high, -ci_low  # improvement = b - a
    if ci_low > -margin:
        return SUPPORTED
    if ci_high < -margin:
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
    counts = f"{failed_a} run(s) of a and {failed_b} of b failed (diverged, stopped with an error, or no defined value)"
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


def _t_interval(result: TestResult, run_test, confidence: float):
    """Fill in the interval and p-value of ``result.diff`` from scipy's t test ``run_test()``, which is returned."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        t = run_test()
    ci = t.confidence_interval(confidence)
    result.ci_low, result.ci_high, result.p_value = float(ci.low), float(ci.high), float(t.pvalue)
    return t


EXACT_TESTS = {"paired": "exact sign test", "welch": "exact rank test"}
SEPARATIONS = {
    "paired": "every difference on one side of 0",
    "welch": "every run of one group beyond every run of the other",
}


def _exact(result: TestResult, design: str, tail: float, what: str, confidence: float) -> None:
    """No spread: ``what`` says where. The data are completely separated (every difference on one side,
    or every run of one group beyond every run of the other), which with no effect happens in one
    given direction with chance ``tail`` (1/2^n pairs; 1/C(n_a + n_b, n_a) orderings of two groups).
    The distribution-free interval of the difference, [smallest, largest] difference, is then [d, d]
    with confidence 1 - 2 * tail: given only when that reaches ``confidence``, else none."""
    result.test, result.exact_tail = EXACT_TESTS[design], tail
    result.p_value = min(1.0, 2 * tail) if result.diff else 1.0
    chance = (
        f"{SEPARATIONS[design]} happens by chance with probability 2 x {tail:.3g} = {result.p_value:.3g} (two-sided)"
        if result.diff
        else "no difference at all, p = 1"
    )
    head = (
        f"{what}: no spread, so a t interval would have zero width and p = 0 whatever the number of runs. "
        f"{result.test.capitalize()} instead: {chance}"
    )
    if 2 * tail <= 1 - confidence:
        result.ci_low = result.ci_high = result.diff
        d = f"{result.diff:.4g}"
        result.notes.append(f"{head}; the interval [{d}, {d}] has confidence >= {1 - 2 * tail:.1%}.")
    else:
        result.notes.append(f"{head}; too few runs for a {confidence:.0%} interval, so there is none and no verdict.")


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
        if n >= 2 and max(diffs) == min(diffs):
            _exact(result, "paired", 0.5**n, f"all {n} differences equal {diffs[0]:.4g}", confidence)
        elif n >= 2:
            result.df, result.spread = n - 1, (statistics.stdev(diffs),)
            result.se = result.spread[0] / math.sqrt(n)
            _t_interval(result, lambda: stats.ttest_rel(xs, ys), confidence)
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
        if len(xs) >= 2 and len(ys) >= 2 and max(xs) == min(xs) and max(ys) == min(ys):
            what = f"both groups are constant (a: {xs[0]:.4g}, b: {ys[0]:.4g})"
            _exact(result, "welch", 1 / math.comb(len(xs) + len(ys), len(xs)), what, confidence)  # df stays NaN
        elif len(xs) >= 2 and len(ys) >= 2:
            result.spread = (statistics.stdev(xs), statistics.stdev(ys))
            result.se = math.sqrt(result.spread[0] ** 2 / len(xs) + result.spread[1] ** 2 / len(ys))
            result.df = float(_t_interval(result, lambda: stats.ttest_ind(xs, ys, equal_var=False), confidence).df)
    return _finish(result, len(xs), len(ys))


def p_against(result: TestResult, null: float, alternative: str = "two-sided") -> float:
    """p of the result's own test against a true difference ``null`` instead of 0 (a non-inferiority
    margin): "greater" tests H0 diff <= null, "less" H0 diff >= null. NaN when there was no test."""
    from scipy import stats

    if finite(result.exact_tail):
        side = result.diff - null
        if side == 0:
            return 1.0
        if alternative == "two-sided":
            return min(1.0, 2 * result.exact_tail)
        return result.exact_tail if (side > 0) == (alternative == "greater") else 1.0
    if not (finite(result.se) and result.se > 0 and finite(result.df)):
        return math.nan
    t = (result.diff - null) / result.se
    if alternative == "greater":
        return float(stats.t.sf(t, result.df))
    if alternative == "less":
        return float(stats.t.cdf(t, result.df))
    return float(2 * stats.t.sf(abs(t), result.df))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: the k-th smallest p times (m - k + 1),
    never below the one before. A claim without a p (NaN: not tested) still counts in the m, as p = 1."""
    ps = [p if finite(p) else 1.0 for p in p_values]
    adjusted, running = [1.0] * len(ps), 0.0
    for rank, i in enumerate(sorted(range(len(ps)), key=ps.__getitem__)):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


def failures_as_worst(values: list, worst: float) -> list:
    """``values`` with each failed run (NaN, inf) set to ``worst``: the sensitivity of a verdict to
    how failures count. None (not finished) stays None."""
    return [worst if v is not None and not finite(v) else v for v in values]
