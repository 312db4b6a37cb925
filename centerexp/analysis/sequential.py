"""Seeds until decided: a group-sequential t test with Lan-DeMets O'Brien-Fleming-type alpha spending.

A claim is judged after each round of seeds (one seed of every arm) from ``min_n`` seeds per arm
up to ``max_n``, and its seeds stop once it is decided. Looking after every seed with the
fixed-n 95 % t test would reject a true null far more often than 5 % (about 17 % for the 8 looks
at 3..10 seeds, see ``operating_characteristics``); here each look gets only part of the error:

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
* **Verdicts** mirror ``stats.verdict_from_ci`` on the look's repeated confidence interval
  diff +- t_bound * se (Jennison and Turnbull ch. 9: valid whenever the experiment stops):
  ``supported`` / ``contradicted`` when it lies on one side of -margin (a bound was crossed),
  else ``continue`` before the last look and ``inconclusive`` at it. Once a claim crosses, its
  verdict is final: later seeds (trained for other claims) do not change it (``history``).

Values are aligned by seed in the order the rounds trained them, as in ``stats.paired_test``:
NaN or inf marks a failed run (counted, not used), None a seed without a finished run (left out).
A look counts the rounds (seeds per arm) for its information fraction, and the usable values for
its degrees of freedom; with fewer than MIN_RUNS usable values it cannot decide.
"""

import functools
import math
import statistics
from dataclasses import dataclass, field
from typing import NamedTuple

from centerexp.analysis.stats import (
    CONTRADICTED,
    INCONCLUSIVE,
    INSUFFICIENT,
    MIN_RUNS,
    SUPPORTED,
    failures_as_worst,
    finite,
    verdict_from_ci,
)

CONTINUE = "continue"  # not decided at this look, and it is not the last one: train another round
SEQUENTIAL = "sequential"  # the design's name in claims.json
SPENDING = "Lan-DeMets O'Brien-Fleming"
ALPHA = 0.05
MAX_SEEDS = 100  # the boundaries' cost grows with the looks: beyond this many seeds, use a fixed design
DESIGN_KINDS = ("paired", "welch")
CALIBRATIONS = ("t", "z")  # how a look's nominal p is found: exact t path (default), or from the z bound
CALIBRATION_PATHS = 2**20  # simulated null t paths: the spent alpha is within about 2e-4 (one SE)
CALIBRATION_SEED = 29  # fixed: the same design always gets the same boundaries
_MIN_CROSSINGS = 100  # fewer simulated crossings at a look: use the look's marginal t quantile instead
_TEST_NAMES = {"paired": "paired t", "welch": "Welch t"}
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


@dataclass
class SequentialLook:
    """The judgement of one claim at one look (after ``n`` seeds per arm)."""

    n: int  # seeds per arm (rounds) at this look: its information fraction is n / max_n
    verdict: str  # supported | contradicted | continue | inconclusive | insufficient evidence
    test: str  # "paired t" | "Welch t"
    t: float  # (improvement + margin) / se: positive favours the claim; NaN when it cannot be computed
    t_bound: float  # the look crosses when |t| > t_bound (inf: no bound at this df)
    df: float
    p_value: float  # two-sided p of t against the margin, at df (compare with nominal_p)
    nominal_p: float  # this look's threshold on p_value
    z_bound: float
    alpha_spent: float  # cumulative two-sided alpha spent up to and including this look
    diff: float  # mean(a) - mean(b) (paired: mean of the differences), over the values used
    ci_low: float  # the repeated confidence interval of a - b: diff -+ t_bound * se
    ci_high: float
    n_a: int  # values of a used (paired: the pairs)
    n_b: int
    failed_a: int
    failed_b: int
    looks_taken: list[int] = field(default_factory=list)  # seeds per arm at each look so far, this one last
    final: bool = False  # the design's last look (n == max_n)
    failures_as_worst: str | None = None  # the verdict with each failed run at ``worst`` (when asked, and any failed)
    notes: list[str] = field(default_factory=list)

    @property
    def decided(self) -> bool:
        """A bound was crossed: the claim is supported or contradicted and needs no more seeds."""
        return self.verdict in (SUPPORTED, CONTRADICTED)

    def to_json(self) -> dict:
        def num(x):
            return float(x) if finite(x) else None

        floats = ("t", "t_bound", "df", "p_value", "nominal_p", "z_bound", "alpha_spent", "diff", "ci_low", "ci_high")
        counts = ("n_a", "n_b", "failed_a", "failed_b")
        return {
            "n": self.n,
            "verdict": self.verdict,
            "test": self.test,
            **{k: num(getattr(self, k)) for k in floats},
            **{k: getattr(self, k) for k in counts},
            "looks_taken": list(self.looks_taken),
            "final": self.final,
            "failures_as_worst": self.failures_as_worst,
            "notes": list(self.notes),
        }


def _usable(values) -> tuple[list[float], int]:
    done = [float(v) for v in values if finite(v)]
    failed = sum(1 for v in values if v is not None and not finite(v))
    return done, failed


def _welch_df(va: float, vb: float, na: int, nb: int) -> float:
    return (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))


def look(
    design: SequentialDesign,
    a_values: list[float | None],
    b_values: list[float | None],
    design_kind: str = "paired",
    direction: str = "higher",
    margin: float = 0.0,
    worst: float | None = None,
) -> SequentialLook:
    """The look after ``n`` = len(a_values) seeds per arm (the rounds trained so far), on its own.

    ``a_values`` / ``b_values``: the claim's metric for arm a (claimed better) and b, one entry per
    seed in round order (paired: aligned by seed, equal lengths). ``direction``: which way is better
    for the metric; ``margin`` > 0 makes it a non-inferiority claim (a not worse than b by more than
    the margin), as in ``stats.verdict_from_ci``. ``worst``: when given and runs failed, the look is
    also taken with each failed run at this value (``stats.failures_as_worst``); a crossing that
    this changes does not count (the claim continues, or is inconclusive at the last look). Before
    ``min_n`` seeds there is no look: the verdict is ``continue``, nothing is spent. This judges one
    look only; ``history`` replays all of them and keeps the verdict of the first crossing.
    """
    from scipy.special import stdtr, stdtrit

    if design_kind not in DESIGN_KINDS:
        raise ValueError(f"design_kind is {design_kind!r}: one of {', '.join(DESIGN_KINDS)}")
    if direction not in ("higher", "lower"):
        raise ValueError(f"direction is {direction!r}: 'higher' or 'lower' (which way is better)")
    if design_kind == "paired" and len(a_values) != len(b_values):
        raise ValueError(
            f"{len(a_values)} values for a, {len(b_values)} for b; a paired look needs them aligned by seed"
        )
    n = max(len(a_values), len(b_values))
    if n > design.max_n:
        raise ValueError(f"{n} seeds per arm: this design stops at {design.max_n}")
    nan = math.nan
    failed_a, failed_b = _usable(a_values)[1], _usable(b_values)[1]
    floats = dict.fromkeys(("t", "t_bound", "df", "p_value", "nominal_p", "z_bound", "diff", "ci_low", "ci_high"), nan)
    result = SequentialLook(
        n, CONTINUE, _TEST_NAMES[design_kind], **floats, alpha_spent=0.0, n_a=0, n_b=0,
        failed_a=failed_a, failed_b=failed_b, final=n == design.max_n,
    )  # fmt: skip
    if n < design.min_n:
        result.notes.append(f"{n} seed(s) per arm: the first look is after {design.min_n}.")
        return result
    bound = design.boundary(n)
    result.looks_taken = list(range(design.min_n, n + 1))
    result.nominal_p, result.z_bound, result.alpha_spent = bound.nominal_p, bound.z_bound, bound.alpha_spent

    if design_kind == "paired":
        pairs = [(float(x), float(y)) for x, y in zip(a_values, b_values) if finite(x) and finite(y)]
        diffs = [x - y for x, y in pairs]
        result.n_a = result.n_b = len(diffs)
        enough = len(diffs) >= MIN_RUNS
        if enough:
            result.diff = statistics.fmean(diffs)
            spread = max(diffs) != min(diffs)
            se = statistics.stdev(diffs) / math.sqrt(len(diffs))
            result.df = len(diffs) - 1
    else:
        xs, ys = _usable(a_values)[0], _usable(b_values)[0]
        result.n_a, result.n_b = len(xs), len(ys)
        enough = len(xs) >= MIN_RUNS and len(ys) >= MIN_RUNS
        if enough:
            result.diff = statistics.fmean(xs) - statistics.fmean(ys)
            va, vb = statistics.variance(xs) / len(xs), statistics.variance(ys) / len(ys)
            spread = va + vb > 0
            se = math.sqrt(va + vb)
            result.df = _welch_df(va, vb, len(xs), len(ys)) if spread else nan

    if failed_a or failed_b:
        result.notes.append(
            f"{failed_a} run(s) of a and {failed_b} of b failed (diverged, stopped with an error, or no defined "
            "value): shown, not used."
        )
    if not enough:
        result.verdict = INSUFFICIENT if result.final else CONTINUE
        result.notes.append(
            f"{result.n_a} and {result.n_b} values usable; a verdict needs at least {MIN_RUNS} in each group."
        )
        return result
    if not spread:
        result.verdict = INCONCLUSIVE if result.final else CONTINUE
        result.notes.append(
            "the values have no spread at all (every difference equal, or both groups constant): a t "
            "statistic cannot measure the uncertainty, so this look cannot cross its bound (a fixed-n "
            "claim would get an exact sign or rank test instead; the sequential bounds are for t)."
        )
        return result

    sign = 1.0 if direction == "higher" else -1.0
    result.t = (sign * result.diff + margin) / se
    result.t_bound = -float(stdtrit(result.df, bound.nominal_p / 2))  # t.isf(nominal_p / 2, df), without its overhead
    result.p_value = float(2 * stdtr(result.df, -abs(result.t)))
    result.ci_low, result.ci_high = result.diff - result.t_bound * se, result.diff + result.t_bound * se
    verdict = verdict_from_ci(result.ci_low, result.ci_high, direction, margin)
    if worst is not None and (failed_a or failed_b):
        again = look(design, failures_as_worst(a_values, worst), failures_as_worst(b_values, worst), design_kind,
                     direction, margin)  # fmt: skip
        result.failures_as_worst = again.verdict
        if verdict in (SUPPORTED, CONTRADICTED) and again.verdict != verdict:
            result.notes.append(
                f"counting the failed run(s) as the worst value ({worst:.4g}), this look gives {again.verdict}: "
                "the verdict hangs on leaving them out, so the bound does not count as crossed."
            )
            verdict = INCONCLUSIVE
    if verdict == INCONCLUSIVE and not result.final:
        verdict = CONTINUE
    result.verdict = verdict
    return result


@dataclass
class SequentialHistory:
    """The looks of one claim up to its stop: the first crossing, else the latest look."""

    design: SequentialDesign
    looks: list[SequentialLook]

    @property
    def last(self) -> SequentialLook:
        return self.looks[-1]

    @property
    def verdict(self) -> str:
        return self.last.verdict

    @property
    def done(self) -> bool:
        """This claim needs no more seeds: a bound was crossed, or the last look was taken."""
        return self.verdict != CONTINUE

    @property
    def stopped_at(self) -> int | None:
        """Seeds per arm at the stop, None while the claim continues."""
        return self.last.n if self.done else None

    def to_json(self) -> dict:
        """claims.json's record of the sequential judgement (None where JSON has no number)."""
        last = self.last
        return {
            **self.design.to_json(),
            "verdict": last.verdict,
            "stopped_at": self.stopped_at,
            "looks_taken": list(last.looks_taken),
            "alpha_spent": last.alpha_spent,
            "history": [one.to_json() for one in self.looks],
        }


def history(
    design: SequentialDesign,
    a_values: list[float | None],
    b_values: list[float | None],
    design_kind: str = "paired",
    direction: str = "higher",
    margin: float = 0.0,
    worst: float | None = None,
) -> SequentialHistory:
    """Replay the looks after min_n, min_n + 1, ... seeds on the values so far (one per seed, in
    round order, as for ``look``) and stop at the first that crosses a bound: that verdict is final,
    whatever later seeds (trained for other claims) show. Before min_n seeds: one look with verdict
    ``continue``. Seeds beyond max_n are not used (a note says so). Arguments as for ``look``.
    """
    n = max(len(a_values), len(b_values))
    upto = min(n, design.max_n)
    looks: list[SequentialLook] = []
    for k in design.looks if upto >= design.min_n else [upto]:
        if k > upto:
            break
        looks.append(look(design, a_values[:k], b_values[:k], design_kind, direction, margin, worst))
        if looks[-1].decided:
            break
    last = looks[-1]
    if last.decided and last.n < n:
        last.notes.append(f"decided after {last.n} seeds per arm: the {n - last.n} later seed(s) do not change it.")
    elif n > design.max_n:
        last.notes.append(f"{n} seeds per arm: only the first {design.max_n} (the design's maximum) are used.")
    return SequentialHistory(design, looks)


@dataclass
class OperatingCharacteristics:
    """Simulated behaviour of a design on normal data (see ``operating_characteristics``)."""

    sims: int
    effect: float  # true improvement, in standard deviations (paired: of the differences; Welch: of arm a)
    decided: float  # share of experiments that crossed a bound (under the null: the false-positive rate)
    supported: float  # share that crossed on the claimed side (with effect > 0: the power)
    mean_n: float  # mean seeds per arm at the stop
    fixed_power: float  # share supported by one fixed-n t test at max_n (the same CI rule, 95 %)
    naive_decided: float  # share rejected by a plain 95 % t test at any look (no spending)


def t_paths(a, b, design_kind: str = "paired"):
    """(t, df): arrays of shape (sims, n) with the t statistic of a - b and its degrees of freedom
    after each seed 1..n, for numpy arrays ``a`` and ``b`` of shape (sims, n) (one experiment per
    row, one seed per column; paired: aligned by seed). NaN where a seed count has no t."""
    import numpy as np

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ns = np.arange(1, a.shape[1] + 1)

    def mean_var(x):  # running mean and variance (ddof 1) of each row
        m = np.cumsum(x, axis=1) / ns
        return m, (np.cumsum(x * x, axis=1) - ns * m * m) / (ns - 1)

    with np.errstate(divide="ignore", invalid="ignore"):
        if design_kind == "paired":
            mean, var = mean_var(a - b)
            t, df = mean / np.sqrt(var / ns), np.broadcast_to(ns - 1.0, a.shape)
        elif design_kind == "welch":
            (ma, va), (mb, vb) = mean_var(a), mean_var(b)
            va, vb = va / ns, vb / ns
            t = (ma - mb) / np.sqrt(va + vb)
            df = (va + vb) ** 2 / (va**2 / (ns - 1) + vb**2 / (ns - 1))
        else:
            raise ValueError(f"design_kind is {design_kind!r}: one of {', '.join(DESIGN_KINDS)}")
    return np.where(ns > 1, t, np.nan), np.where(ns > 1, df, np.nan)


def first_crossings(design: SequentialDesign, t, df):
    """The design's rule on whole arrays of experiments: ``t`` and ``df`` of shape (sims, >= max_n)
    from ``t_paths``. Returns (crossed, stop_n, stop_t): whether each experiment crossed a bound,
    the seeds per arm at its stop (max_n when it never crossed) and its t there."""
    import numpy as np
    from scipy.stats import t as student

    cols = [n - 1 for n in design.looks]
    tk, dfk = np.asarray(t)[:, cols], np.asarray(df)[:, cols]
    bounds = np.stack([student.isf(design.boundary(n).nominal_p / 2, dfk[:, i]) for i, n in enumerate(design.looks)], 1)
    cross = np.abs(tk) > bounds
    crossed = cross.any(axis=1)
    first = np.where(crossed, cross.argmax(axis=1), len(cols) - 1)
    return crossed, np.asarray(design.looks)[first], tk[np.arange(len(tk)), first]


def operating_characteristics(
    design: SequentialDesign,
    effect: float,
    design_kind: str = "paired",
    sims: int = 20000,
    seed: int = 0,
    sd_b: float = 1.0,
) -> OperatingCharacteristics:
    """Simulate ``sims`` experiments on normal data with a true improvement of ``effect`` standard
    deviations, looking after every seed as the design does (``first_crossings``, the rule of
    ``look`` on arrays). Paired: differences ~ N(effect, 1). Welch: a ~ N(effect, 1), b ~ N(0, sd_b).
    """
    import numpy as np
    from scipy.stats import t as student

    rng = np.random.default_rng(seed)
    shape = (sims, design.max_n)
    if design_kind == "paired":
        a, b = rng.normal(effect, 1.0, shape), np.zeros(shape)
    else:
        a, b = rng.normal(effect, 1.0, shape), rng.normal(0.0, sd_b, shape)
    t, df = t_paths(a, b, design_kind)
    crossed, stop_n, stop_t = first_crossings(design, t, df)
    cols = [n - 1 for n in design.looks]
    naive = (np.abs(t[:, cols]) > student.isf(0.025, df[:, cols])).any(axis=1)
    fixed = t[:, -1] > student.isf(0.025, df[:, -1])
    return OperatingCharacteristics(
        sims=sims,
        effect=effect,
        decided=float(crossed.mean()),
        supported=float((crossed & (stop_t > 0)).mean()),
        mean_n=float(stop_n.mean()),
        fixed_power=float(fixed.mean()),
        naive_decided=float(naive.mean()),
    )
