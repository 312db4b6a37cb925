"""compare on synthetic run folders (exact table values), and end to end on two tiny real runs."""

import csv
import statistics

import pytest
import yaml
from typer.testing import CliRunner

from centerexp.cli import app
from centerexp.compare import compare
from centerexp.config import Config
from centerexp.runs import METRIC_COLUMNS, write_json

from .conftest import write_config

runner = CliRunner()


def fake_run(root, name, accs, *, seed=0, arch="deep", distance="squared", status="completed", epoch_seconds=10.0):
    """A run folder written by hand: config.yaml, summary.json and metrics.csv with the given test accuracies."""
    run = root / name
    run.mkdir(parents=True)
    cfg = Config().to_dict()
    cfg["train"].update(seed=seed, epochs=len(accs) if status == "completed" else len(accs) + 5)
    cfg["model"]["arch"], cfg["loss"]["distance"] = arch, distance
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    write_json(run / "summary.json", {"status": status, "epochs_done": len(accs)})
    with open(run / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
        w.writeheader()
        for i, acc in enumerate(accs, 1):
            row = {c: 0.5 for c in METRIC_COLUMNS}
            row.update(
                epoch=i,
                test_acc=acc,
                epoch_seconds=epoch_seconds,
                wall_seconds=epoch_seconds * i,
                train_center=1.0 / i,
                intra_dist=1.0,
                center_dist=4.0,
                compactness=0.25,
            )
            w.writerow(row)
    return run


def quiet(*_):
    pass


def test_single_runs_thresholds_and_values(tmp_path):
    a = fake_run(tmp_path, "a", [0.5, 0.985, 0.991])
    b = fake_run(tmp_path, "b", [0.4, 0.6, 0.97], distance="sqrt", epoch_seconds=20.0)
    result = compare([a, b], tmp_path / "out", echo=quiet)
    header, rows = result["header"], {r[0]: dict(zip(result["header"], r)) for r in result["rows"]}
    assert "loss.distance" in header and "train.epochs" not in header  # only keys that differ
    assert rows["a"]["final acc %"] == "99.10" and rows["a"]["best acc %"] == "99.10"
    assert rows["a"]["epoch to 0.98"] == "2" and rows["a"]["s to 0.98"] == "20"
    assert rows["a"]["epoch to 0.99"] == "3" and rows["a"]["s to 0.99"] == "30"
    assert rows["b"]["epoch to 0.98"] == "never" and rows["b"]["s to 0.99"] == "never"
    assert rows["b"]["s/epoch"] == "20" and rows["a"]["final center loss"] == "0.333"
    assert rows["a"]["intra/center"] == "0.25"
    for name in ["report.md", "compare.csv", "accuracy.png", "losses.png"]:
        assert (tmp_path / "out" / name).is_file()
    with open(tmp_path / "out" / "compare.csv") as f:
        assert list(csv.reader(f))[0] == header


def test_seeds_form_a_group_with_mean_and_std(tmp_path):
    runs = [fake_run(tmp_path, f"v1_0_s{s}", [0.9, acc], seed=s) for s, acc in enumerate([0.97, 0.98, 0.99])]
    runs.append(fake_run(tmp_path, "v1_1_s0", [0.8, 0.96], distance="sqrt"))
    result = compare(runs, tmp_path / "out", thresholds=[0.98], echo=quiet)
    rows = {r[0]: dict(zip(result["header"], r)) for r in result["rows"]}
    assert set(rows) == {"v1_0", "v1_1_s0"}
    g = rows["v1_0"]
    assert g["n"] == "3"
    sd = statistics.stdev([97, 98, 99])
    assert g["final acc %"] == f"98.00 ± {sd:.2f}"
    assert g["epoch to 0.98"] == "2 (2/3 reached)"  # one seed never got there
    assert "train.seed" not in result["header"]


def test_difference_within_spread_is_said(tmp_path):
    runs = [fake_run(tmp_path, f"x_s{s}", [0.5, acc], seed=s) for s, acc in enumerate([0.90, 0.96])]
    runs += [fake_run(tmp_path, f"y_s{s}", [0.5, acc], seed=s, distance="sqrt") for s, acc in enumerate([0.92, 0.95])]
    runs += [fake_run(tmp_path, f"z_s{s}", [0.5, acc], seed=s, arch="shallow") for s, acc in enumerate([0.50, 0.51])]
    notes = compare(runs, tmp_path / "out", echo=quiet)["notes"]
    assert any(n.startswith("x vs y") and "within their seed-to-seed spread" in n for n in notes)
    assert any(n.startswith("x vs z") and "larger than their seed-to-seed spread" in n for n in notes)


def test_unfinished_runs_are_marked_and_never_grouped(tmp_path):
    done = [fake_run(tmp_path, f"r_s{s}", [0.9, 0.95], seed=s) for s in range(2)]
    running = fake_run(tmp_path, "r_s2", [0.9], seed=2, status="running")
    failed = fake_run(tmp_path, "r_s3", [0.1], seed=3, status="failed")
    result = compare([*done, running, failed], tmp_path / "out", echo=quiet)
    rows = {r[0]: dict(zip(result["header"], r)) for r in result["rows"]}
    assert rows["r"]["n"] == "2"
    assert rows["r_s2 [running]"]["status"] == "running (1/6 epochs)"
    assert rows["r_s3 [failed]"]["status"].startswith("failed")


def test_v1_claims_get_verdicts(tmp_path):
    runs = []
    for s in range(3):
        runs.append(fake_run(tmp_path, f"v1_0_s{s}", [0.90 + 0.001 * s, 0.99], seed=s))
        runs.append(fake_run(tmp_path, f"v1_1_s{s}", [0.50 + 0.001 * s, 0.97], seed=s, distance="sqrt"))
        runs.append(fake_run(tmp_path, f"v1_2_s{s}", [0.50 + 0.002 * s, 0.97], seed=s, distance="sqrt", arch="shallow"))
    result = compare(runs, tmp_path / "out", echo=quiet)
    verdicts = [c[1] for c in result["claims"]]
    assert verdicts[0] == "supported"
    assert verdicts[1].startswith("inconclusive")
    report = (tmp_path / "out" / "report.md").read_text()
    assert "The seed's claims" in report and "| 1. squared center loss" in report


def test_cli_skips_non_runs_and_fails_on_none(tmp_path):
    (tmp_path / "junk").mkdir()
    result = runner.invoke(app, ["compare", str(tmp_path / "junk"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "skipping" in result.output and "error: compare: no run folders given" in result.output
    assert not (tmp_path / "out").exists()
    result = runner.invoke(app, ["compare", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "no run folders" in result.output


def test_csv_to_stdout(tmp_path):
    a = fake_run(tmp_path, "a", [0.5, 0.99])
    result = runner.invoke(app, ["compare", str(a), "--out", str(tmp_path / "out"), "--csv", "-", "--all-keys"])
    assert result.exit_code == 0, result.output
    assert "run,n,status,data.download" in result.output  # --all-keys lists every config key


@pytest.fixture(scope="module")
def two_real_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    cfg = write_config(root / "base.yaml", train={"epochs": 2}, data={"train_subset": 1024, "test_subset": 512})
    for seed in (0, 1):
        r = runner.invoke(
            app,
            [
                "train",
                str(cfg),
                "--runs-dir",
                str(root / "runs"),
                "--name",
                f"base_s{seed}",
                "--set",
                f"train.seed={seed}",
                "-q",
            ],
        )
        assert r.exit_code == 0, r.output
    return root / "runs"


def test_compare_end_to_end_on_real_runs(two_real_runs, tmp_path):
    out = tmp_path / "cmp"
    result = runner.invoke(
        app, ["compare", *map(str, sorted(two_real_runs.iterdir())), "--out", str(out), "--threshold", "0.2"]
    )
    assert result.exit_code == 0, result.output
    assert "| base " in result.output and "| 2 " in result.output  # the two seeds form one group
    for name in ["report.md", "compare.csv", "accuracy.png", "losses.png", "features_grid.png"]:
        assert (out / name).stat().st_size > 0, name
    assert "![features_grid.png](features_grid.png)" in (out / "report.md").read_text()


def test_plot_command_rebuilds_curves_and_gif(two_real_runs):
    run = two_real_runs / "base_s0"
    (run / "plots" / "features.gif").unlink()
    result = runner.invoke(app, ["plot", str(run)])
    assert result.exit_code == 0, result.output
    assert (run / "plots" / "features.gif").read_bytes()[:6] == b"GIF89a"


def test_a_run_given_twice_counts_once(tmp_path):
    a = fake_run(tmp_path, "a", [0.5, 0.99])
    result = compare([a, a, tmp_path / "a"], tmp_path / "out", echo=quiet)
    assert [r[1] for r in result["rows"]] == ["1"]


def test_v1_claims_need_configs_that_differ_only_where_the_seed_says(tmp_path):
    runs = [
        fake_run(tmp_path, "v1_0", [0.9, 0.99]),
        fake_run(tmp_path, "v1_1", [0.5, 0.97], distance="sqrt"),
        fake_run(tmp_path, "v1_2", [0.5, 0.97], distance="sqrt", arch="shallow"),
    ]
    cfg = yaml.safe_load((runs[2] / "config.yaml").read_text())
    cfg["loss"]["lamda"] = 0.5  # no longer V1.1 with a shallower net
    (runs[2] / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert compare(runs, tmp_path / "out", echo=quiet)["claims"] == []
