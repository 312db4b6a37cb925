"""Runtime: train.precision auto decides by measurement, cached per machine; bf16 steps on CPU."""

import json
import math

import pytest
import torch

from centerexp.config import Config
from centerexp.rundir.provenance import ISA_CAP_VARIABLES
from centerexp.training import precision, speedcache
from centerexp.training.runtime import Runtime


def measured(fp32: float, bf16: float):
    calls = []

    def measure(cfg, device, channels_last):
        calls.append(cfg.model.arch)
        return {"fp32": fp32, "bf16": bf16}

    return measure, calls


def auto_config(tmp_path, arch="deep") -> Config:
    cfg = Config()
    cfg.data.root, cfg.model.arch, cfg.train.device = str(tmp_path), arch, "cpu"
    cfg.train.conv_algo = "library"  # these tests are about precision; test_conv.py times the algorithms
    return cfg


@pytest.mark.parametrize(
    "fp32, bf16, chosen", [(40.0, 90.0, "bf16"), (40.0, 47.0, "fp32"), (40.0, 48.0, "bf16"), (60.0, 39.0, "fp32")]
)
def test_auto_picks_bf16_only_when_measured_at_least_1_2x_faster(tmp_path, fp32, bf16, chosen):
    measure, calls = measured(fp32, bf16)
    rt = Runtime.from_config(auto_config(tmp_path), measure=measure)
    assert rt.precision == chosen and calls == ["deep"]
    assert rt.precision_choice["images_per_second"] == {"fp32": fp32, "bf16": bf16}
    assert rt.precision_choice["chosen"] == chosen and rt.precision_choice["cached"] is False


def test_the_measurement_is_cached_and_remeasured_for_another_torch(tmp_path, monkeypatch):
    measure, calls = measured(40.0, 90.0)
    Runtime.from_config(auto_config(tmp_path), measure=measure)
    again = Runtime.from_config(auto_config(tmp_path), measure=measure)
    assert calls == ["deep"] and again.precision_choice["cached"] is True and again.precision == "bf16"
    Runtime.from_config(auto_config(tmp_path, "shallow"), measure=measure)  # another model: its own entry
    assert calls == ["deep", "shallow"]
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    slower, calls2 = measured(40.0, 41.0)
    rt = Runtime.from_config(auto_config(tmp_path), measure=slower)
    assert calls2 == ["deep"] and rt.precision == "fp32" and rt.precision_choice["cached"] is False
    cache = json.loads((tmp_path / speedcache.CACHE_FILE).read_text())
    assert len(cache) == 3
    assert sum("9.9.9" in k for k in cache) == 1


def _measure_once_in_a_child(cache_folder: str, log: str, go) -> None:
    """A child process: wait for the start signal, then ask the cache for one measurement that
    takes 0.5 s and leaves a line in ``log``; write back what it got."""
    import os
    import time

    cfg = Config()
    cfg.data.root = cache_folder

    def measure():
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        return {"seconds": float(os.getpid())}

    go.wait()
    value, cached, _ = speedcache.remembered(cfg, ["a shape"], measure)
    with open(log + f".{os.getpid()}", "w") as f:
        json.dump({"value": value, "cached": cached}, f)


def test_two_processes_that_start_together_measure_once_and_agree(tmp_path):
    """Runs started together (reproduce --jobs 2) must not both measure, each timing the other."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    go, log = ctx.Event(), str(tmp_path / "measured")
    children = [ctx.Process(target=_measure_once_in_a_child, args=(str(tmp_path), log, go)) for _ in range(2)]
    for c in children:
        c.start()
    go.set()
    for c in children:
        c.join(30)
        assert c.exitcode == 0
    measurers = (tmp_path / "measured").read_text().split()
    got = [json.loads((tmp_path / f"measured.{c.pid}").read_text()) for c in children]
    assert len(measurers) == 1  # one measured, the other waited for it and read the cache
    assert got[0]["value"] == got[1]["value"] == {"seconds": float(measurers[0])}
    assert sorted(g["cached"] for g in got) == [False, True]


def test_another_cpu_code_path_is_measured_again(tmp_path, monkeypatch):
    """oneDNN capped at AVX2 on an AMX machine is another machine for speed: bf16 there runs on
    reference kernels, so a measurement taken on the full path must not decide for it."""
    for variable in ISA_CAP_VARIABLES:  # make test-portable runs this file with a cap already set
        monkeypatch.delenv(variable, raising=False)
    measure, calls = measured(40.0, 90.0)
    Runtime.from_config(auto_config(tmp_path), measure=measure)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    slow, calls2 = measured(40.0, 4.0)
    assert Runtime.from_config(auto_config(tmp_path), measure=slow).precision == "fp32" and calls2 == ["deep"]
    cache = json.loads((tmp_path / speedcache.CACHE_FILE).read_text())
    assert sorted("ONEDNN_MAX_CPU_ISA=AVX2" in entry["code_path"] for entry in cache.values()) == [False, True]


def test_a_damaged_cache_is_measured_again(tmp_path):
    (tmp_path / speedcache.CACHE_FILE).write_text("{not json")
    measure, calls = measured(40.0, 30.0)
    assert Runtime.from_config(auto_config(tmp_path), measure=measure).precision == "fp32" and calls == ["deep"]


def test_the_linear_net_is_not_measured(tmp_path):
    measure, calls = measured(40.0, 90.0)
    rt = Runtime.from_config(auto_config(tmp_path, "linear"), measure=measure)
    assert rt.precision == "fp32" and calls == []


def test_a_set_precision_is_not_measured(tmp_path):
    measure, calls = measured(40.0, 90.0)
    cfg = auto_config(tmp_path)
    cfg.train.precision = "fp32"
    rt = Runtime.from_config(cfg, measure=measure)
    assert rt.precision == "fp32" and calls == [] and rt.precision_choice == {"mode": "set in config"}


def test_the_real_measurement_returns_two_positive_rates():
    cfg = Config()
    cfg.model.arch = "linear"
    rates = precision.measure_step_rates(cfg, torch.device("cpu"), channels_last=False)
    assert set(rates) == {"fp32", "bf16"} and all(r > 0 for r in rates.values())


def test_a_bf16_training_step_on_cpu_is_finite():
    from centerexp.training.data import Split
    from centerexp.training.loop import build_parts, train_one_epoch

    cfg = Config()
    cfg.model.arch, cfg.train.precision, cfg.train.device, cfg.train.batch_size = "shallow", "bf16", "cpu", 16
    cfg.train.conv_algo = "library"  # timing every algorithm in bf16 takes minutes on a CPU without bf16 units
    rt = Runtime.from_config(cfg)
    torch.manual_seed(0)
    parts = build_parts(cfg, rt.device, rt.channels_last)
    split = Split(torch.randint(0, 256, (32, 1, 28, 28), dtype=torch.uint8), torch.arange(32) % 10)
    out = train_one_epoch(parts, split, cfg, rt, 1)
    assert all(math.isfinite(out[k]) for k in ("loss", "ce", "center")) and out["steps"] == 2
    assert out["features"].dtype == torch.float32 and parts.aux_loss.points.dtype == torch.float32
    assert torch.isfinite(parts.aux_loss.points).all()


def test_the_cli_imports_torch_only_to_train():
    """--help and config errors must answer at once: torch takes seconds to import."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom centerexp.cli import app\n"
        "try:\n    app(sys.argv[1:])\nexcept SystemExit as e:\n    print(e.code, 'torch' in sys.modules)"
    )
    for args, status in ((["--help"], 0), (["train", "--help"], 0), (["train", "nope.yaml"], 2)):
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
        assert out.stdout.split()[-2:] == [str(status), "False"], (args, out.stdout, out.stderr)


def tiny_conv_net(feat_dim: int = 2):
    """A conv net small enough for bf16 on any CPU (oneDNN's reference kernels, where the CPU has no
    bf16 units, take minutes for the shallow net): two ConvLayers 1-4-8 and a pool, the head of the
    real nets. Under bf16 autocast its convolutions compute in bf16, as the real nets' do."""
    from centerexp.training.models import ConvNet

    return ConvNet([[1, 4, 8]], 8 * 14 * 14, feat_dim)


def test_parity_pairs_bf16_with_fp32_by_seed(tmp_path, monkeypatch):
    """On a conv net, where bf16 autocast applies (the linear net keeps fp32 under it, and its
    differences are all 0): the pairs differ, and the intervals are scipy's paired t."""
    from scipy import stats

    from centerexp.experiments.parity import parity
    from centerexp.rundir.records import metrics_columns
    from centerexp.training import models

    from .conftest import CONFIGS

    monkeypatch.setattr(models, "shallow_net", tiny_conv_net)  # v1_2.yaml's arch, made tiny
    # 24 steps at a rate where the tiny net learns (test accuracy near 0.3, not stuck at chance, where
    # bf16 would change no prediction); one thread; the library, since this is about precision, not
    # the algorithms (auto would time them in bf16)
    tiny = ["data.train_subset=256", "data.test_subset=300", "train.epochs=3", "train.batch_size=32"]
    tiny += ["train.lr=0.02", "loss.lamda=0.25", "train.threads=1", "train.conv_algo=library", "plot.gif=false"]
    lines = []
    result = parity(CONFIGS / "v1_2.yaml", 3, tmp_path, tiny, progress=False, echo=lines.append)
    names = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert names == [f"v1_2_{p}_s{s}" for p in ("bf16", "fp32") for s in range(3)]
    env = json.loads((tmp_path / "v1_2_bf16_s0" / "env.json").read_text())
    assert env["precision"] == "bf16" and set(env["conv_algorithms"].values()) == {"library"}
    per_seed = result["per_seed"]
    for p in ("bf16", "fp32"):  # the final accuracies it paired are the runs' own
        final = [metrics_columns(tmp_path / f"v1_2_{p}_s{s}/metrics.csv")["test_acc"][-1] for s in range(3)]
        assert [f["final_test_acc"] for f in per_seed[p]] == final
    compared = []
    for key in ("final_test_acc", "auc"):
        bf16, fp32 = ([f[key] for f in per_seed[p]] for p in ("bf16", "fp32"))
        diffs = [b - f for b, f in zip(bf16, fp32)]
        m = result["metrics"][key]
        assert m["n"] == 3 and m["difference"] == pytest.approx(sum(diffs) / 3)
        if len(set(diffs)) > 1:  # scipy has no interval when all differences are equal
            ci = stats.ttest_rel(bf16, fp32).confidence_interval(0.95)
            assert m["ci_low"] == pytest.approx(ci.low) and m["ci_high"] == pytest.approx(ci.high)
            compared.append(key)
    # bf16 changed the numbers, and by different amounts per seed: scipy's interval was compared
    assert compared, f"bf16 and fp32 differ alike in every seed: {result['per_seed']}"
    assert json.loads((tmp_path / "parity.json").read_text())["metrics"]["final_test_acc"]["n"] == 3
    assert "95% CI" in lines[-1] and "paired t, n=3" in lines[-1]
    assert lines[-1].startswith("train.precision: bf16 vs fp32") and "training time per epoch, fp32 / bf16" in lines[-1]


def test_parity_of_the_convolution_algorithms_pairs_auto_with_the_library(tmp_path):
    from centerexp.experiments.parity import COMPARISONS, parity_specs

    from .conftest import CONFIGS

    specs = parity_specs(CONFIGS / "v1_0.yaml", 2, tmp_path, ["train.epochs=1"], COMPARISONS["conv"])
    assert [s.run_dir.name for s in specs] == ["v1_0_library_s0", "v1_0_auto_s0", "v1_0_library_s1", "v1_0_auto_s1"]
    assert [s.overrides[-2:] for s in specs[:2]] == [
        ("train.conv_algo=library", "train.seed=0"),
        ("train.conv_algo=auto", "train.seed=0"),
    ]
    assert "train.epochs=1" in specs[0].overrides


def test_a_clear_loser_is_timed_once_and_the_others_as_asked(monkeypatch):
    """bf16 on a CPU without bf16 units: one timed step shows it cannot win, so it is not timed 3 times.
    On a fake clock that each call advances by its own duration: no sleep that a busy machine overruns."""
    from types import SimpleNamespace

    clock = [0.0]
    monkeypatch.setattr(speedcache, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    calls = {"fast": 0, "close": 0, "slow": 0}
    seconds_per_call = {"fast": 0.25, "close": 0.4375, "slow": 0.5625}  # under and over 2x fast (exact in binary)

    def call(name):
        calls[name] += 1
        clock[0] += seconds_per_call[name]

    candidates = {name: lambda name=name: call(name) for name in seconds_per_call}
    seconds = speedcache.median_seconds(candidates, torch.device("cpu"), 3, 0.0, drop_slower_than=2.0)
    assert calls == {"fast": 4, "close": 4, "slow": 2}  # one warm-up call each, then 3 timed / 1 timed
    assert seconds == pytest.approx(seconds_per_call)
    calls.update(dict.fromkeys(calls, 0))
    speedcache.median_seconds(candidates, torch.device("cpu"), 3, 0.0)  # without it, all are timed alike
    assert calls == {"fast": 4, "close": 4, "slow": 4}
    calls.update(dict.fromkeys(calls, 0))
    speedcache.median_seconds(candidates, torch.device("cpu"), 3, 5.0)  # and for min_seconds in all, at least
    assert calls == {"fast": 5, "close": 5, "slow": 5}  # 4 rounds of 1.25 s reach 5 s
