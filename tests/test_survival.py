"""Time to a threshold as a censored time: the reproductions of issue 29 (item 3) on the product's own
claims.judge, the median of an even number of runs, unequal horizons, too few runs that reached the
threshold, and the figure of the share that reached it."""

import math
from pathlib import Path

import pytest

from centerexp.analysis import claims, report, survival
from centerexp.analysis.claims import ClaimSpec
from centerexp.analysis.compare import ClaimSet, Group, compare
from centerexp.analysis.runs import Run, run_figures
from centerexp.analysis.stats import (
    CONTRADICTED,
    INCONCLUSIVE,
    INSUFFICIENT,
    NOT_COMPARABLE,
    SUPPORTED,
    censored_median,
)

from .test_compare import STEPS, fake_run, quiet

T = 0.55
GRID_90 = range(15, 91, 15)  # the quick profile: 6 evaluations, 90 steps
SOONER = ClaimSpec("1", "a reaches 0.55 sooner", "a", "b", "steps_to", "paired", (("threshold", T),))
SOONER_WELCH = ClaimSpec("2", "a reaches 0.55 sooner", "a", "b", "steps_to", "welch", (("threshold", T),))


def run(seed: int, reach_at: float | None, grid=GRID_90, status="completed") -> Run:
    """A run evaluated at ``grid`` whose test accuracy first reaches T at ``reach_at`` (None: never)."""
    steps = list(grid)
    acc = [0.6 if reach_at is not None and s >= reach_at else 0.4 for s in steps]
    r = Run(Path(f"r{seed}"), f"r{seed}", {"train.seed": seed}, {"status": status}, {"step": steps, "test_acc": acc})
    r.identity = {"fingerprint": {"init": "same", "data": "d"}}
    r.env = [{"precision": "fp32", "device": "cpu", "torch": "2.14.1"}]
    r.figures = run_figures(r, [T])
    return r


def arms(a: list, b: list, grid_a=GRID_90, grid_b=GRID_90) -> dict:
    """Arms "a" and "b", seed i of each reaching T at a[i] / b[i] (None: never; "failed": diverged)."""
    made = {}
    for name, times, grid in (("a", a, grid_a), ("b", b, grid_b)):
        made[name] = claims.Arm(name, name.upper())
        for seed, t in enumerate(times):
            failed = t == "failed"
            made[name].runs[seed] = run(seed, None if failed else t, grid, "failed" if failed else "completed")
    return made


def test_an_arm_stopped_before_the_other_reached_is_not_comparable():
    # issue 29: a trains 60 steps and never reaches 0.55, b reaches it at step 75 in every seed. Counting a's
    # runs at their last step made "a reaches it sooner" supported; a was only stopped sooner.
    made = arms([None] * 5, [75] * 5, grid_a=range(15, 61, 15))
    for claim in (SOONER, SOONER_WELCH):
        cr = claims.judge(claim, made)
        assert cr.result.verdict == NOT_COMPARABLE and math.isnan(cr.result.diff), claim.design
        assert cr.a.values[0] == math.inf  # shown as "> 60 (not reached)", never as step 60
    # the survival judge on its own (claims.judge checks the steps of every claim first) says the same, and why
    result = survival.judge_times(SOONER, *(claims._values(made[k], SOONER) for k in "ab"), "paired")
    assert result.verdict == NOT_COMPARABLE and result.notes[0].startswith(
        "the runs were not all followed to the same step (A: step 60; B: step 90)"
    )


def test_equal_lengths_a_censored_run_gets_no_t_interval():
    # issue 29: 90 steps, 5 seeds, a reaches 0.55 at step 30 in 4 seeds and never in the fifth. The t interval
    # on "never = step 90" said supported, -27 [-47.4, -6.6]; continued to 300 steps the same curves gave +3.
    b = [60, 75, 60, 75, 75]
    cr = claims.judge(SOONER, arms([30, 30, 30, 30, None], b))
    r = cr.result
    assert r.test == survival.PAIRED_TEST and "t" not in r.test.split()
    assert r.verdict == INCONCLUSIVE and r.p_value == pytest.approx(0.375)  # 4 seeds a first, 1 b first
    assert r.diff == -45  # median 30 - median 75, not a mean of censored values
    assert cr.a.values[4] == math.inf and cr.a.values[0] == 30
    text = "\n".join(report._claim_details(cr, [T]))
    assert "| 4 | > 90 (not reached) | 75.0000 | censored |" in text
    assert "4 of 5 runs of A and 5 of 5 of B reached test accuracy 0.55 by step 90" in text
    assert "A 30 (95% CI 30 to beyond 90; 4/5 reached), B 75 (95% CI 60 to 75; 5/5 reached)" in text
    # the same curves followed to step 300, where the fifth run of a reaches it at 240: the order of the runs,
    # which is all the test uses, did not change, and neither does the verdict
    longer = claims.judge(SOONER, arms([30, 30, 30, 30, 240], b, range(15, 301, 15), range(15, 301, 15))).result
    assert (longer.verdict, longer.p_value, longer.diff) == (r.verdict, r.p_value, r.diff)
    welch = claims.judge(SOONER_WELCH, arms([30, 30, 30, 30, None], b)).result
    assert welch.test == survival.INDEPENDENT_TEST and welch.verdict == INCONCLUSIVE
    assert welch.p_value == pytest.approx(20 / 252)  # exact Mann-Whitney over the 252 ways to split 10 runs


def test_the_median_of_an_even_number_of_runs_is_bounded_between_a_time_and_the_horizon():
    assert censored_median([60, 75, None, None], 90) == (82.5, 2, 4, True)  # > 82.5, not > 90
    assert report.censored_cell([60, 75, None, None], 90) == "> 82.5 (2/4 reached)"
    assert report.censored_cell([60, None, None, None], 90) == "> 90 (1/4 reached)"
    assert report.censored_cell([60, 75, 80, None], 90) == "77.5 (3/4 reached)"
    assert censored_median([60, 75, math.inf, math.inf], 90) == (82.5, 2, 4, True)  # +inf: never, as None
    assert censored_median([60, None, 75]) == (75, 2, 3, False)
    assert censored_median([60, None, None]) == (math.inf, 1, 3, True)  # no horizon given: no bound
    # the Kaplan-Meier interval of that median (lifelines): from 60 to beyond the horizon
    assert survival.median_ci([60, 75, math.inf, math.inf], 90) == (60, math.inf)


def test_runs_that_all_stayed_below_the_threshold_are_insufficient_evidence():
    # issue 29: 8 runs all below the threshold reported "+0.0000, 95% CI [+0.0000, +0.0000]", inconclusive
    for claim in (SOONER, SOONER_WELCH):
        cr = claims.judge(claim, arms([None] * 4, [None] * 4))
        r = cr.result
        assert r.verdict == INSUFFICIENT and math.isnan(r.diff) and math.isnan(r.ci_low) and math.isnan(r.ci_high)
        assert any("0 of 4 runs of A and 0 of 4 of B reached test accuracy 0.55" in n for n in r.notes)
        assert "+0.0000" not in report.summary_line(cr)
    one = claims.judge(SOONER, arms([None, None, 45, None], [None] * 4)).result
    assert one.verdict == INSUFFICIENT and any("1 of 4 runs of A" in n and "too few" in n for n in one.notes)


def test_zero_spread_is_no_certainty_and_six_paired_seeds_can_decide():
    three = claims.judge(SOONER, arms([60] * 3, [75] * 3)).result  # the t test said CI [-15, -15], p = 0
    assert three.verdict == INCONCLUSIVE and three.p_value == pytest.approx(0.25)
    assert any("needs at least 6 untied seeds" in n for n in three.notes)
    six = claims.judge(SOONER, arms([60] * 6, [75] * 6)).result
    assert six.verdict == SUPPORTED and six.p_value == pytest.approx(2 / 64)
    assert claims.judge(SOONER, arms([75] * 6, [60] * 6)).result.verdict == CONTRADICTED
    # independent runs: 5 against 5, fully separated, is 2 of the 252 ways to split them
    welch = claims.judge(SOONER_WELCH, arms([30] * 5, [60] * 5))
    assert welch.result.verdict == SUPPORTED and welch.result.p_value == pytest.approx(2 / 252)
    assert welch.p_null == welch.result.p_value  # what Holm's adjustment reads
    assert welch.improvement["estimate"] == 1.0  # P(a reached first), a never-reached run last


def test_a_failed_run_counts_as_never_reaching_when_it_could_change_the_verdict():
    cr = claims.judge(SOONER_WELCH, arms([30] * 5 + ["failed"] * 2, [60] * 5))
    r = cr.result
    assert (r.n_a, r.failed_a) == (5, 2) and r.verdict == INCONCLUSIVE  # 5 of 5 first, but 2 diverged
    assert any("failed run(s) as never reaching it: inconclusive" in n for n in r.notes)
    assert claims.judge(SOONER_WELCH, arms([30] * 5, [60] * 4 + ["failed"])).result.verdict == SUPPORTED


def test_the_share_that_reached_each_threshold_is_drawn_per_arm(tmp_path):
    steps, share = survival.reached_share([30, None, 60], [90, 90, 90])  # 1 - Kaplan-Meier: here simply the share
    assert steps == [0, 30, 60, 90] and share == pytest.approx([0, 1 / 3, 2 / 3, 2 / 3])
    made = arms([30, 45, None], [60, None, None])
    groups = [Group({}, list(arm.runs.values()), arm.label) for arm in made.values()]
    path = tmp_path / survival.REACHED_FIGURE
    assert survival.plot_reached(groups, [0.325, T], path)
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert not survival.plot_reached(groups, [], tmp_path / "none.png")


def test_compare_marks_censored_seeds_and_shows_the_figure(tmp_path):
    a = [fake_run(tmp_path, f"a_s{s}", [0.6, 0.9], seed=s) for s in range(3)]  # reach 0.55 at the first evaluation
    b = [fake_run(tmp_path, f"b_s{s}", [0.4, acc], seed=s, distance="sqrt") for s, acc in enumerate([0.6, 0.5, 0.5])]
    claim = ClaimSpec("1", "squared reaches 0.55 sooner", "a", "b", "steps_to", "welch", (("threshold", T),))
    arm_of = {**{str(r): "a" for r in a}, **{str(r): "b" for r in b}}
    claim_set = ClaimSet("x", "x.yaml", "test", {"a": "A", "b": "B"}, (claim,), lambda r: arm_of[str(r.path)])
    compare([*a, *b], tmp_path / "out", thresholds=[T], echo=quiet, claim_set=claim_set)
    text = (tmp_path / "out" / "report.md").read_text()
    assert f"| 1 | {STEPS}.0000 | > {2 * STEPS} (not reached) |" in text
    assert f"| steps to test accuracy 0.55 (median) | {STEPS} (3/3 reached) | > {2 * STEPS} (1/3 reached) |" in text
    assert f"![{survival.REACHED_FIGURE}]({survival.REACHED_FIGURE})" in text
    assert (tmp_path / "out" / survival.REACHED_FIGURE).read_bytes()[:4] == b"\x89PNG"
