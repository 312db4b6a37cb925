"""Training: one run of cross-entropy + an auxiliary feature loss, epoch by epoch, into a run folder.

Reads top to bottom: runtime (device, precision), seeds, data, model and optimizers, maybe restore
a checkpoint, then per epoch, in stretches that end every ``train.eval_every`` steps and at the
epoch's end: train -> evaluate -> metrics row -> plots -> checkpoint -> summary. The checkpoint is
the commit point: a run killed at any moment resumes after its last checkpoint (inside an epoch,
too: the epoch's batch order and position are in it), drops later rows, and continues bit for bit
(everything it needs, RNG states included, is in the checkpoint dict).
"""

import contextlib
import json
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from centerexp import plots
from centerexp.config import Config, batch_starts, dump_config, load_config
from centerexp.errors import CenterexpError
from centerexp.events import RunEvents, write_records
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
from centerexp.rundir.measures import compactness
from centerexp.rundir.provenance import env_info
from centerexp.rundir.records import MetricsLog, RunSummary
from centerexp.training.checkpoints import Position, checkpoint_dict, fingerprint, resume_point
from centerexp.training.conv import use_algorithms
from centerexp.training.data import Split, data_root, load_mnist, prepare_mnist, to_float
from centerexp.training.losses import AuxiliaryLoss, build_aux_loss
from centerexp.training.models import build_model
from centerexp.training.runtime import Pinned, Runtime, resolve_device, seed_everything

NUM_CLASSES = 10


class Interrupted(CenterexpError):
    """SIGINT / SIGTERM arrived; the run stopped cleanly. Exit status 128 + signal, as shells do."""


class Diverged(CenterexpError):
    """The training loss became NaN or inf: the run failed, as a result of its config and seed."""


# ---------------------------------------------------------------------------------------------
# Model, auxiliary loss, optimizers


@dataclass
class Parts:
    """The trainable pieces of one run, built from its config."""

    model: torch.nn.Module
    aux_loss: AuxiliaryLoss  # the center loss in every shipped config
    optimizer: torch.optim.Optimizer
    aux_optimizer: torch.optim.Optimizer | None  # SGD on the aux loss's trainable parameters, if any
    scheduler: torch.optim.lr_scheduler.LRScheduler
    shuffle: torch.Generator


def build_parts(
    cfg: Config, device: torch.device, channels_last: bool = False, conv_algorithms: dict | None = None
) -> Parts:
    """Model and centers drawn from the (already seeded) global RNG; shuffle order from its own
    generator. ``conv_algorithms``: see Runtime (None: the library everywhere)."""
    model = build_model(cfg.model).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if conv_algorithms:
        use_algorithms(model, conv_algorithms)
    aux_loss = build_aux_loss(cfg.loss, NUM_CLASSES, cfg.model.feat_dim).to(device)
    # foreach: one fused kernel sequence per step instead of one per parameter tensor.
    if cfg.train.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.train.lr, momentum=cfg.train.momentum, foreach=True)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, foreach=True)
    trainable = [p for p in aux_loss.parameters() if p.requires_grad]
    aux_optimizer = torch.optim.SGD(trainable, lr=cfg.loss.center_lr) if trainable else None
    step = cfg.train.lr_step_epochs or 10**9  # null: a step that never comes, i.e. constant lr
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step, gamma=cfg.train.lr_gamma)
    shuffle = torch.Generator().manual_seed(cfg.train.seed)
    return Parts(model, aux_loss, optimizer, aux_optimizer, scheduler, shuffle)


def prepare_batch(images: torch.Tensor, cfg: Config, rt: Runtime) -> torch.Tensor:
    return rt.memory_format(to_float(images, cfg.data.normalize))


# ---------------------------------------------------------------------------------------------
# One epoch of training, one evaluation pass


class StopFlag:
    """Set by SIGINT / SIGTERM; checked after every step."""

    signum: int | None = None


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


def train_steps(
    parts: Parts, split: Split, cfg: Config, rt: Runtime, perm, starts, epoch: int, stop=None, progress=False
):
    """The training batches that start at ``starts`` in the epoch's order ``perm``: one optimizer
    step each. Returns their mean losses and accuracy, and the features seen (for the scatter)."""
    model, aux_loss = parts.model, parts.aux_loss
    model.train()
    n, bs = len(split), cfg.train.batch_size
    sums = torch.zeros(4, dtype=torch.float64, device=rt.device)  # loss, ce, aux (x batch size), correct
    step_losses, features_seen, order = [], [], []
    for start in tqdm(starts, desc=f"epoch {epoch}", leave=False, disable=not progress, unit="batch"):
        idx = perm[start : start + bs]
        x, y = prepare_batch(split.images[idx], cfg, rt), split.labels[idx]
        with rt.autocast():
            features, logits = model(x)
        ce = F.cross_entropy(logits.float(), y)
        aux = aux_loss(features, y)
        loss = ce + aux
        parts.optimizer.zero_grad(set_to_none=True)
        if parts.aux_optimizer is not None:
            parts.aux_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        parts.optimizer.step()
        if parts.aux_optimizer is not None:
            parts.aux_optimizer.step()
        aux_loss.after_step(features.detach(), y)
        k = len(y)
        sums += torch.stack([loss.detach() * k, ce.detach() * k, aux.detach() * k, (logits.argmax(1) == y).sum()])
        step_losses.append(loss.detach())
        features_seen.append(features.detach().float())
        order.append(idx)
        if stop is not None and stop.signum is not None:
            name = signal.Signals(stop.signum).name
            raise Interrupted(f"stopped by {name} during epoch {epoch}", exit_code=128 + stop.signum)
    # Checked once per stretch rather than per step: no host sync in the loop (it matters on a GPU).
    step_losses = torch.stack(step_losses)
    bad = (~torch.isfinite(step_losses)).nonzero()
    if len(bad):
        batch = bad[0].item()
        raise Diverged(
            f"training loss became {step_losses[batch].item()} at epoch {epoch}, batch "
            f"{starts[batch] // bs + 1}: run stopped, its last checkpoint is kept"
        )
    seen = sum(min(bs, n - s) for s in starts)
    loss, ce, aux, correct = (sums / seen).tolist()
    return {
        "loss": loss,
        "ce": ce,
        "center": aux,
        "acc": correct,
        "n": seen,
        "steps": len(starts),
        "features": torch.cat(features_seen),
        "order": torch.cat(order),  # image index of each row of features
    }


def train_one_epoch(parts: Parts, split: Split, cfg: Config, rt: Runtime, epoch: int, stop=None, progress=False):
    """A whole epoch in a fresh shuffled order (what bench times)."""
    perm = torch.randperm(len(split), generator=parts.shuffle).to(rt.device)
    starts = batch_starts(len(split), cfg.train.batch_size)
    return train_steps(parts, split, cfg, rt, perm, starts, epoch, stop, progress)


def next_evaluation(step: int, next_batch: int, batches: int, eval_every: int | None) -> int:
    """The batch index (exclusive) where the stretch starting at ``next_batch`` ends: at the next
    optimizer step that is a multiple of ``eval_every``, or at the end of the epoch."""
    if not eval_every:
        return batches
    return min(batches, next_batch + eval_every - step % eval_every)


@torch.inference_mode()
def evaluate(parts: Parts, split: Split, cfg: Config, rt: Runtime) -> dict:
    """Test-set losses, accuracy, all features, and how compact the feature clusters are."""
    model, aux_loss = parts.model, parts.aux_loss
    model.eval()
    features, logits = [], []
    for start in range(0, len(split), cfg.train.eval_batch_size):
        x = prepare_batch(split.images[start : start + cfg.train.eval_batch_size], cfg, rt)
        with rt.autocast():
            f, z = model(x)
        features.append(f.float())
        logits.append(z.float())
    features, logits, y = torch.cat(features), torch.cat(logits), split.labels
    ce = F.cross_entropy(logits, y).item()
    # The count-normalised loss depends on batch composition: score it in chunks of the training
    # batch size so test and train center losses are on the same scale.
    bs = cfg.train.batch_size
    aux = sum(aux_loss(features[s : s + bs], y[s : s + bs]).item() * len(y[s : s + bs]) for s in range(0, len(y), bs))
    aux /= len(y)
    points = aux_loss.points
    return {
        "loss": ce + aux,
        "ce": ce,
        "center": aux,
        "acc": (logits.argmax(1) == y).double().mean().item(),
        "features": features,
        "labels": y,
        **compactness(features, y, None if points is None else points.detach().float()),
    }


def metrics_row(epoch: float, step: int, lr: float, tr: dict, te: dict, times: tuple, wall: float) -> dict:
    """One metrics.csv row; its names are schema.METRICS (MetricsLog.append checks they match)."""
    t0, t1, t2 = times
    return {
        "epoch": epoch,
        "step": step,
        "lr": lr,
        **{f"train_{k}": tr[k] for k in ("loss", "ce", "center", "acc")},
        **{f"test_{k}": te[k] for k in ("loss", "ce", "center", "acc")},
        **{k: te[k] for k in ("intra_class", "inter_class", "compactness_ratio", "center_lag")},
        "epoch_seconds": t2 - t0,
        "train_seconds": t1 - t0,
        "eval_seconds": t2 - t1,
        "wall_seconds": wall,
        "images_per_second": tr["n"] / (t1 - t0),
    }


# ---------------------------------------------------------------------------------------------
# TensorBoard (plot.tensorboard)


def open_events(run_dir: Path, cfg: Config, committed_step: int) -> RunEvents:
    """The run's event writer, (re)starting at its checkpoint: a fresh tb/ with the hparams for a
    run starting from scratch; the committed rows from metrics.csv for a resumed run whose tb/ is
    missing (made with plot.tensorboard off, or by an older version)."""
    events = RunEvents(run_dir, committed_step)
    if committed_step == 0 or not events.had_events:
        write_records(events, run_dir, cfg)
    events.flush()
    return events


def log_evaluation(events: RunEvents, run_dir: Path, row: dict, frame: str, test_set, te, drawn, parts, last: bool):
    """One evaluation's events, flushed before the checkpoint commits it: the metrics row, the
    feature figure, and after the last one the projector embedding of the test images ``drawn``."""
    events.row(row)
    events.image(run_dir / files.FEATURE_FRAMES / f"{frame}.png", row["step"])
    if last:
        centers = parts.aux_loss.points
        events.embedding(te["features"][drawn], te["labels"][drawn], test_set.images[drawn], centers, row["step"])
    events.flush()


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
    cfg: Config, device: torch.device, channels_last: bool, conv_algorithms: dict | None = None
) -> tuple[Parts, Split, Split]:
    """Seeds, data, model, centers and optimizers, as a run starts (before any checkpoint)."""
    seed_everything(cfg.train.seed)
    train_set, test_set = load_mnist(cfg.data, cfg.train.seed, device)
    return build_parts(cfg, device, channels_last, conv_algorithms), train_set, test_set


def fingerprint_of(cfg: Config) -> dict:
    """The fingerprint a run of ``cfg`` had at its start, recomputed (for runs made before run.json)."""
    parts, train_set, _ = starting_point(cfg, torch.device("cpu"), channels_last=False)
    return fingerprint(parts, train_set)


def _train_locked(cfg, run_dir: Path, resume: bool, allow_config_change: bool, command: str, progress, pinned: Pinned):
    progress = sys.stderr.isatty() if progress is None else progress
    rt = Runtime.from_config(cfg, pinned)
    parts, train_set, test_set = starting_point(cfg, rt.device, rt.channels_last, rt.conv_algorithms)
    ckpt_path = run_dir / files.CHECKPOINT
    pos, wall_before = resume_point(parts, cfg, ckpt_path, allow_config_change) if resume else (Position(), 0.0)
    if pos.step == 0:  # a fresh start: what a paired comparison must share with this run's partner
        write_identity(run_dir, fingerprint=fingerprint(parts, train_set))
    metrics = MetricsLog(run_dir / files.METRICS)
    metrics.truncate_to(pos.epoch, pos.step)  # rows past the checkpoint come from steps being redone
    write_run_header(run_dir, dump_config(cfg), command, env_info(rt))
    events = open_events(run_dir, cfg, pos.step) if cfg.plot.tensorboard else None
    summary = RunSummary(run_dir)
    summary.begin(
        name=run_dir.name, epochs=cfg.train.epochs, seed=cfg.train.seed, device=str(rt.device), precision=rt.precision
    )

    t_run = time.perf_counter()
    n_batches = len(batch_starts(len(train_set), cfg.train.batch_size))
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
                    drawn = plots.write_epoch_plots(
                        run_dir, cfg, when, pos.step, frame, train_set, tr, te, parts.aux_loss.points
                    )
                    if events:
                        last = pos.perm is None and epoch == cfg.train.epochs
                        log_evaluation(events, run_dir, row, frame, test_set, te, drawn, parts, last)
                    atomic_torch_save(checkpoint_dict(parts, cfg, pos, wall), ckpt_path)  # the commit point
                    summary.epoch_finished()
                    tqdm.write(
                        f"{run_dir.name} epoch {when:g}/{cfg.train.epochs}, step {pos.step}: "
                        f"train loss {tr['loss']:.4f} acc {tr['acc']:.4f} | "
                        f"test loss {te['loss']:.4f} acc {te['acc']:.4f} | {t2 - t0:.1f}s"
                    )
                    if stop.signum is not None:  # arrived during evaluation: this stretch is complete and saved
                        name = signal.Signals(stop.signum).name
                        where = f"epoch {epoch}" if pos.perm is None else f"step {pos.step} (epoch {when:.3g})"
                        raise Interrupted(f"stopped by {name} after {where}", exit_code=128 + stop.signum)
            if cfg.plot.gif:
                plots.feature_gif(run_dir)
    except Interrupted as e:
        summary.interrupted(str(e))
        raise Interrupted(f"{e}; resume with: centerexp train --resume {run_dir}", exit_code=e.exit_code) from None
    except Diverged as e:
        summary.failed(str(e), diverged=True)
        raise
    except (SystemExit, KeyboardInterrupt) as e:  # e.g. submitit requeueing a preempted job: not a failure
        summary.interrupted(f"process stopped ({type(e).__name__}); resume with: centerexp train --resume {run_dir}")
        raise
    except BaseException as e:
        summary.failed(str(e) or type(e).__name__)
        raise
    finally:
        if events:
            events.close()
    summary.completed()
    return summary.data


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
