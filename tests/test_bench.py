from typer.testing import CliRunner

from centerexp.cli import app
from centerexp.experiments.bench import flop_per_image, layer_table, matmul_peak, run_bench
from centerexp.experiments.bench_report import format_bench


def test_flop_count_matches_the_known_v1_cost():
    import torch

    # 4.57 GFLOP per image to train V1.0 (forward + backward); V1.2 is about the same.
    assert abs(flop_per_image("deep", torch.device("cpu")) / 1e9 - 4.57) < 0.05
    assert flop_per_image("linear", torch.device("cpu")) < 1e5


def test_bench_times_the_plain_loop_and_centerexp_in_each_precision(monkeypatch):
    from centerexp.experiments import bench

    stored = []  # not into the session's speed cache: other tests price plans from its fake rates
    monkeypatch.setattr(bench, "store_rates", lambda *a, **k: stored.append((a, k)))
    lines = []
    result = run_bench(("linear",), steps=2, warmup=1, echo=lines.append)
    m = result["models"]["linear"]
    assert m["plain_fp32_images_per_s"] > 0
    for p in ("fp32", "bf16"):
        assert m[f"centerexp_{p}_images_per_s"] > 0 and m[f"eval_{p}_images_per_s"] > 0
        assert m[f"centerexp_{p}_vs_plain"] == m[f"centerexp_{p}_images_per_s"] / m["plain_fp32_images_per_s"]
        assert m[f"ceiling_{p}_images_per_s"] is None  # the linear net has no conv stack
    assert m["auto_precision"] in ("fp32", "bf16")
    assert m["centerexp_auto_images_per_s"] == m[f"centerexp_{m['auto_precision']}_images_per_s"]
    text = lines[0]
    assert "plain (seed) fp32" in text and "centerexp bf16" in text and "<- auto" in text
    # bench's rates replace the speed cache's, at the threads they were timed at, for reproduce's plans
    threads = result["env"]["threads"]
    expected = {
        p: {"train": m[f"centerexp_{p}_images_per_s"], "eval": m[f"eval_{p}_images_per_s"]} for p in ("fp32", "bf16")
    }
    assert sorted(stored, key=str) == sorted(
        [(("linear", p, threads, rates), {"replace": True}) for p, rates in expected.items()], key=str
    )
    assert "rates are now in the speed cache" in text
    tb = result["tensorboard"]
    assert tb["seconds_per_evaluation"] > 0 and tb["embedding_seconds"] > 0 and tb["points"] == 5000
    assert "TensorBoard events (plot.tensorboard):" in text and "ms per evaluation" in text


def test_format_shows_ceiling_fraction_and_the_reproduce_estimate():
    m = {
        "gflop_per_image": 4.57,
        "plain_fp32_images_per_s": 40.0,
        "auto_precision": "bf16",
        "auto_choice": {"bf16_speedup": 2.1},
    }
    for p, rate, ceiling in (("fp32", 44.0, 46.0), ("bf16", 90.0, 98.0)):
        m |= {
            f"centerexp_{p}_images_per_s": rate,
            f"centerexp_{p}_vs_plain": rate / 40,
            f"centerexp_{p}_gflops": rate * 4.57,
            f"ceiling_{p}_images_per_s": ceiling,
            f"centerexp_{p}_fraction_of_ceiling": rate / ceiling,
            f"seconds_per_epoch_{p}": 60000 / rate,
        }
    env = {"device_name": "cpu X", "device": "cpu", "threads": 2, "torch": "2"}
    r = {"env": env, "steps": 6, "warmup": 1, "batch_size": 256, "models": {"deep": m}}
    r["reproduce_estimates"] = {
        "v1": {"quick": {"seconds": 1200.0, "seeds": 3}, "full": {"seconds": 3.6e5, "seeds": 5}}
    }
    r["tensorboard"] = {"seconds_per_evaluation": 0.02, "embedding_seconds": 0.5, "points": 5000}
    r["matmul_gflops"] = {"fp32": 100.0, "bf16": 400.0}
    m |= {
        "centerexp_auto_images_per_s": 90.0,
        "centerexp_auto_vs_plain": 90 / 40,
        "centerexp_auto_vs_library_ceiling": 90 / 98,
        "chosen_ceiling_images_per_s": 150.0,
        "library_ceiling_fraction_of_matmul_peak": 0.45,
        "chosen_ceiling_fraction_of_matmul_peak": 0.69,
        "conv_layers": [
            {
                "layer": "512->512 k5p2 @7x7",
                "algorithm": "fft",
                "seconds": 0.5,
                "library_seconds": 1.5,
                "gflops": 600.0,
                "fraction_of_matmul_peak": 1.5,
                "share": 0.8,
            },
        ],
    }
    text = format_bench(r)
    assert "matmul peak (2048^3, this sitting): fp32 100 GFLOP/s, bf16 400 GFLOP/s" in text
    assert "conv stack 98.0 img/s with the library (45% of the matmul peak), 150.0 img/s with the chosen" in text
    assert "training 90.0 img/s = 0.92x the library ceiling, 2.25x the plain loop" in text
    assert "  512->512 k5p2 @7x7       fft            500      600      150%    80%      3.00x" in text
    assert "20 ms per evaluation (row + feature figure), 0.50 s once for the projector (5,000 points)" in text
    assert "a one-epoch deep run with one evaluation: 0.078% of its 667 s" in text  # 0.52 / (60000/90)
    assert "2.25x" in text and "92%" in text and "96%" in text  # 90/40, 90/98, 44/46
    assert "measured bf16/fp32 step 2.10x" in text
    assert "  v1: quick (3 seeds) 20 min, full (5 seeds) 100.0 h" in text


def test_the_layer_table_times_the_library_and_the_chosen_algorithm_of_every_shape():
    import torch

    rows = layer_table("shallow", 2, "fp32", torch.device("cpu"), {"512->512 k5p2 @7x7": "fft"})
    assert [r["layer"] for r in rows] == [
        "1->32 k5p2 @28x28",
        "32->64 k5p2 @28x28",
        "64->128 k5p2 @14x14",
        "128->256 k5p2 @14x14",
        "256->512 k5p2 @7x7",
        "512->512 k5p2 @7x7",
    ]
    assert [r["algorithm"] for r in rows].count("fft") == 1 and rows[-1]["algorithm"] == "fft"
    assert rows[0]["seconds"] == rows[0]["library_seconds"] and abs(sum(r["share"] for r in rows) - 1) < 1e-9
    # 2 images x 512 x 512 x 25 taps x 49 positions, x2 (multiply-add) x3 (forward, two backward)
    assert abs(rows[-1]["gflops"] * rows[-1]["seconds"] * 1e9 / (2 * 512 * 512 * 25 * 49 * 6) - 1) < 1e-9
    assert matmul_peak("fp32", torch.device("cpu"), size=128, repeats=1) > 0


def test_bench_json_and_bad_option():
    runner = CliRunner()
    r = runner.invoke(app, ["bench", "--arch", "linear", "--steps", "1", "--warmup", "1", "--json"])
    assert r.exit_code == 0, r.output
    assert '"centerexp_fp32_images_per_s"' in r.output
    r = runner.invoke(app, ["bench", "--device", "tpu"])
    assert r.exit_code == 2 and "error: --device must be" in r.output


def test_the_committed_parity_results_have_the_fields_parity_writes_today():
    """runs/reference/parity*/parity.json, read by today's format_parity: the field names parity()
    writes (compared, reference, candidate, difference, test, speedup...), not older ones."""
    import json
    from pathlib import Path

    from centerexp.experiments.parity import format_parity

    found = sorted((Path(__file__).resolve().parent.parent / "runs" / "reference").glob("parity*/parity.json"))
    assert [p.parent.name for p in found] == ["parity", "parity-conv", "parity-conv-bf16"]
    for path in found:
        r = json.loads(path.read_text())
        assert set(r) == {
            "config",
            "compared",
            "reference",
            "candidate",
            "profile",
            "seeds",
            "metrics",
            "per_seed",
            "speedup",
        }
        assert set(r["per_seed"]) == {r["reference"], r["candidate"]}
        for m in r["metrics"].values():
            assert set(m) == {"name", "difference", "ci_low", "ci_high", "test", "p_value", "n"} | {
                f"{what}_{arm}" for what in ("failed", "mean") for arm in ("candidate", "reference")
            }
        assert f"{r['candidate']} vs {r['reference']}" in format_parity(r)
