"""Fault injection: kill -9 a run at many moments of its life, resume it, get the uninterrupted run.

Each victim is a forked child of the test process (torch is already imported, so a kill costs
milliseconds, not an interpreter start). Two kinds of moments:
  - seeded random delays spread over the whole life of the run (setup, steps, evaluation, plots,
    checkpoint, summary, GIF);
  - named moments that a delay would rarely hit: inside the atomic write of the checkpoint (temp
    file present), of summary.json, while creating the run folder, right after the first metrics
    row (the manual scenario of issue 10), during evaluation and plots, during a resume.
The child runs with train.threads=1, so no OpenMP thread pool crosses the fork.
"""

import json
import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest

from centerexp.rundir.folder import RunBusy, RunLock, is_run_dir
from centerexp.rundir.records import read_metrics
from centerexp.training.train import resume_run, start_run

from .conftest import assert_events_match_metrics, metrics_without_timing, write_config

LINEAR = {
    "train": {"epochs": 3, "batch_size": 64, "threads": 1, "precision": "fp32"},
    "data": {"train_subset": 256, "test_subset": 128, "subset_mode": "random"},
    "plot": {"max_points": 100, "gif": True},
}
CONV = {
    "train": {"epochs": 2, "batch_size": 16, "threads": 1, "precision": "fp32"},
    "data": {"train_subset": 32, "test_subset": 16},
    "plot": {"max_points": 50, "gif": False},
}


def in_child(body, kill_after: float | None = None, timeout: float = 120) -> int:
    """Run ``body()`` in a forked child; SIGKILL it after ``kill_after`` seconds (if still alive).
    Returns the child's wait status."""
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            body()
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    killed = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        elapsed = timeout - (deadline - time.monotonic())
        if not killed and kill_after is not None and elapsed >= kill_after:
            os.kill(pid, signal.SIGKILL)
            killed = True
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("child run hung")
        time.sleep(0.002)


def recover(config: Path, runs: Path, name: str = "k") -> Path:
    """What a user does after a crash: --resume the run folder if there is one, else start again."""
    run = runs / name
    if is_run_dir(run):
        resume_run(run, progress=False)
    else:
        start_run(config, [], runs, name, progress=False)
    return run


def kill_self_when(target: str, match=lambda *a, **k: True, nth: int = 1) -> None:
    """Patch ``target`` ("module.attr", in the child) so that the process SIGKILLs itself on the
    ``nth`` call for which ``match(*args)`` holds, before the call does anything."""
    import importlib

    module_name, attr = target.rsplit(".", 1)
    module = {"os": os, "F": importlib.import_module("torch.nn.functional"), "shutil": shutil}.get(module_name)
    module = module or importlib.import_module(module_name)
    original, hits = getattr(module, attr), [0]

    def wrapper(*args, **kwargs):
        if match(*args, **kwargs):
            hits[0] += 1
            if hits[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(module, attr, wrapper)


@pytest.fixture(scope="module")
def linear_config(tmp_path_factory):
    return write_config(tmp_path_factory.mktemp("faults") / "k.yaml", **LINEAR)


@pytest.fixture(scope="module")
def linear_reference(tmp_path_factory, linear_config):
    """The uninterrupted run, and how long it took (in a child, like the victims)."""
    runs = tmp_path_factory.mktemp("reference")
    durations = []
    for name in ("k", "warm"):  # the second, warm run times the life the victims will have
        start = time.perf_counter()
        assert in_child(lambda name=name: start_run(linear_config, [], runs, name, progress=False)) == 0
        durations.append(time.perf_counter() - start)
    assert metrics_without_timing(runs / "k") == metrics_without_timing(runs / "warm")  # bit-exact rerun
    return runs / "k", min(durations)


def check_recovers(config, runs, reference, name="k"):
    run = recover(config, runs, name)
    assert metrics_without_timing(run) == metrics_without_timing(reference)
    assert (run / "summary.json").read_text().count('"completed"') == 1
    leftovers = [p.name for p in run.rglob(".*.tmp")] + [p.name for p in runs.glob(f".{name}.creating-*")]
    assert is_run_dir(run) and (run / "plots" / "features.gif").exists() == (reference / "plots/features.gif").exists()
    assert_events_match_metrics(run)  # TensorBoard shows each step once, with the values of metrics.csv
    assert (run / "tb" / "projector_config.pbtxt").read_text().count("embeddings {") == 1
    return leftovers


# Seeded delays stepped over the run's whole life. 12, not more: each costs a run and a resume (about
# 4 s), and the named moments below hit the short phases a delay would rarely hit deterministically.
RANDOM_KILLS = 12


def test_kill_at_12_random_moments_then_resume_matches_uninterrupted_run(tmp_path, linear_config, linear_reference):
    reference, duration = linear_reference
    rng = random.Random(20261123)
    fractions = [(i + rng.random()) / RANDOM_KILLS for i in range(RANDOM_KILLS)]  # stepped, seeded jitter
    outcomes, trial = [], 0
    while fractions and trial < 40:
        runs, trial = tmp_path / f"trial{trial}", trial + 1
        start = time.perf_counter()
        status = in_child(
            lambda runs=runs: start_run(linear_config, [], runs, "k", progress=False), duration * fractions[0]
        )
        if status == 0:  # the run outlived its delay: the machine is faster now; rescale and retry the moment
            duration = min(duration, time.perf_counter() - start)
        else:
            rows = len(read_metrics(runs / "k" / "metrics.csv")) if (runs / "k" / "metrics.csv").exists() else -1
            outcomes.append(f"{fractions.pop(0):.2f}: killed with {rows} rows")
        check_recovers(linear_config, runs, reference)  # finished or killed, the result is the same run
    assert len(outcomes) == RANDOM_KILLS, outcomes
    rows = [int(o.split("with ")[1].split()[0]) for o in outcomes]  # -1: killed before the folder existed
    # The kills are spread over the run's life (which phase a delay hits depends on the machine's
    # load, so no phase is required here: the named moments below hit each one deterministically).
    assert len(set(rows)) >= 2, outcomes


def _named(path: str):
    return lambda *args, **kwargs: str(args[1] if len(args) > 1 else args[0]).endswith(path)


# Named moments: (function to patch, which calls count, kill at the nth). F = torch.nn.functional:
# epoch 1 calls F.cross_entropy 4 times in training (256 images / 64) and once in evaluation.
NAMED_MOMENTS = {
    "setup, loading MNIST": ("centerexp.training.train.load_mnist", lambda *a, **k: True, 1),
    "creating the run folder": ("centerexp.rundir.folder.atomic_write_text", lambda p, *a: ".creating-" in str(p), 2),
    "mid-step, epoch 2": ("F.cross_entropy", lambda *a, **k: True, 7),
    "evaluation, epoch 2": ("centerexp.training.train.evaluate", lambda *a, **k: True, 2),
    "first metrics row written, plots not yet": ("centerexp.plots.plot_loss_curves", lambda *a, **k: True, 1),
    "drawing the feature plot, epoch 3": ("centerexp.plots.plot_features", lambda *a, **k: True, 3),
    "checkpoint temp file written, epoch 2": ("os.replace", _named("last.pt"), 2),
    "summary.json temp file written, epoch 2": ("os.replace", _named("summary.json"), 3),
    "features.pt temp file written, epoch 1": ("os.replace", _named("features.pt"), 1),
    "assembling the GIF": ("centerexp.plots.make_gif", lambda *a, **k: True, 1),
    "events flushed, checkpoint not yet, epoch 2": ("centerexp.training.train.atomic_torch_save", _named("last.pt"), 2),
    "writing the projector embedding": ("shutil.rmtree", lambda path, *a, **k: str(path).endswith("00012"), 1),
    "embedding written, last checkpoint not yet": ("centerexp.training.train.atomic_torch_save", _named("last.pt"), 3),
}


@pytest.mark.parametrize("moment", list(NAMED_MOMENTS))
def test_kill_at_a_named_moment_then_resume(tmp_path, linear_config, linear_reference, moment):
    def victim():
        kill_self_when(*NAMED_MOMENTS[moment])
        start_run(linear_config, [], tmp_path, "k", progress=False)

    status = in_child(victim)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"{moment}: the kill point was not hit"
    assert check_recovers(linear_config, tmp_path, linear_reference[0]) == []


def test_kill_during_a_resume_then_resume_again(tmp_path, linear_config, linear_reference):
    def first_victim():
        kill_self_when("centerexp.plots.plot_features", nth=2)
        start_run(linear_config, [], tmp_path, "k", progress=False)

    def second_victim():  # the resume itself dies inside its first epoch's second training step
        kill_self_when("F.cross_entropy", nth=2)
        resume_run(tmp_path / "k", progress=False)

    assert os.WIFSIGNALED(in_child(first_victim))
    assert os.WIFSIGNALED(in_child(second_victim))
    check_recovers(linear_config, tmp_path, linear_reference[0])


MID_STEP = ("F.cross_entropy", lambda *a, **k: True, 4)  # 2 steps + 1 evaluation per epoch: epoch 2's first step


@pytest.mark.parametrize(
    "conv_algo, points",
    [
        ("auto", [MID_STEP, NAMED_MOMENTS["checkpoint temp file written, epoch 2"]]),  # as measured here
        ("library", [MID_STEP]),  # oneDNN's convolutions, as every run before conv_algo
    ],
)
def test_conv_net_killed_mid_step_and_mid_checkpoint_resumes_bit_exact(tmp_path, conv_algo, points):
    config = write_config(
        tmp_path / "conv.yaml", base="v1_2", **{**CONV, "train": {**CONV["train"], "conv_algo": conv_algo}}
    )
    assert in_child(lambda: start_run(config, [], tmp_path / "ref", "c", progress=False)) == 0
    chosen = json.loads((tmp_path / "ref" / "c" / "env.json").read_text())["conv_algorithms"]
    assert len(chosen) == 6 and (conv_algo == "auto" or set(chosen.values()) == {"library"})
    for i, point in enumerate(points):

        def victim(runs=tmp_path / f"runs{i}", point=point):
            kill_self_when(*point)
            start_run(config, [], runs, "c", progress=False)

        assert os.WIFSIGNALED(in_child(victim))
        run = recover(config, tmp_path / f"runs{i}", "c")
        assert metrics_without_timing(run) == metrics_without_timing(tmp_path / "ref" / "c")


# --- one process per run folder ---------------------------------------------------------------


def test_a_live_run_is_not_trained_twice_and_a_dead_ones_lock_does_not_block(tmp_path, linear_config):
    from typer.testing import CliRunner

    from centerexp.cli import app

    assert in_child(lambda: start_run(linear_config, ["train.epochs=1"], tmp_path, "k", progress=False)) == 0
    run = tmp_path / "k"
    ready_r, ready_w = os.pipe()

    def holder():  # a live process training the run: holds its lock, then waits to be killed
        with RunLock(run):
            os.write(ready_w, b"x")
            time.sleep(60)

    pid = os.fork()
    if pid == 0:
        try:
            holder()
        finally:
            os._exit(0)
    try:
        assert os.read(ready_r, 1) == b"x"
        before = (run / "metrics.csv").read_bytes()
        args = ["train", "--resume", str(run), "--set", "train.epochs=2", "--allow-config-change", "-q"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 3, result.output
        assert f"error: {run} is being trained by another process (pid {pid})" in result.output
        assert "Traceback" not in result.output and (run / "metrics.csv").read_bytes() == before
        result = CliRunner().invoke(app, ["train", str(linear_config), "--runs-dir", str(tmp_path), "--overwrite"])
        assert result.exit_code == 3 and "being trained by another process" in result.output
        assert (run / "metrics.csv").read_bytes() == before  # --overwrite did not delete a live run
        with pytest.raises(RunBusy):
            RunLock(run).acquire()
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    # The holder died without releasing anything: the kernel dropped its lock with it.
    args = ["train", "--resume", str(run), "--set", "train.epochs=2", "--allow-config-change", "-q"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert [r["epoch"] for r in read_metrics(run / "metrics.csv")] == ["1", "2"]


def test_reproduce_skips_a_run_that_another_process_is_training(tmp_path):
    from dataclasses import replace

    from centerexp.experiments.reproduce import find_experiment, plan
    from centerexp.experiments.spec import load_experiment
    from centerexp.rundir import status
    from centerexp.sweeps.spec import train_sequentially

    tiny = ["model.arch=linear", "data.train_subset=128", "data.test_subset=64", "train.epochs=1", "plot.gif=false"]
    spec = plan(load_experiment(find_experiment("v1")), "quick", 1, tmp_path, tiny)[0]
    start_run(spec.config, list(spec.overrides), tmp_path, spec.name, progress=False)
    before = (spec.run_dir / "metrics.csv").read_bytes()
    lines = []
    with RunLock(spec.run_dir):  # "another process": flock conflicts between two open files, in one process too
        train_sequentially([replace(spec, state=status.RUNNING)], progress=False, echo=lines.append)
    assert any("skipped" in line and "being trained by another process" in line for line in lines), lines
    assert (spec.run_dir / "metrics.csv").read_bytes() == before


def test_kill_while_overwrite_deletes_the_old_run(tmp_path, linear_config, linear_reference):
    assert in_child(lambda: start_run(linear_config, ["train.epochs=1"], tmp_path, "k", progress=False)) == 0

    def victim():  # --overwrite: the old run is renamed away, then deleted; die in the middle of deleting
        kill_self_when("shutil.rmtree", lambda path, *a, **k: ".deleting-" in str(path))
        start_run(linear_config, [], tmp_path, "k", overwrite=True, progress=False)

    assert os.WIFSIGNALED(in_child(victim))
    assert not (tmp_path / "k").exists() and list(tmp_path.glob(".k.deleting-*"))  # no half run folder
    assert check_recovers(linear_config, tmp_path, linear_reference[0]) == []  # and the leftover is gone


# --- evaluations inside an epoch (train.eval_every) ---------------------------------------------
# 256 images / batch 64 = 4 steps per epoch, eval_every 3: rows at steps 3, 4 | 6, 8 | 9, 12. Each
# evaluation checkpoints, with the epoch's batch order and position, so a kill inside an epoch
# resumes there. F.cross_entropy runs once per step and once per evaluation: steps 1-3, eval, step
# 4, eval (6 calls in epoch 1), steps 5-6, eval, steps 7-8, eval (12), step 9, eval, steps 10-12.
EVERY_3 = {**LINEAR, "train": {**LINEAR["train"], "eval_every": 3}}
MID_EPOCH_MOMENTS = {
    "between two evaluations, inside epoch 2 (step 5)": ("F.cross_entropy", lambda *a, **k: True, 7),
    "right after the first (mid-epoch) row": ("centerexp.plots.plot_loss_curves", lambda *a, **k: True, 1),
    "mid-epoch checkpoint temp file written": ("os.replace", _named("last.pt"), 1),
    "epoch 3, after its mid-epoch checkpoint (step 11)": ("F.cross_entropy", lambda *a, **k: True, 16),
}


@pytest.fixture(scope="module")
def every_3(tmp_path_factory):
    config = write_config(tmp_path_factory.mktemp("every3") / "k.yaml", **EVERY_3)
    runs = tmp_path_factory.mktemp("every3_reference")
    assert in_child(lambda: start_run(config, [], runs, "k", progress=False)) == 0
    return config, runs / "k"


def test_eval_every_adds_rows_inside_epochs(every_3):
    rows = read_metrics(every_3[1] / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [3, 4, 6, 8, 9, 12]
    assert [float(r["epoch"]) for r in rows] == [0.75, 1, 1.5, 2, 2.25, 3]
    frames = sorted(p.name for p in (every_3[1] / "plots" / "features").glob("*.png"))
    assert frames == [f"step_{s:07d}.png" for s in (3, 4, 6, 8, 9, 12)]


@pytest.mark.parametrize("moment", list(MID_EPOCH_MOMENTS))
def test_kill_inside_an_epoch_with_eval_every_then_resume(tmp_path, every_3, moment):
    config, reference = every_3

    def victim():
        kill_self_when(*MID_EPOCH_MOMENTS[moment])
        start_run(config, [], tmp_path, "k", progress=False)

    status = in_child(victim)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"{moment}: the kill point was not hit"
    assert check_recovers(config, tmp_path, reference) == []


def test_the_train_scatter_of_a_stretch_inside_epoch_1_is_not_empty(every_3):
    """The plotted sample must not coincide with the first images of epoch 1's order (both streams
    start from train.seed): a stretch from step 3 on would then show no training feature at all."""
    import torch

    from centerexp.config import load_config
    from centerexp.plots import train_points
    from centerexp.training.runtime import Runtime
    from centerexp.training.train import starting_point, train_steps

    cfg = load_config(every_3[0], ["plot.max_points=100", "data.train_subset=2048"])
    rt = Runtime.from_config(cfg)
    parts, train_set, _ = starting_point(cfg, rt.device, rt.channels_last)
    perm = torch.randperm(len(train_set), generator=parts.shuffle)
    later = list(range(512, 2048, 64))  # epoch 1 from its ninth batch on
    features, labels = train_points(cfg, train_set, train_steps(parts, train_set, cfg, rt, perm, later, 1))
    assert len(features) == len(labels) > 50  # ~75 of the 100 sampled images are in these 1,536
