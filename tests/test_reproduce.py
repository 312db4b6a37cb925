"""make reproduce: trains what is missing, keeps what is done, refuses runs made with another config."""

import pytest
import yaml

from centerexp.errors import CenterexpError
from centerexp.experiments.reproduce import reproduce

# The V1 configs turned into tiny linear runs, so the orchestration is tested in seconds.
TINY = ["model.arch=linear", "data.train_subset=256", "data.test_subset=128", "train.epochs=1"]


def test_reproduce_trains_compares_then_keeps_completed_runs(tmp_path):
    out = []
    result = reproduce("quick", seeds=2, runs_dir=tmp_path, progress=False, extra=TINY, echo=out.append)
    names = sorted(p.name for p in tmp_path.iterdir() if (p / "summary.json").exists())
    assert names == ["v1_0_s0", "v1_0_s1", "v1_1_s0", "v1_1_s1", "v1_2_s0", "v1_2_s1"]
    assert (tmp_path / "report.md").is_file() and (tmp_path / "compare.csv").is_file()
    assert len(result["groups"]) == 2  # v1_0 and v1_1 differ (distance); v1_1 and v1_2 are both linear now
    assert not (tmp_path / "claims.json").exists()  # no V1 triple among linear runs: no claims
    cfg = yaml.safe_load((tmp_path / "v1_2_s1" / "config.yaml").read_text())
    assert cfg["train"]["seed"] == 1 and cfg["data"]["train_subset"] == 256 and cfg["train"]["batch_size"] == 64

    before = (tmp_path / "v1_0_s0" / "metrics.csv").read_bytes()
    out.clear()
    reproduce("quick", seeds=2, runs_dir=tmp_path, progress=False, extra=TINY, echo=out.append)
    assert sum("already completed, kept" in line for line in out) == 6
    assert (tmp_path / "v1_0_s0" / "metrics.csv").read_bytes() == before


def test_reproduce_refuses_runs_made_with_another_profile(tmp_path):
    reproduce("quick", seeds=1, runs_dir=tmp_path, progress=False, extra=TINY, echo=lambda *_: None)
    with pytest.raises(CenterexpError, match=r"v1_0_s0 was trained with a different config \(.*train.epochs"):
        reproduce("quick", seeds=1, runs_dir=tmp_path, progress=False, extra=[*TINY[:-1], "train.epochs=2"])


def test_reproduce_rejects_bad_arguments(tmp_path):
    with pytest.raises(CenterexpError, match="unknown profile 'fast'"):
        reproduce("fast", runs_dir=tmp_path)
    with pytest.raises(CenterexpError, match="--seeds must be >= 1"):
        reproduce("quick", seeds=0, runs_dir=tmp_path)


def test_quick_profile_keeps_the_recipes_dynamics_and_its_budget():
    from centerexp.analysis.claims import RECIPE_STEPS, steps_from_config
    from centerexp.config import load_config
    from centerexp.experiments.reproduce import PROFILES, QUICK_THRESHOLDS, config_dir

    full = load_config(config_dir() / "v1_0.yaml", PROFILES["full"])
    quick = load_config(config_dir() / "v1_0.yaml", PROFILES["quick"])
    assert full.train.precision == quick.train.precision == "fp32"
    # the count-normalised center loss scales as lamda / batch: lamda = batch/256 keeps the recipe's
    # center pull per feature (relative to cross-entropy) and each center's step
    assert quick.loss.lamda / quick.train.batch_size == full.loss.lamda / full.train.batch_size
    steps = steps_from_config([quick.train.epochs], quick.data.train_subset, quick.train.batch_size)[0]
    assert steps == 90 and round(steps / RECIPE_STEPS, 3) == 0.013
    # the CPU budget: training images x epochs per run stays that of the earlier 3 x 1,920 profile,
    # and evaluated test images per run too (evaluation costs about a third of training per image)
    assert quick.data.train_subset * quick.train.epochs == 1920 * 3
    assert quick.data.test_subset * quick.train.epochs == 1000 * 3
    assert QUICK_THRESHOLDS == (0.1 + 0.25 * 0.9, 0.1 + 0.5 * 0.9)  # a quarter and half way from chance to 1


def test_a_failed_run_does_not_stop_the_sweep_and_a_diverged_one_is_kept(tmp_path, monkeypatch):
    import json

    from centerexp.training import losses

    original = losses.CenterLoss.forward

    def diverges_in_v1_1(self, features, labels):  # only the sqrt runs (V1.1, V1.2) blow up
        value = original(self, features, labels)
        return value * float("nan") if self.distance == "sqrt" else value

    monkeypatch.setattr(losses.CenterLoss, "forward", diverges_in_v1_1)
    out = []
    with pytest.raises(CenterexpError, match=r"2 of 3 runs did not finish \(the report covers the others\)"):
        reproduce("quick", seeds=1, runs_dir=tmp_path, progress=False, extra=TINY, echo=out.append)
    assert any("v1_1_s0: failed, training loss became nan" in line for line in out)
    assert json.loads((tmp_path / "v1_0_s0" / "summary.json").read_text())["status"] == "completed"  # trained after
    summary = json.loads((tmp_path / "v1_2_s0" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["diverged"] is True
    assert "[failed]" in (tmp_path / "report.md").read_text()  # shown in the report, not dropped
    monkeypatch.undo()
    out.clear()  # a divergence is a result: the next call keeps it rather than diverging again
    reproduce("quick", seeds=1, runs_dir=tmp_path, progress=False, extra=TINY, echo=out.append)
    assert sum("already diverged, kept" in line for line in out) == 2
