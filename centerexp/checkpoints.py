"""Checkpoints: everything a run needs to continue bit for bit, as one dict of plain data.

``checkpoints/last.pt`` is rewritten atomically after every epoch; it is the run's commit point.
It holds tensors and plain Python only, so it loads with ``torch.load(weights_only=True)``.
"""

from pathlib import Path

import torch

from centerexp.config import Config, diff_configs
from centerexp.errors import CenterexpError
from centerexp.runtime import rng_state, set_rng_state

CHECKPOINT_FORMAT = 1


def checkpoint_dict(parts, cfg: Config, epoch: int, wall_seconds: float) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
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


def resume_point(parts, cfg: Config, ckpt_path: Path, allow_config_change: bool) -> tuple[int, float]:
    """(epochs already done, wall seconds spent on them), restoring ``parts`` from the checkpoint.

    No checkpoint means no epoch was committed (a kill before the first one was saved): the run
    restarts from epoch 0, and the caller drops whatever rows metrics.csv holds.
    """
    if not ckpt_path.exists():
        return 0, 0.0
    ckpt = load_checkpoint(ckpt_path)
    changed = diff_configs(ckpt["config"], cfg.to_dict())
    if changed and not allow_config_change:
        raise CenterexpError(
            f"{ckpt_path.parent.parent}: config differs from the checkpoint's in {', '.join(changed)}; "
            "pass --allow-config-change to resume anyway",
            exit_code=2,
        )
    restore(parts, ckpt)
    return ckpt["epoch"], ckpt["wall_seconds"]
