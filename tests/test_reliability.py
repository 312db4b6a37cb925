"""Runs that can be trusted: bit-exact reruns, resume after SIGKILL / SIGINT / SIGTERM, clean errors."""

import errno
import json
import os
import shutil
import signal
import sys
import textwrap

import pytest
import torch
from typer.testing import CliRunner

from centerexp.cli import app

from .conftest import metrics_without_timing, run_cli, snapshot, write_config

runner = CliRunner()
# baseline on 2,048 train / 1,024 test images, batch 256: 8 training steps per epoch, then the
# test center loss is scored in 4 chunks, so CenterLoss.forward runs 12 times per epoch.
TINY = {"train": {"epochs": 3}, "data": {"train_subset": 2048, "test_subset": 1024, "subset_mode": "random"}}
CALLS_PER_EPOCH = 12


def cli(*args):
    return runner.invoke(app, list(args))


def summary(run):
    return json.loads((run / "summary.json").read_text())


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    return write_config(tmp_path_factory.mktemp("cfg") / "tiny.yaml", **TINY)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_config):
    """The uninterrupted run every resumed run must match."""
    runs = tmp_path_factory.mktemp("ref")
    assert cli("train", str(tiny_config), "--runs-dir", str(runs), "-q").exit_code == 0
    return runs / "tiny"


def test_rerun_is_bit_identical(tmp_path, tiny_config, reference_run):
    assert cli("train", str(tiny_config), "--runs-dir", str(tmp_path), "-q").exit_code == 0
    assert metrics_without_timing(tmp_path / "tiny") == metrics_without_timing(reference_run)
    assert len(metrics_without_timing(reference_run)) == 3


def test_conv_rerun_is_bit_identical(tmp_path):
    """With the convolution algorithms auto chooses, read back from the speed cache by both runs
    (the session's, seeded by conftest.seed_speed_cache for this net, batch and thread count)."""
    cfg = write_config(
        tmp_path / "conv.yaml",
        base="v1_2",
        train={"epochs": 1, "batch_size": 16, "threads": 1, "precision": "fp32"},
        data={"train_subset": 48, "test_subset": 32},
    )
    for name in ("a", "b"):
        assert cli("train", str(cfg), "--runs-dir", str(tmp_path), "--name", name, "-q").exit_code == 0
    assert metrics_without_timing(tmp_path / "a") == metrics_without_timing(tmp_path / "b")


def test_different_seed_gives_different_numbers(tmp_path, tiny_config, reference_run):
    assert cli("train", str(tiny_config), "--runs-dir", str(tmp_path), "--set", "train.seed=1", "-q").exit_code == 0
    assert metrics_without_timing(tmp_path / "tiny") != metrics_without_timing(reference_run)


def _self_signalling_run(tmp_path, config, sig, at_call, extra=()):
    """Train in a subprocess that sends itself ``sig`` from inside CenterLoss.forward call ``at_call``."""
    script = textwrap.dedent(f"""
        import os, sys
        from centerexp.training import losses
        original, calls = losses.CenterLoss.forward, [0]
        def forward(self, features, labels):
            calls[0] += 1
            if calls[0] == {at_call}:
                os.kill(os.getpid(), {int(sig)})
            return original(self, features, labels)
        losses.CenterLoss.forward = forward
        sys.argv = ["centerexp", "train", {str(config)!r}, "--runs-dir", {str(tmp_path)!r}, "-q", *{list(extra)!r}]
        from centerexp.cli import main
        main()
    """)
    import subprocess

    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path, tiny_config, reference_run):
    at = 2 * CALLS_PER_EPOCH + 4  # epoch 3, fourth training batch
    killed = _self_signalling_run(tmp_path, tiny_config, signal.SIGKILL, at)
    assert killed.returncode == -signal.SIGKILL
    run = tmp_path / "tiny"
    assert summary(run)["status"] == "running"  # nobody could record the kill
    assert torch.load(run / "checkpoints/last.pt", weights_only=True)["epoch"] == 2
    assert len(metrics_without_timing(run)) == 2
    resumed = run_cli("train", "--resume", str(run), "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert metrics_without_timing(run) == metrics_without_timing(reference_run)
    assert summary(run)["status"] == "completed"
    assert "--resume" in (run / "command.txt").read_text().splitlines()[-1]


@pytest.mark.parametrize(
    "sig, code, at, message",
    [
        (signal.SIGINT, 130, CALLS_PER_EPOCH + 3, "stopped by SIGINT during epoch 2"),  # mid-training
        (signal.SIGTERM, 143, CALLS_PER_EPOCH + 3, "stopped by SIGTERM during epoch 2"),
        (signal.SIGINT, 130, CALLS_PER_EPOCH - 1, "stopped by SIGINT after epoch 1"),  # during evaluation
    ],
)
def test_sigint_sigterm_stop_cleanly_and_resume(tmp_path, tiny_config, reference_run, sig, code, at, message):
    stopped = _self_signalling_run(tmp_path, tiny_config, sig, at)
    assert stopped.returncode == code, stopped.stderr
    assert message in stopped.stderr
    assert "resume with: centerexp train --resume" in stopped.stderr and "Traceback" not in stopped.stderr
    run = tmp_path / "tiny"
    assert summary(run)["status"] == "interrupted" and summary(run)["epochs_done"] == 1
    assert torch.load(run / "checkpoints/last.pt", weights_only=True)["epoch"] == 1
    assert cli("train", "--resume", str(run), "-q").exit_code == 0
    assert metrics_without_timing(run) == metrics_without_timing(reference_run)
    env = json.loads((run / "env.json").read_text())
    assert len(env["resumes"]) == 1 and env["resumes"][0]["torch"] == torch.__version__


def test_resume_keeps_the_runs_thread_count_unless_told(tmp_path, tiny_config):
    """The bits of a run depend on its thread count: a resume trains on with the run's own (from
    env.json), not this process's default; --threads picks another, and env.json records it."""
    from centerexp.training.runtime import DEFAULT_THREADS

    own, other = (1, 2) if DEFAULT_THREADS != 1 else (2, 1)  # own: never what this process would pick
    stopped = _self_signalling_run(tmp_path, tiny_config, signal.SIGINT, CALLS_PER_EPOCH + 3, ["--threads", str(own)])
    assert stopped.returncode == 130, stopped.stderr
    run, told = tmp_path / "tiny", tmp_path / "told"
    shutil.copytree(run, told)
    assert cli("train", "--resume", str(run), "-q").exit_code == 0
    env = json.loads((run / "env.json").read_text())
    assert env["threads"] == own and [r["threads"] for r in env["resumes"]] == [own]
    # like with like: an uninterrupted run at the same thread count is matched bit for bit
    assert (
        cli("train", str(tiny_config), "--runs-dir", str(tmp_path / "ref"), "--threads", str(own), "-q").exit_code == 0
    )
    assert metrics_without_timing(run) == metrics_without_timing(tmp_path / "ref" / "tiny")

    assert cli("train", "--resume", str(told), "--threads", str(other), "-q").exit_code == 0
    env = json.loads((told / "env.json").read_text())
    assert env["threads"] == own and [r["threads"] for r in env["resumes"]] == [other]
    assert summary(told)["status"] == "completed"


def test_resume_keeps_the_precision_auto_resolved_to(tmp_path, tiny_config):
    """train.precision: auto is resolved once, when the run starts: a resume on a machine (or with a
    cache) that would decide otherwise trains on in the run's own precision."""
    assert cli("train", str(tiny_config), "--runs-dir", str(tmp_path), "--set", "train.epochs=1", "-q").exit_code == 0
    run = tmp_path / "tiny"
    env = json.loads((run / "env.json").read_text())
    assert env["precision"] == "fp32"  # what auto resolved to here (the linear net keeps fp32)
    (run / "env.json").write_text(json.dumps({**env, "precision": "bf16"}))  # as if it had resolved to bf16
    args = ["train", "--resume", str(run), "--set", "train.epochs=2", "--allow-config-change", "-q"]
    assert cli(*args).exit_code == 0
    resumed = json.loads((run / "env.json").read_text())["resumes"][-1]
    assert resumed["precision"] == "bf16" and "resolved when the run started" in resumed["precision_choice"]["mode"]


def test_resume_keeps_the_conv_algorithms_and_a_run_from_before_them_resumes_with_the_library(tmp_path):
    config = write_config(
        tmp_path / "conv.yaml",
        base="v1_2",
        train={"epochs": 1, "batch_size": 16, "threads": 1, "precision": "fp32"},
        data={"train_subset": 32, "test_subset": 16},
        plot={"gif": False},
    )
    assert cli("train", str(config), "--runs-dir", str(tmp_path), "-q").exit_code == 0
    run = tmp_path / "conv"
    env = json.loads((run / "env.json").read_text())
    assert len(env["conv_algorithms"]) == 6 and "seconds" in env["conv_choice"]  # auto read the (seeded) cache
    everything_fft = dict.fromkeys(env["conv_algorithms"], "fft")  # as if this machine had chosen fft throughout
    (run / "env.json").write_text(json.dumps({**env, "conv_algorithms": everything_fft}))
    assert cli("train", "--resume", str(run), "--set", "train.epochs=2", "--allow-config-change", "-q").exit_code == 0
    resumed = json.loads((run / "env.json").read_text())["resumes"][-1]
    assert resumed["conv_algorithms"] == everything_fft
    assert "resolved when the run started" in resumed["conv_choice"]["mode"]

    env = json.loads((run / "env.json").read_text())
    for entry in [env, *env["resumes"]]:  # a run written before conv_algorithms were recorded
        del entry["conv_algorithms"], entry["conv_choice"]
    (run / "env.json").write_text(json.dumps(env))
    assert cli("train", "--resume", str(run), "--set", "train.epochs=3", "--allow-config-change", "-q").exit_code == 0
    resumed = json.loads((run / "env.json").read_text())["resumes"][-1]
    assert resumed["conv_algorithms"] == {} and "the library" in resumed["conv_choice"]["mode"]
    assert summary(run)["status"] == "completed" and summary(run)["epochs_done"] == 3


def test_a_run_that_dies_during_setup_can_be_resumed(tmp_path, tiny_config, reference_run, monkeypatch):
    import centerexp.training.train as train_module

    def dies(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "load_mnist", dies)
    assert cli("train", str(tiny_config), "--runs-dir", str(tmp_path), "-q").exit_code == 130
    run = tmp_path / "tiny"
    assert summary(run)["status"] == "running"  # nothing got to record the end: still resumable
    monkeypatch.undo()
    result = cli("train", "--resume", str(run), "-q")
    assert result.exit_code == 0, result.output
    assert metrics_without_timing(run) == metrics_without_timing(reference_run)


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit])
def test_a_process_stopped_inside_training_leaves_an_interrupted_run_that_resumes(
    tmp_path, tiny_config, reference_run, monkeypatch, stop
):
    """KeyboardInterrupt, or SystemExit (submitit requeueing a preempted job), raised inside the
    training loop rather than delivered as a signal: the run is marked interrupted, not failed, the
    exception goes on up, and the run resumes from its last checkpoint to the uninterrupted run."""
    from centerexp.rundir.records import RunSummary
    from centerexp.training.train import start_run

    finished, calls = RunSummary.epoch_finished, [0]

    def stopped_after_epoch_2(self):
        finished(self)
        calls[0] += 1
        if calls[0] == 2:
            raise stop

    with monkeypatch.context() as patch:
        patch.setattr(RunSummary, "epoch_finished", stopped_after_epoch_2)
        with pytest.raises(stop):
            start_run(tiny_config, [], tmp_path, progress=False)
    run = tmp_path / "tiny"
    assert summary(run)["status"] == "interrupted" and summary(run)["epochs_done"] == 2
    assert summary(run)["error"].startswith(f"process stopped ({stop.__name__}); resume with: centerexp train --resume")
    assert torch.load(run / "checkpoints/last.pt", weights_only=True)["epoch"] == 2
    result = cli("train", "--resume", str(run), "-q")  # the lock went with the exception
    assert result.exit_code == 0, result.output
    assert metrics_without_timing(run) == metrics_without_timing(reference_run)
    assert summary(run)["status"] == "completed"


def test_arms_trained_on_another_device_type_or_torch_are_not_comparable(tmp_path, reference_run):
    """Not comparable: precision (test_claims.py), device type, torch version, of every process that
    trained a run (env.json and its resumes); the device's index does not matter."""
    import yaml

    from centerexp.analysis import claims
    from centerexp.analysis.runs import load_runs
    from centerexp.analysis.stats import NOT_COMPARABLE

    copies = iter(range(1000))

    def arm(name: str, envs: list[dict]) -> claims.Arm:
        """Three runs, copies of the reference run as seeds 0-2, trained (and resumed) in ``envs``."""
        made = claims.Arm(name, name)
        for seed in range(3):
            run = tmp_path / f"{name}_{next(copies)}"
            shutil.copytree(reference_run, run, ignore=shutil.ignore_patterns("tb", "plots", "checkpoints"))
            cfg = yaml.safe_load((run / "config.yaml").read_text())
            cfg["train"]["seed"] = seed
            (run / "config.yaml").write_text(yaml.safe_dump(cfg))
            env = json.loads((run / "env.json").read_text())
            first, *resumes = [{**env, **e} for e in envs]
            (run / "env.json").write_text(json.dumps({**first, "resumes": resumes}))
            made.runs[seed] = load_runs([run])[0]
        return made

    claim = claims.ClaimSpec("1", "a beats b", "a", "b", "final_test_acc", "paired")
    cpu = {"device": "cpu", "torch": torch.__version__, "precision": "fp32"}

    def verdict(a_envs, b_envs):
        result = claims.judge(claim, {"a": arm("a", a_envs), "b": arm("b", b_envs)}).result
        assert (result.verdict == NOT_COMPARABLE) == ("different arithmetic" in " ".join(result.notes))
        return result.verdict

    assert verdict([cpu], [cpu]) != NOT_COMPARABLE
    assert verdict([cpu], [{**cpu, "device": "cuda:0"}]) == NOT_COMPARABLE
    assert verdict([cpu], [{**cpu, "torch": "2.99.0"}]) == NOT_COMPARABLE
    assert verdict([cpu], [cpu, {**cpu, "torch": "2.99.0"}]) == NOT_COMPARABLE  # resumed under another torch
    assert verdict([{**cpu, "device": "cuda:0"}], [{**cpu, "device": "cuda:1"}]) != NOT_COMPARABLE


def test_resume_without_a_checkpoint_restarts_from_epoch_0(workspace, reference_run):
    runs, _ = workspace
    (runs / "tiny" / "checkpoints" / "last.pt").unlink()  # rows recorded, but no epoch committed
    result = cli("train", "--resume", str(runs / "tiny"), "-q")
    assert result.exit_code == 0, result.output
    assert metrics_without_timing(runs / "tiny") == metrics_without_timing(reference_run)


def test_resume_rejects_new_run_options(workspace):
    runs, before = workspace
    result = cli("train", "--resume", str(runs / "tiny"), "--name", "other")
    check_clean_error(result, 2, "--resume RUN takes no CONFIG, --runs-dir, --name or --overwrite")
    assert snapshot(runs) == before


def test_resume_refuses_a_changed_config_unless_told(tmp_path, reference_run):
    run = tmp_path / "tiny"
    shutil.copytree(reference_run, run)
    before = snapshot(run)
    result = cli("train", "--resume", str(run), "--set", "train.epochs=4")
    assert result.exit_code == 2
    assert "config differs from the checkpoint's in train.epochs" in result.output
    assert snapshot(run) == before
    result = cli("train", "--resume", str(run), "--set", "train.epochs=4", "--allow-config-change", "-q")
    assert result.exit_code == 0, result.output
    assert [int(r["epoch"]) for r in metrics_without_timing(run)] == [1, 2, 3, 4]
    # a completed run resumed again has nothing to do and changes no metrics
    rows = metrics_without_timing(run)
    assert cli("train", "--resume", str(run), "-q").exit_code == 0
    assert metrics_without_timing(run) == rows


def test_nan_loss_fails_the_run_and_keeps_the_last_good_checkpoint(tmp_path, tiny_config, monkeypatch):
    from centerexp.training import losses

    original, calls = losses.CenterLoss.forward, [0]

    def forward(self, features, labels):
        calls[0] += 1
        value = original(self, features, labels)
        return value * float("nan") if calls[0] == CALLS_PER_EPOCH + 3 else value

    monkeypatch.setattr(losses.CenterLoss, "forward", forward)
    result = cli("train", str(tiny_config), "--runs-dir", str(tmp_path), "-q")
    assert result.exit_code == 1
    assert "training loss became nan at epoch 2, batch 3" in result.output
    run = tmp_path / "tiny"
    assert summary(run)["status"] == "failed" and "epoch 2, batch 3" in summary(run)["error"]
    assert torch.load(run / "checkpoints/last.pt", weights_only=True)["epoch"] == 1
    assert len(metrics_without_timing(run)) == 1


# --- bad input: one clear line, non-zero exit, no traceback, nothing earlier changed ----------


@pytest.fixture
def workspace(tmp_path, reference_run):
    """A runs folder holding one finished run, and its snapshot."""
    runs = tmp_path / "runs"
    shutil.copytree(reference_run, runs / "tiny")
    return runs, snapshot(runs)


def check_clean_error(result, code, *fragments):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output  # exactly one error line (epoch log lines may precede it)
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_missing_config(workspace, tmp_path):
    runs, before = workspace
    check_clean_error(
        cli("train", str(tmp_path / "nope.yaml"), "--runs-dir", str(runs)), 2, "config file not found", "nope.yaml"
    )
    assert snapshot(runs) == before


def test_yaml_syntax_error_names_the_line(workspace, tmp_path):
    runs, before = workspace
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: 3\n  seed: [1\n")
    check_clean_error(cli("train", str(bad), "--runs-dir", str(runs)), 2, "bad.yaml", "line 4", "YAML syntax error")
    assert snapshot(runs) == before


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("train.epcohs=2", ["unknown key 'train.epcohs'", "did you mean 'train.epochs'"]),
        ("train.batch_size=big", ["train.batch_size", "expected an integer", "'big'"]),
        ("train.lr=0", ["train.lr must be > 0"]),
        ("train.batch_size=0", ["train.batch_size must be >= 1"]),
        ("train.epochs=0", ["train.epochs must be >= 1"]),
        ("data.train_subset=0", ["data.train_subset must be >= 2"]),
        ("loss.alpha=2", ["loss.alpha must be in [0, 1], got 2.0"]),
        ("model.arch=vgg", ["model.arch must be one of deep, shallow, linear"]),
        ("loss.distance=l1", ["loss.distance must be one of squared, sqrt"]),
        ("loss.center_update=momentum", ["loss.center_update must be one of sgd, ema"]),
        ("train.device=gpu", ["train.device must be one of auto, cpu, cuda"]),
    ],
)
def test_bad_values(workspace, tiny_config, override, fragments):
    runs, before = workspace
    check_clean_error(
        cli("train", str(tiny_config), "--runs-dir", str(runs), "--name", "new", "--set", override), 2, *fragments
    )
    assert snapshot(runs) == before and not (runs / "new").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu(workspace, tiny_config):
    runs, before = workspace
    result = cli("train", str(tiny_config), "--runs-dir", str(runs), "--name", "new", "--set", "train.device=cuda")
    check_clean_error(result, 2, "train.device is 'cuda' but no CUDA GPU is available")
    assert snapshot(runs) == before and not (runs / "new").exists()


def test_existing_run_folder(workspace, tiny_config):
    runs, before = workspace
    check_clean_error(
        cli("train", str(tiny_config), "--runs-dir", str(runs)), 2, "already exists", "--overwrite", "--resume"
    )
    assert snapshot(runs) == before


def test_resume_on_a_folder_that_is_not_a_run(workspace, tmp_path):
    runs, before = workspace
    (tmp_path / "junk").mkdir()
    check_clean_error(cli("train", "--resume", str(tmp_path / "junk")), 2, "not a centerexp run folder")
    assert snapshot(runs) == before


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_resume_with_a_corrupt_checkpoint(workspace, damage):
    runs, _ = workspace
    ckpt = runs / "tiny" / "checkpoints" / "last.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 100)
    before = snapshot(runs)
    check_clean_error(cli("train", "--resume", str(runs / "tiny")), 1, "checkpoint", "last.pt", "cannot be read")
    assert snapshot(runs) == before


def test_corrupt_dataset_file(workspace, tiny_config, tmp_path, monkeypatch):
    from centerexp.training.data import prepare_mnist

    runs, before = workspace
    cache = prepare_mnist(tmp_path / "cache")
    victim = cache / "MNIST" / "raw" / "train-images-idx3-ubyte"
    victim.write_bytes(victim.read_bytes()[:-10])
    monkeypatch.setenv("CENTEREXP_DATA", str(cache))
    result = cli("train", str(tiny_config), "--runs-dir", str(runs), "--name", "new")
    check_clean_error(result, 1, "train-images-idx3-ubyte fails its checksum")
    assert snapshot(runs) == before and not (runs / "new").exists()


def test_disk_full_mid_run_is_a_clear_error(tmp_path, tiny_config, monkeypatch):
    import centerexp.rundir.io as runs_module

    real_mkstemp, checkpoint_writes = runs_module.tempfile.mkstemp, [0]

    def mkstemp(*args, prefix="", **kwargs):
        if "last.pt" in prefix:
            checkpoint_writes[0] += 1
            if checkpoint_writes[0] == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_mkstemp(*args, prefix=prefix, **kwargs)

    monkeypatch.setattr(runs_module.tempfile, "mkstemp", mkstemp)
    result = cli("train", str(tiny_config), "--runs-dir", str(tmp_path), "-q")
    check_clean_error(result, 1, "cannot write", "last.pt", "No space left on device")
    run = tmp_path / "tiny"
    assert torch.load(run / "checkpoints/last.pt", weights_only=True)["epoch"] == 1  # the good one survives
    assert summary(run)["status"] == "failed"


def test_read_only_runs_dir_is_a_clear_error(tmp_path, tiny_config, monkeypatch):
    from pathlib import Path

    real_mkdir, runs = Path.mkdir, tmp_path / "runs"

    def mkdir(self, *args, **kwargs):
        if runs in self.parents or self == runs:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    result = cli("train", str(tiny_config), "--runs-dir", str(runs))
    check_clean_error(result, 1, f"cannot create run folder {runs / 'tiny'}: Read-only file system")


def test_debug_shows_the_traceback(tmp_path):
    result = run_cli("--debug", "train", str(tmp_path / "nope.yaml"))
    assert result.returncode != 0 and "Traceback" in result.stderr
    plain = run_cli("train", str(tmp_path / "nope.yaml"))
    assert (
        plain.returncode == 2
        and "Traceback" not in plain.stderr
        and plain.stderr.startswith("error: config file not found")
    )


def test_deterministic_flag_is_recorded(tmp_path, tiny_config):
    try:
        args = ["--runs-dir", str(tmp_path), "--deterministic", "--set", "train.epochs=1", "-q"]
        result = cli("train", str(tiny_config), *args)
        assert result.exit_code == 0, result.output
        assert "deterministic: true" in (tmp_path / "tiny" / "config.yaml").read_text()
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
