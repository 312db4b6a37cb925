from typer.testing import CliRunner

from centerexp.bench import flop_per_image, run_bench
from centerexp.cli import app


def test_flop_count_matches_the_known_v1_cost():
    import torch

    # 4.57 GFLOP per image to train V1.0 (forward + backward); V1.2 is about the same.
    assert abs(flop_per_image("deep", torch.device("cpu")) / 1e9 - 4.57) < 0.05
    assert flop_per_image("linear", torch.device("cpu")) < 1e5


def test_bench_reports_both_loops_on_a_small_model():
    lines = []
    result = run_bench(("linear",), steps=2, warmup=1, echo=lines.append)
    m = result["models"]["linear"]
    assert m["plain_images_per_s"] > 0 and m["centerexp_images_per_s"] > 0
    assert 0.05 < m["speedup"] < 1000  # same model, same machine: the same order of magnitude
    assert result["matmul_peak_gflops"]["fp32"] > 0
    assert "plain img/s" in lines[0] and "linear" in lines[0]


def test_bench_json_and_bad_option():
    runner = CliRunner()
    r = runner.invoke(app, ["bench", "--arch", "linear", "--steps", "1", "--warmup", "1", "--json"])
    assert r.exit_code == 0, r.output
    assert '"centerexp_images_per_s"' in r.output
    r = runner.invoke(app, ["bench", "--precision", "fp16"])
    assert r.exit_code == 2 and "error: --precision must be" in r.output
