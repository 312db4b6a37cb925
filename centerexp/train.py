"""Training: one run of cross-entropy + center loss, epoch by epoch, into a run folder.

Reads top to bottom: set up (device, precision, seeds, data, model, optimizers), maybe restore a
checkpoint, then per epoch train -> evaluate -> log -> checkpoint -> plots. Everything a resumed
run needs is in the checkpoint dict, so a resumed run continues bit for bit.
"""

import contextlib
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from centerexp import plots
from centerexp.config import Config, diff_configs, dump_config
from centerexp.data import Split, load_mnist, to_float
from centerexp.errors import CenterexpError
from centerexp.losses import CenterLoss
from centerexp.models import build_model
from centerexp.runs import (
    MetricsLog,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_text,
    env_info,
    metrics_columns,
    read_json,
    write_json,
)

CHECKPOINT_FORMAT = 1
DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice, restored when train.threads is null


class Interrupted(CenterexpError):
    """SIGINT / SIGTERM arrived; the run stopped cleanly. Exit status 128 + signal, as shells do."""


# ---------------------------------------------------------------------------------------------
# Setup: device, precision, determinism, seeds


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise CenterexpError("train.device is 'cuda' but no CUDA GPU is available (use auto or cpu)", exit_code=2)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX-BF16 tiles, where oneDNN's bf16 convolutions are several times fp32.

    AVX512-BF16 alone is not enough: measured on a Sapphire Rapids VM without AMX exposed
    (avx512_bf16 present), a bf16 matmul ran at 166 GFLOP/s against 308 for fp32, and a V1.0
    training step at 39 img/s in bf16 against 58 in fp32.
    """
    try:
        with open("/proc/cpuinfo") as f:
            return "amx_bf16" in f.read()
    except OSError:
        return False


def resolve_precision(name: str, device: torch.device) -> str:
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def configure_determinism(deterministic: bool, device: torch.device) -> None:
    if device.type == "cuda" and deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # must precede the first cuBLAS call
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state(shuffle: torch.Generator) -> dict:
    """Every random state the run touches, as plain data (loads with weights_only=True)."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "shuffle": shuffle.get_state(),
    }


def set_rng_state(state: dict, shuffle: torch.Generator) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    shuffle.set_state(state["shuffle"])


# ---------------------------------------------------------------------------------------------
# Model, loss, optimizers


@dataclass
class Parts:
    """The trainable pieces of one run, built from its config."""

    model: torch.nn.Module
    center_loss: CenterLoss
    optimizer: torch.optim.Optimizer
    center_optimizer: torch.optim.Optimizer | None  # None when center_update is ema
    scheduler: torch.optim.lr_scheduler.LRScheduler
    shuffle: torch.Generator


def build_parts(cfg: Config, device: torch.device) -> Parts:
    """Model and centers drawn from the (already seeded) global RNG; shuffle order from its own generator."""
    model = build_model(cfg.model).to(device)
    if uses_channels_last(cfg):
        model = model.to(memory_format=torch.channels_last)
    center_loss = CenterLoss(10, cfg.model.feat_dim, cfg.loss.distance, cfg.loss.lamda, cfg.loss.count_normalized)
    center_loss = center_loss.to(device)
    # foreach: one fused kernel sequence per step instead of one per parameter tensor.
    if cfg.train.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.train.lr, momentum=cfg.train.momentum, foreach=True)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, foreach=True)
    if cfg.loss.center_update == "sgd":
        center_optimizer = torch.optim.SGD(center_loss.parameters(), lr=cfg.loss.center_lr)
    else:
        center_loss.centers.requires_grad_(False)  # moved only by update_centers
        center_optimizer = None
    step = cfg.train.lr_step_epochs or 10**9  # null: a step that never comes, i.e. constant lr
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step, gamma=cfg.train.lr_gamma)
    shuffle = torch.Generator().manual_seed(cfg.train.seed)
    return Parts(model, center_loss, optimizer, center_optimizer, scheduler, shuffle)


def uses_channels_last(cfg: Config) -> bool:
    """channels_last applies to the conv nets only."""
    return cfg.train.channels_last and cfg.model.arch != "linear"


def autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def prepare_batch(images: torch.Tensor, cfg: Config, channels_last: bool) -> torch.Tensor:
    x = to_float(images, cfg.data.normalize)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


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


def train_one_epoch(parts: Parts, split: Split, cfg: Config, device, precision, channels_last, epoch, stop, progress):
    """One pass over the shuffled training split; returns mean losses, accuracy and the features seen."""
    model, center_loss = parts.model, parts.center_loss
    model.train()
    n, bs = len(split), cfg.train.batch_size
    perm = torch.randperm(n, generator=parts.shuffle).to(device)
    starts = [s for s in range(0, n, bs) if n - s > 1]  # BatchNorm cannot train on a lone trailing sample
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, ce, center (x batch size), correct
    step_losses, features_seen = [], []
    for start in tqdm(starts, desc=f"epoch {epoch}", leave=False, disable=not progress, unit="batch"):
        idx = perm[start : start + bs]
        x, y = prepare_batch(split.images[idx], cfg, channels_last), split.labels[idx]
        with autocast(device, precision):
            features, logits = model(x)
        ce = F.cross_entropy(logits.float(), y)
        center = center_loss(features, y)
        loss = ce + center
        parts.optimizer.zero_grad(set_to_none=True)
        if parts.center_optimizer is not None:
            parts.center_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        parts.optimizer.step()
        if parts.center_optimizer is not None:
            parts.center_optimizer.step()
        else:
            center_loss.update_centers(features, y, cfg.loss.alpha)
        k = len(y)
        sums += torch.stack([loss.detach() * k, ce.detach() * k, center.detach() * k, (logits.argmax(1) == y).sum()])
        step_losses.append(loss.detach())
        features_seen.append(features.detach().float())
        if stop.signum is not None:
            name = signal.Signals(stop.signum).name
            raise Interrupted(f"stopped by {name} during epoch {epoch}", exit_code=128 + stop.signum)
    # Checked once per epoch rather than per step: no host sync in the loop (it matters on a GPU).
    step_losses = torch.stack(step_losses)
    bad = (~torch.isfinite(step_losses)).nonzero()
    if len(bad):
        batch = bad[0].item()
        raise CenterexpError(
            f"training loss became {step_losses[batch].item()} at epoch {epoch}, batch {batch + 1}: run stopped, "
            f"the checkpoint of epoch {epoch - 1} is kept"
        )
    seen = sum(min(bs, n - s) for s in starts)
    loss, ce, center, correct = (sums / seen).tolist()
    return {
        "loss": loss,
        "ce": ce,
        "center": center,
        "acc": correct,
        "n": seen,
        "features": torch.cat(features_seen),
        "order": perm[:seen],  # image index of each row of features
    }


@torch.inference_mode()
def evaluate(parts: Parts, split: Split, cfg: Config, device, precision, channels_last) -> dict:
    """Test-set losses, accuracy, all features, and how compact the feature clusters are."""
    model, center_loss = parts.model, parts.center_loss
    model.eval()
    features, logits = [], []
    for start in range(0, len(split), cfg.train.eval_batch_size):
        x = prepare_batch(split.images[start : start + cfg.train.eval_batch_size], cfg, channels_last)
        with autocast(device, precision):
            f, z = model(x)
        features.append(f.float())
        logits.append(z.float())
    features, logits, y = torch.cat(features), torch.cat(logits), split.labels
    ce = F.cross_entropy(logits, y).item()
    # The count-normalised loss depends on batch composition: score it in chunks of the training
    # batch size so test and train center losses are on the same scale.
    bs = cfg.train.batch_size
    center = sum(
        center_loss(features[s : s + bs], y[s : s + bs]).item() * len(y[s : s + bs]) for s in range(0, len(y), bs)
    )
    center /= len(y)
    stats = compactness(features, y, center_loss.centers.detach().float())
    return {
        "loss": ce + center,
        "ce": ce,
        "center": center,
        "acc": (logits.argmax(1) == y).double().mean().item(),
        "features": features,
        "labels": y,
        **stats,
    }


def compactness(features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor) -> dict:
    """Mean distance of a feature to its class center, mean distance between centers, their ratio."""
    intra = (features - centers[labels]).norm(dim=1).mean().item()
    pair = torch.cdist(centers, centers)
    k = len(centers)
    inter = (pair.sum() / (k * (k - 1))).item()
    return {"intra_dist": intra, "center_dist": inter, "compactness": intra / inter if inter > 0 else float("inf")}


# ---------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_dict(parts: Parts, cfg: Config, epoch: int, wall_seconds: float) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "config": cfg.to_dict(),
        "model": parts.model.state_dict(),
        "center_loss": parts.center_loss.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "center_optimizer": parts.center_optimizer.state_dict() if parts.center_optimizer else None,
        "scheduler": parts.scheduler.state_dict(),
        "rng": rng_state(parts.shuffle),
        "wall_seconds": wall_seconds,
    }


def load_checkpoint(path: Path) -> dict:
    """Load with weights_only=True; a truncated or foreign file is a clear error, not a traceback.

    Everything lands on the CPU: RNG states must stay CPU tensors, and load_state_dict moves
    model and optimizer tensors to wherever the parameters live.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a damaged zip / pickle
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CenterexpError(f"checkpoint {path} cannot be read (truncated or corrupt?): {first}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CenterexpError(f"checkpoint {path} is not a centerexp checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


def restore(parts: Parts, ckpt: dict) -> None:
    parts.model.load_state_dict(ckpt["model"])
    parts.center_loss.load_state_dict(ckpt["center_loss"])
    parts.optimizer.load_state_dict(ckpt["optimizer"])
    if parts.center_optimizer is not None:
        parts.center_optimizer.load_state_dict(ckpt["center_optimizer"])
    parts.scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"], parts.shuffle)


# ---------------------------------------------------------------------------------------------
# The run


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _sample(n: int, k: int, seed: int) -> torch.Tensor:
    """A fixed, seeded choice of k of n image indices: the same images in every epoch's plot."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: min(k, n)]


def write_epoch_plots(run_dir: Path, cfg: Config, epoch: int, train_split: Split, tr: dict, te: dict, centers) -> None:
    """Loss curves so far, this epoch's feature scatter (a frame of the GIF), and features.pt for compare."""
    name = run_dir.name
    plots.plot_loss_curves(metrics_columns(run_dir / "metrics.csv"), run_dir / "plots" / "loss_curves.png", name)
    # Training features arrive in shuffled order: find where the chosen images sit this epoch.
    order = tr["order"].cpu()
    position = torch.full((len(train_split),), -1, dtype=torch.long)
    position[order] = torch.arange(len(order))
    chosen = position[_sample(len(train_split), cfg.plot.max_points, cfg.train.seed)]
    chosen = chosen[chosen >= 0]
    train_f, train_y = tr["features"].cpu()[chosen], train_split.labels.cpu()[order[chosen]]
    test_idx = _sample(len(te["labels"]), cfg.plot.max_points, cfg.train.seed)
    test_f, test_y = te["features"].cpu()[test_idx], te["labels"].cpu()[test_idx]
    centers = centers.cpu()
    panels = [
        (train_f, train_y, centers, f"train features (during epoch {epoch}, acc {tr['acc']:.3f})"),
        (test_f, test_y, centers, f"test features (after epoch {epoch}, acc {te['acc']:.3f})"),
    ]
    frame = run_dir / "plots" / "features" / f"epoch_{epoch:03d}.png"
    plots.plot_features(panels, frame, f"{name}: epoch {epoch}")
    atomic_write_bytes(run_dir / "plots" / "features.png", frame.read_bytes())
    atomic_torch_save(
        {"epoch": epoch, "features": test_f, "labels": test_y, "centers": centers}, run_dir / "features.pt"
    )


def progress_from_metrics(run_dir: Path) -> dict:
    """The summary's progress fields, derived from metrics.csv (the one record of finished epochs)."""
    path = run_dir / "metrics.csv"
    m = metrics_columns(path) if path.exists() else {}
    if not m.get("epoch"):
        return {"epochs_done": 0}
    accs = m["test_acc"]
    best = max(range(len(accs)), key=lambda i: accs[i])  # first epoch with the best accuracy
    return {
        "epochs_done": int(m["epoch"][-1]),
        "final_test_acc": accs[-1],
        "best_test_acc": accs[best],
        "best_epoch": int(m["epoch"][best]),
        "wall_seconds": m["wall_seconds"][-1],
        "seconds_per_epoch": m["wall_seconds"][-1] / len(accs),
    }


def write_run_header(run_dir: Path, cfg: Config, command: str, env: dict) -> None:
    """config.yaml, a line in command.txt and env.json: what is starting (or resuming) this run."""
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    try:
        with open(run_dir / "command.txt", "a") as f:
            f.write(f"{_now()}  {command or ' '.join(sys.argv)}\n")
    except OSError as e:
        raise CenterexpError(f"cannot write {run_dir / 'command.txt'}: {e.strerror or e}") from None
    env_path = run_dir / "env.json"
    if env_path.exists():  # keep what produced the earlier epochs; note each resume's environment
        first = read_json(env_path)
        env = {**first, "resumes": [*first.get("resumes", []), {"time": _now(), **env}]}
    write_json(env_path, env)


def train(
    cfg: Config,
    run_dir: Path,
    *,
    resume: bool = False,
    allow_config_change: bool = False,
    command: str = "",
    progress: bool | None = None,
) -> dict:
    """Train one run into ``run_dir`` (already created, or an existing run when ``resume``).

    Per epoch: train -> evaluate -> append the metrics row -> plots and features.pt -> checkpoint
    (the commit point: resume starts after the last checkpointed epoch and drops later rows) ->
    summary.json. Returns the final summary. Raises CenterexpError (with the run marked failed or
    interrupted in summary.json) when the run cannot finish.
    """
    run_dir = Path(run_dir)
    progress = sys.stderr.isatty() if progress is None else progress
    device = resolve_device(cfg.train.device)
    torch.set_num_threads(cfg.train.threads or DEFAULT_THREADS)
    precision = resolve_precision(cfg.train.precision, device)
    configure_determinism(cfg.train.deterministic, device)
    seed_everything(cfg.train.seed)
    channels_last = uses_channels_last(cfg)

    train_set, test_set = load_mnist(cfg.data, cfg.train.seed, device)
    parts = build_parts(cfg, device)
    start_epoch, wall_before = 0, 0.0
    ckpt_path = run_dir / "checkpoints" / "last.pt"
    metrics = MetricsLog(run_dir / "metrics.csv")
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        changed = diff_configs(ckpt["config"], cfg.to_dict())
        if changed and not allow_config_change:
            raise CenterexpError(
                f"{run_dir}: config differs from the checkpoint's in {', '.join(changed)}; "
                "pass --allow-config-change to resume anyway",
                exit_code=2,
            )
        restore(parts, ckpt)
        start_epoch, wall_before = ckpt["epoch"], ckpt["wall_seconds"]
    elif resume and progress_from_metrics(run_dir)["epochs_done"] > 0:
        raise CenterexpError(f"{ckpt_path} is missing but {run_dir}/metrics.csv has finished epochs: cannot resume")

    metrics.truncate_to(start_epoch)  # rows past the checkpoint come from an epoch being redone
    write_run_header(run_dir, cfg, command, env_info(device, precision, channels_last))
    summary_path = run_dir / "summary.json"
    summary = read_json(summary_path) if summary_path.exists() else {}
    summary.setdefault("started", _now())
    summary.update(name=run_dir.name, epochs=cfg.train.epochs, seed=cfg.train.seed, device=str(device))
    summary.update(precision=precision, **progress_from_metrics(run_dir))

    def finish(status: str, error: str | None = None) -> None:
        summary.update(status=status, error=error, updated=_now())
        write_json(summary_path, summary)

    def finish_quietly(status: str, error: str) -> None:
        with contextlib.suppress(CenterexpError):  # the disk may be the problem: keep the original error
            finish(status, error)

    finish("running")
    t_run = time.perf_counter()
    try:
        with stop_on_signals() as stop:
            epochs = range(start_epoch + 1, cfg.train.epochs + 1)
            bar = tqdm(epochs, desc=run_dir.name, initial=start_epoch, total=cfg.train.epochs, disable=not progress)
            for epoch in bar:
                lr = parts.optimizer.param_groups[0]["lr"]
                t0 = time.perf_counter()
                tr = train_one_epoch(parts, train_set, cfg, device, precision, channels_last, epoch, stop, progress)
                t1 = time.perf_counter()
                te = evaluate(parts, test_set, cfg, device, precision, channels_last)
                t2 = time.perf_counter()
                parts.scheduler.step()
                wall = wall_before + (t2 - t_run)
                metrics.append(
                    {
                        "epoch": epoch,
                        "lr": lr,
                        **{f"train_{k}": tr[k] for k in ("loss", "ce", "center", "acc")},
                        **{f"test_{k}": te[k] for k in ("loss", "ce", "center", "acc")},
                        **{k: te[k] for k in ("intra_dist", "center_dist", "compactness")},
                        "epoch_seconds": t2 - t0,
                        "train_seconds": t1 - t0,
                        "eval_seconds": t2 - t1,
                        "wall_seconds": wall,
                        "images_per_second": tr["n"] / (t1 - t0),
                    }
                )
                centers = parts.center_loss.centers.detach().float()
                write_epoch_plots(run_dir, cfg, epoch, train_set, tr, te, centers)
                atomic_torch_save(checkpoint_dict(parts, cfg, epoch, wall), ckpt_path)
                summary.update(progress_from_metrics(run_dir))
                finish("running")
                tqdm.write(
                    f"{run_dir.name} epoch {epoch}/{cfg.train.epochs}: "
                    f"train loss {tr['loss']:.4f} acc {tr['acc']:.4f} | "
                    f"test loss {te['loss']:.4f} acc {te['acc']:.4f} | {t2 - t0:.1f}s"
                )
                if stop.signum is not None:  # arrived during evaluation: the epoch is complete and saved
                    name = signal.Signals(stop.signum).name
                    raise Interrupted(f"stopped by {name} after epoch {epoch}", exit_code=128 + stop.signum)
            if cfg.plot.gif:
                plots.feature_gif(run_dir)
    except Interrupted as e:
        finish_quietly("interrupted", str(e))
        raise Interrupted(f"{e}; resume with: centerexp train --resume {run_dir}", exit_code=e.exit_code) from None
    except BaseException as e:
        finish_quietly("failed", str(e) or type(e).__name__)
        raise
    finish("completed")
    return summary


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
) -> tuple[Path, dict]:
    """Check everything that can be checked cheaply, then create the run folder and train."""
    from centerexp.config import load_config
    from centerexp.data import data_root, prepare_mnist
    from centerexp.runs import create_run_dir

    cfg = load_config(config_path, overrides)
    resolve_device(cfg.train.device)  # no GPU -> fail before any folder is made
    prepare_mnist(data_root(cfg.data), download=cfg.data.download)
    run_dir = create_run_dir(Path(runs_dir), name or Path(config_path).stem, overwrite)
    # From here on the folder is a run (config.yaml + summary.json), so --resume or --overwrite
    # work on it even if this process dies before the first epoch ends.
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    write_json(run_dir / "summary.json", {"started": _now(), "status": "running", "epochs_done": 0})
    return run_dir, train(cfg, run_dir, command=command, progress=progress)


def resume_run(
    run_dir: Path,
    overrides: list[str] = (),
    allow_config_change: bool = False,
    command: str = "",
    progress: bool | None = None,
) -> tuple[Path, dict]:
    """Continue a run from its last complete epoch, with its own config.yaml (plus overrides)."""
    from centerexp.config import load_config
    from centerexp.runs import is_run_dir

    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise CenterexpError(f"--resume {run_dir}: not a centerexp run folder (no config.yaml and summary.json)", 2)
    cfg = load_config(run_dir / "config.yaml", overrides)
    resolve_device(cfg.train.device)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    (run_dir / "plots" / "features").mkdir(parents=True, exist_ok=True)
    summary = train(
        cfg, run_dir, resume=True, allow_config_change=allow_config_change, command=command, progress=progress
    )
    return run_dir, summary
