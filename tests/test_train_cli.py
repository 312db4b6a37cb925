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

from .conftest import CONFIGS, assert_events_match_metrics, read_events, snapshot, write_config

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
    assert "v1_0 epoch 1/2, step 4/8: train loss" in result.output  # 256 images / 64: 4 steps per epoch
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
    from centerexp.training.loop import build_parts

    initial = build_parts(cfg, torch.device("cpu")).aux_loss.points.detach().clone()
    run = create_run_dir(tmp_path / "runs", "c", overwrite=False)
    train(cfg, run, progress=False)
    final = torch.load(run / "checkpoints/last.pt", weights_only=True)["center_loss"]["centers"]
    assert (final - initial).abs().max() > 1e-3


# --- a small run's fixed cost: what it draws, and when -----------------------------------------

TINY = {
    "train": {"epochs": 2, "batch_size": 64, "threads": 1, "precision": "fp32", "eval_every": 3},
    "data": {"train_subset": 256, "test_subset": 200, "subset_mode": "random"},
    "plot": {"max_points": 150, "gif": True},
}  # 4 steps per epoch: evaluations at steps 3, 4 | 6, 8


def test_a_small_run_draws_its_figures_after_training_and_leaves_determinism_at_the_default(
    tmp_path, monkeypatch, capsys
):
    """The causes of a tiny run's fixed cost, not its time: no figure is drawn per evaluation inside
    the loop (each frame once, after the last stretch), and no call switches determinism to the
    value it already has (torch.use_deterministic_algorithms imports torch._inductor's config)."""
    from centerexp import plots
    from centerexp.training import train as train_module
    from centerexp.training.train import start_run

    torch.use_deterministic_algorithms(False)  # torch's default (another test may have switched it)
    switched, stretches, drawn = [], [], []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda *a, **k: switched.append(a))
    real_steps = train_module.train_steps
    monkeypatch.setattr(train_module, "train_steps", lambda *a, **k: stretches.append(1) or real_steps(*a, **k))
    for name in ("plot_features", "plot_loss_curves", "make_gif"):
        real = getattr(plots, name)
        monkeypatch.setattr(
            plots, name, lambda *a, name=name, real=real, **k: drawn.append((name, len(stretches))) or real(*a, **k)
        )
    run, summary = start_run(write_config(tmp_path / "tiny.yaml", **TINY), [], tmp_path, "tiny", progress=False)
    assert summary["status"] == "completed" and len(stretches) == 4
    assert switched == []
    # Drawn once each, all after the 4th (last) stretch: 4 frames, the loss curves, the GIF.
    assert sorted(drawn) == sorted([("plot_features", 4)] * 4 + [("plot_loss_curves", 4), ("make_gif", 4)])
    frames = sorted(p.name for p in (run / "plots" / "features").glob("*.png"))
    assert frames == ["step_0000003.png", "step_0000004.png", "step_0000006.png", "step_0000008.png"]
    out = capsys.readouterr().out
    assert "tiny step 3/8: train loss" in out and "tiny epoch 2/2, step 8/8: train loss" in out
    assert "epoch 0.75" not in out


def test_the_command_skips_the_interpreters_last_collection_however_it_ends(monkeypatch):
    """gc.freeze() as `centerexp` exits, on success and on error exits alike: the interpreter's last
    collection over torch's and matplotlib's objects was 0.5 s of a small run's wall time."""
    from centerexp import cli

    frozen = []
    monkeypatch.setattr(cli.gc, "freeze", lambda: frozen.append(True))
    for outcome in (None, SystemExit(3)):

        def command(outcome=outcome):
            if outcome is not None:
                raise outcome

        monkeypatch.setattr(cli, "app", command)
        if outcome is None:
            cli.main()
        else:
            with pytest.raises(SystemExit) as exited:
                cli.main()
            assert exited.value.code == 3
    assert frozen == [True, True]


def test_a_long_run_redraws_its_figures_while_it_trains(tmp_path, monkeypatch):
    """When drawing is due (here always), the evaluation draws the frames so far and the loss curves
    before its checkpoint, and the end draws only what is new: the same files, each frame once."""
    from centerexp import plots
    from centerexp.training import outputs
    from centerexp.training.train import start_run

    drawn = []
    real = plots.plot_features
    monkeypatch.setattr(
        plots, "plot_features", lambda panels, path, *a, **k: drawn.append(path.name) or real(panels, path, *a, **k)
    )
    monkeypatch.setattr(outputs, "REFRESH_SECONDS", 0.0)
    monkeypatch.setattr(outputs, "REFRESH_SHARE", float("inf"))
    run, _ = start_run(write_config(tmp_path / "tiny.yaml", **TINY), [], tmp_path, "tiny", progress=False)
    assert drawn == ["step_0000003.png", "step_0000004.png", "step_0000006.png", "step_0000008.png"]
    assert [i.step for i in read_events(run).Images("features")] == [3, 4, 6, 8]
    assert (run / "plots" / "loss_curves.png").is_file() and (run / "plots" / "features.gif").is_file()


def random_panels(seed: int, digits: int = 10) -> tuple[list[tuple], str]:
    gen = torch.Generator().manual_seed(seed)
    scale = 1 + seed  # other limits, other ticks in each frame
    panels = []
    for name, n in (("train", 300), ("test", 200)):
        features = torch.randn(n, 2, generator=gen) * scale
        labels = torch.randint(0, digits, (n,), generator=gen)  # digits < 10: some digits without points
        centers = torch.randn(10, 2, generator=gen) * scale
        panels.append((features, labels, centers, f"{name} features (seed {seed})"))
    return panels, f"run: step {seed}"


def test_frames_drawn_on_one_reused_figure_are_the_pngs_a_fresh_figure_gives(tmp_path):
    """Figure reuse and the worker thread that encodes the PNGs change no byte of a frame: the same
    file as plot_features on a new figure, which is the file savefig writes."""
    import io

    from centerexp import plots
    from centerexp.training.outputs import FrameWriter

    frames = [random_panels(seed, digits=10 if seed != 1 else 7) for seed in range(3)]
    writer = FrameWriter(gif=True)
    try:
        for i, (panels, title) in enumerate(frames):
            writer.draw(panels, tmp_path / f"reused_{i}.png", title, None)
    finally:
        writer.close()
    for i, (panels, title) in enumerate(frames):
        plots.plot_features(panels, tmp_path / f"fresh_{i}.png", title)
        assert (tmp_path / f"reused_{i}.png").read_bytes() == (tmp_path / f"fresh_{i}.png").read_bytes(), i
    figure = plots.FeatureFigure(2, True)
    panels, title = frames[0]
    figure.render(panels, title, plots.Projection.fit(panels[-1][0]))
    buffer = io.BytesIO()
    figure.fig.savefig(buffer, dpi=100, format="png")
    figure.close()
    assert buffer.getvalue() == (tmp_path / "fresh_0.png").read_bytes()
    # The GIF from frames reduced on the worker is the GIF from the PNGs read back.
    pngs = [tmp_path / f"reused_{i}.png" for i in range(3)]
    plots.make_gif(pngs, tmp_path / "ready.gif", ready=writer.palettes)
    plots.make_gif(pngs, tmp_path / "read.gif")
    assert (tmp_path / "ready.gif").read_bytes() == (tmp_path / "read.gif").read_bytes()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from centerexp.training.train import start_run

    tmp = tmp_path_factory.mktemp("tiny")
    run, _ = start_run(write_config(tmp / "tiny.yaml", **TINY), [], tmp / "runs", "tiny", progress=False)
    return run


def test_centerexp_plot_draws_the_frames_a_killed_run_kept(tiny_run, tmp_path):
    """A run killed before its end keeps each committed evaluation's frame as data: `centerexp plot`
    draws them, byte for byte the run's own figures."""
    import shutil

    run = tmp_path / "tiny"
    shutil.copytree(tiny_run, run)
    drawn = {p: p.read_bytes() for p in sorted((run / "plots").rglob("*.png")) + [run / "plots/features.gif"]}
    for path in drawn:
        path.unlink()
    result = cli("plot", str(run))
    assert result.exit_code == 0, result.output
    assert {p: p.read_bytes() for p in drawn} == drawn


def test_a_stopped_and_resumed_run_shows_each_frame_and_row_once_in_tensorboard(tmp_path, monkeypatch):
    """SIGINT during the 3rd evaluation: the run stops after committing it and draws what it has
    (logging those images); its resume purges tb/ after step 0 and logs every row and image again."""
    import os
    import signal

    from centerexp.training import train as train_module
    from centerexp.training.train import Interrupted, resume_run, start_run

    real, calls = train_module.evaluate, []

    def evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", evaluate)
    with pytest.raises(Interrupted, match="after step 6/8 in epoch 2"):
        start_run(write_config(tmp_path / "tiny.yaml", **TINY), [], tmp_path, "tiny", progress=False)
    run = tmp_path / "tiny"
    assert [i.step for i in read_events(run).Images("features")] == [3, 4, 6]  # drawn when it stopped
    assert (run / "plots" / "loss_curves.png").is_file() and not (run / "plots" / "features.gif").exists()
    monkeypatch.undo()
    _, summary = resume_run(run, progress=False)
    assert summary["status"] == "completed"
    assert [i.step for i in read_events(run).Images("features")] == [3, 4, 6, 8]
    assert_events_match_metrics(run)


def test_mnist_is_read_as_torchvision_reads_it():
    from torchvision.datasets import MNIST

    from centerexp.config import DataConfig
    from centerexp.training.data import data_root, load_mnist

    cfg = DataConfig()
    for split, train in zip(load_mnist(cfg, 0), (True, False)):
        reference = MNIST(str(data_root(cfg)), train=train, download=False)
        assert torch.equal(split.images, reference.data.unsqueeze(1)) and torch.equal(split.labels, reference.targets)
