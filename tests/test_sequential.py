"""Seeds until decided (centerexp.analysis.sequential_design, .sequential): the boundaries, the error guarantee under
optional stopping and the saving in seeds, shown by simulation with fixed seeds, and each edge
case of a look.

The simulated numbers quoted in docs/results.md ("Seeds until decided") are the ones these tests
assert on; ``pytest -s tests/test_sequential.py`` prints them.
"""

import json
import math

import numpy as np
import pytest
from scipy import stats

from centerexp.analysis.sequential import (
    CONTINUE,
    first_crossings,
    history,
    look,
    operating_characteristics,
    t_paths,
)
from centerexp.analysis.sequential_design import MAX_SEEDS, SequentialDesign, obf_spending, z_boundaries
from centerexp.analysis.stats import (
    CONTRADICTED,
    INCONCLUSIVE,
    INSUFFICIENT,
    SUPPORTED,
    paired_test,
    verdict_from_ci,
    welch_test,
)

MAX = 10  # looks after 3, 4, ..., 10 seeds per arm: 8 looks
SIMS = 20000
SE = math.sqrt(0.05 * 0.95 / SIMS)  # Monte Carlo standard error of a 5 % rate
CLEAR = [1.0, 1.5, 0.5, 1.4, 0.6, 1.2]  # differences: t = 3.5, 4.7, 4.9 below the bounds, then 6.1 > 4.3
NOISE = [0.0, 1.0, -1.0, 0.5, -0.5, 0.2, -0.2, 0.1, -0.1, 0.0]  # mean 0: never decided


@pytest.fixture(scope="module")
def design():
    return SequentialDesign(MAX)


# --- the error guarantee and the cost, by simulation -------------------------------------------


def test_null_false_positive_rate_stays_at_alpha_while_repeated_t_tests_inflate_it(design):
    oc = operating_characteristics(design, effect=0.0, sims=SIMS, seed=1)
    print(f"\nnull, paired, looks 3..{MAX}: sequential {oc.decided:.4f}, naive repeated 95% t {oc.naive_decided:.4f}")
    assert oc.decided <= 0.05 + 3 * SE  # 0.0546
    assert oc.naive_decided > 0.05 + 30 * SE  # about 0.17: "stop when it looks significant" is wrong
    assert abs(oc.supported - oc.decided / 2) < 4 * SE  # the two sides share the error


def test_the_z_to_t_approximation_alone_would_exceed_alpha():
    """Why the default calibration is the exact t path: the standard conversion of each look's z
    bound through its nominal p to a t quantile lets the error rate reach about 0.057 at these n."""
    sims = 50000
    se = math.sqrt(0.05 * 0.95 / sims)
    z = operating_characteristics(SequentialDesign(MAX, calibration="z"), 0.0, sims=sims, seed=2)
    t = operating_characteristics(SequentialDesign(MAX), 0.0, sims=sims, seed=2)
    print(f"\nnull, paired, 3..{MAX}: calibration z {z.decided:.4f}, calibration t {t.decided:.4f}")
    assert z.decided > 0.05 + 4 * se
    assert t.decided <= 0.05 + 3 * se
    assert t.decided < z.decided


@pytest.mark.parametrize("sd_b", [1.0, 3.0])
def test_welch_null_false_positive_rate(design, sd_b):
    """Welch's df is itself an approximation (a fixed-n Welch test at 3 seeds per arm rejects about
    5.7 % at an SD ratio of 10); the sequential rule adds nothing to it."""
    oc = operating_characteristics(design, 0.0, "welch", sims=SIMS, seed=3, sd_b=sd_b)
    print(f"\nnull, Welch, SD ratio {sd_b:g}: sequential {oc.decided:.4f}, naive {oc.naive_decided:.4f}")
    assert oc.decided <= 0.05 + 3 * SE
    assert oc.naive_decided > 0.05 + 20 * SE


def test_welch_itself_exceeds_alpha_at_three_seeds_and_unequal_spreads():
    fixed = operating_characteristics(SequentialDesign(3, min_n=3), 0.0, "welch", sims=SIMS, seed=3, sd_b=10.0)
    print(f"\nnull, one Welch test at 3 + 3 seeds, SD ratio 10: {fixed.decided:.4f}")
    assert 0.05 + 2 * SE < fixed.decided < 0.065


def test_a_true_effect_of_1_5_sd_stops_earlier_than_the_fixed_design(design):
    oc = operating_characteristics(design, effect=1.5, sims=SIMS, seed=4)
    print(
        f"\neffect 1.5 SD, paired, max {MAX}: power {oc.supported:.4f} (fixed n={MAX}: {oc.fixed_power:.4f}), "
        f"mean seeds per arm at the stop {oc.mean_n:.2f} (fixed: {MAX})"
    )
    assert oc.mean_n < MAX - 2.5  # about 6.9 seeds per arm instead of 10
    assert oc.supported > 0.95
    assert oc.fixed_power - oc.supported < 0.03  # the price in power is small
    assert oc.decided - oc.supported < 1e-3  # practically never contradicted


@pytest.mark.parametrize("effect", [0.5, 1.0])
def test_power_and_seeds_at_smaller_effects(design, effect):
    oc = operating_characteristics(design, effect=effect, sims=SIMS, seed=5)
    print(f"\neffect {effect} SD: power {oc.supported:.4f} (fixed {oc.fixed_power:.4f}), mean n {oc.mean_n:.2f}")
    assert oc.mean_n < MAX
    assert 0 < oc.fixed_power - oc.supported < 0.08  # about 6 points at 1 SD: see docs/results.md


def test_an_anytime_valid_t_test_has_less_power_at_ten_seeds(design):
    """The alternative for normal data: the safe (anytime-valid) t test, the Bayes factor of the
    t statistic with a N(0, g) prior on the standardised effect (Rouder et al. 2009, Perez-Ortiz et al.
    2024), a test martingale under the null; it rejects when it reaches 1/alpha = 20. Valid at any
    stop, also past max_n, it pays for that in power at ten seeds (g = 2 was its best of 0.5..10)."""
    rng = np.random.default_rng(4)
    for effect, gsd_power in ((0.0, None), (1.0, 0.74), (1.5, 0.977)):
        d = rng.normal(effect, 1.0, (SIMS, MAX))
        t, df = t_paths(d, np.zeros_like(d))
        n, g = np.arange(1, MAX + 1), 2.0
        with np.errstate(divide="ignore", invalid="ignore"):
            log_bf = -0.5 * np.log1p(n * g) + (df + 1) / 2 * (np.log1p(t**2 / df) - np.log1p(t**2 / (df * (1 + n * g))))
        safe = (log_bf[:, 2:] >= math.log(20)).any(axis=1).mean()
        crossed = first_crossings(design, t, df)[0].mean()
        print(f"\neffect {effect} SD, max {MAX}: group-sequential {crossed:.3f}, safe t (g = 2) {safe:.3f}")
        if gsd_power is None:
            assert safe <= 0.05 and crossed <= 0.05 + 3 * SE
        else:
            assert crossed == pytest.approx(gsd_power, abs=0.01) and crossed > safe + 0.15


def test_the_array_rule_is_the_rule_of_history(design):
    """operating_characteristics simulates with first_crossings; it must decide as history() does."""
    rng = np.random.default_rng(6)
    for kind in ("paired", "welch"):
        a, b = rng.normal(0.9, 1.0, (100, MAX)), rng.normal(0.0, 1.5, (100, MAX))
        crossed, stop_n, stop_t = first_crossings(design, *t_paths(a, b, kind))
        assert 10 < crossed.sum() < 90  # a mix of outcomes
        for i in range(len(a)):
            h = history(design, list(a[i]), list(b[i]), kind)
            assert h.done and h.stopped_at == stop_n[i]
            expected = (SUPPORTED if stop_t[i] > 0 else CONTRADICTED) if crossed[i] else INCONCLUSIVE
            assert h.verdict == expected
            assert h.last.t == pytest.approx(stop_t[i], rel=1e-9)


# --- the boundaries ---------------------------------------------------------------------------


def test_boundaries_spend_alpha_increasingly_and_strictly_early(design):
    bounds = design.boundaries()
    for b in bounds:
        print(
            f"n={b.n}: alpha spent {b.alpha_spent:.5f}, nominal p {b.nominal_p:.5f}, "
            f"z {b.z_bound:.3f}, paired t {b.t_bound:.2f}"
        )
    assert [b.n for b in bounds] == list(range(3, MAX + 1))
    spent = [b.alpha_spent for b in bounds]
    assert spent[-1] == pytest.approx(0.05, abs=1e-12)
    assert all(x < y for x, y in zip(spent, spent[1:]))
    assert all(x.nominal_p < y.nominal_p for x, y in zip(bounds, bounds[1:]))
    assert all(x.z_bound > y.z_bound for x, y in zip(bounds, bounds[1:]))
    # O'Brien-Fleming: the first look is very strict, the last close to the fixed design's
    assert bounds[0].alpha_spent < 5e-4 and bounds[0].z_bound > 3.5 and bounds[0].t_bound > 40
    assert bounds[0].z_bound == pytest.approx(stats.norm.isf(0.025) / math.sqrt(3 / MAX), rel=1e-12)
    assert 0.025 < bounds[-1].nominal_p < 0.05 and bounds[-1].z_bound < 2.2
    for b in bounds:
        assert b.t_bound == pytest.approx(stats.t.isf(b.nominal_p / 2, b.n - 1), rel=1e-12)
        assert b.alpha_spent == pytest.approx(2 * stats.norm.sf(1.959964 / math.sqrt(b.n / MAX)), rel=1e-5)


def test_z_boundaries_against_the_multivariate_normal():
    """P(no crossing by look k) = 1 - alpha(t_k) for the canonical joint law of the z statistics,
    computed independently by scipy's multivariate normal (Genz's algorithm)."""
    looks = [3, 4, 5, 6, 7]
    t = np.array(looks) / looks[-1]
    c = np.array(z_boundaries(tuple(t)))
    cov = np.sqrt(np.minimum.outer(t, t) / np.maximum.outer(t, t))
    for k in range(1, len(looks) + 1):
        mvn = stats.multivariate_normal(np.zeros(k), cov[:k, :k], seed=7)
        inside = mvn.cdf(c[:k], lower_limit=-c[:k])
        assert 1 - inside == pytest.approx(obf_spending(t[k - 1]), abs=2e-5)


def test_t_calibration_spends_alpha_look_by_look(design):
    """An independent simulation of null paired t paths (another seed) crosses the design's bounds
    with the cumulative probability the spending function allows, look by look."""
    rng = np.random.default_rng(8)
    sims = 100_000
    t, df = t_paths(rng.standard_normal((sims, MAX)), np.zeros((sims, MAX)))
    alive = np.ones(sims, dtype=bool)
    for b in design.boundaries():
        alive &= ~(np.abs(t[:, b.n - 1]) > b.t_bound)
        spent = 1 - alive.mean()
        se = math.sqrt(b.alpha_spent * (1 - b.alpha_spent) / sims)
        assert abs(spent - b.alpha_spent) < 4 * se + 1e-4, (b.n, spent, b.alpha_spent)


def test_one_look_is_the_fixed_design():
    """min_n == max_n: one look with all of alpha, so the look is stats.paired_test / welch_test."""
    rng = np.random.default_rng(9)
    for calibration in ("t", "z"):
        one = SequentialDesign(5, min_n=5, calibration=calibration)
        assert one.boundaries()[0].nominal_p == pytest.approx(0.05, rel=1e-9)
    one = SequentialDesign(5, min_n=5)
    for case in range(20):
        a, b = list(rng.normal(0.4, 1, 5)), list(rng.normal(0, 1, 5))
        direction, margin = ("higher", "lower")[case % 2], (0.0, 0.5)[case // 10]
        for kind, fixed in (("paired", paired_test), ("welch", welch_test)):
            got, want = look(one, a, b, kind, direction, margin), fixed(a, b)
            assert (got.ci_low, got.ci_high) == pytest.approx((want.ci_low, want.ci_high), rel=1e-9)
            assert got.df == pytest.approx(want.df, rel=1e-9)
            assert got.verdict == verdict_from_ci(want.ci_low, want.ci_high, direction, margin)


def test_design_is_checked():
    with pytest.raises(ValueError, match="at least 3"):
        SequentialDesign(10, min_n=2)
    with pytest.raises(ValueError, match="between"):
        SequentialDesign(2)
    with pytest.raises(ValueError, match="between"):
        SequentialDesign(MAX_SEEDS + 1)
    with pytest.raises(ValueError, match="calibration"):
        SequentialDesign(10, calibration="normal")
    with pytest.raises(ValueError, match="no look after 11"):
        SequentialDesign(10).boundary(11)


# --- looks: verdicts, directions, margins, edge cases -----------------------------------------


def test_a_clear_effect_is_supported_early_and_the_verdict_stays(design):
    a = CLEAR + [-3.0, -3.0, -3.0, -3.0]  # clear at first, reversed later
    b = [0.0] * 10
    h = history(design, a, b)
    assert h.verdict == SUPPORTED and h.stopped_at == 6 and h.done
    assert [x.verdict for x in h.looks] == [CONTINUE, CONTINUE, CONTINUE, SUPPORTED]
    assert h.last.looks_taken == [3, 4, 5, 6] and h.last.alpha_spent == design.boundary(6).alpha_spent
    assert h.last.t > h.last.t_bound and h.last.p_value < h.last.nominal_p
    assert h.last.ci_low > 0
    assert any("later seed" in note for note in h.last.notes)
    assert look(design, a, b).verdict == INCONCLUSIVE  # the last look on its own would not decide


def test_contradicted_and_inconclusive_at_the_last_look(design):
    rng = np.random.default_rng(10)
    worse = list(rng.normal(-1.0, 0.1, MAX))
    h = history(design, worse, [0.0] * MAX)
    assert h.verdict == CONTRADICTED and h.last.t < -h.last.t_bound and h.last.ci_high < 0
    h = history(design, NOISE, [0.0] * MAX)
    assert h.verdict == INCONCLUSIVE and h.stopped_at == MAX and h.last.final
    assert [x.n for x in h.looks] == list(range(3, MAX + 1))
    h = history(design, NOISE[:6], [0.0] * 6)
    assert h.verdict == CONTINUE and not h.done and h.stopped_at is None


def test_direction_and_margin_mirror_verdict_from_ci(design):
    rng = np.random.default_rng(11)
    a, b = list(rng.normal(0.5, 0.05, 6)), list(rng.normal(0.0, 0.05, 6))
    assert look(design, a, b, direction="higher").verdict == SUPPORTED
    assert look(design, a, b, direction="lower").verdict == CONTRADICTED
    assert look(design, b, a, direction="lower").verdict == SUPPORTED
    # non-inferiority: a is 0.1 worse than b, with a margin of 1 that is well within it
    worse = [x - 0.6 for x in a]  # a - b = -0.1
    one = look(design, worse, b, margin=1.0)
    assert one.verdict == SUPPORTED and one.t > 0 and one.ci_low > -1.0
    assert look(design, worse, b).verdict == CONTINUE  # without the margin: not decided (yet)
    # lower is better: the whole interval of a - b must lie below +margin
    c = list(rng.normal(0.0, 0.05, 6))
    higher_is_worse = look(design, [x + 0.6 for x in c], b, direction="lower", margin=1.0)  # a - b = +0.6
    assert higher_is_worse.verdict == SUPPORTED and higher_is_worse.ci_high < 1.0
    too_high = look(design, [x + 1.6 for x in c], b, direction="lower", margin=1.0)  # a - b = +1.6
    assert too_high.verdict == CONTRADICTED and too_high.ci_low > 1.0


def test_before_the_first_look_nothing_is_spent(design):
    one = look(design, [1.0, 2.0], [0.0, 0.0])
    assert one.verdict == CONTINUE and one.alpha_spent == 0.0 and one.looks_taken == []
    assert "first look is after 3" in one.notes[0]
    h = history(design, [1.0, 2.0], [0.0, 0.0])
    assert len(h.looks) == 1 and h.verdict == CONTINUE and not h.done
    assert history(design, [], []).verdict == CONTINUE


def test_zero_spread_is_no_certainty(design):
    """Identical differences (step counts on an evaluation grid): no t, no crossing."""
    h = history(design, [60.0] * 3, [75.0] * 3, direction="lower")
    assert h.verdict == CONTINUE and "no spread" in h.last.notes[-1]
    last = history(SequentialDesign(3), [60.0] * 3, [75.0] * 3, direction="lower")
    assert last.verdict == INCONCLUSIVE and math.isnan(last.last.t)
    welch = look(SequentialDesign(3), [60.0] * 3, [75.0] * 3, "welch", "lower")
    assert welch.verdict == INCONCLUSIVE and math.isnan(welch.df)
    one_constant = look(design, [60.0, 61.0, 59.0, 60.0], [75.0] * 4, "welch", "lower")
    assert one_constant.df == pytest.approx(3.0)  # Welch-Satterthwaite with one group constant: n_a - 1


def test_failed_and_unfinished_runs(design):
    nan = math.nan
    a = [1.0, nan, 1.2, 0.9, 1.1, math.inf]
    b = [0.0, 0.1, None, -0.1, 0.05, 0.0]
    one = look(design, a, b)
    assert (one.n, one.n_a, one.failed_a, one.failed_b) == (6, 3, 2, 0)  # seeds 1, 2 and 5 left out
    assert one.df == 2 and any("failed" in note for note in one.notes)
    welch = look(design, a, b, "welch")
    assert (welch.n_a, welch.n_b, welch.failed_a) == (4, 5, 2)
    # too few usable values: continue before the last look, insufficient evidence at it
    few = look(design, [1.0, nan, nan], [0.0, 0.0, 0.0])
    assert few.verdict == CONTINUE and "at least 3" in few.notes[-1]
    last = look(SequentialDesign(3), [1.0, nan, nan], [0.0, 0.0, 0.0])
    assert last.verdict == INSUFFICIENT and last.final


def test_a_crossing_that_hangs_on_leaving_failures_out_does_not_count(design):
    a, b = [1.0, math.nan, 1.1, 0.9, 1.05, 1.0], [0.0] * 6
    assert look(design, a, b).verdict == SUPPORTED
    hangs = look(design, a, b, worst=-5.0)
    assert hangs.verdict == CONTINUE and hangs.failures_as_worst == CONTINUE and "hangs on" in hangs.notes[-1]
    assert history(design, a, b, worst=-5.0).verdict == CONTINUE
    holds = look(design, a, b, worst=0.8)
    assert holds.verdict == SUPPORTED and holds.failures_as_worst == SUPPORTED
    assert look(design, [1.0, 1.1, 0.9], [0.0] * 3, worst=-5.0).failures_as_worst is None  # nothing failed


def test_bad_input_is_refused(design):
    with pytest.raises(ValueError, match="by seed"):
        look(design, [1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="stops at 10"):
        look(design, [1.0] * 11, [0.0] * 11)
    with pytest.raises(ValueError, match="design_kind"):
        look(design, [1.0] * 3, [0.0] * 3, "anova")
    with pytest.raises(ValueError, match="direction"):
        look(design, [1.0] * 3, [0.0] * 3, direction="up")
    h = history(design, NOISE + [5.0, 5.0], [0.0] * 12)
    assert h.verdict == INCONCLUSIVE and h.stopped_at == MAX and "only the first 10" in h.last.notes[-1]


def test_json_for_claims(design):
    h = history(design, CLEAR, [0.0] * 6)
    record = json.loads(json.dumps(h.to_json(), allow_nan=False))
    assert record["design"] == "sequential" and record["verdict"] == SUPPORTED
    assert record["stopped_at"] == 6 and record["looks_taken"] == [3, 4, 5, 6]
    assert record["alpha_spent"] == pytest.approx(obf_spending(0.6))
    assert record["max_seeds"] == MAX and record["min_seeds"] == 3 and record["calibration"] == "t"
    assert [x["verdict"] for x in record["history"]] == [CONTINUE, CONTINUE, CONTINUE, SUPPORTED]
    early = json.loads(json.dumps(history(design, [1.0], [0.0]).to_json(), allow_nan=False))
    assert early["stopped_at"] is None and early["looks_taken"] == [] and early["history"][0]["t"] is None
