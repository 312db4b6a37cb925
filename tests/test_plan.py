"""reproduce says what it will cost before it starts (the plan line, --dry-run), and identical runs
train once: a run with the same config, seed and precision as a done one is copied, not trained."""

import json
import math

import pytest
from typer.testing import CliRunner

from centerexp.cli import app
from centerexp.experiments.estimate import duration
from centerexp.experiments.rates import store_rates
from centerexp.experiments.reproduce import reproduce
from centerexp.rundir.folder import REUSED_FROM
from centerexp.sweeps.reuse import input_key

from .conftest import CONFIGS


def bf16_twice_as_fast(cfg, device, channels_last) -> dict:
    return {"fp32": 1.0, "bf16": 2.0}


def test_stored_rates_are_what_the_estimate_reads_and_bench_replaces_them(tmp_path, monkeypatch):
    from centerexp.experiments import rates

    monkeypatch.setenv("CENTEREXP_DATA", str(tmp_path))
    monkeypatch.setattr(rates, "centerexp_rates", lambda *a, **k: pytest.fail("measured, not read from the cache"))
    store_rates("deep", "fp32", 1, {"train": 10.0, "eval": 100.0})
    store_rates("deep", "fp32", 1, {"train": 20.0, "eval": 200.0})  # a test's fake: the first stays
    assert rates.measure_rates("deep", "fp32", 1) == {"train": 10.0, "eval": 100.0}
    store_rates("deep", "fp32", 1, {"train": 30.0, "eval": 300.0}, replace=True)  # what bench does
    assert rates.measure_rates("deep", "fp32", 1) == {"train": 30.0, "eval": 300.0}
    store_rates("deep", "fp32", 2, {"train": 1.0, "eval": 1.0}, replace=True)  # other threads: another entry
    assert rates.measure_rates("deep", "fp32", 1)["train"] == 30.0
    assert rates.measure_rates("deep", "fp32", 2)["train"] == 1.0


def test_dry_run_prices_the_early_profile_from_the_speed_cache_and_writes_nothing(tmp_path, monkeypatch):
    cache = tmp_path / "cache"  # a fake speed cache of its own: nothing is measured
    monkeypatch.setenv("CENTEREXP_DATA", str(cache))
    monkeypatch.setattr("centerexp.sweeps.jobs.cpu_count", lambda: 2)
    store_rates("deep", "bf16", 2, {"train": 100.0, "eval": 1000.0})
    store_rates("shallow", "bf16", 2, {"train": 200.0, "eval": 2000.0})
    runs = tmp_path / "runs" / "v1" / "early"
    out = []
    plan = reproduce("v1", "early", runs_dir=runs, echo=out.append, measure=bf16_twice_as_fast, dry_run=True)

    # 5 seeds x (2 deep arms + 1 shallow); each run: 235 steps of 256 images, 12 evaluations of 2,000 images
    deep, shallow = 235 * 256 / 100 + 12 * 2000 / 1000, 235 * 256 / 200 + 12 * 2000 / 2000
    assert plan.seconds == pytest.approx(5 * (2 * deep + shallow))
    assert duration(plan.seconds) == "2 h 10 min"
    assert out[0].startswith("plan: 15 runs (0 complete): 15 to train, about 2 h 10 min here (")
    assert "bf16, 2 threads" in out[0] and "deep 100 img/s" in out[0] and "shallow 200 img/s" in out[0]
    assert "nothing trained, no run folder written" in out[-1]
    assert not runs.exists()
    assert plan.steps_total == 15 * 235 and plan.steps_done == 0


def test_dry_run_on_the_command_line_with_two_jobs_prices_one_thread_each(tmp_path, monkeypatch):
    monkeypatch.setenv("CENTEREXP_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr("centerexp.sweeps.jobs.cpu_count", lambda: 2)
    for arch in ("deep", "shallow"):
        store_rates(arch, "fp32", 1, {"train": 64.0, "eval": 640.0})
    runs = tmp_path / "runs"
    result = CliRunner().invoke(
        app, ["reproduce", "v1", "--profile", "quick", "--runs-dir", str(runs), "--jobs", "2", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    # quick: 3 seeds x 3 arms x (90 steps of 64 images + 6 evaluations of 500), two runs at a time:
    # 9 equal runs take 5 runs' time
    seconds = 5 * (90 * 64 / 64 + 6 * 500 / 640)
    assert f"about {duration(seconds)} here (" in result.output and "1 thread, 2 at a time" in result.output
    assert not runs.exists()


def test_a_missing_rate_is_measured_at_the_threads_each_run_will_get(tmp_path, monkeypatch, mnist_root):
    """With 2 jobs on 2 cores a run trains on 1 thread, so its rate is timed on 1 thread and cached
    under 1 thread (a run's Runtime used to reset the threads to one per core while timing)."""
    import torch

    from centerexp.experiments import rates as rates_module
    from centerexp.experiments.rates import measure_rates
    from centerexp.training.speedcache import CACHE_FILE

    (tmp_path / "MNIST").symlink_to(mnist_root / "MNIST")  # the real data, an empty speed cache
    monkeypatch.setenv("CENTEREXP_DATA", str(tmp_path))
    timed_on, real = [], rates_module.train_one_epoch
    monkeypatch.setattr(
        rates_module, "train_one_epoch", lambda *a: timed_on.append(torch.get_num_threads()) or real(*a)
    )
    torch.set_num_threads(2)
    rates = measure_rates("linear", "fp32", 1)

    assert timed_on and set(timed_on) == {1}
    assert rates["train"] > 0 and rates["eval"] > 0
    cache = json.loads((tmp_path / CACHE_FILE).read_text())
    entry = next(v for v in cache.values() if v["what"][:3] == ["rates", "linear", "fp32"])
    assert entry["threads"] == 1 and entry["measured"] == rates
    assert torch.get_num_threads() == 2  # the caller's threads come back
    assert measure_rates("linear", "fp32", 1) == rates and len(timed_on) == 2  # read back, not timed again


TWO_EXPERIMENTS = """\
name: {name}
title: a tiny pair of experiments that share an arm
arms:
  - {{name: {first}, config: {configs}/baseline.yaml, overrides: [{first_override}]}}
  - {{name: shared, config: {configs}/baseline.yaml}}
seeds: 3
profiles:
  tiny:
    precision: fp32
    overrides: [train.epochs=1, data.train_subset=256, data.test_subset=128, plot.gif=false, plot.tensorboard=false]
claims:
  - {{id: "1", says: shared beats {first}, better: shared, than: {first}, metric: final_test_acc, design: paired}}
"""


def experiment_file(tmp_path, name: str, first: str, override: str):
    path = tmp_path / f"{name}.yaml"
    path.write_text(TWO_EXPERIMENTS.format(name=name, first=first, first_override=override, configs=CONFIGS))
    return path


def test_a_shared_arm_trains_once_and_the_report_lists_it(tmp_path):
    a = experiment_file(tmp_path, "exp_a", "low", "loss.lamda=0.01")
    b = experiment_file(tmp_path, "exp_b", "high", "loss.lamda=1.0")
    root = tmp_path / "runs"
    reproduce(a, "tiny", runs_dir=root / "a", progress=False, echo=lambda *_: None)

    out = []
    reproduce(b, "tiny", runs_dir=root / "b", progress=False, echo=out.append)
    plan_line = next(line for line in out if line.startswith("plan: "))
    assert plan_line.startswith("plan: 6 runs (3 complete, 3 of them reused from identical runs): 3 to train")
    assert sum("not trained again" in line for line in out) == 3
    for seed in range(3):
        ours, theirs = root / "b" / f"shared_s{seed}", root / "a" / f"shared_s{seed}"
        identity = json.loads((ours / "run.json").read_text())
        assert identity[REUSED_FROM] == str(theirs)
        assert identity["experiment"] == "exp_b" and identity["arm"] == "shared"
        assert identity["fingerprint"] == json.loads((theirs / "run.json").read_text())["fingerprint"]
        assert (ours / "metrics.csv").read_bytes() == (theirs / "metrics.csv").read_bytes()  # copied, not retrained
        assert not (ours / "checkpoints").exists()
        assert (root / "b" / f"high_s{seed}" / "metrics.csv").is_file()  # the other arm trained
    report = (root / "b" / "report.md").read_text()
    assert "Reused, not trained again (3; same config, seed and precision): shared_s0 (from " in report
    claims = json.loads((root / "b" / "claims.json").read_text())
    assert claims[0]["n_a"] == 3 and claims[0]["design_used"] == "paired"  # the fingerprints still pair

    # a third experiment whose shared arm differs in one key reuses nothing
    c = experiment_file(tmp_path, "exp_c", "low", "loss.lamda=0.01")
    c.write_text(c.read_text().replace("data.test_subset=128", "data.test_subset=96"))
    out.clear()
    reproduce(c, "tiny", runs_dir=root / "c", progress=False, echo=out.append, dry_run=True)
    assert "(0 complete): 6 to train" in out[0] and not (root / "c").exists()


def test_reuse_looks_where_the_user_says_and_keys_by_config_seed_and_precision(tmp_path):
    a = experiment_file(tmp_path, "exp_a", "low", "loss.lamda=0.01")
    elsewhere = tmp_path / "elsewhere" / "a"  # no folder named runs above it: outside b's runs root
    # (and b's scratch neighbours are not searched when a runs dir has no folder named runs above it)
    reproduce(a, "tiny", seeds=1, runs_dir=elsewhere, progress=False, echo=lambda *_: None)
    b = experiment_file(tmp_path, "exp_b", "high", "loss.lamda=1.0")
    runs_b = tmp_path / "runs" / "b"

    out = []
    reproduce(b, "tiny", seeds=1, runs_dir=runs_b, echo=out.append, dry_run=True)
    assert "(0 complete)" in out[0]  # not under the runs root: not found
    reproduce(b, "tiny", seeds=1, runs_dir=runs_b, echo=out.append, dry_run=True, reuse=[tmp_path / "elsewhere"])
    assert any(line.startswith("plan: 2 runs (1 complete, 1 of them reused") for line in out)
    assert any(f"shared_s0: would reuse {elsewhere / 'shared_s0'}" in line for line in out)
    assert not runs_b.exists()

    # the key: the resolved config with its seed and precision; threads and the conv algorithm aside
    cfg = json.loads(json.dumps(_config(elsewhere / "shared_s0")))
    same = input_key(cfg)
    cfg["train"]["threads"], cfg["train"]["conv_algo"] = 1, "library"
    assert input_key(cfg) == same
    for section, key, value in (("train", "seed", 1), ("train", "precision", "bf16"), ("loss", "lamda", 0.2)):
        changed = json.loads(json.dumps(_config(elsewhere / "shared_s0")))
        changed[section][key] = value
        assert input_key(changed) != same, key


def _config(run_dir) -> dict:
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text())


def test_durations_read_as_a_person_would_say_them():
    assert [duration(s) for s in (45, 600, 7800, math.inf)] == ["45 s", "10 min", "2 h 10 min", "unknown"]
