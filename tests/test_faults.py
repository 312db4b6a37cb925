"""Fault injection: kill -9 a run at many moments of its life, resume it, get the uninterrupted run.

Each victim is a forked child of the test process (torch is already imported, so a kill costs
milliseconds, not an interpreter start). Two kinds of moments:
  - seeded random delays, counted in the child's CPU time, stepped over the three parts of the
    run's life: up to its first commit, between its first and last (steps, evaluations,
    checkpoints, summaries), after its last (figures, GIF);
  - named moments that a delay would rarely hit: inside the atomic write of the checkpoint (temp
    file present), of summary.json, of a frame, while creating the run folder, right after the
    first metrics row (the manual scenario of issue 10), during evaluation, while writing the
    projector embedding and drawing the figures, during a resume.
Every kill is checked to have landed where it says (the run folder's rows, checkpoint and temp
files) before the run is recovered. The child runs with train.threads=1, so no OpenMP thread pool
crosses the fork.
"""

import json
import os
import random
import resource
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

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
    """Run ``body()`` in a forked child; SIGKILL it once it has used ``kill_after`` seconds of CPU
    (if still alive). Returns the child's wait status.

    CPU time, not wall time: a loaded machine (two test workers, a training in the background)
    stretches a run's wall time, not the work it does, so a delay lands in the same phase of the
    run on a busy machine as on an idle one."""
    forked = time.monotonic()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            body()
            code = 0
        finally:
            os._exit(code)
    deadline = forked + timeout
    killed = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if not killed and kill_after is not None and cpu_seconds(pid, forked) >= kill_after:
            os.kill(pid, signal.SIGKILL)
            killed = True
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("child run hung")
        time.sleep(0.002)


def cpu_seconds(pid: int, forked: float) -> float:
    """CPU seconds (user + system, all threads) that process ``pid`` has used: /proc/PID/stat.
    Without /proc, the wall time since it was forked stands in."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return time.monotonic() - forked
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def run_in_child(body) -> tuple[int, float]:
    """(wait status, CPU seconds) of ``body()`` run to its end in a forked child."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    status = in_child(body)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return status, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def killed(status: int) -> bool:
    """Whether the child died of SIGKILL: not an exception (exit 1), not a clean end (0)."""
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


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


# --- where a kill landed ------------------------------------------------------------------------


@dataclass(frozen=True)
class Landing:
    """What a killed run left on disk, i.e. where in its life the kill landed."""

    rows: int  # metrics.csv rows (0: none, or no metrics.csv yet)
    committed: int | None  # the step checkpoints/last.pt was written at; None: no checkpoint yet
    cut: tuple[str, ...] = ()  # files whose atomic write was cut between the temp file and the rename
    folder: bool = True  # the run folder exists (False: at most its hidden .NAME.creating-* folder)
    also: Callable[[Path], bool] | None = None  # anything else that must hold, given the run folder


def landed(runs: Path, name: str = "k") -> Landing:
    """Where the kill of run ``runs/name`` landed, read from its files before anything recovers them."""
    run = runs / name
    if not is_run_dir(run):
        return Landing(rows=-1, committed=None, folder=False)
    rows = len(read_metrics(run / "metrics.csv")) if (run / "metrics.csv").exists() else 0
    ckpt = run / "checkpoints" / "last.pt"
    committed = torch.load(ckpt, weights_only=True)["step"] if ckpt.exists() else None
    # a temp file is .TARGET.RANDOM.tmp beside TARGET (rundir/io.py)
    cut = sorted(str(t.parent.relative_to(run) / t.name[1:].rsplit(".", 2)[0]) for t in run.rglob(".*.tmp"))
    return Landing(rows, committed, tuple(cut))


def assert_landed(runs: Path, want: Landing, what: str, name: str = "k") -> None:
    got = landed(runs, name)
    assert (got.rows, got.committed, got.cut, got.folder) == (want.rows, want.committed, want.cut, want.folder), (
        f"{what}: the kill landed at {got}, not at {want}"
    )
    if not want.folder:
        assert list(runs.glob(f".{name}.creating-*")), f"{what}: no half-made run folder"
    if want.also:
        assert want.also(runs / name), f"{what}: the kill did not land where it says"


@pytest.fixture(scope="module")
def linear_config(tmp_path_factory):
    return write_config(tmp_path_factory.mktemp("faults") / "k.yaml", **LINEAR)


@dataclass(frozen=True)
class Life:
    """A run's life in CPU seconds: when each evaluation was committed (summary.json written after
    its checkpoint), and when the run ended (after the figures, drawn once training is over)."""

    commits: tuple[float, ...]
    end: float


def timed_run(config: Path, runs: Path, name: str) -> Life:
    """Train ``runs/name`` to its end in a forked child, noting its CPU time at each commit."""
    from centerexp.rundir.records import RunSummary

    commits = runs / f"{name}.commits"

    def body():  # in the child: the patch dies with it
        finished = RunSummary.epoch_finished

        def noted(self):
            finished(self)
            with open(commits, "a") as f:
                f.write(f"{time.process_time()}\n")

        RunSummary.epoch_finished = noted
        start_run(config, [], runs, name, progress=False)

    runs.mkdir(parents=True, exist_ok=True)
    status, seconds = run_in_child(body)
    assert status == 0
    return Life(tuple(float(t) for t in commits.read_text().split()), seconds)


@pytest.fixture(scope="module")
def linear_reference(tmp_path_factory, linear_config):
    """The uninterrupted run, and its life in CPU time, timed in a child like the victims."""
    runs = tmp_path_factory.mktemp("reference")
    # The reference itself trains in this process, as every recovery does: that leaves this process
    # as the victims find it when they fork (modules imported, MNIST checked and read), and a child
    # of a cold process spends seconds of CPU on that before its first step.
    start_run(linear_config, [], runs, "k", progress=False)
    life = timed_run(linear_config, runs, "warm")
    assert metrics_without_timing(runs / "k") == metrics_without_timing(runs / "warm")  # bit-exact rerun
    return runs / "k", life


def check_recovers(config, runs, reference, name="k"):
    """Recover the run as a user would; it must be the uninterrupted run. Returns the temp files and
    half-made folders still left after recovering (there must be none)."""
    run = recover(config, runs, name)
    assert metrics_without_timing(run) == metrics_without_timing(reference)
    assert (run / "summary.json").read_text().count('"completed"') == 1
    leftovers = [p.name for p in run.rglob(".*.tmp")] + [p.name for p in runs.glob(f".{name}.creating-*")]
    assert is_run_dir(run) and (run / "plots" / "features.gif").exists() == (reference / "plots/features.gif").exists()
    assert_events_match_metrics(run)  # TensorBoard shows each step once, with the values of metrics.csv
    assert (run / "tb" / "projector_config.pbtxt").read_text().count("embeddings {") == 1
    return leftovers


# Seeded delays stepped over the two parts of the run's life, before and after its first commit:
# most of a small run's CPU time goes into its figures, drawn once training is over, so delays spread
# evenly over its whole life would nearly all land there, and a machine slower or faster than the
# reference would put them all in its setup or all after it. 12, not more: each costs a run and a
# resume, and the named moments below hit the short phases a delay would rarely hit, deterministically.
RANDOM_KILLS = 12


def test_kill_at_12_random_moments_then_resume_matches_uninterrupted_run(tmp_path, linear_config, linear_reference):
    reference, life = linear_reference
    rng = random.Random(20261123)
    half = RANDOM_KILLS // 2
    fractions = [  # of the run's life, stepped with seeded jitter inside each part
        (lo + (i + rng.random()) / half * (hi - lo)) / life.end
        for lo, hi in ((0.0, life.commits[0]), (life.commits[0], life.end))
        for i in range(half)
    ]
    landings, trial, end = [], 0, life.end
    while fractions and trial < 40:
        runs, trial = tmp_path / f"trial{trial}", trial + 1
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        status = in_child(lambda runs=runs: start_run(linear_config, [], runs, "k", progress=False), end * fractions[0])
        if status == 0:  # the run outlived its delay (it needed less CPU than the reference): rescale, retry
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            end = min(end, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime))
        else:
            assert killed(status), f"the run died of something else than the kill (wait status {status})"
            landing = landed(runs)
            landings.append((round(fractions.pop(0), 3), landing.rows, landing.committed))
        assert check_recovers(linear_config, runs, reference) == []  # finished or killed, the same run
    assert len(landings) == RANDOM_KILLS, landings
    # Spread over the run's life: some before its first commit (setup, the first epoch; -1 rows:
    # killed before the folder existed), a third at least after it.
    committed = [c for _, _, c in landings]
    assert committed.count(None) >= 1 and len(committed) - committed.count(None) >= RANDOM_KILLS // 3, landings


def _named(path: str):
    return lambda *args, **kwargs: str(args[1] if len(args) > 1 else args[0]).endswith(path)


def _embedding(*present: str, absent: tuple[str, ...] = ()):
    """The projector embedding of the last evaluation (step 12, tb/00012/TAG/) holds ``present`` and
    not ``absent``."""
    from centerexp.events import EMBEDDING

    def holds(run: Path) -> bool:
        folder = run / "tb" / "00012" / EMBEDDING
        return all((folder / f).is_file() for f in present) and not any((folder / f).exists() for f in absent)

    return holds


# Named moments: (function to patch, which calls count, kill at the nth), and where that lands. The
# run: 3 epochs of 4 steps (256 images / 64), an evaluation after each, at steps 4, 8, 12. Each
# evaluation appends its row, keeps its feature frame as data (plots/features/epoch_N.pt) and
# features.pt, logs its events, writes the checkpoint (temp file, rename), then summary.json (temp
# file, rename); after the last one the figures are drawn (frames, loss curves, GIF). F =
# torch.nn.functional: epoch 1 calls F.cross_entropy 4 times in training and once in evaluation.
# summary.json is replaced when the folder is made (1), when training begins (2), then after each
# epoch (3, 4, 5).
NAMED_MOMENTS = {
    "setup, loading MNIST": (
        ("centerexp.training.train.load_mnist", lambda *a, **k: True, 1),
        Landing(rows=0, committed=None, also=lambda run: not (run / "env.json").exists()),
    ),
    "creating the run folder": (
        ("centerexp.rundir.folder.atomic_write_text", lambda p, *a: ".creating-" in str(p), 2),
        Landing(rows=-1, committed=None, folder=False),
    ),
    "mid-step, epoch 2": (("F.cross_entropy", lambda *a, **k: True, 7), Landing(rows=1, committed=4)),
    "evaluation, epoch 2": (("centerexp.training.train.evaluate", lambda *a, **k: True, 2), Landing(1, 4)),
    "first metrics row written, its frame not kept yet": (
        ("centerexp.training.outputs.keep_frame", lambda *a, **k: True, 1),
        Landing(rows=1, committed=None, also=lambda run: not list((run / "plots" / "features").glob("*.pt"))),
    ),
    "frame data temp file written, epoch 2": (
        ("os.replace", _named("epoch_002.pt"), 1),
        Landing(rows=2, committed=4, cut=("plots/features/epoch_002.pt",)),
    ),
    "checkpoint temp file written, epoch 2": (
        ("os.replace", _named("last.pt"), 2),
        Landing(rows=2, committed=4, cut=("checkpoints/last.pt",)),
    ),
    "summary.json temp file written, epoch 2": (
        ("os.replace", _named("summary.json"), 4),
        Landing(
            rows=2,
            committed=8,
            cut=("summary.json",),
            also=lambda run: json.loads((run / "summary.json").read_text())["epochs_done"] == 1,
        ),
    ),
    "features.pt temp file written, epoch 1": (
        ("os.replace", _named("features.pt"), 1),
        Landing(rows=1, committed=None, cut=("features.pt",)),
    ),
    "drawing the feature frames, after the last checkpoint": (
        ("centerexp.plots.plot_features", lambda *a, **k: True, 2),
        Landing(rows=3, committed=12, also=lambda run: not (run / "plots" / "features.png").exists()),
    ),
    "assembling the GIF": (
        ("centerexp.plots.make_gif", lambda *a, **k: True, 1),
        Landing(rows=3, committed=12, also=lambda run: not (run / "plots" / "features.gif").exists()),
    ),
    "events flushed, checkpoint not yet, epoch 2": (
        ("centerexp.training.train.atomic_torch_save", _named("last.pt"), 2),
        Landing(rows=2, committed=4),
    ),
    # add_embedding writes metadata.tsv, sprite.png, tensors.tsv, then projector_config.pbtxt
    "writing the projector embedding": (
        ("torch.utils.tensorboard.writer.make_mat", lambda *a, **k: True, 1),
        Landing(rows=3, committed=8, also=_embedding("metadata.tsv", "sprite.png", absent=("tensors.tsv",))),
    ),
    "embedding written, last checkpoint not yet": (
        ("centerexp.training.train.atomic_torch_save", _named("last.pt"), 3),
        Landing(rows=3, committed=8, also=_embedding("metadata.tsv", "sprite.png", "tensors.tsv")),
    ),
}


@pytest.mark.parametrize("moment", list(NAMED_MOMENTS))
def test_kill_at_a_named_moment_then_resume(tmp_path, linear_config, linear_reference, moment):
    point, landing = NAMED_MOMENTS[moment]

    def victim():
        kill_self_when(*point)
        start_run(linear_config, [], tmp_path, "k", progress=False)

    assert killed(in_child(victim)), f"{moment}: the kill point was not hit"
    assert_landed(tmp_path, landing, moment)
    assert check_recovers(linear_config, tmp_path, linear_reference[0]) == []


def test_kill_during_a_resume_then_resume_again(tmp_path, linear_config, linear_reference):
    def first_victim():  # dies with epoch 2's row written, before its frame and checkpoint
        kill_self_when("centerexp.training.outputs.keep_frame", nth=2)
        start_run(linear_config, [], tmp_path, "k", progress=False)

    def second_victim():  # the resume itself dies inside its first epoch's second training step
        kill_self_when("F.cross_entropy", nth=2)
        resume_run(tmp_path / "k", progress=False)

    assert killed(in_child(first_victim))
    assert_landed(tmp_path, Landing(rows=2, committed=4), "the first kill, after epoch 2's row")
    assert killed(in_child(second_victim))
    assert_landed(tmp_path, Landing(rows=1, committed=4), "the resume's kill, inside epoch 2 (its row dropped)")
    check_recovers(linear_config, tmp_path, linear_reference[0])


# Each epoch: 2 steps (32 images / 16) and 1 evaluation. F.cross_entropy's 4th call: epoch 2's first step.
MID_STEP = (("F.cross_entropy", lambda *a, **k: True, 4), Landing(rows=1, committed=2))
MID_CHECKPOINT = (("os.replace", _named("last.pt"), 2), Landing(rows=2, committed=2, cut=("checkpoints/last.pt",)))


def fft_at_7x7(c_in, c_out, kernel, padding, height, width, batch, precision, device, channels_last) -> dict:
    """A measurement (conv.measure_layer's signature) in which fft wins on the 7x7 maps and the
    library everywhere else: auto then mixes the two, whatever this machine would measure."""
    from centerexp.training import conv

    fft = 0.5 if height == 7 else 2.0
    return {a: {"fft": fft}.get(a, 1.0) for a in conv.candidates_for(kernel, padding, height, width, precision)}


def library_everywhere(*args) -> dict:
    return {a: 1.0 if a == "library" else 2.0 for a in fft_at_7x7(*args)}


@pytest.mark.parametrize(
    "conv_algo, points",
    [
        ("auto", [MID_STEP, MID_CHECKPOINT]),  # auto choosing fft for the 7x7 layers, the library elsewhere
        ("library", [MID_STEP]),  # oneDNN's convolutions, as every run before conv_algo
    ],
)
def test_conv_net_killed_mid_step_and_mid_checkpoint_resumes_bit_exact(
    tmp_path, monkeypatch, mnist_root, conv_algo, points
):
    from centerexp.training import conv

    config = write_config(
        tmp_path / "conv.yaml", base="v1_2", **{**CONV, "train": {**CONV["train"], "conv_algo": conv_algo}}
    )
    # A speed cache of its own (the session's says the library everywhere), filled by fft_at_7x7;
    # the forked children inherit both.
    data = tmp_path / "data"
    data.mkdir()
    (data / "MNIST").symlink_to(mnist_root / "MNIST")
    monkeypatch.setenv("CENTEREXP_DATA", str(data))
    monkeypatch.setattr(conv, "measure_layer", fft_at_7x7)
    assert in_child(lambda: start_run(config, [], tmp_path / "ref", "c", progress=False)) == 0
    chosen = json.loads((tmp_path / "ref" / "c" / "env.json").read_text())["conv_algorithms"]
    assert len(chosen) == 6
    if conv_algo == "auto":
        assert chosen == {k: "fft" if k.endswith("@7x7") else "library" for k in chosen}, chosen
    else:
        assert set(chosen.values()) == {"library"}
    for i, (point, landing) in enumerate(points):
        runs = tmp_path / f"runs{i}"

        def victim(runs=runs, point=point):
            kill_self_when(*point)
            start_run(config, [], runs, "c", progress=False)

        monkeypatch.setattr(conv, "measure_layer", fft_at_7x7)
        assert killed(in_child(victim))
        assert_landed(runs, landing, f"{conv_algo}, {point[0]}", "c")
        # The resume trains on with the algorithms the run chose at its start (env.json), even where
        # this machine would now choose others.
        (data / "speed-cache.json").unlink(missing_ok=True)
        monkeypatch.setattr(conv, "measure_layer", library_everywhere)
        run = recover(config, runs, "c")
        assert json.loads((run / "env.json").read_text())["resumes"][-1]["conv_algorithms"] == chosen
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

    assert killed(in_child(victim))
    assert not (tmp_path / "k").exists() and list(tmp_path.glob(".k.deleting-*"))  # no half run folder
    assert check_recovers(linear_config, tmp_path, linear_reference[0]) == []  # and the leftover is gone


# --- evaluations inside an epoch (train.eval_every) ---------------------------------------------
# 256 images / batch 64 = 4 steps per epoch, eval_every 3: rows at steps 3, 4 | 6, 8 | 9, 12. Each
# evaluation checkpoints, with the epoch's batch order and position, so a kill inside an epoch
# resumes there. F.cross_entropy runs once per step and once per evaluation: steps 1-3, eval, step
# 4, eval (6 calls in epoch 1), steps 5-6, eval, steps 7-8, eval (12), step 9, eval, steps 10-12.
EVERY_3 = {**LINEAR, "train": {**LINEAR["train"], "eval_every": 3}}
MID_EPOCH_MOMENTS = {
    "between two evaluations, inside epoch 2 (step 5)": (
        ("F.cross_entropy", lambda *a, **k: True, 7),
        Landing(rows=2, committed=4),
    ),
    "right after the first (mid-epoch) row": (
        ("centerexp.training.outputs.keep_frame", lambda *a, **k: True, 1),
        Landing(rows=1, committed=None),
    ),
    "mid-epoch checkpoint temp file written": (
        ("os.replace", _named("last.pt"), 1),
        Landing(rows=1, committed=None, cut=("checkpoints/last.pt",)),
    ),
    "epoch 3, after its mid-epoch checkpoint (step 11)": (
        ("F.cross_entropy", lambda *a, **k: True, 16),
        Landing(
            rows=5,
            committed=9,
            also=lambda run: torch.load(run / "checkpoints/last.pt", weights_only=True)["inside_epoch"] is not None,
        ),
    ),
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
    point, landing = MID_EPOCH_MOMENTS[moment]

    def victim():
        kill_self_when(*point)
        start_run(config, [], tmp_path, "k", progress=False)

    assert killed(in_child(victim)), f"{moment}: the kill point was not hit"
    assert_landed(tmp_path, landing, moment)
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
