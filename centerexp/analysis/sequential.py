"""Seeds until decided, the looks: each claim judged by its design's boundaries after every round.

The design (looks from ``min_n`` to ``max_n`` seeds per arm, Lan-DeMets O'Brien-Fleming spending,
z boundaries by recursive integration, their t calibration) is analysis.sequential_design; this
module applies it to a claim's values (``look``, ``history``) and simulates its error rate and
power on normal data (``operating_characteristics``).

**Verdicts** mirror ``stats.verdict_from_ci`` on the look's repeated confidence interval
diff +- t_bound * se (Jennison and Turnbull ch. 9: valid whenever the experiment stops):
``supported`` / ``contradicted`` when it lies on one side of -margin (a bound was crossed),
else ``continue`` before the last look and ``inconclusive`` at it. Once a claim crosses, its
verdict is final: later seeds (trained for other claims) do not change it (``history``).

Values are aligned by seed in the order the rounds trained them, as in ``stats.paired_test``:
NaN or inf marks a failed run (counted, not used), None a seed without a finished run (left out).
A look counts the rounds (seeds per arm) for its information fraction, and the usable values for
its degrees of freedom; with fewer than MIN_RUNS usable values it cannot decide.
"""

import math
import statistics
from dataclasses import dataclass, field

from centerexp.analysis.sequential_design import SequentialDesign
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
DESIGN_KINDS = ("paired", "welch")
_TEST_NAMES = {"paired": "paired t", "welch": "Welch t"}


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
