"""centerexp reproduce EXPERIMENT: trains what is missing, keeps what is done, refuses runs made with
another config, decides one precision for the whole experiment, and works for any experiment file."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from centerexp.cli import app
from centerexp.errors import CenterexpError
from centerexp.experiments.reproduce import find_experiment, plan, reproduce
from centerexp.experiments.spec import load_experiment

from .conftest import CONFIGS

# The V1 configs turned into tiny linear runs, so the orchestration is tested in seconds.
TINY = ["model.arch=linear", "data.train_subset=256", "data.test_subset=128", "train.epochs=1", "plot.gif=false"]


def test_reproduce_trains_compares_then_keeps_completed_runs(tmp_path):
    out = []
    result = reproduce("v1", "quick", seeds=2, runs_dir=tmp_path, progress=False, extra=TINY, echo=out.append)
    names = sorted(p.name for p in tmp_path.iterdir() if (p / "summary.json").exists())
    assert names == ["v1_0_s0", "v1_0_s1", "v1_1_s0", "v1_1_s1", "v1_2_s0", "v1_2_s1"]
    assert (tmp_path / "report.md").is_file() and (tmp_path / "compare.csv").is_file()
    assert len(result["groups"]) == 2  # v1_0 and v1_1 differ (distance); v1_1 and v1_2 are both linear now
    identity = json.loads((tmp_path / "v1_2_s1" / "run.json").read_text())
    assert identity["experiment"] == "v1" and identity["arm"] == "v1_2" and identity["profile"] == "quick"
    assert set(identity["fingerprint"]) == {"init", "data"}
    claims = json.loads((tmp_path / "claims.json").read_text())
    assert [c["verdict"] for c in claims] == ["insufficient evidence"] * 2  # 2 seeds < 3
    cfg = yaml.safe_load((tmp_path / "v1_2_s1" / "config.yaml").read_text())
    assert cfg["train"]["seed"] == 1 and cfg["data"]["train_subset"] == 256 and cfg["train"]["batch_size"] == 64

    before = (tmp_path / "v1_0_s0" / "metrics.csv").read_bytes()
    out.clear()
    reproduce("v1", "quick", seeds=2, runs_dir=tmp_path, progress=False, extra=TINY, echo=out.append)
    assert sum("already completed, kept" in line for line in out) == 6
    assert (tmp_path / "v1_0_s0" / "metrics.csv").read_bytes() == before


def test_reproduce_refuses_runs_made_with_another_profile(tmp_path):
    reproduce("v1", "quick", seeds=1, runs_dir=tmp_path, progress=False, extra=TINY, echo=lambda *_: None)
    with pytest.raises(CenterexpError, match=r"v1_0_s0 was trained with a different config \(.*train.epochs"):
        reproduce("v1", "quick", seeds=1, runs_dir=tmp_path, progress=False, extra=[*TINY, "train.epochs=2"])


def test_reproduce_rejects_bad_arguments(tmp_path):
    with pytest.raises(CenterexpError, match="no profile 'fast'; it has full, quick, early"):
        reproduce("v1", "fast", runs_dir=tmp_path)
    with pytest.raises(CenterexpError, match="--seeds must be >= 1"):
        reproduce("v1", "quick", seeds=0, runs_dir=tmp_path)
    with pytest.raises(CenterexpError, match="experiment file not found: v9 .*center_vs_softmax, v1"):
        reproduce("v9", "quick", runs_dir=tmp_path)


def test_quick_profile_keeps_the_recipes_dynamics_and_its_budget():
    from centerexp.analysis.curves import steps_from_config
    from centerexp.config import load_config

    v1 = load_experiment(find_experiment("v1"))
    arm, quick = v1.arms[0], v1.profiles["quick"]
    full = load_config(arm.config, v1.overrides(arm, v1.profiles["full"]))
    cfg = load_config(arm.config, v1.overrides(arm, quick))
    assert v1.profiles["full"].precision == quick.precision == "fp32"
    # the count-normalised center loss scales as lamda / batch: lamda = batch/256 keeps the recipe's
    # center pull per feature (relative to cross-entropy) and each center's step
    assert cfg.loss.lamda / cfg.train.batch_size == full.loss.lamda / full.train.batch_size
    steps = steps_from_config([cfg.train.epochs], cfg.data.train_subset, cfg.train.batch_size)[0]
    assert steps == 90 and round(steps / v1.full_recipe["steps"], 3) == 0.013
    assert cfg.data.train_subset * cfg.train.epochs == 1920 * 3  # the CPU budget of the earlier profile
    assert quick.thresholds == (0.1 + 0.25 * 0.9, 0.1 + 0.5 * 0.9)  # a quarter and half way from chance to 1


def test_early_profile_is_the_recipe_on_the_full_data_stream():
    from centerexp.config import load_config, steps_per_epoch

    v1 = load_experiment(find_experiment("v1"))
    early = v1.profiles["early"]
    assert early.seeds == 5 and early.precision == "auto"
    for arm in v1.arms:
        cfg = load_config(arm.config, v1.overrides(arm, early))
        assert (cfg.train.batch_size, cfg.loss.lamda, cfg.loss.center_lr) == (256, 1.0, 0.5)
        assert cfg.data.train_subset is None and cfg.data.test_subset_seed == 0  # one test subset for all runs
        steps = cfg.train.epochs * steps_per_epoch(60_000, cfg.train.batch_size)
        evaluations = -(-steps // cfg.train.eval_every)
        assert steps >= 200 and 10 <= evaluations <= 20


def test_one_precision_is_decided_for_the_whole_experiment(tmp_path, monkeypatch):
    # a speed cache of its own: the session's shared one may hold this machine's real measurement
    monkeypatch.setenv("CENTEREXP_DATA", str(tmp_path / "data"))
    v1 = load_experiment(find_experiment("v1"))
    calls = []

    def measure(cfg, device, channels_last):  # what training.precision would time: bf16 2x fp32
        calls.append(cfg.model.arch)
        return {"fp32": 10.0, "bf16": 20.0}

    specs = plan(v1, "early", 2, tmp_path, measure=measure)
    assert {s.overrides[-2] for s in specs} == {"train.precision=bf16"} and len(specs) == 6
    assert len(calls) == 1  # measured once, never per arm
    assert plan(v1, "early", 2, tmp_path, measure=measure) == specs and len(calls) == 1  # then read from the cache


OWN = """\
name: lamda_grid
title: lamda on the linear net
arms:
  - name: lin
    config: {configs}/baseline.yaml
    overrides: [train.epochs=1, data.train_subset=256, data.test_subset=128, plot.gif=false]
    grid: {{loss.lamda: [0.0, 0.1]}}
seeds: 3
profiles:
  tiny: {{precision: fp32}}
claims:
  - {{id: a, says: lamda 0.1 gives tighter classes than lamda 0, better: lin_lamda0.1, than: lin_lamda0.0,
     metric: compactness, at: 1.0, design: paired}}
"""


def test_your_own_experiment_file_needs_no_code(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(OWN.format(configs=CONFIGS))
    result = CliRunner().invoke(
        app, ["reproduce", str(path), "--profile", "tiny", "--runs-dir", str(tmp_path / "runs"), "-q"]
    )
    assert result.exit_code == 0, result.output
    claims = json.loads((tmp_path / "runs" / "claims.json").read_text())
    assert len(claims) == 1 and claims[0]["n_a"] == claims[0]["n_b"] == 3 and claims[0]["design_used"] == "paired"
    assert claims[0]["verdict"] in ("supported", "contradicted", "inconclusive")
    names = sorted(p.name for p in (tmp_path / "runs").iterdir() if p.name.startswith("lin"))
    assert names == [f"lin_lamda{v}_s{s}" for v in ("0.0", "0.1") for s in range(3)]
    assert "lamda 0.1 gives tighter classes than lamda 0" in (tmp_path / "runs" / "report.md").read_text()


@pytest.mark.parametrize(
    "change, message",
    [
        ("arms:", "unknown key 'armz' (did you mean 'arms'?)"),
        ("design: paired", "design: must be one of paired, welch, got 'pared'"),
        ("metric: compactness", "unknown key 'compactnes' (did you mean 'compactness'?)"),
        ("better: lin_lamda0.1", "not an arm of this experiment"),
        ("precision: fp32", "precision: must be one of auto, fp32, bf16, got 'fp16'"),
        ("train.epochs=1", "profile tiny, arm lin_lamda0.0: --set: unknown key 'train.epoch'"),
        ("plot.gif=false]", "train.seed is set by the plan"),
        ("- name: lin", "arms[0].name: expected a name of letters, digits"),
        ("metric: compactness,", "claims[0].metric: unknown key"),
    ],
)
def test_experiment_files_are_checked_strictly(tmp_path, change, message):
    broken = {
        "arms:": "armz:",
        "design: paired": "design: pared",
        "metric: compactness": "metric: compactnes",
        "better: lin_lamda0.1": "better: lin_lamda9",
        "precision: fp32": "precision: fp16",
        "train.epochs=1": "train.epoch=1",
        "plot.gif=false]": "plot.gif=false, train.seed=3]",
        "- name: lin": "- name: lin/ear",
        "metric: compactness,": "metric: [compactness],",
    }[change]
    path = tmp_path / "bad.yaml"
    path.write_text(OWN.format(configs=CONFIGS).replace(change, broken, 1))
    result = CliRunner().invoke(app, ["reproduce", str(path), "--profile", "tiny", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_a_failed_run_does_not_stop_the_sweep_and_a_diverged_one_is_kept(tmp_path, monkeypatch):
    from centerexp.training import losses

    original = losses.CenterLoss.forward

    def diverges_in_v1_1(self, features, labels):  # only the sqrt runs (V1.1, V1.2) blow up
        value = original(self, features, labels)
        return value * float("nan") if self.distance == "sqrt" else value

    monkeypatch.setattr(losses.CenterLoss, "forward", diverges_in_v1_1)
    out = []
    with pytest.raises(CenterexpError, match=r"2 of 3 runs did not finish \(the report covers the others\)"):
        reproduce("v1", "quick", seeds=1, runs_dir=tmp_path, progress=False, extra=TINY, echo=out.append)
    assert any("v1_1_s0: failed, training loss became nan" in line for line in out)
    assert json.loads((tmp_path / "v1_0_s0" / "summary.json").read_text())["status"] == "completed"  # trained after
    summary = json.loads((tmp_path / "v1_2_s0" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["diverged"] is True
    assert "[failed]" in (tmp_path / "report.md").read_text()  # shown in the report, not dropped
    monkeypatch.undo()
    out.clear()  # a divergence is a result: the next call keeps it rather than diverging again
    reproduce("v1", "quick", seeds=1, runs_dir=tmp_path, progress=False, extra=TINY, echo=out.append)
    assert sum("already diverged, kept" in line for line in out) == 2


def test_a_run_folder_from_before_run_json_is_adopted(tmp_path):
    reproduce("v1", "quick", seeds=1, runs_dir=tmp_path, progress=False, extra=TINY, echo=lambda *_: None)
    original = json.loads((tmp_path / "v1_0_s0" / "run.json").read_text())
    (tmp_path / "v1_0_s0" / "run.json").unlink()  # a run from before run.json existed
    (tmp_path / "v1_1_s0" / "run.json").write_text('{"fingerprint": {"init": "x", "data": "y"}}')
    reproduce("v1", "quick", seeds=1, runs_dir=tmp_path, progress=False, extra=TINY, echo=lambda *_: None)
    identity = json.loads((tmp_path / "v1_1_s0" / "run.json").read_text())
    assert identity["arm"] == "v1_1" and identity["fingerprint"] == {"init": "x", "data": "y"}  # kept
    adopted = json.loads((tmp_path / "v1_0_s0" / "run.json").read_text())
    assert adopted["arm"] == "v1_0" and adopted["fingerprint"] == original["fingerprint"]  # recomputed, the same
    assert adopted["fingerprint_source"] == "recomputed when adopted"
