"""Auxiliary feature losses: center loss (Wen et al., ECCV 2016) in its squared and sqrt forms.

The trainer adds an *auxiliary loss* to cross-entropy and talks to it only through
``AuxiliaryLoss``: the loss value, an optional update after each optimizer step, and optional
centers (drawn in the feature plots and used for the compactness metrics). A new loss is a new
subclass plus an entry in ``AUX_LOSSES`` and in ``config.CHOICES["loss.kind"]``.
"""

import torch
import torch.nn.functional as F
from torch import nn

from centerexp.config import LossConfig

HALF = (torch.bfloat16, torch.float16)


class AuxiliaryLoss(nn.Module):
    """A loss on the features, added to cross-entropy. Parameters with ``requires_grad`` get their
    own SGD optimizer at ``loss.center_lr``; anything else it moves, it moves in ``after_step``."""

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Called after the optimizer steps with the batch's (detached) features."""

    @property
    def points(self) -> torch.Tensor | None:
        """One point per class in feature space (the centers), or None if the loss has none."""
        return None


class CenterLoss(AuxiliaryLoss):
    """Pull each feature towards a learned center of its class.

    forward(features, labels) returns, with d_i = ||x_i - c_{y_i}||^2 (``distance="squared"``)
    or ||x_i - c_{y_i}|| (``distance="sqrt"``) and n_j the count of class j in the batch:

        lamda / 2 * mean_i( d_i / n_{y_i} )     (count_normalized=True, the seed's form)
        lamda / 2 * mean_i( d_i )               (count_normalized=False, the overview's form)

    The centers are a Parameter, so they can be moved by an optimizer (the shipped configs: SGD
    at lr 0.5) or, with no optimizer, by ``update_centers`` (Wen et al. Eq. 4).
    """

    def __init__(
        self,
        num_classes: int,
        feat_dim: int,
        distance: str = "squared",
        lamda: float = 1.0,
        count_normalized: bool = True,
        generator: torch.Generator | None = None,
        update: str = "sgd",
        alpha: float = 0.5,
    ):
        super().__init__()
        if distance not in ("squared", "sqrt"):
            raise ValueError(f"distance must be 'squared' or 'sqrt', got {distance!r}")
        self.num_classes = num_classes
        self.distance = distance
        self.lamda = lamda
        self.count_normalized = count_normalized
        self.update, self.alpha = update, alpha
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim, generator=generator))
        if update == "ema":
            self.centers.requires_grad_(False)  # moved only by update_centers, after each step

    @property
    def points(self) -> torch.Tensor:
        return self.centers

    def after_step(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        if self.update == "ema":
            self.update_centers(features, labels, self.alpha)

    def _one_hot(self, labels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # Gathering and counting through a one-hot matrix keeps forward and backward deterministic
        # on CUDA too (index_select's backward and histc use atomics); the cost is B x classes.
        return F.one_hot(labels, self.num_classes).to(dtype)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # In the centers' dtype (fp32, or fp64 for gradcheck); half-precision features are upcast.
        dtype = torch.float32 if self.centers.dtype in HALF else self.centers.dtype
        with torch.autocast(features.device.type, enabled=False):
            return self._loss(features.to(dtype), labels)

    def _loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        one_hot = self._one_hot(labels, features.dtype)
        diff = features - one_hot @ self.centers.to(features.dtype)
        dist = diff.pow(2).sum(dim=1)
        if self.distance == "sqrt":
            # sqrt has an infinite derivative at 0; take the square root only where it is positive
            # (the value is unchanged, and the gradient at x == c is 0, a valid subgradient).
            positive = dist > 0
            dist = torch.where(positive, torch.sqrt(torch.where(positive, dist, torch.ones_like(dist))), 0.0)
        if self.count_normalized:
            counts = one_hot.sum(dim=0)  # n_j, exact: sums of ones
            dist = dist / (one_hot @ counts)
        return self.lamda / 2 * dist.mean()

    @torch.no_grad()
    def update_centers(self, features: torch.Tensor, labels: torch.Tensor, alpha: float) -> None:
        """Wen et al. Eq. 4: c_j <- c_j - alpha * sum_{i: y_i = j} (c_j - x_i) / (1 + n_j)."""
        features = features.detach().to(self.centers.dtype)
        one_hot = self._one_hot(labels, features.dtype)
        counts = one_hot.sum(dim=0)
        diff_sum = one_hot.T @ (one_hot @ self.centers - features)  # sum_{i: y_i = j} (c_j - x_i)
        self.centers.sub_(alpha * diff_sum / (1 + counts).unsqueeze(1))

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, distance={self.distance}, lamda={self.lamda}, "
            f"count_normalized={self.count_normalized}"
        )


def center_loss(cfg: LossConfig, num_classes: int, feat_dim: int) -> CenterLoss:
    return CenterLoss(
        num_classes, feat_dim, cfg.distance, cfg.lamda, cfg.count_normalized, update=cfg.center_update, alpha=cfg.alpha
    )


# loss.kind -> builder(loss config, number of classes, feature size)
AUX_LOSSES = {"center": center_loss}


def build_aux_loss(cfg: LossConfig, num_classes: int, feat_dim: int) -> AuxiliaryLoss:
    return AUX_LOSSES[cfg.kind](cfg, num_classes, feat_dim)
