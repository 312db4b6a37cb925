"""The probability of improvement P(a better than b): a secondary of each claim, with no verdict.

As rliable (Agarwal et al., NeurIPS 2021) reports it for a handful of runs: the chance that a run
of a beats a run of b, a tie counting one half. A paired claim counts over its seed pairs (each
run of a against the run of b of its own seed); a Welch claim over all pairs of runs (the
Mann-Whitney U / (n_a n_b)). Its interval is a percentile bootstrap with a fixed RNG seed, so a
report regenerates exactly: the pairs resampled for a paired claim, each arm's runs resampled on
their own for Welch. With 3 seeds the estimate can take only a few values and the interval is coarse;
when every pair falls on one side, every resample does too and the interval has no width, which is
no certainty: it is then flagged, not shown as an interval.
"""

from centerexp.analysis.stats import CONFIDENCE

RESAMPLES = 2000
RNG_SEED = 0


def probability_of_improvement(
    a: list[float],
    b: list[float],
    paired: bool,
    direction: str = "higher",
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = RNG_SEED,
) -> dict | None:
    """P(a better than b) with its bootstrap interval; ``a`` and ``b`` are the values the claim's test
    used (aligned by seed when ``paired``). None when either is empty."""
    import numpy as np

    xs, ys = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not len(xs) or not len(ys):
        return None
    sign = 1.0 if direction == "higher" else -1.0

    def chance(x, y):  # over the last axis (paired) or the last two (all pairs)
        d = sign * (x - y) if paired else sign * (x[..., :, None] - y[..., None, :])
        wins = (d > 0) + 0.5 * (d == 0)
        return wins.mean(axis=-1) if paired else wins.mean(axis=(-2, -1))

    rng = np.random.default_rng(seed)
    if paired:
        picks = rng.integers(0, len(xs), (resamples, len(xs)))
        boot = chance(xs[picks], ys[picks])
    else:
        boot = chance(
            xs[rng.integers(0, len(xs), (resamples, len(xs)))], ys[rng.integers(0, len(ys), (resamples, len(ys)))]
        )
    low, high = np.quantile(boot, [(1 - confidence) / 2, (1 + confidence) / 2])
    result = {
        "estimate": float(chance(xs, ys)),
        "ci_low": float(low),
        "ci_high": float(high),
        "over": "seed pairs" if paired else "all pairs of runs",
        "bootstrap": f"percentile, {resamples} resamples, numpy default_rng({seed})",
    }
    if boot.min() == boot.max():  # complete separation: every resample is the same, as in the sample
        result["note"] = (
            "every resample gives the same value: the bootstrap cannot show this uncertainty, which is not 0"
        )
    return result
