"""The statistics of claims on plain numbers: the metrics' definitions, censoring, each verdict,
failed runs, directions and margins, the pairing check and the arithmetic check.

Expected intervals are computed here from the textbook formulas with scipy.stats.t quantiles, not
through the functions under test (which call scipy's ttest_rel / ttest_ind).
"""

import math
import statistics
from pathlib import Path

import pytest
from scipy import stats

from centerexp.analysis import claims, report
from centerexp.analysis.claims import ClaimSpec
from centerexp.analysis.curves import accuracy_auc, steps_from_config, value_at_fraction
from centerexp.analysis.report import censored_cell
from centerexp.analysis.runs import Run
from centerexp.analysis.stats import (
    CONTRADICTED,
    INCONCLUSIVE,
    INSUFFICIENT,
    NOT_COMPARABLE,
    SUPPORTED,
    censored_median,
    paired_test,
    welch_test,
)
from centerexp.config import steps_per_epoch
from centerexp.experiments.reproduce import find_experiment
from centerexp.experiments.spec import load_experiment

NAN = math.nan


def paired_ci(a, b, confidence=0.95):
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    half = stats.t.ppf((1 + confidence) / 2, n - 1) * statistics.stdev(d) / math.sqrt(n)
    return statistics.fmean(d), statistics.fmean(d) - half, statistics.fmean(d) + half


def welch_ci(a, b, confidence=0.95):
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    diff = statistics.fmean(a) - statistics.fmean(b)
    half = stats.t.ppf((1 + confidence) / 2, df) * math.sqrt(va + vb)
    return diff, diff - half, diff + half, df


# --- the metric ----------------------------------------------------------------------------------


def test_steps_match_the_trainer_and_the_recipe():
    assert steps_per_epoch(60_000, 256) == 235  # 234 full batches + one of 96
    assert load_experiment(find_experiment("v1")).full_recipe == {"steps": 7_050, "batch_size": 256, "lamda": 1.0}
    assert steps_per_epoch(960, 64) == 15
    assert steps_per_epoch(257, 256) == 1  # a lone trailing sample is not a step (BatchNorm)
    assert steps_per_epoch(258, 256) == 2
    assert steps_from_config([1, 2], 960, 64) == [15, 30]
    assert steps_from_config([1], None, 256) == [235]


def test_auc_is_the_trapezoid_from_chance_over_steps():
    # (0, 0.1) -> (10, 0.5) -> (20, 0.7): area 10 * 0.3 + 10 * 0.6 = 9, over 20 steps
    assert accuracy_auc([10, 20], [0.5, 0.7]) == pytest.approx(0.45)
    assert accuracy_auc([10, 20], [1.0, 1.0]) == pytest.approx((10 * 0.55 + 10 * 1.0) / 20)
    # the same curve on a finer grid of evaluations gives the same area
    assert accuracy_auc([5, 10, 15, 20], [0.3, 0.5, 0.6, 0.7]) == pytest.approx(0.45)
    assert math.isnan(accuracy_auc([10, 20], [0.5, NAN]))  # a diverged run has no area
    assert math.isnan(accuracy_auc([], []))


def test_value_at_fraction_interpolates_and_is_missing_before_the_first_evaluation():
    steps, ce = [15, 30, 45, 60], [2.0, 1.0, 0.8, 0.5]
    assert value_at_fraction(steps, ce, 0.25) == 2.0  # step 15 exactly
    assert value_at_fraction(steps, ce, 0.5) == 1.0
    assert value_at_fraction(steps, ce, 0.625) == pytest.approx(0.9)
    assert value_at_fraction(steps, ce, 1.0) == 0.5
    assert math.isnan(value_at_fraction(steps, ce, 0.1))
    assert math.isnan(value_at_fraction(steps, [NAN] * 4, 0.5))  # a column the run's format lacks


def test_threshold_times_are_censored_not_dropped():
    assert censored_median([100, None, 200]) == (200, 2, 3, False)
    assert censored_median([100, None, None]) == (math.inf, 1, 3, True)  # beyond the horizon, none given
    assert censored_cell([100, None, 200], 540) == "200 (2/3 reached)"
    assert censored_cell([100, None, None], 540) == "> 540 (1/3 reached)"  # not "100 (1/3 reached)"
    assert censored_cell([None, None, None], 540) == "> 540 (0/3 reached)"
    assert censored_cell([120], 540) == "120"
    assert censored_cell([None], 540) == "> 540 (not reached)"


# --- the verdicts -----------------------------------------------------------------------------------


def test_clearly_separated_and_paired_is_supported_with_scipys_interval():
    a, b = [0.62, 0.55, 0.70], [0.58, 0.50, 0.67]  # every seed: a above b by 0.03-0.05
    r = paired_test(a, b)
    diff, low, high = paired_ci(a, b)
    assert r.verdict == SUPPORTED and r.test == "paired t"
    assert (r.diff, r.ci_low, r.ci_high) == pytest.approx((diff, low, high))
    assert (r.n_a, r.n_b, r.failed_a, r.failed_b, r.df) == (3, 3, 0, 0, 2)
    # the groups overlap, so unpaired the same numbers say nothing: pairing is what gives the power
    assert welch_test(a, b).verdict == INCONCLUSIVE


def test_overlapping_groups_are_inconclusive():
    a, b = [0.50, 0.56, 0.53, 0.49], [0.52, 0.51, 0.55, 0.50]
    assert paired_test(a, b).verdict == INCONCLUSIVE
    r = welch_test(a, b)
    assert r.verdict == INCONCLUSIVE and r.ci_low < 0 < r.ci_high


def test_unequal_variances_are_inconclusive_not_supported():
    a, b = [0.86, 0.90, 0.94], [0.850, 0.851, 0.852]  # the old "within spread" rule said supported
    r = welch_test(a, b)
    diff, low, high, df = welch_ci(a, b)
    assert r.verdict == INCONCLUSIVE and r.test == "Welch t"
    assert (r.diff, r.ci_low, r.ci_high, r.df) == pytest.approx((diff, low, high, df))
    assert r.p_value == pytest.approx(0.168, abs=0.001)
    assert paired_test(a, b).verdict == INCONCLUSIVE


def test_one_run_per_group_is_insufficient_evidence():
    for test in (paired_test, welch_test):
        r = test([0.9], [0.1])
        assert r.verdict == INSUFFICIENT
        assert r.diff == pytest.approx(0.8) and math.isnan(r.ci_low)
        assert any("at least 3" in n for n in r.notes)
    assert welch_test([0.9, 0.91], [0.1, 0.11, 0.12]).verdict == INSUFFICIENT


def test_opposite_direction_is_contradicted():
    a, b = [0.40, 0.45, 0.42], [0.50, 0.56, 0.51]
    assert paired_test(a, b).verdict == CONTRADICTED
    r = welch_test(a, b)
    assert r.verdict == CONTRADICTED and r.ci_high < 0


def test_a_failed_run_is_counted_and_leaves_too_few():
    a, b = [0.62, NAN, 0.70], [0.58, 0.50, 0.67]
    r = paired_test(a, b)
    assert r.verdict == INSUFFICIENT and (r.failed_a, r.failed_b, r.n_a, r.n_b) == (1, 0, 2, 2)
    assert any("failed" in n for n in r.notes)
    r = welch_test(a, b)
    assert r.verdict == INSUFFICIENT and (r.failed_a, r.n_a, r.n_b) == (1, 2, 3)


def test_a_failed_run_with_three_left_still_gets_a_verdict_and_says_so():
    a, b = [0.62, 0.55, NAN, 0.70], [0.58, 0.50, 0.60, 0.67]
    r = paired_test(a, b)
    diff, low, high = paired_ci([0.62, 0.55, 0.70], [0.58, 0.50, 0.67])
    assert r.verdict == SUPPORTED and (r.n_a, r.failed_a) == (3, 1)
    assert (r.diff, r.ci_low, r.ci_high) == pytest.approx((diff, low, high))
    assert any("1 run(s) of a" in n and "not used" in n for n in r.notes)


def test_unfinished_runs_are_left_out_without_counting_as_failed():
    r = paired_test([0.62, 0.55, 0.70, None], [0.58, 0.50, 0.67, 0.6])
    assert (r.n_a, r.failed_a, r.failed_b, r.verdict) == (3, 0, 0, SUPPORTED)


def test_identical_runs_have_no_interval_from_three_pairs():
    r = paired_test([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])  # no spread: the exact sign test, not a t interval
    assert (r.diff, r.p_value, r.verdict, r.test) == (0, 1, INCONCLUSIVE, "exact sign test")
    assert math.isnan(r.ci_low) and math.isnan(r.ci_high)


# --- V1 and the report's words --------------------------------------------------------------------


def run(seed: int, value: float | None, status="completed", fingerprint="same", precision="fp32") -> Run:
    """A completed run whose claim value (acc AUC) is ``value``; NaN: a failed run; None: unfinished."""
    failed = value is not None and math.isnan(value)
    state = "failed" if failed else status if value is not None else "running"
    r = Run(Path(f"r{seed}"), f"r{seed}", {"train.seed": seed}, {"status": state}, {"test_acc": [0.5]})
    r.identity = {"fingerprint": {"init": fingerprint, "data": "d"}} if fingerprint else {}
    r.env = [{"precision": precision, "device": "cpu", "torch": "2.14.1"}]
    r.figures = {"acc_auc": value}
    return r


def arms(a: dict, b: dict, b_runs: dict | None = None) -> dict:
    """Arms "a" and "b" from seed -> value; ``b_runs``: run() options for b's runs."""
    made = {}
    for name, values, options in (("a", a, {}), ("b", b, b_runs or {})):
        made[name] = claims.Arm(name, name.upper())
        for seed, v in values.items():
            made[name].runs[seed] = run(seed, v, **options)
    return made


CLAIM = ClaimSpec("1", "a beats b", "a", "b", "acc_auc", "paired")


def test_judge_pairs_by_seed_and_reports_unpaired_seeds():
    cr = claims.judge(CLAIM, arms({0: 0.62, 1: 0.55, 2: 0.70, 3: 0.9}, {0: 0.58, 1: 0.50, 2: 0.67, 3: None}))
    assert cr.result.n_a == 3 and cr.result.verdict == SUPPORTED and cr.design_used == "paired"
    assert any("seed(s) 3" in n for n in cr.result.notes)
    data = cr.to_json()
    keys = {"id", "says", "verdict", "metric", "direction", "margin", "design", "design_used", "test"}
    assert keys | {"diff", "ci_low", "ci_high", "n_a", "n_b", "failed_a", "failed_b"} <= set(data)


def test_pairs_that_do_not_share_their_start_are_analysed_as_welch():
    a, b = {0: 0.62, 1: 0.55, 2: 0.70}, {0: 0.58, 1: 0.50, 2: 0.67}
    cr = claims.judge(CLAIM, arms(a, b, {"fingerprint": "other"}))
    assert cr.design_used == "welch" and cr.result.test == "Welch t"
    diff, low, high, _ = welch_ci(list(a.values()), list(b.values()))
    assert cr.result.ci_low == pytest.approx(low) and cr.result.ci_high == pytest.approx(high)
    assert "do not share their starting point" in cr.result.notes[0]
    unverified = claims.judge(CLAIM, arms(a, b, {"fingerprint": None}))
    assert unverified.design_used == "paired" and "pairing not verified" in unverified.result.notes[0]


def test_arms_in_different_precisions_are_not_compared():
    cr = claims.judge(CLAIM, arms({0: 0.9, 1: 0.91, 2: 0.92}, {0: 0.5, 1: 0.5, 2: 0.51}, {"precision": "bf16"}))
    assert cr.result.verdict == NOT_COMPARABLE and "different arithmetic" in cr.result.notes[0]


def test_lower_is_better_and_a_margin_turn_the_verdict():
    lower = ClaimSpec("c", "a tighter", "a", "b", "final_test_ce", "paired")
    a, b = {0: 0.30, 1: 0.31, 2: 0.29}, {0: 0.50, 1: 0.52, 2: 0.49}
    made = arms(a, b)
    for arm in made.values():
        for r in arm.runs.values():
            r.figures = {"final_test_ce": r.figures["acc_auc"]}
    assert claims.judge(lower, made).result.verdict == SUPPORTED  # a - b < 0, and lower is better
    # non-inferiority: a is 0.5 points below b, the claim allows 1 point
    same = ClaimSpec("n", "a not worse", "a", "b", "acc_auc", "paired", margin=0.01)
    close = arms({0: 0.900, 1: 0.905, 2: 0.897}, {0: 0.905, 1: 0.909, 2: 0.903})
    result = claims.judge(same, close).result
    assert result.ci_high < 0 and result.ci_low > -0.01 and result.verdict == SUPPORTED
    assert claims.judge(ClaimSpec("s", "a better", "a", "b", "acc_auc", "paired"), close).result.verdict == CONTRADICTED


def test_coverage_says_which_steps_and_checks_the_lamda_scaling():
    recipe = {"steps": 7050, "batch_size": 256, "lamda": 1.0}
    quick = {"train.batch_size": 64, "loss.lamda": 0.25, "data.train_subset": 960}
    text = " ".join(report.coverage_markdown(90, quick, recipe))
    assert "1.3% of the full profile's 7,050" in text and "only the first 90 steps of training" in text
    assert "acts like" not in text
    text = " ".join(report.coverage_markdown(90, {**quick, "loss.lamda": 1.0}, recipe))
    assert "acts like lamda 4 at the full profile's batch 256" in text
    full = " ".join(report.coverage_markdown(7050, {"train.batch_size": 256, "loss.lamda": 1.0}, recipe))
    assert "100.0%" in full and "only the first" not in full


def test_thresholds_are_explained_by_the_accuracy_scale():
    assert report.threshold_rationale([0.325, 0.55]) == (
        "0.325 = chance + 25% of the way from chance to 1; 0.55 = chance + 50% of the way from chance to 1"
    )


def test_a_completed_run_without_the_metric_is_left_out_and_said_so():
    made = arms({0: 0.62, 1: 0.55, 2: 0.70, 3: 0.6}, {0: 0.58, 1: 0.50, 2: 0.67, 3: 0.5})
    made["a"].runs[3].figures = {"acc_auc": math.nan}  # completed, but its format lacks the metric
    cr = claims.judge(CLAIM, made)
    assert cr.result.n_a == 3 and cr.result.failed_a == 0
    assert any("seed(s) 3 completed without a value of acc_auc" in n for n in cr.result.notes)
    assert not any("not finished" in n for n in cr.result.notes)


def test_two_claims_on_the_same_arms_keep_their_own_values():
    made = arms({0: 0.62, 1: 0.55, 2: 0.70}, {0: 0.58, 1: 0.50, 2: 0.67})
    for arm in made.values():
        for r in arm.runs.values():
            r.figures["final_test_ce"] = 1.0 + r.figures["acc_auc"]
    auc = claims.judge(CLAIM, made)
    ce = claims.judge(ClaimSpec("2", "a lower ce", "a", "b", "final_test_ce", "paired"), made)
    assert auc.a.values == {0: 0.62, 1: 0.55, 2: 0.70}  # not overwritten by the second claim
    assert ce.a.values == {0: 1.62, 1: 1.55, 2: 1.70}
