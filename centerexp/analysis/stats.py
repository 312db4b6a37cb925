"""Statistics for claims over seeds: paired and Welch t intervals, verdicts, censored medians.

Plain numbers in, plain numbers out; scipy does the t distributions. A verdict is exactly one of
``supported`` / ``contradicted`` / ``inconclusive`` / ``insufficient evidence`` (fewer than
MIN_RUNS usable runs in a group), or ``not comparable`` when the arms ran under different
arithmetic (precision, device type, torch version) and a difference would not mean what it says.
"""

import math
import statistics
import warnings
from dataclasses import dataclass, field

CONFIDENCE = 0.95
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


def censored_median(values: list[float | None]) -> tuple[float, int, int]:
    """(median, reached, n) of times to a threshold where None means "never reached".

    A run that never got there counts as later than every run that did (+inf), so it is neither
    left out nor given a made-up time; the median is inf when half or more never got there.
    """
    times = [math.inf if v is None else v for v in values]
    reached = sum(v is not None for v in values)
    return (statistics.median(times) if times else math.nan), reached, len(values)


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
    p_value: float = math.nan
    mean_a: float = math.nan
    mean_b: float = math.nan
    notes: list[str] = field(default_factory=list)


def verdict_from_ci(ci_low: float, ci_high: float, direction: str = "higher", margin: float = 0.0) -> str:
    """supported / contradicted / inconclusive for a claim on the interval of a - b.

    ``direction``: which way is better for the metric. The claim is that a improves on b, or with a
    ``margin`` m > 0 that a is not worse than b by more than m (non-inferiority): supported when the
    whole interval of the improvement lies above -m, contradicted when it lies below -m.
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
