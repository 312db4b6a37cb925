from typer.testing import CliRunner

from centerexp.cli import app
from centerexp.experiments.bench import flop_per_image, format_bench, run_bench


def test_flop_count_matches_the_known_v1_cost():
    import torch

    # 4.57 GFLOP per image to train V1.0 (forward + backward); V1.2 is about the same.
    assert abs(flop_per_image("deep", torch.device("cpu")) / 1e9 - 4.57) < 0.05
    assert flop_per_image("linear", torch.device("cpu")) < 1e5


def test_bench_times_the_plain_loop_and_centerexp_in_each_precision():
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
    text = format_bench(r)
    assert "20 ms per evaluation (row + feature figure), 0.50 s once for the projector (5,000 points)" in text
    assert "a one-epoch deep run with one evaluation: 0.078% of its 667 s" in text  # 0.52 / (60000/90)
    assert "2.25x" in text and "92%" in text and "96%" in text  # 90/40, 90/98, 44/46
    assert "measured bf16/fp32 step 2.10x" in text
    assert "  v1: quick (3 seeds) 20 min, full (5 seeds) 100.0 h" in text


def test_bench_json_and_bad_option():
    runner = CliRunner()
    r = runner.invoke(app, ["bench", "--arch", "linear", "--steps", "1", "--warmup", "1", "--json"])
    assert r.exit_code == 0, r.output
    assert '"centerexp_fp32_images_per_s"' in r.output
    r = runner.invoke(app, ["bench", "--device", "tpu"])
    assert r.exit_code == 2 and "error: --device must be" in r.output
