"""Checkpoints: everything a run needs to continue bit for bit, as one dict of plain data.

``checkpoints/last.pt`` is rewritten atomically after every evaluation (every epoch, and every
``train.eval_every`` steps); it is the run's commit point. It holds tensors and plain Python only,
so it loads with ``torch.load(weights_only=True)``. Also here: the run's fingerprint, a hash of
what two runs of a paired comparison must share (initial weights and centers, data and order).
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from centerexp.config import Config, diff_configs, steps_per_epoch, train_images
from centerexp.errors import CenterexpError
from centerexp.training.runtime import rng_state, set_rng_state

CHECKPOINT_FORMAT = 1


@dataclass
class Position:
    """Where training stands: whole epochs done, optimizer steps done, and, inside an epoch in
    progress, that epoch's batch order and its next batch (``perm`` None between epochs)."""

    epoch: int = 0
    step: int = 0
    perm: torch.Tensor | None = None
    next_batch: int = 0

    def advance(self, batch_end: int, batches: int) -> None:
        self.step += batch_end - self.next_batch
        self.next_batch = batch_end
        if batch_end == batches:  # the epoch is over
            self.epoch, self.perm, self.next_batch = self.epoch + 1, None, 0


def checkpoint_dict(parts, cfg: Config, pos: Position, wall_seconds: float) -> dict:
    inside = None if pos.perm is None else {"perm": pos.perm.cpu(), "next_batch": pos.next_batch}
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": pos.epoch,
        "step": pos.step,
        "inside_epoch": inside,  # None between epochs
        "config": cfg.to_dict(),
        "model": parts.model.state_dict(),
        "center_loss": parts.aux_loss.state_dict(),  # key kept from format 1: old checkpoints still load
        "optimizer": parts.optimizer.state_dict(),
        "center_optimizer": parts.aux_optimizer.state_dict() if parts.aux_optimizer else None,
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


def restore(parts, ckpt: dict) -> None:
    parts.model.load_state_dict(ckpt["model"])
    parts.aux_loss.load_state_dict(ckpt["center_loss"])
    parts.optimizer.load_state_dict(ckpt["optimizer"])
    if parts.aux_optimizer is not None:
        parts.aux_optimizer.load_state_dict(ckpt["center_optimizer"])
    parts.scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"], parts.shuffle)


def resume_point(parts, cfg: Config, ckpt_path: Path, allow_config_change: bool) -> tuple[Position, float]:
    """(where training stands, wall seconds spent so far), restoring ``parts`` from the checkpoint.

    No checkpoint means nothing was committed (a kill before the first evaluation was saved): the
    run restarts from step 0, and the caller drops whatever rows metrics.csv holds.
    """
    if not ckpt_path.exists():
        return Position(), 0.0
    ckpt = load_checkpoint(ckpt_path)
    changed = diff_configs(ckpt["config"], cfg.to_dict())
    if changed and not allow_config_change:
        raise CenterexpError(
            f"{ckpt_path.parent.parent}: config differs from the checkpoint's in {', '.join(changed)}; "
            "pass --allow-config-change to resume anyway",
            exit_code=2,
        )
    restore(parts, ckpt)
    inside = ckpt.get("inside_epoch")  # absent in checkpoints written before eval_every
    pos = Position(ckpt["epoch"], ckpt.get("step", 0))
    if inside is not None:
        device = next(parts.model.parameters()).device
        pos.perm, pos.next_batch = inside["perm"].to(device), inside["next_batch"]
    if "step" not in ckpt:  # written before eval_every: whole epochs of a fixed number of steps
        pos.step = ckpt["epoch"] * steps_per_epoch(train_images(cfg.data.train_subset), cfg.train.batch_size)
    return pos, ckpt["wall_seconds"]


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def fingerprint(parts, train_split) -> dict:
    """Hashes of the run's starting point, taken before its first step: ``init``, the initial
    weights and centers; ``data``, the training images and the first epoch's batch order. Two runs
    of a paired comparison share both (their configs differ only where the claim says)."""
    state = {**parts.model.state_dict(), **{f"aux.{k}": v for k, v in parts.aux_loss.state_dict().items()}}
    order = torch.randperm(len(train_split), generator=torch.Generator().set_state(parts.shuffle.get_state()))
    return {
        "init": _digest(state[k] for k in sorted(state)),
        "data": _digest([train_split.images, train_split.labels, order]),
    }
