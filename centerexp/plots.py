"""Figures: loss/accuracy curves and the classic 2-D feature scatter with the centers marked."""

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt
import torch
from matplotlib.lines import Line2D
from matplotlib.ticker import FormatStrFormatter, MaxNLocator

from centerexp.runs import atomic_write_bytes

DIGIT_COLORS = plt.get_cmap("tab10").colors


def save_figure(fig, path: Path) -> None:
    """Render in memory, then write atomically: a plot is never seen half-written."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())


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
    fig.tight_layout()
    save_figure(fig, path)


def scatter_features(ax, features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor | None, title: str):
    """One panel: points coloured by digit, centers as black-edged stars."""
    f = features.detach().float().cpu()
    y = labels.cpu()
    for digit in range(10):
        m = y == digit
        ax.scatter(f[m, 0], f[m, 1], s=2, alpha=0.5, color=DIGIT_COLORS[digit], label=str(digit), rasterized=True)
    if centers is not None:
        c = centers.detach().float().cpu()
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
    ax.set(title=title, xlabel="feature 1", ylabel="feature 2")
    ax.grid(alpha=0.3)


def add_digit_legend(fig) -> None:
    """One legend for the figure: a dot per digit colour and the center marker, at readable sizes."""
    handles = [Line2D([], [], ls="", marker="o", ms=7, color=DIGIT_COLORS[d], label=str(d)) for d in range(10)]
    handles.append(Line2D([], [], ls="", marker="*", ms=13, color="white", markeredgecolor="black", label="center"))
    fig.legend(handles=handles, loc="center right", title="digit", frameon=True)


def plot_features(panels: list[tuple], path: Path, title: str = "") -> None:
    """Side-by-side feature scatters; each panel is (features, labels, centers, title)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 5.6), squeeze=False)
    for ax, (features, labels, centers, panel_title) in zip(axes[0], panels):
        scatter_features(ax, features, labels, centers, panel_title)
    add_digit_legend(fig)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    save_figure(fig, path)


def make_gif(frames: list[Path], path: Path, ms_per_frame: int = 500) -> bool:
    """Assemble PNG frames into an animated GIF (last frame held longer); False when no frames."""
    from PIL import Image

    if not frames:
        return False
    images = [Image.open(p).convert("RGB") for p in frames]
    durations = [ms_per_frame] * (len(images) - 1) + [ms_per_frame * 4]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return True


def feature_gif(run_dir: Path) -> Path | None:
    """plots/features.gif from the per-epoch frames in plots/features/."""
    frames = sorted((Path(run_dir) / "plots" / "features").glob("epoch_*.png"))
    out = Path(run_dir) / "plots" / "features.gif"
    return out if make_gif(frames, out) else None
