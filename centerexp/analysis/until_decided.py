"""Claims judged by the sequential design (analysis.sequential_design, .sequential) instead of at a fixed n.

``apply_design(results, design)`` replays each claim's group-sequential looks on its per-seed values
(the same values the fixed-n test used, in seed order) and makes the verdict at the stop the claim's
verdict. The fixed-n interval and p stay in the result for reference; the report and claims.json
add the design, the looks taken, the alpha spent and the stop. Claims the sequential t test does
not cover keep their fixed-n verdict with a note: time to a threshold (censored; exact rank tests),
and claims that are not comparable or lack the runs for any verdict.
"""

from centerexp.analysis.claims import ClaimResult
from centerexp.analysis.sequential import CONTINUE, SequentialHistory, history
from centerexp.analysis.sequential_design import SequentialDesign
from centerexp.analysis.stats import INCONCLUSIVE, INSUFFICIENT, NOT_COMPARABLE

NOT_SEQUENTIAL_METRICS = {"steps_to"}


def claim_history(cr: ClaimResult, design: SequentialDesign) -> SequentialHistory:
    seeds = sorted(set(cr.a.values) | set(cr.b.values))
    worst = (cr.failures_as_worst or {}).get("worst")
    return history(
        design,
        [cr.a.values.get(s) for s in seeds],
        [cr.b.values.get(s) for s in seeds],
        cr.design_used,
        cr.claim.direction,
        cr.claim.margin,
        worst,
    )


def apply_design(results: list[ClaimResult], design: SequentialDesign) -> None:
    """Give each claim its sequential verdict (in place); a claim still open says how far it got."""
    for cr in results:
        r = cr.result
        if cr.claim.metric in NOT_SEQUENTIAL_METRICS or r.verdict in (INSUFFICIENT, NOT_COMPARABLE):
            if cr.claim.metric in NOT_SEQUENTIAL_METRICS:
                r.notes.append(
                    "seeds until decided: this metric is judged at the seeds trained (exact tests), not sequentially."
                )
            continue
        cr.sequential = claim_history(cr, design)
        verdict = cr.sequential.verdict
        if verdict == CONTINUE:
            taken = cr.sequential.last.looks_taken
            r.notes.append(
                f"seeds until decided: not decided after {len(taken)} look(s) (n = {cr.sequential.last.n}); "
                f"the design looks up to {design.max_n} seeds per arm: reproduce --until-decided continues."
            )
            verdict = INCONCLUSIVE
        r.verdict = verdict


def all_decided(results: list[ClaimResult]) -> bool:
    """Whether training more seeds can change nothing: every claim stopped, or cannot be judged sequentially."""
    return all(cr.sequential is None or cr.sequential.done for cr in results)


def design_lines(cr: ClaimResult) -> list[str]:
    """The report's account of a sequentially judged claim."""
    h = cr.sequential
    if h is None:
        return []
    d, last = h.design, h.last
    looks = ", ".join(map(str, last.looks_taken)) or "none yet"
    stop = f"stopped at n = {h.stopped_at}" if h.done else f"open after n = {last.n}"
    bound = f"|t| = {abs(last.t):.3g} against the bound {last.t_bound:.3g}" if last.t == last.t else "no t statistic"
    return [
        f"Sequential design ({d.to_json()['spending']} alpha spending, overall alpha {d.alpha:g}, looks at "
        f"{d.min_n} to {d.max_n} seeds per arm): looks taken at n = {looks}; {stop} with {bound}, "
        f"alpha spent {last.alpha_spent:.3g}; verdict at the stop: **{h.verdict}**. The fixed-n interval above "
        "is shown for reference; the repeated interval of the design is "
        f"[{last.ci_low:+.4g}, {last.ci_high:+.4g}].",
        "",
    ]
