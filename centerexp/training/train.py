"""Training: one run of cross-entropy + an auxiliary feature loss, epoch by epoch, into a run folder.

Reads top to bottom: runtime (device, precision), seeds, data, model and optimizers (loop.py),
maybe restore a checkpoint, then per epoch, in stretches that end every ``train.eval_every`` steps
and at the epoch's end: train -> evaluate -> metrics row -> frame kept, events -> checkpoint ->
summary; at the end the figures (outputs.py). The checkpoint is the commit point: a run killed at
any moment resumes after its last checkpoint (inside an epoch, too: the epoch's batch order and
position are in it), drops later rows, and continues bit for bit (everything it needs, RNG states
included, is in the checkpoint dict).
"""

import contextlib
import json
import signal
import sys
import threading
import time
from pathlib import Path

import torch
from tqdm import tqdm

from centerexp.config import Config, batch_starts, dump_config, load_config
from centerexp.errors import CenterexpError
from centerexp.rundir import files
from centerexp.rundir.folder import (
    NOT_A_RUN,
    RunLock,
    create_run_dir,
    is_run_dir,
    recorded,
    recorded_threads,
    remove_stale_temp_files,
    write_identity,
    write_run_header,
)
from centerexp.rundir.io import atomic_torch_save
from centerexp.rundir.provenance import env_info
from centerexp.rundir.records import MetricsLog, RunSummary
from centerexp.training.checkpoints import Position, checkpoint_dict, fingerprint, resume_point
from centerexp.training.data import Split, data_root, load_mnist, prepare_mnist
from centerexp.training.loop import (
    Diverged,
    Parts,
    build_parts,
    evaluate,
    metrics_row,
    next_evaluation,
    train_steps,
)
from centerexp.training.outputs import RunOutputs
from centerexp.training.runtime import Pinned, Runtime, resolve_device, seed_everything


class Interrupted(CenterexpError):
    """SIGINT / SIGTERM arrived; the run stopped cleanly. Exit status 128 + signal, as shells do."""


class StopFlag:
    """Set by SIGINT / SIGTERM; checked after every step (loop.train_steps calls ``check``)."""

    signum: int | None = None

    def check(self, epoch: int) -> None:
        self.stop_if_set(f"during epoch {epoch}")

    def stop_if_set(self, when: str) -> None:
        """Raise Interrupted, saying ``when`` it stopped, if a signal arrived."""
        if self.signum is not None:
            name = signal.Signals(self.signum).name
            raise Interrupted(f"stopped by {name} {when}", exit_code=128 + self.signum)


@contextlib.contextmanager
def stop_on_signals():
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signal handlers can only be installed from the main thread
        return

    def handler(signum, frame):
        flag.signum = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ---------------------------------------------------------------------------------------------
# The run


def train(
    cfg: Config,
    run_dir: Path,
    *,
    resume: bool = False,
    allow_config_change: bool = False,
    command: str = "",
    progress: bool | None = None,
    lock: RunLock | None = None,
    pinned: Pinned = Pinned(),
) -> dict:
    """Train one run into ``run_dir`` (already created, or an existing run when ``resume``).

    Holds the run folder's lock throughout (RunBusy if another process trains it); ``lock``: one
    this process already holds (taken when the folder was created). ``pinned``: see Runtime. Returns the
    final summary; raises CenterexpError, with the run marked failed or interrupted in
    summary.json, when the run cannot finish.
    """
    run_dir = Path(run_dir)
    held = lock or RunLock(run_dir).acquire()
    try:
        remove_stale_temp_files(run_dir)  # left by a process killed mid-write
        return _train_locked(cfg, run_dir, resume, allow_config_change, command, progress, pinned)
    finally:
        held.release()


def starting_point(
    cfg: Config, device: torch.device, channels_last: bool, conv_algorithms: dict | None = None, conv_layers=None
) -> tuple[Parts, Split, Split]:
    """Seeds, data, model, centers and optimizers, as a run starts (before any checkpoint)."""
    seed_everything(cfg.train.seed)
    train_set, test_set = load_mnist(cfg.data, cfg.train.seed, device)
    return build_parts(cfg, device, channels_last, conv_algorithms, conv_layers), train_set, test_set


def fingerprint_of(cfg: Config) -> dict:
    """The fingerprint a run of ``cfg`` had at its start, recomputed (for runs made before run.json)."""
    parts, train_set, _ = starting_point(cfg, torch.device("cpu"), channels_last=False)
    return fingerprint(parts, train_set)


def _train_locked(cfg, run_dir: Path, resume: bool, allow_config_change: bool, command: str, progress, pinned: Pinned):
    progress = sys.stderr.isatty() if progress is None else progress
    rt = Runtime.from_config(cfg, pinned)
    parts, train_set, test_set = starting_point(cfg, rt.device, rt.channels_last, rt.conv_algorithms, rt.conv_layers)
    ckpt_path = run_dir / files.CHECKPOINT
    pos, wall_before = resume_point(parts, cfg, ckpt_path, allow_config_change) if resume else (Position(), 0.0)
    if pos.step == 0:  # a fresh start: what a paired comparison must share with this run's partner
        write_identity(run_dir, fingerprint=fingerprint(parts, train_set))
    metrics = MetricsLog(run_dir / files.METRICS)
    metrics.truncate_to(pos.epoch, pos.step)  # rows past the checkpoint come from steps being redone
    write_run_header(run_dir, dump_config(cfg), command, env_info(rt))
    outputs = RunOutputs(run_dir, cfg, pos.epoch, pos.step)
    summary = RunSummary(run_dir)
    summary.begin(
        name=run_dir.name, epochs=cfg.train.epochs, seed=cfg.train.seed, device=str(rt.device), precision=rt.precision
    )

    t_run = time.perf_counter()
    n_batches = len(batch_starts(len(train_set), cfg.train.batch_size))
    total_steps = cfg.train.epochs * n_batches
    try:
        with stop_on_signals() as stop:
            epochs = range(pos.epoch + 1, cfg.train.epochs + 1)
            bar = tqdm(epochs, desc=run_dir.name, initial=pos.epoch, total=cfg.train.epochs, disable=not progress)
            for epoch in bar:
                if pos.perm is None:  # a new epoch (else: resuming inside one, in its own order)
                    pos.perm = torch.randperm(len(train_set), generator=parts.shuffle).to(rt.device)
                while pos.perm is not None:  # stretch by stretch until the epoch is over
                    end = next_evaluation(pos.step, pos.next_batch, n_batches, cfg.train.eval_every)
                    lr = parts.optimizer.param_groups[0]["lr"]
                    t0 = time.perf_counter()
                    starts = batch_starts(len(train_set), cfg.train.batch_size)[pos.next_batch : end]
                    tr = train_steps(parts, train_set, cfg, rt, pos.perm, starts, epoch, stop, progress)
                    t1 = time.perf_counter()
                    te = evaluate(parts, test_set, cfg, rt)
                    t2 = time.perf_counter()
                    pos.advance(end, n_batches)
                    if pos.perm is None:  # the epoch is over
                        parts.scheduler.step()
                    wall = wall_before + (t2 - t_run)
                    when = pos.epoch if pos.perm is None else epoch - 1 + end / n_batches  # epochs done, fractional
                    row = metrics_row(when, pos.step, lr, tr, te, (t0, t1, t2), wall)
                    metrics.append(row)
                    frame = f"epoch_{epoch:03d}" if not cfg.train.eval_every else f"step_{pos.step:07d}"
                    last = pos.perm is None and epoch == cfg.train.epochs
                    outputs.evaluation(row, frame, when, train_set, tr, te, test_set, parts, last)
                    atomic_torch_save(checkpoint_dict(parts, cfg, pos, wall), ckpt_path)  # the commit point
                    summary.epoch_finished()
                    epoch_done = f"epoch {epoch}/{cfg.train.epochs}, " if pos.perm is None else ""
                    tqdm.write(
                        f"{run_dir.name} {epoch_done}step {pos.step}/{total_steps}: "
                        f"train loss {tr['loss']:.4f} acc {tr['acc']:.4f} | "
                        f"test loss {te['loss']:.4f} acc {te['acc']:.4f} | {t2 - t0:.1f}s"
                    )
                    # A signal that arrived during the evaluation: this stretch is complete and saved.
                    stop.stop_if_set(
                        f"after epoch {epoch}"
                        if pos.perm is None
                        else f"after step {pos.step}/{total_steps} in epoch {epoch}"
                    )
            outputs.draw(final=True)
    except Interrupted as e:
        summary.interrupted(str(e))
        _draw_quietly(outputs)
        raise Interrupted(f"{e}; resume with: centerexp train --resume {run_dir}", exit_code=e.exit_code) from None
    except Diverged as e:
        summary.failed(str(e), diverged=True)
        _draw_quietly(outputs)
        raise
    except (SystemExit, KeyboardInterrupt) as e:  # e.g. submitit requeueing a preempted job: not a failure
        summary.interrupted(f"process stopped ({type(e).__name__}); resume with: centerexp train --resume {run_dir}")
        raise
    except BaseException as e:
        summary.failed(str(e) or type(e).__name__)
        raise
    finally:
        outputs.close()
    summary.completed()
    return summary.data


def _draw_quietly(outputs: RunOutputs) -> None:
    """A run that stopped cleanly (a signal, divergence) gets the figures of its committed
    evaluations; a failure to draw them does not hide why it stopped."""
    with contextlib.suppress(Exception):
        outputs.draw()


# ---------------------------------------------------------------------------------------------
# Entry points used by the CLI (and by tests, directly)


def start_run(
    config_path: Path,
    overrides: list[str] = (),
    runs_dir: Path = Path("runs"),
    name: str | None = None,
    overwrite: bool = False,
    command: str = "",
    progress: bool | None = None,
    threads: int | None = None,
    identity: dict | None = None,
) -> tuple[Path, dict]:
    """Check everything that can be checked cheaply, then create the run folder and train."""
    cfg = load_config(config_path, overrides)
    resolve_device(cfg.train.device)  # no GPU -> fail before any folder is made
    prepare_mnist(data_root(cfg.data), download=cfg.data.download)
    # The folder appears complete (config.yaml + summary.json) or not at all, so --resume or
    # --overwrite work on it even if this process dies before the first epoch ends.
    contents = {files.CONFIG: dump_config(cfg), files.SUMMARY: RunSummary.initial()}
    if identity:  # a sweep's run: which experiment, arm and profile it belongs to
        contents[files.IDENTITY] = json.dumps(identity, indent=2) + "\n"
    name = name or Path(config_path).stem
    lock = RunLock(Path(runs_dir) / name)
    run_dir = create_run_dir(Path(runs_dir), name, overwrite, contents, lock)
    return run_dir, train(cfg, run_dir, command=command, progress=progress, lock=lock, pinned=Pinned(threads=threads))


def recorded_conv_algorithms(run_dir: Path) -> dict | None:
    """The algorithms env.json says the run trained with; {} (the library) for a run made before
    they were recorded; None (choose now) for one that never wrote env.json."""
    chosen = recorded(run_dir, "conv_algorithms")
    if chosen is None and (run_dir / files.ENV).exists():
        return {}
    return chosen


def resume_run(
    run_dir: Path,
    overrides: list[str] = (),
    allow_config_change: bool = False,
    command: str = "",
    progress: bool | None = None,
    threads: int | None = None,
) -> tuple[Path, dict]:
    """Continue a run from its last checkpoint, with its own config.yaml (plus overrides).

    It trains on with the thread count, and the precision and convolution algorithms (when
    ``auto``), it last trained with (env.json), so that it continues bit for bit on the same
    machine; a run made before conv_algorithms were recorded trains on with the library's. ``threads``, or a
    ``train.threads`` among ``overrides``, chooses another count, which env.json's history records.
    """
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise CenterexpError(f"--resume {run_dir}: {NOT_A_RUN}", 2)
    cfg = load_config(run_dir / files.CONFIG, overrides)
    resolve_device(cfg.train.device)
    (run_dir / files.CHECKPOINT).parent.mkdir(exist_ok=True)
    (run_dir / files.FEATURE_FRAMES).mkdir(parents=True, exist_ok=True)
    told = any(o.split("=", 1)[0].strip() == "train.threads" for o in overrides)
    threads = threads or (cfg.train.threads if told else None) or recorded_threads(run_dir) or cfg.train.threads
    summary = train(
        cfg,
        run_dir,
        resume=True,
        allow_config_change=allow_config_change,
        command=command,
        progress=progress,
        pinned=Pinned(threads, recorded(run_dir, "precision"), recorded_conv_algorithms(run_dir)),
    )
    return run_dir, summary
