"""Figures: loss/accuracy curves and the classic 2-D feature scatter with the centers marked.

Features wider than 2-D are drawn on their top two principal components (Projection): the axes say
so ("PC1 (xx % of variance)"), and a run's GIF frames share one basis so that they are comparable.
"""

import io
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt
import torch
from matplotlib.lines import Line2D
from matplotlib.ticker import FormatStrFormatter, MaxNLocator

from centerexp.rundir import files
from centerexp.rundir.io import atomic_write_bytes

DIGIT_COLORS = plt.get_cmap("tab10").colors


def save_figure(fig, path: Path) -> None:
    """Render in memory, then write atomically: a plot is never seen half-written."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
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
    for features wider than 2-D (default: fitted on these features)."""
    projection = projection or Projection.fit(features)
    f = projection(features)
    y = labels.cpu()
    for digit in range(10):
        m = y == digit
        ax.scatter(f[m, 0], f[m, 1], s=2, alpha=0.5, color=DIGIT_COLORS[digit], label=str(digit), rasterized=True)
    if centers is not None:
        c = projection(centers)
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
    xlabel, ylabel = projection.axis_labels()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)


def add_digit_legend(fig) -> None:
    """One legend for the figure: a dot per digit colour and the center marker, at readable sizes."""
    handles = [Line2D([], [], ls="", marker="o", ms=7, color=DIGIT_COLORS[d], label=str(d)) for d in range(10)]
    handles.append(Line2D([], [], ls="", marker="*", ms=13, color="white", markeredgecolor="black", label="center"))
    fig.legend(handles=handles, loc="center right", title="digit", frameon=True)


def plot_features(panels: list[tuple], path: Path, title: str = "", projection: Projection | None = None) -> None:
    """Side-by-side feature scatters; each panel is (features, labels, centers, title). All panels
    share ``projection`` (default: fitted on the last panel's features)."""
    projection = projection or Projection.fit(panels[-1][0])
    legend = 1.3  # inches on the right for the digit legend
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels) + legend, 5.6), squeeze=False)
    for ax, (features, labels, centers, panel_title) in zip(axes[0], panels):
        scatter_features(ax, features, labels, centers, panel_title, projection)
    add_digit_legend(fig)
    if title:
        fig.suptitle(title)
    set_margins(fig, left=0.75, right=legend + 0.1, bottom=0.55, top=0.8 if title else 0.45, between=0.8)
    save_figure(fig, path)


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


def write_epoch_plots(
    run_dir: Path, cfg, epoch: float, step: int, frame_name: str, train_split, tr: dict, te: dict, centers
) -> torch.Tensor:
    """A run's per-evaluation artefacts: loss curves so far, this evaluation's feature scatter
    (plots/features/FRAME_NAME.png, a frame of the GIF, copied to features.png), and features.pt
    (test features, labels, centers) for compare. ``epoch``: epochs done, fractional inside one.

    Features wider than 2-D: the frame is drawn on this evaluation's own principal components, and
    its points are kept (FRAME_NAME.pt) so that feature_gif can redraw every frame on one basis.
    Returns which test images it drew (the projector shows the same ones)."""
    from centerexp.rundir.io import atomic_torch_save
    from centerexp.rundir.records import metrics_columns

    run_dir = Path(run_dir)
    name = run_dir.name
    plot_loss_curves(metrics_columns(run_dir / files.METRICS), run_dir / files.LOSS_CURVES, name)
    train_f, train_y = train_points(cfg, train_split, tr)
    test_idx = test_sample(cfg, len(te["labels"]))
    test_f, test_y = te["features"].cpu()[test_idx], te["labels"].cpu()[test_idx]
    centers = None if centers is None else centers.detach().float().cpu()
    when = f"epoch {epoch:g}" if epoch == int(epoch) else f"step {step}, epoch {epoch:.2f}"
    panels = [
        (train_f, train_y, centers, f"train features (since the last evaluation, acc {tr['acc']:.3f})"),
        (test_f, test_y, centers, f"test features ({when}, acc {te['acc']:.3f})"),
    ]
    frame = run_dir / files.FEATURE_FRAMES / f"{frame_name}.png"
    plot_features(panels, frame, f"{name}: {when}")
    if test_f.shape[1] > 2:
        atomic_torch_save({"panels": panels, "title": f"{name}: {when}"}, frame.with_suffix(".pt"))
    atomic_write_bytes(run_dir / files.FEATURES_PNG, frame.read_bytes())
    atomic_torch_save(
        {"epoch": epoch, "step": step, "features": test_f, "labels": test_y, "centers": centers},
        run_dir / files.FEATURES,
    )
    return test_idx


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


def redraw_frames_on_one_basis(run_dir: Path) -> Projection | None:
    """Features wider than 2-D: redraw every kept frame (and features.png) on the principal
    components of the last frame's test features, so that the GIF's frames share their axes."""
    kept = sorted((Path(run_dir) / files.FEATURE_FRAMES).glob("*.pt"))
    if not kept:
        return None
    frames = [torch.load(p, weights_only=True) for p in kept]
    projection = Projection.fit(frames[-1]["panels"][-1][0])
    for path, frame in zip(kept, frames):
        plot_features([tuple(p) for p in frame["panels"]], path.with_suffix(".png"), frame["title"], projection)
    atomic_write_bytes(Path(run_dir) / files.FEATURES_PNG, kept[-1].with_suffix(".png").read_bytes())
    return projection


def feature_gif(run_dir: Path) -> Path | None:
    """plots/features.gif from the per-evaluation frames in plots/features/ (redrawn on one basis
    first when the features are wider than 2-D)."""
    redraw_frames_on_one_basis(run_dir)
    frames = sorted((Path(run_dir) / files.FEATURE_FRAMES).glob("*.png"))  # epoch_NNN or step_NNNNNNN
    out = Path(run_dir) / files.FEATURES_GIF
    return out if make_gif(frames, out) else None


def redraw_run(run_dir: Path, metrics: dict[str, list[float]], gif: bool) -> list[Path]:
    """``centerexp plot``: a run's loss curves, and its feature GIF from the kept frames; a run that
    kept no frames (the committed reference runs keep only their small files) gets features.png from
    features.pt instead. Returns the files written."""
    run_dir = Path(run_dir)
    (run_dir / files.PLOTS).mkdir(exist_ok=True)
    plot_loss_curves(metrics, run_dir / files.LOSS_CURVES, run_dir.name)
    written = [run_dir / files.LOSS_CURVES]
    if gif and (path := feature_gif(run_dir)):
        written.append(path)
    elif not any((run_dir / files.FEATURE_FRAMES).glob("*.png")) and (run_dir / files.FEATURES).is_file():
        last = torch.load(run_dir / files.FEATURES, weights_only=True)
        when = f"epoch {last['epoch']:g}" if last["epoch"] == int(last["epoch"]) else f"step {last['step']}"
        panel = (last["features"], last["labels"], last["centers"], f"test features ({when})")
        plot_features([panel], run_dir / files.FEATURES_PNG, f"{run_dir.name}: {when}")
        written.append(run_dir / files.FEATURES_PNG)
    return written


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
