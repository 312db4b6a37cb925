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

Runs that failed (diverged, NaN) are shown and counted, never used; unfinished ones are left out.
A claim whose arms trained with different arithmetic (precision, device type, torch version) is
not judged: its verdict is ``not comparable``.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from centerexp.analysis.metrics import METRICS, claim_value
from centerexp.analysis.runs import Run
from centerexp.analysis.stats import (
    CONFIDENCE,
    INSUFFICIENT,
    NOT_COMPARABLE,
    TestResult,
    finite,
    paired_test,
    verdict_from_ci,
    welch_test,
)
from centerexp.rundir import status

DESIGNS = ("paired", "welch")


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

    @property
    def direction(self) -> str:
        return METRICS[self.metric].direction

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
    no_value: set[int] = field(default_factory=set)  # completed runs without this metric (an older format)


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
    arm.values, arm.failures, arm.no_value = {}, {}, set()
    for seed, run in arm.runs.items():
        if run.outcome == status.FAILED:
            arm.values[seed] = math.nan
            arm.failures[seed] = run.summary.get("error") or "non-finite values"
        elif run.outcome == status.COMPLETED:
            value = claim_value(claim.metric, run, dict(claim.params))
            arm.values[seed] = value if finite(value) else None
            if not finite(value):
                arm.no_value.add(seed)
        else:
            arm.values[seed] = None
    return arm


@dataclass
class ClaimResult:
    claim: ClaimSpec
    result: TestResult
    a: Arm
    b: Arm
    design_used: str  # paired | welch: welch when the pairs did not share their start

    def to_json(self) -> dict:
        """claims.json's entry for the claim; None where there is no number (JSON has no NaN)."""
        c, r = self.claim, self.result

        def num(x: float) -> float | None:
            return float(x) if finite(x) else None

        head = {"id": c.id, "says": c.says, "better": c.better, "than": c.than, "verdict": r.verdict}
        metric = {"metric": c.metric, "params": dict(c.params), "direction": c.direction, "margin": c.margin}
        design = {"design": c.design, "design_used": self.design_used, "test": r.test, "confidence": CONFIDENCE}
        interval = {k: num(getattr(r, k)) for k in ("diff", "ci_low", "ci_high")}
        counts = {k: getattr(r, k) for k in ("n_a", "n_b", "failed_a", "failed_b")}
        more = {k: num(getattr(r, k)) for k in ("df", "p_value", "mean_a", "mean_b")}
        return {**head, **metric, **design, **interval, **counts, **more, "notes": r.notes}


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


def judge(claim: ClaimSpec, arms: dict[str, Arm]) -> ClaimResult:
    """The claim's test on its metric for its two arms."""
    # each claim gets its own copy of the arms: two claims on one arm must not share their values
    a, b = _values(replace(arms[claim.better]), claim), _values(replace(arms[claim.than]), claim)
    seeds = sorted(set(a.values) | set(b.values))
    design, note = "welch", None
    if claim.design == "paired":
        shared, note = _pairing(a, b, seeds)
        design = "paired" if shared else "welch"
    if design == "paired":
        result = paired_test([a.values.get(s) for s in seeds], [b.values.get(s) for s in seeds])
        unpaired = [s for s in seeds if (a.values.get(s) is None) != (b.values.get(s) is None)]
        if unpaired:
            result.notes.append(
                f"seed(s) {', '.join(map(str, unpaired))} have a finished run in only one arm: not paired, left out."
            )
    else:
        result = welch_test(list(a.values.values()), list(b.values.values()))
    if note:
        result.notes.insert(0, note)
    if result.verdict != INSUFFICIENT:
        result.verdict = verdict_from_ci(result.ci_low, result.ci_high, claim.direction, claim.margin)
    mismatch = _comparable(a, b)
    if mismatch:
        result.verdict = NOT_COMPARABLE
        result.notes.insert(0, mismatch)
    for arm in (a, b):
        unfinished = sorted(s for s, v in arm.values.items() if v is None and s not in arm.no_value)
        if unfinished:
            result.notes.append(
                f"{arm.label}: seed(s) {', '.join(map(str, unfinished))} not finished (running or interrupted): "
                "left out, not counted as failed."
            )
        if arm.no_value:
            result.notes.append(
                f"{arm.label}: seed(s) {', '.join(map(str, sorted(arm.no_value)))} completed without a value of "
                f"{claim.metric_text()} (a run format that does not record it): left out."
            )
    return ClaimResult(claim, result, a, b, design)
