"""TensorBoard: a run's tb/ (scalars, hparams, images, projector), features wider than 2-D, and
`centerexp board` (runs found and named, event files written for runs without them, errors, a
server that starts and leaves nothing listening). The real browser test is test_browser.py."""

import math
import shutil
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from centerexp import board, plots
from centerexp.cli import app
from centerexp.errors import CenterexpError
from centerexp.events import EMBEDDING, HPARAM_METRICS
from centerexp.rundir.records import read_metrics
from centerexp.training.train import start_run

from .conftest import REPO, assert_events_match_metrics, read_events, write_config

TINY = {
    "train": {"epochs": 2, "batch_size": 64, "threads": 1, "precision": "fp32", "eval_every": 3},
    "data": {"train_subset": 256, "test_subset": 200, "subset_mode": "random"},
    "plot": {"max_points": 150, "gif": True},
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("events")
    config = write_config(tmp / "tiny.yaml", **TINY)
    run, summary = start_run(config, [], tmp / "runs", "tiny", progress=False, identity={"experiment": "e", "arm": "a"})
    assert summary["status"] == "completed"
    return run


def test_every_metrics_column_is_a_scalar_with_the_csv_values(tiny_run):
    assert len(read_metrics(tiny_run / "metrics.csv")) == 4  # steps 3, 4 (epoch end), 6, 8
    assert_events_match_metrics(tiny_run)


def test_hparams_hold_the_flattened_config_and_the_metric_columns(tiny_run):
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = read_events(tiny_run).PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["model.arch"].string_value == "linear"
    assert start.hparams["train.eval_every"].number_value == 3
    assert start.hparams["data.test_subset"].number_value == 200
    assert start.hparams["arm"].string_value == "a" and start.hparams["experiment"].string_value == "e"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metrics = [m.name.tag for m in experiment.metric_infos]
    assert metrics == HPARAM_METRICS and "test/acc" in metrics and "time/wall_seconds" not in metrics


def test_each_evaluation_has_its_feature_figure_as_an_image(tiny_run):
    images = read_events(tiny_run).Images("features")
    assert [i.step for i in images] == [int(r["step"]) for r in read_metrics(tiny_run / "metrics.csv")]
    last = Image.open(__import__("io").BytesIO(images[-1].encoded_image_string))
    frame = Image.open(tiny_run / "plots" / "features" / "step_0000008.png")
    assert last.size == frame.size == (images[-1].width, images[-1].height)


def test_projector_embedding_has_features_labels_sprite_and_centers(tiny_run):
    data = torch.load(tiny_run / "features.pt", weights_only=True)
    folder = tiny_run / "tb" / "00008" / EMBEDDING
    tensors = np.loadtxt(folder / "tensors.tsv", delimiter="\t", ndmin=2)
    n = len(data["labels"])  # the plotted test sample (plot.max_points)
    assert n == 150 and tensors.shape == (n + 10, 2)
    np.testing.assert_allclose(tensors[:n], data["features"].numpy(), rtol=1e-5)
    np.testing.assert_allclose(tensors[n:], data["centers"].numpy(), rtol=1e-5)
    meta = (folder / "metadata.tsv").read_text().splitlines()
    assert meta[0] == "digit\tpoint"
    assert meta[1 : n + 1] == [f"{int(y)}\ttest image" for y in data["labels"]]
    assert meta[n + 1 :] == [f"{c}\tcenter" for c in range(10)]
    sprite = Image.open(folder / "sprite.png")
    side = math.ceil(math.sqrt(n + 10)) * 28
    assert sprite.size == (side, side)
    # The first thumbnail is the MNIST test image of the first point: bright strokes on black.
    first = np.asarray(sprite.convert("L"))[:28, :28]
    assert first.max() > 200 and first.mean() < 128
    pbtxt = (tiny_run / "tb" / "projector_config.pbtxt").read_text()
    assert pbtxt.count("embeddings {") == 1 and "single_image_dim: 28" in pbtxt


def test_tensorboard_off_writes_no_events(tmp_path):
    config = write_config(
        tmp_path / "c.yaml", **{**TINY, "plot": {"max_points": 50, "gif": False, "tensorboard": False}}
    )
    run, _ = start_run(config, ["train.epochs=1"], tmp_path, "off", progress=False)
    assert not (run / "tb").exists() and (run / "metrics.csv").exists()


# --- features wider than 2-D ------------------------------------------------------------------


def test_projection_matches_numpy_svd_up_to_sign():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=gen, dtype=torch.float64) * torch.tensor([5.0, 3.0, 1.0, 0.5, 0.1])
    x = x @ torch.linalg.qr(torch.randn(5, 5, generator=gen, dtype=torch.float64))[0]  # rotate
    projection = plots.Projection.fit(x)
    centered = x.numpy() - x.numpy().mean(0)
    u, s, vt = np.linalg.svd(centered, full_matrices=False)
    expected = centered @ vt[:2].T
    got = projection(x).double().numpy()
    for k in range(2):
        sign = np.sign(got[:, k] @ expected[:, k])
        np.testing.assert_allclose(got[:, k] * sign, expected[:, k], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(projection.explained, (s[:2] ** 2) / (s**2).sum(), rtol=1e-9)
    assert projection.axis_labels()[0] == f"PC1 ({100 * projection.explained[0]:.1f} % of variance)"
    assert plots.Projection.fit(x[:, :2]).axis_labels() == ("feature 1", "feature 2")


def test_feat_dim_3_run_plots_principal_components_on_one_basis(tmp_path, monkeypatch):
    labels = []
    original = plots.scatter_features

    def spy(ax, *args, **kwargs):
        original(ax, *args, **kwargs)
        labels.append((ax.get_xlabel(), ax.get_ylabel()))

    monkeypatch.setattr(plots, "scatter_features", spy)
    config = write_config(tmp_path / "c.yaml", **TINY, model={"feat_dim": 3})
    run, _ = start_run(config, [], tmp_path, "wide", progress=False)
    assert labels and all(x.startswith("PC1 (") and y.startswith("PC2 (") for x, y in labels)
    assert all(x.endswith("% of variance)") for x, _ in labels)
    # The GIF's frames were redrawn on one basis: the last frame's, which features.png shows.
    kept = sorted((run / "plots" / "features").glob("*.pt"))
    assert [p.stem for p in kept] == ["step_0000003", "step_0000004", "step_0000006", "step_0000008"]
    final = plots.Projection.fit(torch.load(kept[-1], weights_only=True)["panels"][-1][0])
    assert labels[-1] == final.axis_labels()  # the redraw of the last frame uses the final basis
    assert len({labels[i] for i in range(len(labels) - 8, len(labels))}) == 1  # 4 frames x 2 panels
    # Compactness stays in the full dimension; the projector gets all three coordinates.
    data = torch.load(run / "features.pt", weights_only=True)
    assert data["features"].shape[1] == 3
    tensors = np.loadtxt(run / "tb" / "00008" / EMBEDDING / "tensors.tsv", delimiter="\t", ndmin=2)
    assert tensors.shape[1] == 3


# --- centerexp board --------------------------------------------------------------------------


def test_board_names_runs_by_experiment_arm_and_seed(tiny_run, tmp_path):
    assert board.display_name(tiny_run) == "e/a/s0"
    plain = tmp_path / "plain"
    shutil.copytree(tiny_run, plain)
    (plain / "run.json").unlink()
    named = board.run_names(board.find_runs([tiny_run, plain]))
    assert named == {"e/a/s0": tiny_run.resolve(), "plain": plain.resolve()}


def test_board_writes_events_for_a_committed_reference_run(tmp_path):
    run = tmp_path / "v1_0_s0"
    shutil.copytree(REPO / "runs" / "reference" / "quick" / "v1_0_s0", run, ignore=shutil.ignore_patterns("tb"))
    assert not board.has_events(run)
    named = board.prepare([tmp_path], say=lambda line: None)
    assert named == {"v1/quick/v1_0/s0": run.resolve()} and board.has_events(run)
    assert_events_match_metrics(run)
    assert [i.step for i in read_events(run).Images("features")] == [90]  # drawn from features.pt
    data = torch.load(run / "features.pt", weights_only=True)
    sprite = np.asarray(Image.open(run / "tb" / "00090" / EMBEDDING / "sprite.png").convert("L"))
    assert sprite[:28, :28].max() > 200  # real thumbnails: the config's test sample matched features.pt
    assert len(np.loadtxt(run / "tb" / "00090" / EMBEDDING / "tensors.tsv", ndmin=2)) == len(data["labels"]) + 10


def test_board_errors_are_one_line_with_a_nonzero_exit(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["board", str(tmp_path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.count("\n") == 1 and result.output.startswith(f"error: {tmp_path}: ")
    assert result.output.rstrip().endswith("and no run folder lies beneath it")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(CenterexpError, match=f"--port {port}: 127.0.0.1:{port} is already in use"):
            board.check_port(port)
        result = runner.invoke(app, ["board", str(REPO / "runs" / "reference" / "quick"), "--port", str(port)])
        assert result.exit_code == 2 and f"127.0.0.1:{port} is already in use" in result.output


def test_board_server_serves_the_runs_and_stops(tiny_run, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    named = board.prepare([tiny_run], say=lambda line: None)
    server = board.start_server(board.link_runs(named, tmp_path / "logdir"), port)
    try:
        runs = urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=10).read().decode()
        assert '"e/a/s0"' in runs
    finally:
        board.stop_server(server)
    assert server.returncode is not None
    board.check_port(port)  # nothing left listening
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
