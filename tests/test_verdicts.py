"""Verdicts that cannot be wrong, what would decide an inconclusive claim, and P(a better than b)
(issue 29, items 2, 4 and 6), each on the product's own functions (paired_test, welch_test, judge,
judge_all, the experiment loader, the report's words).

Expected numbers come from textbook formulas, scipy's own exact tests, or simulation with a fixed
RNG, not from the functions under test.
"""

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from centerexp.analysis import claim_text, claims, report
from centerexp.analysis.claims import ClaimSpec
from centerexp.analysis.improvement import probability_of_improvement
from centerexp.analysis.power import seeds_needed, what_would_decide
from centerexp.analysis.runs import Run, run_figures
from centerexp.analysis.stats import (
    CONTRADICTED,
    INCONCLUSIVE,
    NOT_COMPARABLE,
    SUPPORTED,
    holm,
    paired_test,
    welch_test,
)
from centerexp.errors import ConfigError
from centerexp.experiments.spec import load_experiment

from .conftest import REPO
from .test_claims import CLAIM, arms, run

NAN = math.nan


def curve_run(seed: int, steps: list, accs: list, **columns) -> Run:
    """A completed run with these evaluations (steps, test accuracy, other metrics.csv columns)."""
    metrics = {"step": list(steps), "test_acc": list(accs), "train_loss": [1.0] * len(steps), **columns}
    r = Run(Path(f"c{seed}"), f"c{seed}", {"train.seed": seed}, {"status": "completed"}, metrics)
    r.identity = {"fingerprint": {"init": "same", "data": "d"}}
    r.env = [{"precision": "fp32", "device": "cpu", "torch": "2.14.1"}]
    r.figures = run_figures(r, ())
    return r


def arms_of(runs: dict[str, list[Run]]) -> dict:
    made = {}
    for name, rs in runs.items():
        made[name] = claims.Arm(name, name.upper())
        for r in rs:
            made[name].runs[r.config["train.seed"]] = r
    return made


# --- item 4a: the arms must train the same steps, evaluated at the same steps ---------------------------


def rising(seed: int, steps: list) -> list:
    return [min(1.0, 0.1 + 0.008 * s + 0.01 * seed) for s in steps]


def test_arms_that_trained_different_steps_are_not_comparable():
    short, full = [15, 30, 45, 60], [15, 30, 45, 60, 75, 90]
    made = arms_of({"a": [curve_run(s, short, rising(s, short)) for s in range(3)],
                    "b": [curve_run(s, full, rising(s, full)) for s in range(3)]})  # fmt: skip
    cr = claims.judge(CLAIM, made)
    assert cr.result.verdict == NOT_COMPARABLE  # the same curve, stopped earlier: was "contradicted"
    assert "trained different numbers of steps" in cr.result.notes[0]
    assert "evaluated at steps 15, 30, 45, 60: A seed(s) 0, 1, 2" in cr.result.notes[0]
    assert cr.decide is None and cr.improvement is None
    same = arms_of({"a": [curve_run(s, full, rising(s, full)) for s in range(3)],
                    "b": [curve_run(s, full, rising(s, full)) for s in range(3)]})  # fmt: skip
    assert claims.judge(CLAIM, same).result.verdict != NOT_COMPARABLE


def test_arms_evaluated_at_different_steps_are_not_comparable():
    every20, once = [*range(20, 235, 20), 235], [235]
    made = arms_of({"a": [curve_run(s, every20, rising(s, every20)) for s in range(3)],
                    "b": [curve_run(s, once, rising(s, once)) for s in range(3)]})  # fmt: skip
    assert made["a"].runs[0].figures["acc_auc"] > made["b"].runs[0].figures["acc_auc"] + 0.1  # the grid alone
    cr = claims.judge(CLAIM, made)
    assert cr.result.verdict == NOT_COMPARABLE
    assert "were evaluated at different steps" in cr.result.notes[0] and "12 evaluations" in cr.result.notes[0]


# --- item 4b: zero spread is no certainty ---------------------------------------------------------


def test_identical_differences_get_the_exact_sign_test_not_p_0():
    r = paired_test([60, 60, 60], [75, 75, 75])
    assert r.test == "exact sign test" and r.p_value == pytest.approx(stats.binomtest(3, 3).pvalue)  # 0.25
    assert math.isnan(r.ci_low) and math.isnan(r.ci_high) and r.verdict == INCONCLUSIVE
    assert "no spread" in r.notes[0]
    six = paired_test([60] * 6, [75] * 6)  # 2 / 2^6 = 0.031: the interval [-15, -15] has confidence 96.9 %
    assert six.p_value == pytest.approx(stats.binomtest(6, 6).pvalue)
    assert (six.ci_low, six.ci_high) == (-15, -15)


def test_a_steps_like_claim_with_identical_differences_is_not_supported():
    sooner = ClaimSpec("s", "a reaches it sooner", "a", "b", "final_test_ce", "paired")  # lower is better
    made = arms({0: 60, 1: 60, 2: 60}, {0: 75, 1: 75, 2: 75})
    for arm in made.values():
        for r in arm.runs.values():
            r.figures = {"final_test_ce": r.figures["acc_auc"]}
    cr = claims.judge(sooner, made)
    assert cr.result.verdict == INCONCLUSIVE and cr.result.p_value == pytest.approx(0.25)
    assert cr.decide == {"method": "exact sign test", "seeds_needed": 6, "per": "pair"}
    assert "6 pairs fall all on one side (3 now)" in " ".join(claim_text.decide_lines(cr))


def test_two_constant_groups_get_the_exact_rank_test_and_no_made_up_df():
    r = welch_test([60, 60, 60], [75, 75, 75])
    assert r.test == "exact rank test" and math.isnan(r.df)  # was df = 4 for a 0/0
    assert r.p_value == pytest.approx(stats.mannwhitneyu([60] * 3, [75] * 3, method="exact").pvalue)  # 0.1
    assert r.verdict == INCONCLUSIVE and math.isnan(r.ci_low)
    four = welch_test([60] * 4, [75] * 4)  # 2 / C(8, 4) = 0.029
    assert four.p_value == pytest.approx(stats.mannwhitneyu([60] * 4, [75] * 4, method="exact").pvalue)
    assert (four.ci_low, four.ci_high, four.verdict) == (-15, -15, CONTRADICTED)
    one_constant = welch_test([60, 60, 60], [70, 75, 80])  # Welch's t is defined: one group varies
    assert one_constant.test == "Welch t" and math.isfinite(one_constant.df)


# --- item 4c: non-inferiority -------------------------------------------------------------------------


def test_non_inferiority_reports_the_one_sided_p_against_the_margin():
    a, b = [0.900, 0.905, 0.897], [0.905, 0.909, 0.903]  # a is 0.5 points below b; the claim allows 1
    same = ClaimSpec("n", "a not worse", "a", "b", "acc_auc", "paired", margin=0.01)
    cr = claims.judge(same, arms(dict(enumerate(a)), dict(enumerate(b))))
    d = [x - y for x, y in zip(a, b)]
    t = (statistics.fmean(d) + 0.01) / (statistics.stdev(d) / math.sqrt(3))
    assert cr.result.verdict == SUPPORTED
    assert cr.p_margin == pytest.approx(stats.t.sf(t, 2))  # one-sided, H0: a worse by 0.01 or more
    # not the two-sided p of a being worse at all (0.013 here), which the report used to show
    assert cr.p_margin < 0.01 and cr.result.p_value == pytest.approx(0.013, abs=1e-3)
    assert cr.to_json()["p_margin"] == pytest.approx(cr.p_margin)
    text = "\n".join(report._claim_details(cr, ()))
    assert f"One-sided p against the margin: {claim_text.p_text(cr.p_margin)}" in text
    assert "lies above -0.01" in text


def test_the_rule_for_a_lower_is_better_margin_is_below_plus_m():
    assert claim_text.rule("lower", 0.01) == "below +0.01" and claim_text.rule("higher", 0.01) == "above -0.01"
    ce = ClaimSpec("c", "a not worse in ce", "a", "b", "final_test_ce", "paired", margin=0.01)
    made = arms({0: 0.305, 1: 0.311, 2: 0.298}, {0: 0.300, 1: 0.305, 2: 0.296})  # a - b = +0.004
    for arm in made.values():
        for r in arm.runs.values():
            r.figures = {"final_test_ce": r.figures["acc_auc"]}
    cr = claims.judge(ce, made)
    assert 0 < cr.result.ci_high < 0.01 and cr.result.verdict == SUPPORTED
    assert "lies below +0.01" in "\n".join(report._claim_details(cr, ()))
    assert "below +m when lower is better" in " ".join(report.definitions_markdown(()))


# --- item 4d: a missing value gets its true reason --------------------------------------------------


STEPS = [15, 30, 45, 60, 75, 90]


def compact_run(seed: int, ratio: float, collapsed: bool = False) -> Run:
    ratios = [0.5 - 0.05 * i + ratio for i in range(len(STEPS))]
    inter = [4.0] * len(STEPS)
    if collapsed:
        ratios[-1], inter[-1] = NAN, 0.0  # class means coincide: intra/inter undefined
    return curve_run(seed, STEPS, [0.5] * len(STEPS), compactness_ratio=ratios, inter_class=inter)


def test_compactness_before_the_first_evaluation_says_so():
    early = ClaimSpec("e", "a tighter early", "a", "b", "compactness", "paired", (("at", 0.1),))
    made = arms_of({"a": [compact_run(s, 0.01 * s) for s in range(3)], "b": [compact_run(s, 0.1) for s in range(3)]})
    notes = " ".join(claims.judge(early, made).result.notes)
    assert "before the run's first evaluation (step 15)" in notes and "run format" not in notes


def test_collapsed_features_count_as_the_worst_and_can_block_the_verdict():
    tight = ClaimSpec("t", "a tighter", "a", "b", "compactness", "paired", (("at", 1.0),))
    a = [compact_run(s, 0.01 * s, collapsed=s == 3) for s in range(4)]
    b = [compact_run(s, 0.1 + 0.012 * s) for s in range(4)]
    cr = claims.judge(tight, arms_of({"a": a, "b": b}))
    assert (cr.result.n_a, cr.result.failed_a) == (3, 1)  # counted, not silently dropped
    assert "collapsed" in cr.a.failures[3]
    # without it a is tighter on every seed; as the worst value it is not: no verdict either way
    assert cr.failures_as_worst["verdict"] != SUPPORTED and cr.result.verdict == INCONCLUSIVE
    assert any("depends on how failures count" in n for n in cr.result.notes)
    assert "failed: test features collapsed" in "\n".join(report._claim_details(cr, ()))


# --- item 4e: failed runs -------------------------------------------------------------------------------


def test_a_verdict_that_hangs_on_leaving_out_a_diverged_run_is_inconclusive():
    a = {0: 0.62, 1: 0.55, 2: 0.70, 3: NAN}  # seed 3 of a diverged
    b = {0: 0.58, 1: 0.50, 2: 0.67, 3: 0.60}
    cr = claims.judge(CLAIM, arms(a, b))
    assert paired_test(list(a.values()), list(b.values())).verdict == SUPPORTED  # the failure left out
    worst = paired_test([0.62, 0.55, 0.70, 0.50], list(b.values()))  # at the worst value any run reached
    assert cr.failures_as_worst["worst"] == 0.50 and cr.failures_as_worst["verdict"] == worst.verdict != SUPPORTED
    assert cr.result.verdict == INCONCLUSIVE and cr.to_json()["failures_as_worst"]["verdict"] == worst.verdict


def test_a_verdict_that_survives_its_failures_stands():
    a = {0: 0.72, 1: 0.75, 2: 0.70, 3: 0.74, 4: NAN}
    b = {0: 0.50, 1: 0.52, 2: 0.49, 3: 0.51, 4: 0.50}  # the failure is counted at 0.49, below b at seed 4
    cr = claims.judge(CLAIM, arms(a, b))
    assert cr.result.verdict == SUPPORTED and cr.failures_as_worst["verdict"] == SUPPORTED
    assert any("the verdict stands" in n for n in cr.result.notes)


# --- item 4f: Holm's adjustment over an experiment's claims --------------------------------------------


def experiment_file(tmp_path, **top) -> Path:
    raw = yaml.safe_load((REPO / "configs/experiments/center_vs_softmax.yaml").read_text())
    for arm in raw["arms"]:
        arm["config"] = str(REPO / "configs" / "v1_0.yaml")
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump({**raw, **top}))
    return path


def test_adjust_is_an_optional_strict_key_of_the_experiment_file(tmp_path):
    assert {c.adjust for c in load_experiment(experiment_file(tmp_path)).claims} == {"none"}
    assert {c.adjust for c in load_experiment(experiment_file(tmp_path, adjust="holm")).claims} == {"holm"}
    with pytest.raises(ConfigError, match="adjust: must be one of none, holm"):
        load_experiment(experiment_file(tmp_path, adjust="bonferroni"))
    with pytest.raises(ConfigError, match="did you mean 'adjust'"):
        load_experiment(experiment_file(tmp_path, adjst="holm"))


def test_holm_adjusts_the_verdicts_of_several_claims():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])  # 3p, max(2p, before), max(p, before)
    b = {0: 0.50, 1: 0.52, 2: 0.49, 3: 0.51}
    made = arms({s: v + d for (s, v), d in zip(b.items(), [0.02, 0.05, 0.01, 0.04])}, b)
    made["c"] = claims.Arm("c", "C")
    for s, v in b.items():
        made["c"].runs[s] = run(s, v - [0.03, 0.06, 0.01, 0.04][s])
    one, two = ClaimSpec("1", "a beats b", "a", "b", "acc_auc"), ClaimSpec("2", "a beats c", "a", "c", "acc_auc")
    plain = claims.judge_all([one, two], made)
    assert [cr.result.verdict for cr in plain] == [SUPPORTED, SUPPORTED] and all(cr.p_null < 0.05 for cr in plain)
    assert plain[0].claims_judged == 2 and "2 claims judged, each on its own" in claim_text.family_lines(plain)[0]
    adjusted = claims.judge_all([ClaimSpec(**{**c.__dict__, "adjust": "holm"}) for c in (one, two)], made)
    expected = holm([cr.p_null for cr in plain])
    assert [cr.p_adjusted for cr in adjusted] == pytest.approx(expected) and min(expected) > 0.05
    assert [cr.result.verdict for cr in adjusted] == [INCONCLUSIVE, INCONCLUSIVE]
    assert all(cr.decide for cr in adjusted)  # now inconclusive: what would decide it is given
    assert "2 claims judged together, with Holm's adjustment" in claim_text.family_lines(adjusted)[0]
    data = adjusted[0].to_json()
    assert data["adjust"] == "holm" and data["claims_judged"] == 2 and data["p_adjusted"] == pytest.approx(expected[0])


# --- item 4g: rounding ----------------------------------------------------------------------------------


def test_p_values_keep_three_significant_digits_and_small_numbers_are_not_zeros():
    assert claim_text.p_text(0.0497) == "0.0497" and claim_text.p_text(0.13028) == "0.130"
    assert claim_text.number(-4.8e-6, sign=True) == "-4.80e-06" and claim_text.number(4.5e-5, sign=True) == "+4.50e-05"
    assert claim_text.number(0.0084, sign=True) == "+0.0084" and claim_text.number(0.0, sign=True) == "+0.0000"
    cr = claims.judge(CLAIM, arms({0: 0.62, 1: 0.55, 2: 0.70}, {0: 0.58, 1: 0.50, 2: 0.67}))
    assert f"p = {claim_text.p_text(cr.result.p_value)};" in "\n".join(report._claim_details(cr, ()))


# --- item 2: what would decide an inconclusive claim ------------------------------------------------


def simulated_power(effect, spread, n, paired, reps=100_000, seed=1) -> float:
    """The rejection rate of the two-sided 5 % t test (paired, or Welch) on normal data with this true
    difference and spread: a direct power computation, independent of scipy's noncentral t."""
    rng = np.random.default_rng(seed)
    if paired:
        d = rng.normal(effect, spread[0], (reps, n))
        t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(n))
        return float(np.mean(np.abs(t) > stats.t.ppf(0.975, n - 1)))
    x, y = rng.normal(effect, spread[0], (reps, n)), rng.normal(0.0, spread[1], (reps, n))
    return float(np.mean(stats.ttest_ind(x, y, axis=1, equal_var=False).pvalue < 0.05))


@pytest.mark.parametrize("paired", [True, False])
def test_the_seeds_needed_reach_80_percent_power_by_simulation(paired):
    a = [0.31, 0.28, 0.35, 0.30]
    b = [0.29, 0.29, 0.31, 0.305] if paired else [0.27, 0.30, 0.24, 0.31]
    result = paired_test(a, b) if paired else welch_test(a, b)
    d = what_would_decide(result)
    assert result.verdict == INCONCLUSIVE and d["per"] == ("pair" if paired else "arm")
    n, spread = d["seeds_needed"], result.spread
    assert n == seeds_needed(result.diff, spread) and 5 < n < 60
    mc = 3 * math.sqrt(0.8 * 0.2 / 100_000)  # three Monte Carlo standard errors
    assert simulated_power(result.diff, spread, n, paired) > 0.8 - mc
    assert simulated_power(result.diff, spread, n - 1, paired) < 0.8 + mc
    if paired:  # the smallest effect the current n detects: 80 % power at n = 4 pairs
        assert simulated_power(d["detectable"], spread, 4, True) == pytest.approx(0.8, abs=mc)
    low, high = d["spread_factor"]
    assert low < 1 < high and d["seeds_needed_at_spread_ends"][0] <= n <= d["seeds_needed_at_spread_ends"][1]


def test_an_inconclusive_claim_says_what_would_decide_it_and_a_decided_one_does_not():
    cr = claims.judge(CLAIM, arms({0: 0.50, 1: 0.56, 2: 0.53, 3: 0.49}, {0: 0.52, 1: 0.51, 2: 0.55, 3: 0.47}))
    assert cr.result.verdict == INCONCLUSIVE and cr.to_json()["what_would_decide"] == cr.decide
    text = " ".join(claim_text.decide_lines(cr))
    assert (
        f"would take {cr.decide['seeds_needed']:,} pairs (4 now)" in text and "The spread is itself uncertain" in text
    )
    margin = ClaimSpec("n", "a not worse", "a", "b", "acc_auc", "paired", margin=0.01)
    assert claims.judge(margin, arms({0: 0.5, 1: 0.56, 2: 0.53}, {0: 0.52, 1: 0.51, 2: 0.55})).decide["null"] == -0.01
    decided = claims.judge(CLAIM, arms({0: 0.62, 1: 0.55, 2: 0.70}, {0: 0.58, 1: 0.50, 2: 0.67}))
    assert decided.decide is None and claim_text.decide_lines(decided) == []


# --- item 6: the probability of improvement --------------------------------------------------------


def test_probability_of_improvement_over_pairs_and_over_all_pairs():
    a, b = [1.0, 2.0, 3.0, 4.0], [0.0, 5.0, 1.0, 4.0]
    paired = probability_of_improvement(a, b, True)
    assert paired["estimate"] == pytest.approx((1 + 0 + 1 + 0.5) / 4)  # a tie counts one half
    welch = probability_of_improvement(a, b, False)
    assert welch["estimate"] == pytest.approx(stats.mannwhitneyu(a, b).statistic / 16)
    lower = probability_of_improvement(a, b, True, "lower")
    assert lower["estimate"] == pytest.approx(1 - paired["estimate"])
    assert probability_of_improvement(a, b, False) == welch  # a fixed RNG seed: the same interval again
    assert welch["ci_low"] <= welch["estimate"] <= welch["ci_high"]
    apart = probability_of_improvement(list(range(10, 20)), list(range(10)), False)
    assert (apart["estimate"], apart["ci_low"], apart["ci_high"]) == (1, 1, 1)
    assert claim_text.improvement_cell(apart) == "1.00 (no bootstrap spread)"  # not "[1.00, 1.00]": no certainty
    assert "note" not in welch and claim_text.improvement_cell(welch).count("[") == 1


def test_each_claim_shows_its_probability_of_improvement(tmp_path):
    cr = claims.judge(CLAIM, arms({0: 0.62, 1: 0.55, 2: 0.70}, {0: 0.58, 1: 0.60, 2: 0.67}))
    assert cr.improvement["estimate"] == pytest.approx(2 / 3) and cr.improvement["over"] == "seed pairs"
    assert json.loads(json.dumps(cr.to_json()))["prob_improvement"] == cr.improvement
    table = "\n".join(report.claims_markdown([cr], ()))
    assert "| P(a better) |" in table and f"| {claim_text.improvement_cell(cr.improvement)} |" in table
    welch = ClaimSpec("w", "a beats b", "a", "b", "acc_auc", "welch")
    assert claims.judge(welch, arms({0: 0.6, 1: 0.5}, {0: 0.4, 1: 0.55})).improvement["over"] == "all pairs of runs"
