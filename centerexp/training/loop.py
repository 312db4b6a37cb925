"""The steps of a run: its trainable parts built from the config, a stretch of optimizer steps, one
evaluation pass, and the metrics row they make. train.py strings them into a run; bench times them.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from centerexp.config import Config, batch_starts
from centerexp.errors import CenterexpError
from centerexp.rundir.measures import compactness
from centerexp.training.conv import use_algorithms
from centerexp.training.data import Split, to_float
from centerexp.training.losses import AuxiliaryLoss, build_aux_loss
from centerexp.training.models import build_model
from centerexp.training.optim import SGD, Adam, Optimizer, StepLR
from centerexp.training.runtime import Runtime

NUM_CLASSES = 10


class Diverged(CenterexpError):
    """The training loss became NaN or inf: the run failed, as a result of its config and seed."""


@dataclass
class Parts:
    """The trainable pieces of one run, built from its config."""

    model: torch.nn.Module
    aux_loss: AuxiliaryLoss  # the center loss in every shipped config
    optimizer: Optimizer
    aux_optimizer: Optimizer | None  # SGD on the aux loss's trainable parameters, if any
    scheduler: StepLR
    shuffle: torch.Generator


def build_parts(
    cfg: Config,
    device: torch.device,
    channels_last: bool = False,
    conv_algorithms: dict | None = None,
    conv_layers: tuple | None = None,
) -> Parts:
    """Model and centers drawn from the (already seeded) global RNG; shuffle order from its own
    generator. ``conv_algorithms``, ``conv_layers``: see Runtime (None: the library everywhere;
    the layer shapes found by a forward pass)."""
    model = build_model(cfg.model).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if conv_algorithms:
        use_algorithms(model, conv_algorithms, conv_layers)
    aux_loss = build_aux_loss(cfg.loss, NUM_CLASSES, cfg.model.feat_dim).to(device)
    # optim.py: torch's update functions without torch.optim's classes (they import torch._dynamo).
    # foreach: one fused kernel sequence per step instead of one per parameter tensor.
    if cfg.train.optimizer == "sgd":
        optimizer = SGD(model.parameters(), lr=cfg.train.lr, momentum=cfg.train.momentum, foreach=True)
    else:
        optimizer = Adam(model.parameters(), lr=cfg.train.lr, foreach=True)
    trainable = [p for p in aux_loss.parameters() if p.requires_grad]
    aux_optimizer = SGD(trainable, lr=cfg.loss.center_lr) if trainable else None
    step = cfg.train.lr_step_epochs or 10**9  # null: a step that never comes, i.e. constant lr
    scheduler = StepLR(optimizer, step, gamma=cfg.train.lr_gamma)
    shuffle = torch.Generator().manual_seed(cfg.train.seed)
    return Parts(model, aux_loss, optimizer, aux_optimizer, scheduler, shuffle)


def prepare_batch(images: torch.Tensor, cfg: Config, rt: Runtime) -> torch.Tensor:
    return rt.memory_format(to_float(images, cfg.data.normalize))


def train_steps(
    parts: Parts, split: Split, cfg: Config, rt: Runtime, perm, starts, epoch: int, stop=None, progress=False
):
    """The training batches that start at ``starts`` in the epoch's order ``perm``: one optimizer
    step each. Returns their mean losses and accuracy, and the features seen (for the scatter).
    ``stop``: an object whose ``check(epoch)`` is called after every step and raises to stop the run
    (train.StopFlag: SIGINT / SIGTERM)."""
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
        if stop is not None:
            stop.check(epoch)
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
