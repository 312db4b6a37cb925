"""Claims about runs, judged with a confidence interval over seeds.

A claim says that arm ``better`` beats arm ``than`` on a run-level metric (analysis.metrics), or
with a ``margin`` that it is not worse by more than the margin. Its design says how seeds are
used:

* ``paired``: the two arms' runs of one seed share their starting point (initial weights and
  centers, data and batch order; only what the arms change differs), so the per-seed difference
  is the unit: paired t, df = n - 1. This is checked, not assumed: each run records a fingerprint
  of its start (run.json), and when a pair's fingerprints differ the claim is analysed with
  Welch's t instead, and the report says so.
* ``welch``: the seeds pair nothing that matters (e.g. two architectures draw different initial
  weights from one seed): Welch's t, unequal variances.

Runs that failed (diverged, NaN, or with no defined value, such as the compactness of collapsed
features) are shown and counted, not used in the interval, and the verdict must survive counting
them as the worst value any run of the claim reached, or it is ``inconclusive``. Unfinished runs are
left out. A claim whose arms trained with different arithmetic (precision, device type, torch
version), or for different steps or evaluation steps, is not judged: its verdict is ``not comparable``.
With ``adjust: holm`` the experiment's claims are decided together, by Holm's adjusted p.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from centerexp.analysis import survival
from centerexp.analysis.improvement import probability_of_improvement
from centerexp.analysis.metrics import METRICS, claim_value
from centerexp.analysis.power import what_would_decide
from centerexp.analysis.runs import Run
from centerexp.analysis.stats import (
    ALPHA,
    CONFIDENCE,
    CONTRADICTED,
    INCONCLUSIVE,
    INSUFFICIENT,
    NOT_COMPARABLE,
    SUPPORTED,
    TestResult,
    failures_as_worst,
    finite,
    holm,
    p_against,
    paired_test,
    verdict_from_ci,
    welch_test,
)
from centerexp.rundir import status

DESIGNS = ("paired", "welch")
ADJUSTMENTS = ("none", "holm")  # across an experiment's claims


@dataclass(frozen=True)
class ClaimSpec:
    id: str
    says: str  # the sentence the claim tests
    better: str  # the arm claimed better
    than: str  # the arm it beats
    metric: str  # a key of analysis.metrics.METRICS
    design: str = "paired"  # paired | welch
    params: tuple[tuple[str, float], ...] = ()  # the metric's parameters, e.g. (("at", 0.5),)
    margin: float = 0.0  # > 0: a non-inferiority claim (not worse by more than this)
    why: str = ""  # why this design, in the experiment's words
    adjust: str = "none"  # the experiment file's adjustment across its claims (the same on each of them)

    @property
    def direction(self) -> str:
        return METRICS[self.metric].direction

    @property
    def null(self) -> float:
        """The a - b the test is against: 0, or for a non-inferiority claim the margin on the worse side."""
        if not self.margin:
            return 0.0
        return -self.margin if self.direction == "higher" else self.margin

    def metric_text(self) -> str:
        params = ", ".join(f"{k} {v:g}" for k, v in self.params)
        return self.metric + (f" ({params})" if params else "")


@dataclass
class Arm:
    """One arm as the claims see it: per seed, its run (the first one given) and the claim's value."""

    name: str
    label: str
    runs: dict[int, Run] = field(default_factory=dict)
    values: dict[int, float | None] = field(default_factory=dict)  # NaN: failed; None: not finished
    failures: dict[int, str] = field(default_factory=dict)  # seed -> error of a failed run
    no_value: dict[int, str] = field(default_factory=dict)  # seed -> why a completed run has no value: left out

    def unfinished_note(self) -> str | None:
        """The note on this arm's seeds without a finished run (left out, not failed); None if none."""
        unfinished = sorted(s for s, v in self.values.items() if v is None and s not in self.no_value)
        if not unfinished:
            return None
        return (
            f"{self.label}: seed(s) {', '.join(map(str, unfinished))} not finished (running or interrupted): "
            "left out, not counted as failed."
        )


def arms_from_runs(runs: list[Run], arm_of: Callable[[Run], str | None], labels: dict[str, str], warn) -> dict:
    """Arm name -> Arm with its runs by seed; a seed given twice keeps the first run (with a warning)."""
    arms = {name: Arm(name, label) for name, label in labels.items()}
    for run in runs:
        name = arm_of(run)
        if name not in arms:
            continue
        arm, seed = arms[name], run.config.get("train.seed")
        if seed in arm.runs:
            warn(f"{arm.label}: {run.name} repeats seed {seed} of {arm.runs[seed].name}; only the first is used")
            continue
        arm.runs[seed] = run
    return arms


def _values(arm: Arm, claim: ClaimSpec) -> Arm:
    arm.values, arm.failures, arm.no_value = {}, {}, {}
    for seed, run in arm.runs.items():
        if run.outcome == status.FAILED:
            arm.values[seed] = math.nan
            arm.failures[seed] = run.summary.get("error") or "non-finite values"
        elif run.outcome == status.COMPLETED:
            value = claim_value(claim.metric, run, dict(claim.params))
            arm.values[seed] = value
            if not finite(value):
                reason, failed = _why_no_value(claim, run)
                if failed:  # measured, but undefined: the worst outcome, never silently dropped
                    arm.failures[seed] = reason
                else:
                    arm.values[seed], arm.no_value[seed] = None, reason
        else:
            arm.values[seed] = None
    return arm


def _why_no_value(claim: ClaimSpec, run: Run) -> tuple[str, bool]:
    """(why a completed run has no value of the claim's metric, does it count as failed?). Left out:
    a point before the first evaluation, a column the run's format lacks. Failed: compactness of test
    features that collapsed (class means coincide, inter-class distance 0, so intra/inter is NaN)."""
    steps, at = run.steps, dict(claim.params).get("at")
    if at is not None and steps and finite(steps[0]) and at * steps[-1] < steps[0]:
        where = (
            f"at {at:.0%} of training (step {at * steps[-1]:g}), before the run's first evaluation (step {steps[0]:g})"
        )
        return f"{where}: nothing was measured there", False
    if at is not None and claim.metric == "compactness":
        inter = run.column("inter_class")
        i = next((k for k, s in enumerate(steps) if finite(s) and s >= at * steps[-1]), len(steps) - 1)
        if any(inter[k] == 0 for k in {max(i - 1, 0), i}):  # an evaluation next to the point
            return "test features collapsed (class means coincide): intra/inter undefined", True
    return "a run format that does not record it", False


@dataclass
class ClaimResult:
    claim: ClaimSpec
    result: TestResult
    a: Arm
    b: Arm
    design_used: str  # paired | welch: welch when the pairs did not share their start
    p_null: float = math.nan  # two-sided p against a - b = claim.null: the verdict is decided iff < 0.05
    p_margin: float = math.nan  # non-inferiority: one-sided p against the margin (supported needs < 0.025)
    p_adjusted: float = math.nan  # Holm's, with adjust: holm
    claims_judged: int = 1  # in the experiment, together
    failures_as_worst: dict | None = None  # the verdict with failed runs counted as the worst value
    decide: dict | None = None  # inconclusive: what would decide it (analysis.power)
    improvement: dict | None = None  # P(a better than b) with its bootstrap interval (no verdict)
    sequential: object | None = None  # analysis.sequential.SequentialHistory, when seeds run until decided

    def to_json(self) -> dict:
        """claims.json's entry for the claim; None where there is no number (JSON has no NaN)."""
        c, r = self.claim, self.result

        num = _num
        head = {"id": c.id, "says": c.says, "better": c.better, "than": c.than, "verdict": r.verdict}
        metric = {"metric": c.metric, "params": dict(c.params), "direction": c.direction, "margin": c.margin}
        design = {"design": c.design, "design_used": self.design_used, "test": r.test, "confidence": CONFIDENCE}
        interval = {k: num(getattr(r, k)) for k in ("diff", "ci_low", "ci_high")}
        counts = {k: getattr(r, k) for k in ("n_a", "n_b", "failed_a", "failed_b")}
        more = {k: num(getattr(r, k)) for k in ("df", "p_value", "mean_a", "mean_b")}
        family = {"p_margin": num(self.p_margin), "adjust": c.adjust, "p_adjusted": num(self.p_adjusted)}
        extra = {
            "claims_judged": self.claims_judged,
            "failures_as_worst": self.failures_as_worst,
            "what_would_decide": self.decide,
            "prob_improvement": self.improvement,
        }
        if self.sequential is not None:
            extra["sequential"] = self.sequential.to_json()
        return {**head, **metric, **design, **interval, **counts, **more, **family, **extra, "notes": r.notes}


def _pairing(a: Arm, b: Arm, seeds: list[int]) -> tuple[bool, str | None]:
    """(do the pairs share their start?, a note) from the runs' fingerprints (run.json)."""
    differ, unknown = [], []
    for s in seeds:
        if s not in a.runs or s not in b.runs:
            continue
        fa, fb = a.runs[s].identity.get("fingerprint"), b.runs[s].identity.get("fingerprint")
        if not fa or not fb:
            unknown.append(s)
        elif fa != fb:
            differ.append(s)
    if differ:
        return False, (
            f"the runs of seed(s) {', '.join(map(str, differ))} do not share their starting point (their "
            "fingerprints of initial weights, centers and data order differ), so pairing by seed is not "
            "justified: analysed with Welch's t instead of the declared paired design."
        )
    if unknown:
        return True, f"pairing not verified for seed(s) {', '.join(map(str, unknown))}: runs without a fingerprint."
    return True, None


def _comparable(a: Arm, b: Arm) -> str | None:
    """Why the arms' numbers cannot be compared (different arithmetic), or None."""
    kinds = {k for arm in (a, b) for run in arm.runs.values() for k in run.arithmetic()}
    if len(kinds) <= 1:
        return None
    shown = "; ".join(f"precision {p}, device {d}, torch {t}" for p, d, t in sorted(kinds, key=str))
    return (
        f"the arms' runs trained with different arithmetic ({shown}): a difference between them would "
        "mix the claim with the arithmetic, so the claim is not judged. Train all arms of an experiment "
        "with one precision (its profile decides it once) on one kind of device and torch version."
    )


def _same_steps(a: Arm, b: Arm) -> str | None:
    """Why the arms' completed runs cannot be compared step for step, or None. A metric over training
    (its area, its value at a fraction or at the end, the step it reached a threshold) means something
    else after other steps or on another evaluation grid: the same accuracy curve stopped at 60 and at
    90 steps, or read every 20 steps and only at the end, gives another number."""
    grids: dict[tuple, dict[str, list[int]]] = {}
    for arm in (a, b):
        for seed, run in sorted(arm.runs.items()):
            if run.outcome == status.COMPLETED:
                grids.setdefault(tuple(run.steps), {}).setdefault(arm.label, []).append(seed)
    if len(grids) <= 1:
        return None
    ends = {grid[-1] for grid in grids if grid}
    what = "trained different numbers of steps" if len(ends) > 1 else "were evaluated at different steps"
    shown = "; ".join(
        f"{_grid_text(grid)}: " + ", ".join(f"{label} seed(s) {', '.join(map(str, s))}" for label, s in who.items())
        for grid, who in grids.items()
    )
    return (
        f"the arms' runs {what} ({shown}): their values of a metric over training would not measure the "
        "same thing, so the claim is not judged. Train and evaluate every arm for the same steps."
    )


def _grid_text(grid: tuple) -> str:
    if not grid:
        return "no evaluation"
    if len(grid) <= 4:
        return "evaluated at steps " + ", ".join(f"{s:g}" for s in grid)
    return f"{len(grid)} evaluations at steps {grid[0]:g}, {grid[1]:g}, ..., {grid[-1]:g}"


def _test(design: str, a: Arm, b: Arm, seeds: list[int], worst: float | None = None) -> TestResult:
    """The design's test on the arms' values by seed; ``worst``: counted for each failed run instead."""
    va, vb = [a.values.get(s) for s in seeds], [b.values.get(s) for s in seeds]
    if worst is not None:
        va, vb = failures_as_worst(va, worst), failures_as_worst(vb, worst)
    return paired_test(va, vb) if design == "paired" else welch_test(va, vb)  # Welch ignores the None


def _num(x: float) -> float | None:
    return float(x) if finite(x) else None


def _count_failures_as_worst(cr: ClaimResult, seeds: list[int]) -> None:
    """A failed run is an outcome too (a diverged run did not converge faster), so the verdict must not
    hang on leaving it out: the test again with each failed run at the worst value any run of the claim
    reached. A supported or contradicted verdict that changes with it becomes inconclusive."""
    r, c = cr.result, cr.claim
    done = [v for arm in (cr.a, cr.b) for v in arm.values.values() if finite(v)]
    if not (r.failed_a or r.failed_b) or not done:
        return
    worst = min(done) if c.direction == "higher" else max(done)
    again = _test(cr.design_used, cr.a, cr.b, seeds, worst)
    if again.verdict != INSUFFICIENT:
        again.verdict = verdict_from_ci(again.ci_low, again.ci_high, c.direction, c.margin)
    cr.failures_as_worst = {"worst": worst, "verdict": again.verdict}
    cr.failures_as_worst |= {k: _num(getattr(again, k)) for k in ("diff", "ci_low", "ci_high")}
    text = (
        f"Counting the {r.failed_a + r.failed_b} failed run(s) as the worst value any run of the claim reached "
        f"({worst:.4g}): {again.verdict}, {again.diff:+.4g}, CI [{again.ci_low:+.4g}, {again.ci_high:+.4g}]"
    )
    if r.verdict in (SUPPORTED, CONTRADICTED) and again.verdict != r.verdict:
        r.notes.append(f"{text}; without them {r.verdict}. The verdict depends on how failures count: inconclusive.")
        r.verdict = INCONCLUSIVE
    else:
        r.notes.append(f"{text}: the verdict stands.")


def _improvement(cr: ClaimResult, seeds: list[int]) -> dict | None:
    """P(a better than b) over the values the claim's test used."""
    a, b = cr.a.values, cr.b.values
    if cr.design_used == "paired":
        both = [s for s in seeds if finite(a.get(s)) and finite(b.get(s))]
        return probability_of_improvement([a[s] for s in both], [b[s] for s in both], True, cr.claim.direction)
    xs, ys = [v for v in a.values() if finite(v)], [v for v in b.values() if finite(v)]
    return probability_of_improvement(xs, ys, False, cr.claim.direction)


def _settle(cr: ClaimResult) -> None:
    """What would decide the claim, when it is inconclusive."""
    inconclusive = cr.result.verdict == INCONCLUSIVE
    cr.decide = what_would_decide(cr.result, cr.claim.null) if inconclusive else None


def judge(claim: ClaimSpec, arms: dict[str, Arm]) -> ClaimResult:
    """The claim's test on its metric for its two arms."""
    # each claim gets its own copy of the arms: two claims on one arm must not share their values
    a, b = _values(replace(arms[claim.better]), claim), _values(replace(arms[claim.than]), claim)
    seeds = sorted(set(a.values) | set(b.values))
    design, note = "welch", None
    if claim.design == "paired":
        shared, note = _pairing(a, b, seeds)
        design = "paired" if shared else "welch"
    if claim.metric == "steps_to":  # a censored time: survival methods, not a t interval (analysis.survival)
        mismatch = [m for m in (_comparable(a, b), _same_steps(a, b)) if m]
        result, improvement = survival.judge(claim, a, b, design, note, mismatch)
        return ClaimResult(claim, result, a, b, design, p_null=result.p_value, improvement=improvement)
    result = _test(design, a, b, seeds)
    if design == "paired":
        unpaired = [s for s in seeds if (a.values.get(s) is None) != (b.values.get(s) is None)]
        if unpaired:
            result.notes.append(
                f"seed(s) {', '.join(map(str, unpaired))} have a finished run in only one arm: not paired, left out."
            )
    if note:
        result.notes.insert(0, note)
    if result.verdict != INSUFFICIENT:
        result.verdict = verdict_from_ci(result.ci_low, result.ci_high, claim.direction, claim.margin)
    cr = ClaimResult(claim, result, a, b, design)
    _count_failures_as_worst(cr, seeds)
    mismatch = [m for m in (_comparable(a, b), _same_steps(a, b)) if m]
    if mismatch:
        result.verdict = NOT_COMPARABLE
        result.notes[:0] = mismatch
    for arm in (a, b):
        if unfinished := arm.unfinished_note():
            result.notes.append(unfinished)
        for reason in dict.fromkeys(arm.no_value.values()):
            left = ", ".join(str(s) for s in sorted(arm.no_value) if arm.no_value[s] == reason)
            result.notes.append(
                f"{arm.label}: seed(s) {left} completed without a value of {claim.metric_text()} ({reason}): left out."
            )
    cr.p_null = p_against(result, claim.null)
    if claim.margin:
        cr.p_margin = p_against(result, claim.null, "greater" if claim.direction == "higher" else "less")
    if result.verdict != NOT_COMPARABLE:
        cr.improvement = _improvement(cr, seeds)
    _settle(cr)
    return cr


def judge_all(claims: tuple[ClaimSpec, ...] | list[ClaimSpec], arms: dict[str, Arm]) -> list[ClaimResult]:
    """Every claim of an experiment. With ``adjust: holm`` a claim is decided only while Holm's adjusted
    p over all of them (each verdict's own p, against 0 or the margin) stays below 5 %; a claim that
    could not be tested counts in the family with p = 1. The intervals shown stay unadjusted."""
    results = [judge(claim, arms) for claim in claims]
    for cr in results:
        cr.claims_judged = len(results)
    if not claims or claims[0].adjust != "holm":
        return results
    untested = (INSUFFICIENT, NOT_COMPARABLE)
    for cr, p in zip(results, holm([math.nan if cr.result.verdict in untested else cr.p_null for cr in results])):
        cr.p_adjusted, r = p, cr.result
        if r.verdict in (SUPPORTED, CONTRADICTED) and not p < ALPHA:
            r.notes.append(
                f"Holm's adjustment over the experiment's {len(results)} claims: adjusted p = {p:.3g}, not below "
                f"{ALPHA:.2g}, so {r.verdict} before the adjustment and inconclusive after it."
            )
            r.verdict = INCONCLUSIVE
            _settle(cr)
    return results
