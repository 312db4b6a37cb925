"""What would decide an inconclusive claim: the power of the claim's own test.

Two numbers, from the noncentral t distribution (scipy.stats.nct) of the claim's test (paired t,
or Welch t with its Welch-Satterthwaite df), two-sided at 5 %, for 80 % power (the usual planning
target; Colas et al. 2018, "How many random seeds?"):

* the smallest true difference (from the claim's null: 0, or the margin) that the current runs
  detect with 80 % power, at the observed spread;
* the seeds per arm (pairs, for a paired claim) that would detect the observed difference with
  80 % power, taking the observed spread as the truth.

Both lean on the observed spread, itself uncertain with few seeds: its 95 % interval (chi-square
with the test's df) and the seeds its two ends would need come with them. Values with no spread
were judged by an exact test (stats), whose answer is a count of runs, not a power.
"""

import math

from centerexp.analysis.stats import ALPHA, CONFIDENCE, TestResult, finite

POWER = 0.80
MAX_SEEDS = 1_000_000  # beyond this "more than" is the answer


def t_power(noncentrality: float, df: float, alpha: float = ALPHA) -> float:
    """Power of a two-sided t test at level ``alpha`` when its statistic is noncentral t(df, noncentrality)."""
    from scipy import stats

    crit = stats.t.ppf(1 - alpha / 2, df)
    # the lower tail P(T < -crit) as P(T' > crit) with T' ~ nct(df, -noncentrality): scipy's cdf gives
    # NaN for it far out, where this gives its tiny value
    return float(stats.nct.sf(crit, df, noncentrality) + stats.nct.sf(crit, df, -noncentrality))


def _noncentrality_for_power(df: float, power: float = POWER) -> float:
    from scipy.optimize import brentq

    high = 1.0
    while t_power(high, df) < power:
        high *= 2
    return float(brentq(lambda nc: t_power(nc, df) - power, 0.0, high))


def se_and_df(spread: tuple[float, ...], n: int) -> tuple[float, float]:
    """Standard error and df of the claim's test with ``n`` seeds per arm: paired (one sd, of the
    differences): sd / sqrt(n), n - 1; Welch (the two arms' sds): Welch-Satterthwaite."""
    if len(spread) == 1:
        return spread[0] / math.sqrt(n), n - 1
    va, vb = (s * s / n for s in spread)
    return math.sqrt(va + vb), (va + vb) ** 2 / ((va * va + vb * vb) / (n - 1))


def seeds_needed(effect: float, spread: tuple[float, ...]) -> int | None:
    """Smallest n per arm (pairs when paired) whose test detects a true difference ``effect`` with 80 %
    power at this spread; None when there is no effect to detect or n would exceed MAX_SEEDS."""
    if not effect or not finite(effect) or not all(finite(s) and s > 0 for s in spread):
        return None

    def enough(n: int) -> bool:
        se, df = se_and_df(spread, n)
        return t_power(abs(effect) / se, df) >= POWER

    low, high = 1, 2  # power grows with n: double, then bisect
    while not enough(high):
        low, high = high, high * 2
        if high > MAX_SEEDS:
            return None
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high


def spread_interval(df: float, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The true sd as a multiple of the observed one: its chi-square ``confidence`` interval with ``df``."""
    from scipy import stats

    tail = (1 - confidence) / 2
    return math.sqrt(df / stats.chi2.ppf(1 - tail, df)), math.sqrt(df / stats.chi2.ppf(tail, df))


def exact_seeds_needed(paired: bool) -> int:
    """Runs per arm at which complete separation (every difference on one side, or every run of one arm
    beyond every run of the other) first reaches two-sided 5 % in the exact test used at no spread."""
    n = 2
    while 2 * (0.5**n if paired else 1 / math.comb(2 * n, n)) > ALPHA:
        n += 1
    return n


def what_would_decide(result: TestResult, null: float = 0.0) -> dict | None:
    """claims.json's "what would decide it" for the result's test against a true a - b of ``null``
    (0, or the non-inferiority margin on the a - b scale); None when no test could be made."""
    paired = result.test in ("paired t", "exact sign test")
    if finite(result.exact_tail):
        return {"method": result.test, "seeds_needed": exact_seeds_needed(paired), "per": "pair" if paired else "arm"}
    if not (finite(result.se) and result.se > 0 and finite(result.df) and result.spread):
        return None
    effect = result.diff - null
    low, high = spread_interval(result.df)
    return {
        "method": "noncentral t (scipy.stats.nct), two-sided 5 %, at the observed spread",
        "per": "pair" if paired else "arm",
        "power": POWER,
        "null": null,
        "detectable": _noncentrality_for_power(result.df) * result.se,
        "observed": effect,
        "seeds_needed": seeds_needed(effect, result.spread),
        "spread_factor": [low, high],
        "seeds_needed_at_spread_ends": [seeds_needed(effect, tuple(s * f for s in result.spread)) for f in (low, high)],
    }
