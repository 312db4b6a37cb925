"""What `centerexp reproduce` will cost before it starts, and how far it has got while it runs.

``estimate(specs, jobs)`` counts the runs to train, to resume and already done, and prices the
steps left at this machine's measured rates: images/s of a training step and of evaluation for
the run's model and precision at batch 256, with the CPU threads each run will get. The rates come
from the speed cache (speedcache.py), where `centerexp bench` and earlier estimates leave them;
missing ones are measured once, briefly, as bench measures (a few steps on resident MNIST).
Plots, checkpoints and process start-up come on top, so the estimate is a floor for short runs.

``ExperimentBar`` is the bar over the whole experiment: steps done of all steps, read every few
seconds from the run folders (whichever process trains them), with tqdm's ETA.
"""

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from centerexp.config import MNIST_TEST_IMAGES, Config, load_config, steps_per_epoch, train_images
from centerexp.experiments.rates import measure_rates
from centerexp.rundir import files, status
from centerexp.rundir.folder import is_run_dir
from centerexp.rundir.records import progress_from_metrics
from centerexp.sweeps.spec import RunSpec


@dataclass
class RunCost:
    name: str
    state: str  # a rundir.status value (NEW, a resumable one, or done)
    steps_total: int
    steps_done: int
    seconds: float  # at the measured rates, with the threads the run will get


@dataclass
class Estimate:
    runs: list[RunCost]
    jobs: int
    threads: int  # per run
    machine: str  # e.g. "AMD EPYC, bf16, 2 threads"
    reused: int = 0  # of the done runs: copied from identical runs elsewhere
    rates: dict = field(default_factory=dict)  # (arch, precision) -> {"train": img/s, "eval": img/s} per run

    @property
    def seconds(self) -> float:
        """Wall time: the runs to train, in order, each started on the first of ``jobs`` slots to come
        free (as the launcher starts them; each run already at its own threads). 5 equal runs two at
        a time take 3 runs' time, not 2.5."""
        slots = [0.0] * max(1, self.jobs)
        for run in self.to_run:
            slots[slots.index(min(slots))] += run.seconds
        return max(slots)

    @property
    def to_run(self) -> list[RunCost]:
        return [r for r in self.runs if r.state not in status.DONE]

    @property
    def steps_total(self) -> int:
        return sum(r.steps_total for r in self.runs)

    @property
    def steps_done(self) -> int:
        return sum(r.steps_done for r in self.runs)

    def line(self) -> str:
        """The plan line, e.g. "15 runs (0 complete): 15 to train, about 2 h 10 min here (...)"."""
        done = [r for r in self.runs if r.state in status.DONE]
        new = sum(r.state == status.NEW for r in self.runs)
        resume = len(self.runs) - len(done) - new
        parts = [f"{new} to train"] + ([f"{resume} to resume"] if resume else [])
        reused = f", {self.reused} of them reused from identical runs" if self.reused else ""
        head = f"{len(self.runs)} runs ({len(done)} complete{reused}): {', '.join(parts)}"
        if not self.to_run:
            return f"{head}; nothing to train"
        jobs = f", {self.jobs} at a time" if self.jobs > 1 else ""
        rates = ", ".join(f"{arch} {r['train']:.0f} img/s" for (arch, _), r in sorted(self.rates.items()))
        return f"{head}, about {duration(self.seconds)} here ({self.machine}{jobs}; training {rates})"


def duration(seconds: float) -> str:
    """A human duration: "45 s", "12 min", "2 h 10 min"."""
    if not math.isfinite(seconds):
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def steps_of(cfg: Config) -> int:
    return cfg.train.epochs * steps_per_epoch(train_images(cfg.data.train_subset), cfg.train.batch_size)


def steps_done(run_dir: Path, cfg: Config) -> int:
    """Optimizer steps a run folder holds (a resumed run continues from its last evaluation)."""
    if not is_run_dir(run_dir):
        return 0
    if status.run_status(run_dir) in status.DONE:
        return steps_of(cfg)
    progress = progress_from_metrics(run_dir)
    if "steps_done" in progress:
        return progress["steps_done"]
    return progress.get("epochs_done", 0) * steps_of(cfg) // max(1, cfg.train.epochs)


def _evaluations_left(cfg: Config, done: int) -> int:
    per_epoch = steps_per_epoch(train_images(cfg.data.train_subset), cfg.train.batch_size)
    every = cfg.train.eval_every or per_epoch
    points = {s for e in range(cfg.train.epochs) for s in range(e * per_epoch + every, (e + 1) * per_epoch, every)}
    points |= {(e + 1) * per_epoch for e in range(cfg.train.epochs)}
    return sum(s > done for s in points)


def machine_text(precisions: set[str], threads: int) -> str:
    from centerexp.rundir.provenance import cpu_model

    return f"{cpu_model()}, {'/'.join(sorted(precisions))}, {threads} thread{'s' * (threads != 1)}"


def estimate(
    specs: list[RunSpec], jobs: int, cpu_threads: int, reused: int = 0, rates: Callable = measure_rates
) -> Estimate:
    """The cost of training ``specs`` with ``jobs`` runs at a time on ``cpu_threads`` threads;
    ``reused``: how many of the done specs were (or would be) copied from identical runs.

    ``rates(arch, precision, threads)`` gives {"train", "eval"} images/s (tests pass a fake)."""
    jobs = max(1, jobs)
    threads = max(1, cpu_threads // jobs)
    costs, seen = [], {}
    for spec in specs:
        run_cfg = spec.run_dir / files.CONFIG
        cfg = load_config(run_cfg) if is_run_dir(spec.run_dir) else load_config(spec.config, list(spec.overrides))
        total = steps_of(cfg)
        done = total if spec.state in status.DONE else steps_done(spec.run_dir, cfg)
        seconds = 0.0
        if spec.state not in status.DONE and done < total:
            key = (cfg.model.arch, cfg.train.precision)
            if key not in seen:
                seen[key] = rates(cfg.model.arch, cfg.train.precision, threads)
            r = seen[key]
            n_test = min(cfg.data.test_subset or MNIST_TEST_IMAGES, MNIST_TEST_IMAGES)
            seconds = (total - done) * cfg.train.batch_size / r["train"] + _evaluations_left(cfg, done) * n_test / r[
                "eval"
            ]
        costs.append(RunCost(spec.name, spec.state, total, min(done, total), seconds))
    precisions = {p for _, p in seen} or {spec_precision(specs)}
    return Estimate(costs, jobs, threads, machine_text(precisions, threads), reused, seen)


def spec_precision(specs: list[RunSpec]) -> str:
    for spec in specs:
        for o in spec.overrides:
            if o.startswith("train.precision="):
                return o.split("=", 1)[1]
    return "?"


class ExperimentBar:
    """A tqdm bar over all the experiment's steps, refreshed every ``every`` seconds from the run
    folders: works the same whether runs train in this process, in workers or on Slurm."""

    def __init__(self, specs: list[RunSpec], plan: Estimate, enabled: bool, every: float = 5.0):
        self.specs, self.plan, self.every = specs, plan, every
        self.enabled = enabled and plan.steps_total > plan.steps_done
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar = None

    def steps_now(self) -> int:
        done = 0
        for spec, cost in zip(self.specs, self.plan.runs):
            try:
                cfg = load_config(spec.run_dir / files.CONFIG) if is_run_dir(spec.run_dir) else None
                done += steps_done(spec.run_dir, cfg) if cfg else 0
            except Exception:  # a file being replaced right now: count it next time
                done += cost.steps_done
        return done

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._bar.n = self.steps_now()
            self._bar.refresh()

    def __enter__(self) -> "ExperimentBar":
        if self.enabled:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.plan.steps_total, initial=self.plan.steps_done, desc="experiment", unit="step", position=1
            )
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread:
            self._stop.set()
            self._thread.join()
            self._bar.n = self.steps_now()
            self._bar.close()
