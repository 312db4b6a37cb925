"""Figures: loss/accuracy curves and the classic 2-D feature scatter with the centers marked.

Features wider than 2-D are drawn on their top two principal components (Projection): the axes say
so ("PC1 (xx % of variance)"), and a run's GIF frames share one basis so that they are comparable.

A run's frames (training/outputs.py) are drawn one after another on one reused FeatureFigure: the
same PNG as on a fresh figure, for about half the cost.
"""

import io
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.lines import Line2D
from matplotlib.ticker import FormatStrFormatter, MaxNLocator

from centerexp.rundir.io import atomic_write_bytes

DIGIT_COLORS = plt.get_cmap("tab10").colors


def save_figure(fig, path: Path) -> None:
    """Render in memory, then write atomically: a plot is never seen half-written."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())


def write_png(path: Path, rgba: np.ndarray) -> None:
    """Rendered pixels (``canvas.buffer_rgba()``) as the PNG savefig writes of them, atomically."""
    buffer = io.BytesIO()
    matplotlib.image.imsave(buffer, rgba, format="png", origin="upper", dpi=100)
    atomic_write_bytes(Path(path), buffer.getvalue())


def set_margins(fig, left: float, right: float, bottom: float, top: float, between: float = 0.0) -> None:
    """Margins in inches. The per-evaluation figures are drawn at every evaluation of every run, and
    tight_layout, which draws every text once more to measure it, cost about a third of each."""
    width, height = fig.get_size_inches()
    columns = fig.axes[0].get_subplotspec().get_gridspec().ncols if fig.axes else 1
    panel = (width - left - right - between * (columns - 1)) / columns
    fig.subplots_adjust(
        left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height, wspace=between / panel
    )


def style_epoch_axes(ax, log: bool = False) -> None:
    """Integer epochs on x, a light grid, and plain numbers (not 2x10^0) on a log y axis."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if log:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.grid(alpha=0.3)


def plot_loss_curves(metrics: dict[str, list[float]], path: Path, title: str = "") -> None:
    """Total / CE / center loss (train and test) and accuracy against epoch."""
    epochs = metrics["epoch"]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    panels = [("loss", "total loss"), ("ce", "cross-entropy"), ("center", "center loss")]
    for ax, (key, label) in zip(axes, panels):
        ax.plot(epochs, metrics[f"train_{key}"], "o-", label="train", ms=3)
        ax.plot(epochs, metrics[f"test_{key}"], "s--", label="test", ms=3)
        ax.set(xlabel="epoch", ylabel=label, title=label)
        values = metrics[f"train_{key}"] + metrics[f"test_{key}"]
        log = min(values) > 0 and max(values) / min(values) > 20  # log only when it spans decades
        style_epoch_axes(ax, log)
        if log:
            ax.set_title(f"{label} (log scale)")
        ax.legend()
    ax = axes[3]
    style_epoch_axes(ax)
    ax.plot(epochs, metrics["train_acc"], "o-", label="train", ms=3)
    ax.plot(epochs, metrics["test_acc"], "s--", label="test", ms=3)
    ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.01))
    ax.legend(loc="lower right")
    if title:
        fig.suptitle(title)
    set_margins(fig, left=0.75, right=0.15, bottom=0.55, top=0.75 if title else 0.4, between=0.85)
    save_figure(fig, path)


@dataclass(frozen=True)
class Projection:
    """How features of any width become a scatter's two axes.

    2-D features are drawn as they are. Wider ones are projected on the top two principal
    components of the sample the projection was fitted on (an exact SVD: the samples are a few
    thousand points), centered on its mean; 1-D features get a flat second axis. Distances and
    compactness metrics are never computed on the projection, only drawn with it.
    """

    mean: torch.Tensor | None = None  # (d,), float64; None: no projection (d <= 2)
    components: torch.Tensor | None = None  # (2, d), orthonormal rows, float64
    explained: tuple[float, float] = (math.nan, math.nan)  # share of the fitted sample's variance

    @staticmethod
    def fit(features: torch.Tensor) -> "Projection":
        f = features.detach().double().cpu()
        if f.shape[1] <= 2 or len(f) < 2:  # nothing to fit on: the first two coordinates, said as such
            return Projection()
        mean = f.mean(0)
        _, s, vh = torch.linalg.svd(f - mean, full_matrices=False)
        variance = s.square()
        share = (variance[:2] / variance.sum()).tolist() if variance.sum() > 0 else [math.nan, math.nan]
        return Projection(mean, vh[:2].contiguous(), (share[0], share[1]))

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        f = features.detach().cpu()
        if self.components is None:
            if f.shape[1] >= 2:
                return f.float()[:, :2]
            return torch.cat([f.float(), torch.zeros_like(f, dtype=torch.float)], 1)  # 1-D: a flat second axis
        return ((f.double() - self.mean) @ self.components.T).float()

    def axis_labels(self) -> tuple[str, str]:
        if self.components is None:
            return "feature 1", "feature 2"
        return tuple(f"PC{i + 1} ({100 * share:.1f} % of variance)" for i, share in enumerate(self.explained))


def scatter_features(
    ax,
    features: torch.Tensor,
    labels: torch.Tensor,
    centers: torch.Tensor | None,
    title: str,
    projection: Projection | None = None,
):
    """One panel: points coloured by digit, centers as black-edged stars. ``projection``: the axes
    for features wider than 2-D (default: fitted on these features). On an Axes it drew before
    (FeatureFigure), the points move and the limits are found again as for fresh ones."""
    projection = projection or Projection.fit(features)
    f = projection(features)
    y = labels.cpu()
    c = None if centers is None else projection(centers)
    drawn = getattr(ax, "centerexp_scatter", None)
    if drawn is not None and drawn[0] != (None if c is None else len(c)):
        ax.cla()  # another kind of panel on this Axes: start afresh
        drawn = None
    if drawn is None:
        for digit in range(10):
            m = y == digit
            ax.scatter(f[m, 0], f[m, 1], s=2, alpha=0.5, color=DIGIT_COLORS[digit], label=str(digit), rasterized=True)
        if c is not None:
            ax.scatter(
                c[:, 0],
                c[:, 1],
                s=140,
                marker="*",
                c=DIGIT_COLORS[: len(c)],
                edgecolors="black",
                linewidths=1.0,
                label="centers",
            )
        ax.grid(alpha=0.3)
        ax.centerexp_scatter = (None if c is None else len(c), list(ax.collections))
    else:
        collections = drawn[1]
        for digit in range(10):
            collections[digit].set_offsets(f[y == digit].numpy().reshape(-1, 2))
        if c is not None:
            collections[10].set_offsets(c.numpy())
        ax.ignore_existing_data_limits = True  # the data limits as add_collection finds them
        for collection in collections:
            lim = collection.get_datalim(ax.transData)
            points = lim.get_points()
            if not np.isinf(lim.minpos).all():
                points = np.concatenate([points, [lim.minpos]])
            ax.update_datalim(points)
        ax.autoscale_view()
    xlabel, ylabel = projection.axis_labels()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)


def add_digit_legend(fig) -> None:
    """One legend for the figure: a dot per digit colour and the center marker, at readable sizes."""
    handles = [Line2D([], [], ls="", marker="o", ms=7, color=DIGIT_COLORS[d], label=str(d)) for d in range(10)]
    handles.append(Line2D([], [], ls="", marker="*", ms=13, color="white", markeredgecolor="black", label="center"))
    fig.legend(handles=handles, loc="center right", title="digit", frameon=True)


class FeatureFigure:
    """plot_features' figure: side-by-side scatters and one digit legend. A run's frames all have
    one layout, so they are drawn on one such figure in turn; only points, limits and words change,
    which costs about half of building the figure anew."""

    LEGEND = 1.3  # inches on the right for the digit legend

    def __init__(self, columns: int, titled: bool):
        figsize = (6.2 * columns + self.LEGEND, 5.6)  # at 100 dpi, as savefig(dpi=100) drew them
        self.fig, axes = plt.subplots(1, columns, figsize=figsize, dpi=100, squeeze=False)
        self.axes, self.titled = axes[0], titled
        add_digit_legend(self.fig)
        top = 0.8 if titled else 0.45
        set_margins(self.fig, left=0.75, right=self.LEGEND + 0.1, bottom=0.55, top=top, between=0.8)

    def render(self, panels: list[tuple], title: str, projection: Projection) -> np.ndarray:
        """Draw ``panels`` (each (features, labels, centers, title)); the RGBA pixels."""
        for ax, (features, labels, centers, panel_title) in zip(self.axes, panels):
            scatter_features(ax, features, labels, centers, panel_title, projection)
        if self.titled:
            self.fig.suptitle(title)
        self.fig.canvas.draw()
        return np.asarray(self.fig.canvas.buffer_rgba()).copy()

    def close(self) -> None:
        plt.close(self.fig)


def plot_features(
    panels: list[tuple], path: Path, title: str = "", projection: Projection | None = None, figure=None, write=None
) -> None:
    """Side-by-side feature scatters; each panel is (features, labels, centers, title). All panels
    share ``projection`` (default: fitted on the last panel's features). ``figure``: a
    FeatureFigure of this layout to draw on (kept open), else a new one; ``write(path, rgba)``: how
    the pixels reach ``path`` (default write_png, now)."""
    projection = projection or Projection.fit(panels[-1][0])
    own = figure is None
    figure = figure or FeatureFigure(len(panels), bool(title))
    try:
        rgba = figure.render(panels, title, projection)
    finally:
        if own:
            figure.close()
    (write or write_png)(Path(path), rgba)


TRAIN_SAMPLE_OFFSET = 7919  # any fixed number: a sample stream apart from the shuffle's


def _sample(n: int, k: int, seed: int) -> torch.Tensor:
    """A fixed, seeded choice of k of n indices: the same images in every epoch's plot."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: min(k, n)]


def train_points(cfg, train_split, tr: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The training features (and labels) to draw: a fixed sample of the split's images, those of
    them that the steps since the last evaluation saw (they arrive in shuffled order)."""
    order = tr["order"].cpu()
    position = torch.full((len(train_split),), -1, dtype=torch.long)
    position[order] = torch.arange(len(order))
    # Not train.seed itself: the shuffle generator starts from it too, and would pick exactly the first
    # images of epoch 1's order, none of which a later stretch of that epoch sees (train.eval_every).
    chosen = position[_sample(len(train_split), cfg.plot.max_points, cfg.train.seed + TRAIN_SAMPLE_OFFSET)]
    chosen = chosen[chosen >= 0]
    return tr["features"].cpu()[chosen], train_split.labels.cpu()[order[chosen]]


def test_sample(cfg, n_test: int) -> torch.Tensor:
    """Which test images the scatter, features.pt and the projector show: a fixed seeded sample."""
    return _sample(n_test, cfg.plot.max_points, cfg.train.seed)


def gif_frame(image):
    """An RGB(A) frame as the GIF writer reduces it (the same call PIL makes when saving a GIF)."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    return image.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE)


def make_gif(frames: list[Path], path: Path, ms_per_frame: int = 500, ready: dict | None = None) -> bool:
    """Assemble PNG frames into an animated GIF (last frame held longer); False when no frames.
    ``ready``: PNG path -> that frame already reduced to the GIF's palette (gif_frame), not read again."""
    from PIL import Image

    if not frames:
        return False
    ready = ready or {}
    images = [ready[p] if p in ready else gif_frame(Image.open(p)) for p in frames]
    durations = [ms_per_frame] * (len(images) - 1) + [ms_per_frame * 4]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return True


# --- cross-run figures (compare) -------------------------------------------------------------


def plot_step_curves(series: list[dict], panels: list[tuple], path: Path) -> bool:
    """Overlaid group curves against training step, one panel per column; False if nothing to draw.

    ``series``: {"label", "n", "curves": {column: (steps, mean, min, max)}}, one per group; the
    band is min-max over seeds. ``panels``: (column, label, log) with log True, False or None
    (None: log only when the values span more than a factor of 20).
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 5), squeeze=False)
    drawn = False
    for ax, (column, label, log) in zip(axes[0], panels):
        values = [v for s in series if column in s["curves"] for v in s["curves"][column][1]]
        for i, s in enumerate(series):
            if column not in s["curves"]:
                continue
            steps, mean, lo, hi = s["curves"][column]
            color = f"C{i % 10}"
            ax.plot(steps, mean, "o-", ms=3, color=color, label=s["label"])
            if s["n"] > 1:
                ax.fill_between(steps, lo, hi, color=color, alpha=0.2)
            drawn = True
        if log is None:
            log = bool(values) and min(values) > 0 and max(values) / min(values) > 20
        band = " (band: min-max over seeds)" if any(s["n"] > 1 for s in series) else ""
        ax.set(xlabel="training step", ylabel=label, title=label + (", log scale" if log else "") + band)
        style_epoch_axes(ax, log)
        if values:
            ax.legend(fontsize=8)
    fig.tight_layout()
    if not drawn:
        plt.close(fig)
        return False
    save_figure(fig, path)
    return True


def plot_feature_panels(panels: list[tuple], path: Path, title: str = "", columns: int = 3) -> None:
    """Feature scatters on a grid of up to ``columns`` per row; each panel is (features, labels, centers, title)."""
    import math

    cols = min(columns, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 5 * rows), squeeze=False)
    for ax, (features, labels, centers, panel_title) in zip(axes.flat, panels):
        scatter_features(ax, features, labels, centers, panel_title)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    add_digit_legend(fig)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.9, 0.97))
    save_figure(fig, path)
