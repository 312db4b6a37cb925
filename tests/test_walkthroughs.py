"""The walk-throughs of docs/architecture.md, tried: a new launcher is one module plus one registry
entry; a new run-level metric for claims is one entry in analysis/metrics.py. (A new claim on a new
experiment is one YAML file: test_reproduce.py::test_your_own_experiment_file_needs_no_code. A new
auxiliary loss: test_losses.py::test_a_new_auxiliary_loss_is_a_class_and_a_config_choice.)"""

import json
import sys
import types

from centerexp.analysis import metrics
from centerexp.analysis.metrics import RunMetric
from centerexp.experiments.reproduce import reproduce
from centerexp.rundir import status
from centerexp.sweeps import jobs
from centerexp.sweeps.jobs import LaunchOptions, Outcome

from .conftest import CONFIGS

TINY = ["model.arch=linear", "data.train_subset=128", "data.test_subset=64", "train.epochs=1", "plot.gif=false"]


def test_a_new_launcher_is_a_module_and_a_registry_entry(tmp_path, monkeypatch):
    from centerexp.sweeps.spec import train_spec

    plugin = types.ModuleType("my_launcher")
    seen = []

    def run_mine(specs, options, log_dir, sweep):  # the whole launcher: train each spec, report how it ended
        for spec in specs:
            seen.append(spec.name)
            train_spec(spec, progress=False)
            sweep.finish(spec, Outcome(spec.name, status.COMPLETED))

    plugin.run_mine = run_mine
    monkeypatch.setitem(sys.modules, "my_launcher", plugin)
    monkeypatch.setitem(jobs.LAUNCHERS, "mine", "my_launcher:run_mine")
    reproduce("v1", "quick", 1, tmp_path, False, TINY, echo=lambda *_: None, launcher=LaunchOptions("mine", jobs=2))
    assert seen == ["v1_0_s0", "v1_1_s0", "v1_2_s0"]
    assert json.loads((tmp_path / "v1_2_s0" / "summary.json").read_text())["status"] == "completed"
    assert (tmp_path / "report.md").is_file()


def test_a_new_metric_for_claims_is_one_registry_entry(tmp_path, monkeypatch):
    new = RunMetric(
        "final_train_acc", "training accuracy in the last row", "higher", lambda r, p: r.column("train_acc")[-1]
    )
    monkeypatch.setitem(metrics.METRICS, new.name, new)
    experiment = tmp_path / "e.yaml"
    experiment.write_text(
        f"""name: e
arms:
  - {{name: a, config: {CONFIGS}/baseline.yaml, overrides: [{", ".join(TINY)}]}}
  - {{name: b, config: {CONFIGS}/baseline.yaml, overrides: [{", ".join(TINY)}, loss.lamda=0]}}
seeds: 3
profiles: {{tiny: {{precision: fp32}}}}
claims:
  - {{id: "1", says: a trains better, better: a, than: b, metric: final_train_acc}}
"""
    )
    reproduce(experiment, "tiny", runs_dir=tmp_path / "runs", progress=False, echo=lambda *_: None)
    claim = json.loads((tmp_path / "runs" / "claims.json").read_text())[0]
    assert claim["metric"] == "final_train_acc" and claim["n_a"] == 3 and claim["direction"] == "higher"
