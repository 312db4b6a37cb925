"""Seeds until decided, the design: a group-sequential t test's looks, alpha spending and boundaries.

A claim is judged after each round of seeds (one seed of every arm) from ``min_n`` seeds per arm
up to ``max_n``, and its seeds stop once it is decided (the looks: analysis.sequential). Looking
after every seed with the fixed-n 95 % t test would reject a true null far more often than 5 %
(about 17 % for the 8 looks at 3..10 seeds, see ``sequential.operating_characteristics``); here
each look gets only part of the error:

* **Spending.** Two-sided overall alpha (0.05) is spent over the information fraction
  t_k = n_k / max_n by the Lan-DeMets O'Brien-Fleming-type function
  alpha(t) = 2 - 2 Phi(z_{1-alpha/2} / sqrt(t)): almost nothing early, most of it at the end, so
  the last look's bound is close to the fixed design's and little power is lost.
* **Boundaries** are computed for the actual schedule of looks (min_n, min_n + 1, ..., max_n): the
  z bound c_k of look k makes P(|Z_j| < c_j for j < k, |Z_k| >= c_k) under the null equal that
  look's share alpha(t_k) - alpha(t_{k-1}), for the canonical joint distribution of the z
  statistics (corr(Z_j, Z_k) = sqrt(t_j / t_k)), by recursive numerical integration (Armitage,
  McPherson and Rowe 1969; Jennison and Turnbull 2000, ch. 19) on a Simpson grid.
* **From z to t.** Seeds are few and the spread is estimated, so the bounds must hold for t
  statistics. The standard small-sample approximation turns each look's z bound into its nominal
  two-sided p, 2 (1 - Phi(c_k)), and that into the t quantile at the look's degrees of freedom
  (Jennison and Turnbull 2000, sec. 3.8; ``calibration="z"``). At 3 to 20 seeds it is not good
  enough: its false-positive rate is 0.056 to 0.059 for a nominal 0.05 (the t statistics of
  successive looks share their variance estimates and are less correlated than the z's). So by
  default (``calibration="t"``) the nominal p's are computed for the exact null distribution of
  the one-sample t path instead (normal data; it does not depend on the variance): each look's
  bound is set so that the share of 2^20 simulated null paths (fixed seed) that cross it first
  reaches alpha(t_k). Both then convert the nominal p to a t bound at the look's own degrees of
  freedom (paired: n - 1; Welch: Welch-Satterthwaite, as at fixed n, whose own small excess at
  few seeds and very unequal spreads, 0.057 for one test at 3 + 3 seeds, carries over).
"""

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

from centerexp.analysis.stats import MIN_RUNS

SEQUENTIAL = "sequential"  # the design's name in claims.json
SPENDING = "Lan-DeMets O'Brien-Fleming"
ALPHA = 0.05
MAX_SEEDS = 100  # the boundaries' cost grows with the looks: beyond this many seeds, use a fixed design
CALIBRATIONS = ("t", "z")  # how a look's nominal p is found: exact t path (default), or from the z bound
CALIBRATION_PATHS = 2**20  # simulated null t paths: the spent alpha is within about 2e-4 (one SE)
CALIBRATION_SEED = 29  # fixed: the same design always gets the same boundaries
_MIN_CROSSINGS = 100  # fewer simulated crossings at a look: use the look's marginal t quantile instead
_ZMAX = 9.0  # the null density of Z beyond +-9 is below 1e-18: the grid stops there


def obf_spending(fraction: float, alpha: float = ALPHA) -> float:
    """Cumulative two-sided alpha spent at information fraction ``fraction`` in [0, 1]:
    2 - 2 Phi(z_{1-alpha/2} / sqrt(fraction)) (Lan and DeMets 1983), alpha at fraction >= 1."""
    from scipy.stats import norm

    if fraction <= 0:
        return 0.0
    if fraction >= 1:
        return alpha
    return float(2 * norm.sf(norm.isf(alpha / 2) / math.sqrt(fraction)))


def _simpson(half_width: float, h: float):
    """Grid points on [-half_width, half_width] with spacing at most h, and Simpson's weights."""
    import numpy as np

    m = 2 * max(1, math.ceil(half_width / h)) + 1  # odd: Simpson needs an even number of intervals
    x = np.linspace(-half_width, half_width, m)
    w = np.ones(m)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return x, w * (x[1] - x[0]) / 3


def _pdf(x):
    import numpy as np

    return np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


@functools.lru_cache(maxsize=64)
def z_boundaries(fractions: tuple[float, ...], alpha: float = ALPHA, fineness: float = 8.0) -> tuple[float, ...]:
    """Two-sided symmetric z bounds c_k for looks at increasing information fractions (the last 1),
    spending ``obf_spending`` exactly over this schedule, by recursive numerical integration.

    Under the null, Z_1 ~ N(0, 1) and Z_k | Z_{k-1} = u ~ N(r u, 1 - r^2), r = sqrt(t_{k-1} / t_k)
    (independent increments of the score). The density of Z_{k-1} on its continuation region
    (-c_{k-1}, c_{k-1}) is carried on a Simpson grid with spacing at most 0.05 and 1/``fineness``
    of the narrowest kernel's width s / r; c_k solves P(continue to k - 1, |Z_k| >= c_k) =
    alpha(t_k) - alpha(t_{k-1}). At the default fineness every bound is within 1e-6 of a 5 times
    finer grid's, and the tests check the probabilities against scipy's multivariate normal.
    """
    import numpy as np
    from scipy.optimize import brentq
    from scipy.special import ndtr
    from scipy.stats import norm

    if not fractions or any(b <= a for a, b in zip(fractions, fractions[1:])) or fractions[0] <= 0:
        raise ValueError(f"information fractions must increase from above 0: {fractions}")
    spent = [obf_spending(t, alpha) for t in fractions]
    widths = [math.sqrt(b / a - 1) for a, b in zip(fractions, fractions[1:])]  # s / r per transition
    h = min([0.05] + [wd / fineness for wd in widths])
    bounds = [float(norm.isf(spent[0] / 2))]  # the first look: the marginal normal quantile
    u, weights = _simpson(min(bounds[0], _ZMAX), h)
    wf = weights * _pdf(u)  # the continuation density of the previous look's Z, times the weights
    for k in range(1, len(fractions)):
        r = math.sqrt(fractions[k - 1] / fractions[k])
        s = math.sqrt(1 - r * r)

        def excess(c, r=r, s=s, u=u, wf=wf, share=spent[k] - spent[k - 1]):  # symmetric: twice the upper
            return float(2 * np.dot(wf, ndtr((r * u - c) / s))) - share

        bounds.append(float(brentq(excess, 0.0, 40.0, xtol=1e-12)))
        grid, weights = _simpson(min(bounds[-1], _ZMAX), h)
        wf = weights * (_pdf((grid[:, None] - r * u[None, :]) / s) @ wf / s)
        u = grid
    return tuple(bounds)


@functools.lru_cache(maxsize=64)
def t_nominal_p(
    looks: tuple[int, ...], alpha: float = ALPHA, paths: int = CALIBRATION_PATHS, seed: int = CALIBRATION_SEED
) -> tuple[float, ...]:
    """Two-sided nominal p per look for the one-sample t statistic T_n = sqrt(n) mean / sd, df n - 1,
    looking after ``looks`` observations (increasing, the last is max_n), so that the null
    probability of first crossing by look k is ``obf_spending(n_k / max_n)``.

    The null distribution of the path (T_n) does not depend on the mean's scale, so ``paths``
    paths of N(0, 1) observations (numpy's PCG64, ``seed``) represent it. At each look the bound is
    the |T| value that the not yet stopped paths exceed just often enough to bring the crossed share
    to floor(alpha(t_k) * paths) / paths; the estimate's standard error is at most
    sqrt(alpha (1 - alpha) / paths), 2.1e-4 at 2^20 paths. Where fewer than 100 paths would cross
    (the early looks of a long design, which spend almost nothing), and at the first look, the
    look takes the marginal t quantile of its share instead: exact for the first look,
    conservative after it.
    """
    import numpy as np
    from scipy.stats import t as student

    if len(looks) < 1 or looks[0] < 2 or any(b <= a for a, b in zip(looks, looks[1:])):
        raise ValueError(f"looks must increase from 2 observations: {looks}")
    rng = np.random.default_rng(seed)
    total = np.zeros(paths)
    squares = np.zeros(paths)
    alive = np.ones(paths, dtype=bool)
    have = crossed = 0
    nominal = []
    for n in looks:
        for _ in range(n - have):
            x = rng.standard_normal(paths)
            total += x
            squares += x * x
        have = n
        mean = total / n
        t_abs = np.abs(mean) / np.sqrt((squares - n * mean * mean) / (n - 1) / n)
        share = obf_spending(n / looks[-1], alpha) - crossed / paths  # what this look may still spend
        count = math.floor(share * paths)
        if n == looks[0] or count < _MIN_CROSSINGS:
            bound = float(student.isf(share / 2, n - 1)) if share > 0 else math.inf
        else:
            live = t_abs[alive]
            k = live.size - count  # the count largest lie above the bound
            part = np.partition(live, [k - 1, k])
            bound = float(0.5 * (part[k - 1] + part[k]))
        hit = alive & (t_abs > bound)
        crossed += int(hit.sum())
        alive &= ~hit
        nominal.append(float(2 * student.sf(bound, n - 1)))
    return tuple(nominal)


class Boundary(NamedTuple):
    """One look of a design: after ``n`` seeds per arm."""

    n: int
    alpha_spent: float  # cumulative two-sided alpha spent up to and including this look
    nominal_p: float  # two-sided: the look crosses when its t test's p is below this, at its df
    z_bound: float  # the normal-theory bound on |Z| (known variance); calibration "z": nominal_p = 2 (1 - Phi(z_bound))
    t_bound: float  # the bound on |t| at df n - 1 (the paired test with every pair usable)


@dataclass(frozen=True)
class SequentialDesign:
    """Looks after every round from ``min_n`` to ``max_n`` seeds per arm, two-sided ``alpha``;
    ``calibration``: "t" (the exact null distribution of the t path, default) or "z" (the z bounds'
    nominal p, the standard approximation, which lets the false-positive rate exceed alpha)."""

    max_n: int
    min_n: int = MIN_RUNS
    alpha: float = ALPHA
    calibration: str = "t"

    def __post_init__(self):
        if self.min_n < MIN_RUNS:
            raise ValueError(f"min_n is {self.min_n}: a verdict needs at least {MIN_RUNS} seeds per arm")
        if not self.min_n <= self.max_n <= MAX_SEEDS:
            raise ValueError(f"max_n is {self.max_n}: it must lie between min_n ({self.min_n}) and {MAX_SEEDS}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha is {self.alpha}: it must lie strictly between 0 and 1")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration is {self.calibration!r}: one of {', '.join(CALIBRATIONS)}")

    @property
    def looks(self) -> range:
        """The seeds per arm at which the claim is judged."""
        return range(self.min_n, self.max_n + 1)

    def boundaries(self) -> list[Boundary]:
        """Every look's cumulative alpha spent, nominal two-sided p, z bound and paired t bound."""
        return list(_boundaries(self))

    def boundary(self, n: int) -> Boundary:
        """The look after ``n`` seeds per arm (ValueError outside min_n..max_n)."""
        if n not in self.looks:
            raise ValueError(f"no look after {n} seeds: this design looks at {self.min_n}..{self.max_n}")
        return _boundaries(self)[n - self.min_n]

    def t_bound(self, n: int, df):
        """The bound on |t| at the look after ``n`` seeds for a t statistic with ``df`` degrees of
        freedom (a number or a numpy array): the t quantile of the look's nominal p."""
        from scipy.stats import t as student

        return student.isf(self.boundary(n).nominal_p / 2, df)

    def to_json(self) -> dict:
        return {
            "design": SEQUENTIAL,
            "spending": SPENDING,
            "alpha": self.alpha,
            "calibration": self.calibration,
            "min_seeds": self.min_n,
            "max_seeds": self.max_n,
            "planned_looks": list(self.looks),
        }


@functools.lru_cache(maxsize=64)
def _boundaries(design: SequentialDesign) -> tuple[Boundary, ...]:
    from scipy.stats import norm
    from scipy.stats import t as student

    fractions = tuple(n / design.max_n for n in design.looks)
    z = z_boundaries(fractions, design.alpha)
    if design.calibration == "t":
        nominal = t_nominal_p(tuple(design.looks), design.alpha)
    else:
        nominal = tuple(float(2 * norm.sf(c)) for c in z)
    return tuple(
        Boundary(n, obf_spending(t, design.alpha), p, c, float(student.isf(p / 2, n - 1)))
        for n, t, p, c in zip(design.looks, fractions, nominal, z)
    )
