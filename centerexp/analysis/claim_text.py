"""The words of a claim's verdict: its numbers and p-values, its rule, the probability of
improvement, what would decide it, and how many claims were judged together.

Plain text from the numbers ``analysis.claims`` computed (report.py puts it into report.md);
nothing here changes a number.
"""

from centerexp.analysis.improvement import RESAMPLES
from centerexp.analysis.power import MAX_SEEDS, POWER
from centerexp.analysis.stats import ALPHA, CONFIDENCE, MIN_RUNS, finite
from centerexp.rundir.schema import MISSING


def number(x: float, digits: int = 4, sign: bool = False) -> str:
    """An effect, interval bound or mean: ``digits`` decimals, or 3 significant digits in scientific
    notation where the decimals would round it to 0 (a CI [-4.80e-06, +4.50e-05], not [-0.0000, +0.0000])."""
    if not finite(x):
        return MISSING
    if x and abs(x) < 10 ** (1 - digits):
        return f"{x:+.2e}" if sign else f"{x:.2e}"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def p_text(p: float) -> str:
    """A p-value to 3 significant digits: 0.0497 next to "supported" must not read "0.05"."""
    return f"{p:#.3g}" if finite(p) else MISSING


def rule(direction: str, margin: float = 0.0) -> str:
    """Where the whole interval of a - b must lie for the claim to be supported."""
    if direction == "higher":
        return f"above -{margin:g}" if margin else "above 0"
    return f"below +{margin:g}" if margin else "below 0"


def definitions() -> list[str]:
    """The report's definitions of the verdict rules, for its "What the numbers mean" section."""
    return [
        f"- **Verdicts** come from a {CONFIDENCE:.0%} confidence interval of (claimed better) - (other) on the "
        "claim's metric, paired t or Welch t: `supported` when the whole interval lies on the better side of 0 "
        "(for a claim with a margin m, 'not worse by more than m': above -m when higher is better, below +m when "
        "lower is better), `contradicted` when it lies wholly on the other side, `inconclusive` otherwise, "
        f"`insufficient evidence` when fewer than {MIN_RUNS} completed (for a paired claim: paired) runs remain "
        "in either arm, `not comparable` when the arms trained with different precision, device type or torch "
        "version, or for different steps or evaluation steps. Values with no spread at all get an exact sign "
        "test (pairs) or rank test (two groups) instead of a t interval, which would have zero width. Failed "
        "runs (diverged, stopped with an error, or without a defined value, such as collapsed features) are "
        "listed and counted, not used in the interval; counted instead as the worst value any run of the claim "
        "reached, they must leave the verdict unchanged, or it is `inconclusive`.",
        f"- **P(a better)**: the chance that a run of a beats a run of b (ties count one half), over the seed "
        f"pairs of a paired claim or all pairs of runs of a Welch claim, with a {CONFIDENCE:.0%} percentile "
        f"bootstrap interval ({RESAMPLES} resamples, a fixed RNG seed; 'no bootstrap spread' when every pair falls on "
        "one side, so that every resample does too: that is no certainty); a secondary, no verdict.",
        f"- **What would decide it** (inconclusive claims): with {POWER:.0%} power in the claim's own test (two-sided "
        "5%, noncentral t), the smallest true difference the current runs detect, and the seeds the observed "
        "difference would need; both take the observed spread as the truth, which few seeds estimate poorly.",
    ]


def family_lines(results: list) -> list[str]:
    """How many claims were judged together, and whether their verdicts were adjusted for it."""
    n = len(results)
    if not n:
        return []
    if results[0].claim.adjust == "holm":
        text = (
            f"{n} claims judged together, with Holm's adjustment: a claim is decided only when its Holm-adjusted p "
            f"is below {ALPHA:.2g} (the intervals shown are unadjusted)."
        )
    elif n == 1:
        text = "1 claim judged."
    else:
        text = (
            f"{n} claims judged, each on its own at {CONFIDENCE:.0%}: the chance that at least one verdict is "
            f"wrong by chance is up to {min(1.0, n * ALPHA):.0%}. `adjust: holm` in the experiment file adjusts for it."
        )
    return [text, ""]


def improvement_cell(improvement: dict | None) -> str:
    """P(a better than b) [its bootstrap interval], for the claims' table."""
    if not improvement:
        return MISSING
    if "note" in improvement:
        return f"{improvement['estimate']:.2f} (no bootstrap spread)"
    return f"{improvement['estimate']:.2f} [{improvement['ci_low']:.2f}, {improvement['ci_high']:.2f}]"


def p_sentences(cr) -> str:
    """After the claim's interval: its non-inferiority rule with the one-sided p against the margin,
    and the Holm-adjusted p when the experiment adjusts."""
    c, text = cr.claim, ""
    if c.margin:
        text += (
            f" The claim is non-inferiority: {cr.a.label} is not worse than {cr.b.label} by more than {c.margin:g}; "
            f"supported when the whole interval of a - b lies {rule(c.direction, c.margin)}. One-sided p against "
            f"the margin: {p_text(cr.p_margin)} (supported needs below {ALPHA / 2:.3g}, the interval's one side)."
        )
    if c.adjust == "holm":
        text += f" Holm-adjusted p over the {cr.claims_judged} claims: {p_text(cr.p_adjusted)}."
    return text


def decide_lines(cr) -> list[str]:
    """What would decide an inconclusive claim (analysis.power), as a paragraph."""
    d = cr.decide
    if not d:
        return []
    unit = "pairs" if d["per"] == "pair" else "seeds per arm"
    now = f"{cr.result.n_a} now" if d["per"] == "pair" else f"{cr.result.n_a} and {cr.result.n_b} now"
    if "detectable" not in d:
        return [
            f"**What would decide it**: the values have no spread, so the {d['method']} decides once "
            f"{d['seeds_needed']} {unit} fall all on one side ({now}).",
            "",
        ]

    def seeds(n: int | None) -> str:
        return f"{n:,}" if n else f"more than {MAX_SEEDS:,}"

    null = "0" if not d["null"] else f"the margin's {d['null']:+g}"
    diff = number(d["observed"] + d["null"], sign=True)
    away = f", {number(d['observed'], sign=True)} from {null}," if d["null"] else ""
    observed = (
        f"the observed {diff}{away} would take {seeds(d['seeds_needed'])} {unit} ({now})"
        if d["observed"]
        else f"the observed {diff} is exactly {null}, which no number of seeds tells apart from it"
    )
    low, high = d["spread_factor"]
    ends = d["seeds_needed_at_spread_ends"]
    spread = (
        f" The spread is itself uncertain: its {CONFIDENCE:.0%} interval runs from {low:.2g} to {high:.2g} times "
        f"the observed one, which would take {seeds(ends[0])} to {seeds(ends[1])} {unit}."
        if d["observed"]
        else ""
    )
    return [
        f"**What would decide it** ({POWER:.0%} power in the claim's own test, two-sided 5%, at the observed spread): "
        f"the current runs detect a true a - b at least {number(d['detectable'])} away from {null}; {observed}."
        f"{spread}",
        "",
    ]
