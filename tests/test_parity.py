"""`centerexp parity` when every pair differs by the same amount (a candidate that changes no number,
as bf16 on the linear net): no zero-width t interval, the exact sign test's p and interval instead.
No training: the runs' figures are given."""

import json
import math

import pytest

from centerexp.experiments import parity as parity_module

from .conftest import CONFIGS

REFERENCE = [0.5, 0.25, 0.75, 0.375, 0.625, 0.125]  # binary fractions: the differences are exact


@pytest.fixture
def figures(monkeypatch):
    """Each run's figures from its name (``v1_0_{value}_s{seed}``): the candidate's final test
    accuracy is the reference's + 0.125 in every seed, its AUC the same as the reference's."""

    def pair_figures(run_dir):
        value, seed = run_dir.name.split("_")[-2], int(run_dir.name.split("_s")[-1])
        shift = 0.125 if value == "bf16" else 0.0
        return {"auc": REFERENCE[seed], "final_test_acc": REFERENCE[seed] + shift, "train_seconds": 1.0}

    monkeypatch.setattr(parity_module, "launch", lambda *args, **kwargs: None)
    monkeypatch.setattr(parity_module, "pair_figures", pair_figures)


@pytest.mark.parametrize("seeds", [3, 6])
def test_equal_differences_get_the_exact_sign_test_not_a_nan_or_zero_width_t_interval(tmp_path, figures, seeds):
    lines = []
    result = parity_module.parity(CONFIGS / "v1_0.yaml", seeds, tmp_path, progress=False, echo=lines.append)
    written = json.loads((tmp_path / "parity.json").read_text())
    text = lines[-1]
    assert "nan" not in text and "paired t" not in text
    for key, diff, p in (("auc", 0.0, 1.0), ("final_test_acc", 0.125, 2 * 0.5**seeds)):
        m = result["metrics"][key]
        assert m["test"] == written["metrics"][key]["test"] == "exact sign test"
        assert m["difference"] == diff and m["p_value"] == pytest.approx(p)
        assert f"difference {diff:+.4f}, all {seeds} differences equal: exact sign test p = " in text
        if seeds < 6:  # 2 x 1/2^n must reach 0.05 for a 95% interval
            assert math.isnan(m["ci_low"]) and written["metrics"][key]["ci_low"] is None
            assert "too few pairs for a 95% CI" in text
        else:
            assert m["ci_low"] == m["ci_high"] == diff
            assert f"95% CI [{diff:+.4f}, {diff:+.4f}] (n={seeds})" in text
    assert parity_module.format_parity(written) == text  # read back from parity.json: the same words
