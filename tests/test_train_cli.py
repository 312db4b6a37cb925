"""End-to-end: the CLI trains real runs on small real-MNIST subsets and writes every file."""

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from centerexp.cli import app
from centerexp.rundir.io import FILE_MODE
from centerexp.rundir.records import read_metrics
from centerexp.rundir.schema import METRIC_COLUMNS

from .conftest import CONFIGS, snapshot, write_config

runner = CliRunner()

RUN_FILES = [
    "config.yaml",
    "command.txt",
    "env.json",
    "metrics.csv",
    "summary.json",
    "features.pt",
    "checkpoints/last.pt",
    "plots/loss_curves.png",
    "plots/features.png",
    "plots/features.gif",
    "plots/features/epoch_001.png",
    "plots/features/epoch_002.png",
]


def cli(*args):
    return runner.invoke(app, list(args))


@pytest.fixture(scope="module")
def v1_run(tmp_path_factory):
    """The V1.0 deep net, two tiny epochs on real MNIST, through the CLI."""
    runs = tmp_path_factory.mktemp("runs")
    result = cli(
        "train",
        str(CONFIGS / "v1_0.yaml"),
        "--runs-dir",
        str(runs),
        "--set",
        "train.epochs=2",
        "--set",
        "data.train_subset=256",
        "--set",
        "data.test_subset=128",
        "--set",
        "train.batch_size=64",
    )
    return runs / "v1_0", result


def test_cli_run_writes_every_file(v1_run):
    run, result = v1_run
    assert result.exit_code == 0, result.output
    assert "completed after 2 epochs" in result.output
    for name in RUN_FILES:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    assert (run / "plots/loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "plots/features.gif").read_bytes()[:6] == b"GIF89a"
    for name in ["summary.json", "checkpoints/last.pt", "plots/loss_curves.png"]:  # atomic writes keep normal modes
        assert (run / name).stat().st_mode & 0o777 == FILE_MODE, name


def test_run_records_what_produced_it(v1_run):
    run, _ = v1_run
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["train"]["epochs"] == 2 and cfg["data"]["train_subset"] == 256 and cfg["model"]["arch"] == "deep"
    assert "--set train.epochs=2" in (run / "command.txt").read_text()
    env = json.loads((run / "env.json").read_text())
    for key in ["python", "torch", "torchvision", "device", "threads", "precision", "git"]:
        assert key in env
    assert env["torch"] == torch.__version__ and set(env["git"]) == {"commit", "dirty"}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_done"] == 2 and summary["seed"] == 0
    for key in ["final_test_acc", "best_test_acc", "wall_seconds"]:
        assert summary[key] >= 0


def test_metrics_csv_has_one_row_per_epoch(v1_run):
    run, _ = v1_run
    rows = read_metrics(run / "metrics.csv")
    assert list(rows[0]) == METRIC_COLUMNS
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for r in rows:
        assert 0 <= float(r["test_acc"]) <= 1 and float(r["train_center"]) > 0 and float(r["lr"]) == 0.001
        assert float(r["train_loss"]) == pytest.approx(float(r["train_ce"]) + float(r["train_center"]), rel=1e-5)


def test_checkpoint_is_plain_data(v1_run):
    run, _ = v1_run
    ckpt = torch.load(run / "checkpoints/last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["config"]["model"]["arch"] == "deep"
    assert ckpt["center_loss"]["centers"].shape == (10, 2)
    features = torch.load(run / "features.pt", weights_only=True)
    assert features["features"].shape == (128, 2) and features["labels"].shape == (128,)


def test_existing_run_is_never_overwritten_silently(v1_run):
    run, _ = v1_run
    before = snapshot(run)
    result = cli("train", str(CONFIGS / "v1_0.yaml"), "--runs-dir", str(run.parent))
    assert result.exit_code == 2
    assert f"run folder {run} already exists" in result.output and "--overwrite" in result.output
    assert "Traceback" not in result.output
    assert snapshot(run) == before


def test_overwrite_replaces_the_run(tmp_path):
    cfg = write_config(tmp_path / "tiny.yaml", train={"epochs": 1}, data={"train_subset": 512, "test_subset": 256})
    runs = tmp_path / "runs"
    assert cli("train", str(cfg), "--runs-dir", str(runs), "-q").exit_code == 0
    (runs / "tiny" / "marker").write_text("old")
    result = cli("train", str(cfg), "--runs-dir", str(runs), "--overwrite", "--name", "tiny")
    assert result.exit_code == 0, result.output
    assert not (runs / "tiny" / "marker").exists() and (runs / "tiny" / "metrics.csv").is_file()


def test_baseline_learns_on_real_mnist(tmp_path):
    """The overview setup on 4,096 real images for 3 epochs: well above chance (0.10)."""
    cfg = write_config(
        tmp_path / "baseline.yaml", train={"epochs": 3}, data={"train_subset": 4096, "test_subset": 2048}
    )
    result = cli("train", str(cfg), "--runs-dir", str(tmp_path / "runs"))
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "runs/baseline/summary.json").read_text())
    assert summary["final_test_acc"] > 0.2
    rows = read_metrics(tmp_path / "runs/baseline/metrics.csv")
    assert float(rows[-1]["train_ce"]) < float(rows[0]["train_ce"])


@pytest.mark.parametrize("update", ["sgd", "ema"])
def test_centers_move_during_training(tmp_path, update):
    from centerexp.config import load_config
    from centerexp.rundir.folder import create_run_dir
    from centerexp.training.train import train

    cfg = load_config(
        write_config(
            tmp_path / "c.yaml",
            train={"epochs": 1},
            loss={"center_update": update},
            data={"train_subset": 512, "test_subset": 256},
        )
    )
    torch.manual_seed(cfg.train.seed)
    from centerexp.training.train import build_parts

    initial = build_parts(cfg, torch.device("cpu")).aux_loss.points.detach().clone()
    run = create_run_dir(tmp_path / "runs", "c", overwrite=False)
    train(cfg, run, progress=False)
    final = torch.load(run / "checkpoints/last.pt", weights_only=True)["center_loss"]["centers"]
    assert (final - initial).abs().max() > 1e-3
