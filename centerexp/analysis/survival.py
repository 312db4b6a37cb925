"""Time to an accuracy threshold, judged as what it is: a censored time.

A run that never reached the threshold by its last evaluation is *censored* there: it would reach
it later, if ever, and how much later is unknown. Counting such a run at its last step and putting
a t interval on it (what ``steps_to`` claims used to get) makes the answer depend on where training
stopped: the same curves gave -27 [-47, -7] steps after 90 steps of training and +3 [-99, +105]
after 300. So ``steps_to`` claims are judged here with survival methods:

* per arm, the median time with its Kaplan-Meier confidence interval (lifelines);
* for the claim, an exact permutation test of *which run reached the threshold first*, the one
  thing censoring never hides when every run is followed to the same step (``who_first_test``);
* as the effect, the difference of the arms' medians with a percentile bootstrap interval over
  seeds: its size, in steps, not what the verdict rests on.

Every run of both arms must be followed to the same last step (``horizon_problem``), and enough
runs must have reached the threshold at all, or there is no verdict to give. The arms are
``analysis.claims.Arm`` objects, taken by their attributes so that claims can import this module.
"""

import math
from pathlib import Path

from centerexp.analysis.metrics import METRICS
from centerexp.analysis.stats import (
    CONFIDENCE,
    CONTRADICTED,
    INCONCLUSIVE,
    INSUFFICIENT,
    MIN_RUNS,
    NOT_COMPARABLE,
    SUPPORTED,
    TestResult,
    _failure_notes,
    censored_median,
    finite,
)
from centerexp.rundir import status

PAIRED_TEST = "exact sign test (who reached first)"
INDEPENDENT_TEST = "exact rank test (who reached first)"
RESAMPLES = 2000  # bootstrap resamples of the effect's interval (fixed seed: the report regenerates exactly)
REACHED_FIGURE = "reached.png"


def horizon(run) -> float:
    """The step of a run's last evaluation: a run that never reached the threshold is censored there."""
    steps = run.steps
    return steps[-1] if steps and finite(steps[-1]) else math.nan


def _times(arm, claim) -> None:
    """Set ``arm.values`` to each completed run's time to the threshold (metrics' ``steps_to``): the
    step, or +inf for a run that never reached it. ``claims`` had no number for +inf and left such a
    run out; failed (NaN), unfinished (None) and never evaluated runs keep what ``claims`` gave them."""
    for seed, run in arm.runs.items():
        if run.outcome != status.COMPLETED:
            continue
        if finite(horizon(run)):
            arm.values[seed] = METRICS["steps_to"].value(run, dict(claim.params))
            arm.no_value.pop(seed, None)


def horizon_problem(a, b, seeds_a: list[int], seeds_b: list[int]) -> str | None:
    """Why the runs cannot be compared on time to a threshold: they were not all followed to one step.

    A run of a that stopped at step 60 without reaching the threshold says nothing about whether it
    would have beaten b's runs that reached it at step 75: censoring one arm before the other arm's
    horizon turns "stopped earlier" into "slower" or "faster" at will. Truncating every run at the
    shortest horizon would be valid, but it answers a narrower claim (within the first H steps) than
    the one stated, and arms that trained different lengths differ in protocol (epochs, subset,
    evaluation steps) in ways no truncation repairs. So the claim is not judged, and the note says
    what differs.
    """
    ends = {arm.label: sorted({horizon(arm.runs[s]) for s in seeds}) for arm, seeds in ((a, seeds_a), (b, seeds_b))}
    if len({e for found in ends.values() for e in found}) <= 1:
        return None
    shown = "; ".join(f"{label}: step {', '.join(f'{e:g}' for e in found)}" for label, found in ends.items())
    return (
        f"the runs were not all followed to the same step ({shown}). A run that never reached the threshold is "
        "censored at its last step, so runs stopped earlier could not be told from slower ones: time to a "
        "threshold is compared only between runs trained and evaluated to the same step."
    )


def who_first(x: float, y: float) -> int:
    """+1 when a time x (a step, or +inf: never reached) is earlier than y, -1 when later, 0 for a tie."""
    return (x < y) - (x > y)


def who_first_test(ta: list[float], tb: list[float], paired: bool) -> tuple[float, int, int, int]:
    """(two-sided p, comparisons a won, comparisons b won, ties): exact test that neither arm reaches
    the threshold first more often than chance.

    Every run is followed to one horizon H, so a time is a step or "later than H", and of any two runs
    we know which reached the threshold first, or that they tied (same evaluation, or neither reached
    it). That order is all the test uses:

    * paired seeds: each seed scores +1 when a's run reached first, -1 when b's did, 0 for a tie. Under
      the null the two runs of a seed are exchangeable, and the exact permutation distribution (the arms
      swapped within any subset of seeds, 2^n ways) is the sign test on the untied seeds
      (scipy.stats.binomtest): the log-rank test stratified by seed, with its exact null.
    * independent runs (``welch`` design): every run of a against every run of b, the Mann-Whitney U
      with its exact permutation distribution over all relabellings of the runs (scipy's
      PermutationMethod; beyond 9,999 relabellings, that many drawn with a fixed seed).

    Why not lifelines' log-rank test: its chi-square p-value is asymptotic, and at 3 to 5 seeds an arm
    it rejects too often. Three runs reaching the threshold at step 60 against three at step 75 give
    chi-square 5.0, p = 0.025, where 2 of the 20 ways to split six runs into two arms of three are as
    extreme (exact p = 0.1). The price of exactness: with n paired seeds no test that only swaps arms
    within seeds can go below 2 / 2^n, so paired claims need 6 untied seeds for a verdict.
    """
    from scipy import stats

    if paired:
        scores = [who_first(x, y) for x, y in zip(ta, tb)]
        wins, losses = scores.count(1), scores.count(-1)
        p = stats.binomtest(wins, wins + losses, 0.5).pvalue if wins + losses else 1.0
        return float(p), wins, losses, scores.count(0)
    scores = [who_first(x, y) for x in ta for y in tb]
    wins, losses = scores.count(1), scores.count(-1)
    if wins + losses == 0:
        return 1.0, 0, 0, len(scores)
    method = stats.PermutationMethod(n_resamples=9999, rng=0)
    p = stats.mannwhitneyu(ta, tb, alternative="two-sided", method=method).pvalue
    return float(min(p, 1.0)), wins, losses, scores.count(0)


def median_difference(ta: list[float], tb: list[float], paired: bool) -> tuple[float, float, float]:
    """(median of a - median of b, and its percentile bootstrap interval at CONFIDENCE), in steps.

    Medians count a never-reached run as later than every run that reached (stats.censored_median):
    NaN for the difference when either median lies beyond the horizon. The interval resamples seeds
    (paired: a seed's two runs together; otherwise each arm's runs), RESAMPLES times with a fixed seed;
    an end that falls on a resample with a median beyond the horizon is open (+-inf), and a resample
    where both medians are is counted as unknown on both sides. It is there to show the size of the
    difference: with 3 to 5 seeds it is rough, and the verdict is the exact test's.
    """
    import numpy as np

    a, b = censored_median(ta)[0], censored_median(tb)[0]
    diff = a - b if math.isfinite(a) and math.isfinite(b) else math.nan
    rng = np.random.default_rng(0)
    xa, xb = np.asarray(ta, float), np.asarray(tb, float)
    ia = rng.integers(0, len(xa), (RESAMPLES, len(xa)))
    ib = ia if paired else rng.integers(0, len(xb), (RESAMPLES, len(xb)))
    with np.errstate(invalid="ignore"):  # inf - inf: both medians beyond the horizon
        d = np.median(xa[ia], axis=1) - np.median(xb[ib], axis=1)
    tail = (1 - CONFIDENCE) / 2
    low = np.quantile(np.where(np.isnan(d), -np.inf, d), tail, method="inverted_cdf")
    high = np.quantile(np.where(np.isnan(d), np.inf, d), 1 - tail, method="inverted_cdf")
    return diff, float(low), float(high)


def median_ci(times: list[float], end: float) -> tuple[float, float]:
    """The CONFIDENCE interval of an arm's median time from its Kaplan-Meier curve (lifelines,
    exponential Greenwood band); +inf for an end the band does not reach by the horizon."""
    from lifelines import KaplanMeierFitter
    from lifelines.utils import median_survival_times

    reached = [math.isfinite(t) for t in times]
    km = KaplanMeierFitter(alpha=1 - CONFIDENCE).fit([t if r else end for t, r in zip(times, reached)], reached)
    low, high = median_survival_times(km.confidence_interval_).to_numpy()[0]
    return float(low), float(high)


def _steps(x: float, end: float) -> str:
    return f"{x:g}" if math.isfinite(x) else f"beyond {end:g}"


def _open(x: float) -> str:
    return f"{x:+g}" if math.isfinite(x) else "unbounded"


def _median_text(times: list[float], end: float) -> str:
    median, reached, n, beyond = censored_median([t if math.isfinite(t) else None for t in times], end)
    low, high = median_ci(times, end)
    shown = f"> {median:g}" if beyond else f"{median:g}"
    return f"{shown} ({CONFIDENCE:.0%} CI {_steps(low, end)} to {_steps(high, end)}; {reached}/{n} reached)"


def _kept(arm, failed: bool = False) -> dict[int, float]:
    """seed -> time of the arm's completed runs; with ``failed``, its failed runs too, as never reached."""
    out = {s: v for s, v in arm.values.items() if v is not None and not math.isnan(v)}
    return out | ({s: math.inf for s, v in arm.values.items() if v is not None and math.isnan(v)} if failed else {})


def used_times(a, b, paired: bool, failed: bool = False) -> tuple[list[int], list[int], list[float], list[float]]:
    """(seeds of a, seeds of b, times of a, times of b) that the test uses: paired, the seeds with a run
    in both arms, aligned; otherwise every run of each arm."""
    da, db = _kept(a, failed), _kept(b, failed)
    seeds_a, seeds_b = (sorted(set(da) & set(db)),) * 2 if paired else (sorted(da), sorted(db))
    return seeds_a, seeds_b, [da[s] for s in seeds_a], [db[s] for s in seeds_b]


def decide(ta: list[float], tb: list[float], paired: bool, margin: float = 0.0) -> tuple[str, float, int, int, int]:
    """(verdict, p, a first, b first, ties) on "a reaches the threshold sooner": the exact test decides
    at p <= 1 - CONFIDENCE, the side that came first more often gives the direction. A margin
    (non-inferiority) has no meaning for a test of order: a supported "sooner" implies it, and a
    significant "later" does not contradict it."""
    p, wins, losses, ties = who_first_test(ta, tb, paired)
    verdict = INCONCLUSIVE
    if p <= 1 - CONFIDENCE and wins != losses:
        verdict = SUPPORTED if wins > losses else INCONCLUSIVE if margin else CONTRADICTED
    return verdict, p, wins, losses, ties


def judge_times(claim, a, b, design: str, mismatch: list[str] = ()) -> TestResult:
    """The verdict on "a reaches the threshold sooner than b", with the arms' medians, the effect and
    notes that say how. ``a`` and ``b`` are the claim's own copies of the arms (claims.judge); their
    values become the runs' times (``_times``) for the report's per-seed table. ``mismatch``: reasons
    found elsewhere why the arms cannot be compared; without one, ``horizon_problem`` is checked here."""
    threshold = dict(claim.params)["threshold"]
    for arm in (a, b):
        _times(arm, claim)

    paired = design == "paired"
    seeds_a, seeds_b, ta, tb = used_times(a, b, paired)
    nan_count = lambda arm: sum(1 for v in arm.values.values() if v is not None and math.isnan(v))  # noqa: E731
    test = PAIRED_TEST if paired else INDEPENDENT_TEST
    result = TestResult("", test, math.nan, math.nan, math.nan, len(ta), len(tb), nan_count(a), nan_count(b))
    finished = lambda arm: {s for s, v in arm.values.items() if v is not None}  # noqa: E731  failed ones too
    unpaired = sorted(finished(a) ^ finished(b)) if paired else []
    if unpaired:
        result.notes.append(
            f"seed(s) {', '.join(map(str, unpaired))} have a finished run in only one arm: not paired, left out."
        )
    enough = len(ta) >= MIN_RUNS and len(tb) >= MIN_RUNS
    result.notes += _failure_notes(result.failed_a, result.failed_b, len(ta), len(tb), enough)
    problems = list(mismatch) or [p for p in [horizon_problem(a, b, seeds_a, seeds_b)] if p]
    if problems:
        result.verdict = NOT_COMPARABLE
        result.notes[:0] = problems
        return result
    if not enough:
        result.verdict = INSUFFICIENT
        result.notes.append(f"{len(ta)} and {len(tb)} runs usable; a verdict needs at least {MIN_RUNS} in each arm.")
        return result
    end = horizon(a.runs[seeds_a[0]])
    reached_a, reached_b = sum(map(math.isfinite, ta)), sum(map(math.isfinite, tb))
    counts = (
        f"{reached_a} of {len(ta)} runs of {a.label} and {reached_b} of {len(tb)} of {b.label} reached test "
        f"accuracy {threshold:g} by step {end:g}, where every run stopped"
    )
    if reached_a + reached_b < MIN_RUNS:
        result.verdict = INSUFFICIENT
        result.notes.append(f"{counts}: too few to compare times; a verdict needs at least {MIN_RUNS} that reached it.")
        return result

    result.verdict, result.p_value, wins, losses, ties = decide(ta, tb, paired, claim.margin)
    result.diff, result.ci_low, result.ci_high = median_difference(ta, tb, paired)
    unit = "seed(s)" if paired else "of the pairs of runs"
    how = "the sign test: the arms swapped within seeds" if paired else "Mann-Whitney U over all relabellings"
    result.notes += [
        f"{counts}. A run that never reached it is censored there: it counts as later than every run that "
        "did, never at its last step, and times are compared only by which came first.",
        f"Median steps to {threshold:g}: {a.label} {_median_text(ta, end)}, {b.label} {_median_text(tb, end)}. "
        "Intervals from the Kaplan-Meier curve (lifelines, exponential Greenwood).",
        f"Test: {a.label} reached {threshold:g} first in {wins} {unit}, {b.label} in {losses}, {ties} tied (same "
        f"evaluation, or neither reached it); exact two-sided p = {result.p_value:.3g} ({how}).",
    ]
    alpha = 1 - CONFIDENCE
    if paired and 2 / 2 ** (wins + losses) > alpha:
        result.notes.append(
            f"With {wins + losses} untied seed(s) no outcome of this exact test could reach p <= {alpha:g}: "
            "a paired claim on time to a threshold needs at least 6 untied seeds."
        )
    if claim.margin:
        result.notes.append(
            f"The margin {claim.margin:g} is not used: the test compares order, not size. Supported means "
            f"{a.label} reached the threshold sooner, which implies the non-inferiority claim."
        )
    effect = f"{result.diff:+g} steps" if finite(result.diff) else "not a number (a median lies beyond the horizon)"
    result.notes.append(
        f"Effect: median of {a.label} - median of {b.label} = {effect}; {CONFIDENCE:.0%} interval "
        f"[{_open(result.ci_low)}, {_open(result.ci_high)}] from a percentile bootstrap over seeds "
        f"({RESAMPLES:,} resamples; unbounded where resampled medians lie beyond the horizon), which shows the "
        "size only: the verdict is the exact test's."
    )
    if (result.failed_a or result.failed_b) and result.verdict in (SUPPORTED, CONTRADICTED):
        _, _, wa, wb = used_times(a, b, paired, failed=True)
        again = decide(wa, wb, paired, claim.margin)[0]
        text = f"Counting the {result.failed_a + result.failed_b} failed run(s) as never reaching it: {again}"
        if again != result.verdict:
            result.notes.append(f"{text}. The verdict depends on how failures count: inconclusive.")
            result.verdict = INCONCLUSIVE
        else:
            result.notes.append(f"{text}: the verdict stands.")
    return result


def judge(claim, a, b, design: str, note: str | None, mismatch: list[str]) -> tuple[TestResult, dict | None]:
    """claims.judge for a ``steps_to`` claim: (its result, P(a reached first) for the report).

    ``note``: what the pairing check said; ``mismatch``: why the arms cannot be compared at all (other
    arithmetic, other steps), which claims.judge checks for every claim. Unfinished runs are left out
    and said so. What would decide an inconclusive claim is the count of seeds in the notes, not a
    t-test power analysis, which assumes what censoring breaks."""
    from centerexp.analysis.improvement import probability_of_improvement

    result = judge_times(claim, a, b, design, mismatch)
    if note:
        result.notes.insert(len(mismatch), note)
    result.notes += [line for line in (a.unfinished_note(), b.unfinished_note()) if line]
    if not finite(result.p_value):
        return result, None
    _, _, ta, tb = used_times(a, b, design == "paired")
    order = lambda times: [t if math.isfinite(t) else 1e300 for t in times]  # noqa: E731  never: after any step
    return result, probability_of_improvement(order(ta), order(tb), design == "paired", "lower")


# --- the figure ---------------------------------------------------------------------------------


def reached_share(times: list[float | None], ends: list[float]) -> tuple[list[float], list[float]]:
    """(steps, share of runs that had reached the threshold by then) from step 0 to the last horizon:
    one minus the Kaplan-Meier curve (lifelines), which under one horizon is simply the share.
    ``times``: each run's step, None for never reached (censored at its ``ends`` entry)."""
    from lifelines import KaplanMeierFitter

    reached = [t is not None for t in times]
    km = KaplanMeierFitter().fit([t if r else e for t, r, e in zip(times, reached, ends)], reached)
    steps, share = list(km.cumulative_density_.index), list(km.cumulative_density_.iloc[:, 0])
    if steps[-1] < max(ends):
        steps, share = [*steps, max(ends)], [*share, share[-1]]
    return [float(s) for s in steps], [float(v) for v in share]


def plot_reached(groups: list, thresholds, path: Path) -> bool:
    """One panel per threshold: the share of each group's completed runs that had reached it by each
    training step, with how many reached it in the legend. False when there is nothing to draw."""
    usable = [(g, [r for r in g.completed if finite(r.figures.get("steps_done"))]) for g in groups]
    usable = [(g, runs) for g, runs in usable if runs]
    if not thresholds or not usable:
        return False
    import matplotlib.pyplot as plt

    from centerexp.plots import save_figure, style_epoch_axes

    fig, axes = plt.subplots(1, len(thresholds), figsize=(6.5 * len(thresholds), 4.5), squeeze=False)
    for ax, t in zip(axes[0], thresholds):
        for i, (g, runs) in enumerate(usable):
            times = [r.figures.get(f"steps_to_{t:g}") for r in runs]
            steps, share = reached_share(times, [r.figures["steps_done"] for r in runs])
            reached = sum(v is not None for v in times)
            label = f"{g.label}: {reached}/{len(runs)} reached"
            style = ("-", "--", ":", "-.")[i % 4]  # arms that coincide stay visible on top of each other
            ax.step(steps, share, where="post", color=f"C{i % 10}", ls=style, label=label, lw=2.2 - 0.4 * (i % 4))
        ax.set(
            xlabel="training step",
            ylabel="share of runs that reached it",
            ylim=(-0.03, 1.03),
            title=f"test accuracy >= {t:g} reached by this step",
        )
        style_epoch_axes(ax)
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    save_figure(fig, path)
    return True
