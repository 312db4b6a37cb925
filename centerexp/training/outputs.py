"""What a run writes besides its metrics and checkpoints, and when: its figures (plots.py) and its
TensorBoard events (events.py).

At each evaluation, before the checkpoint commits it, a run keeps the evaluation's feature frame as
data (plots/features/FRAME.pt, and features.pt for compare) and logs its metrics row (after the last
one also the projector embedding) to tb/. Figures cost far more than a small run's training, so
they are drawn later: at the end of the run (or a clean stop), and during a long run whenever
REFRESH_SECONDS have passed since the last drawing and it has cost under REFRESH_SHARE of the time,
so that plots/ is never far behind. A killed run keeps every committed frame's data; its resume,
or `centerexp plot`, draws them.

tb/ gets each frame's image from the process that draws it. So that an image an earlier process
may or may not have logged is never doubled or missed, a resumed run purges every event after step
0 (SummaryWriter's purge_step) and logs its committed rows again.
"""

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from centerexp import plots
from centerexp.config import Config
from centerexp.events import RunEvents, frame_steps, write_records
from centerexp.rundir import files
from centerexp.rundir.io import atomic_torch_save, atomic_write_bytes
from centerexp.rundir.records import run_metrics

REFRESH_SECONDS = 60.0  # a running run's figures are redrawn at most this often...
REFRESH_SHARE = 0.05  # ...and take at most this share of its time


# ---------------------------------------------------------------------------------------------
# Frames: kept as data at each evaluation, drawn later


def keep_frame(
    run_dir: Path, cfg: Config, epoch: float, step: int, frame_name: str, train_split, tr: dict, te: dict, centers
) -> torch.Tensor:
    """What a run keeps of each evaluation, cheaply: the frame's points and words
    (plots/features/FRAME_NAME.pt; draw_frames makes FRAME_NAME.png of it, a frame of the GIF) and
    features.pt (test features, labels, centers) for compare. ``epoch``: epochs done, fractional
    inside one. Returns which test images the frame shows (the projector shows the same ones)."""
    run_dir = Path(run_dir)
    name = run_dir.name
    train_f, train_y = plots.train_points(cfg, train_split, tr)
    test_idx = plots.test_sample(cfg, len(te["labels"]))
    test_f, test_y = te["features"].cpu()[test_idx], te["labels"].cpu()[test_idx]
    centers = None if centers is None else centers.detach().float().cpu()
    when = f"epoch {epoch:g}" if epoch == int(epoch) else f"step {step}, epoch {epoch:.2f}"
    panels = [
        (train_f, train_y, centers, f"train features (since the last evaluation, acc {tr['acc']:.3f})"),
        (test_f, test_y, centers, f"test features ({when}, acc {te['acc']:.3f})"),
    ]
    atomic_torch_save(
        {"panels": panels, "title": f"{name}: {when}"}, run_dir / files.FEATURE_FRAMES / f"{frame_name}.pt"
    )
    atomic_torch_save(
        {"epoch": epoch, "step": step, "features": test_f, "labels": test_y, "centers": centers},
        run_dir / files.FEATURES,
    )
    return test_idx


def drop_frames_after(run_dir: Path, epoch: int, step: int) -> None:
    """Delete the frames (data and PNG) of evaluations after the checkpoint: their steps are redone."""
    for path in (Path(run_dir) / files.FEATURE_FRAMES).glob("*_*.*"):
        kind, _, number = path.stem.partition("_")
        if number.isdigit() and ((kind == "step" and int(number) > step) or (kind == "epoch" and int(number) > epoch)):
            path.unlink(missing_ok=True)


class FrameWriter:
    """Draws frames on one plots.FeatureFigure per layout. Each frame's PNG encoding, and with
    ``gif`` its reduction to the GIF's palette, runs on a worker thread while the next frame is
    drawn (both release the GIL). ``palettes``: PNG path -> that frame ready for plots.make_gif."""

    def __init__(self, gif: bool = False):
        self.gif, self.figures, self.palettes, self.pending = gif, {}, {}, []
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="centerexp-frames")

    def draw(self, panels: list[tuple], path: Path, title: str, projection) -> None:
        layout = (len(panels), bool(title))
        if layout not in self.figures:
            self.figures[layout] = plots.FeatureFigure(*layout)
        plots.plot_features(panels, path, title, projection, self.figures[layout], self._write)

    def _write(self, path: Path, rgba: np.ndarray) -> None:
        self.pending.append(self.pool.submit(self._encode, path, rgba))

    def _encode(self, path: Path, rgba: np.ndarray) -> None:
        plots.write_png(path, rgba)
        if self.gif:
            self.palettes[path] = plots.gif_frame(rgba)

    def wait(self) -> None:
        pending, self.pending = self.pending, []
        for future in pending:
            future.result()  # raises what the worker met

    def close(self) -> None:
        """Let the worker finish (what it met was raised by ``wait`` where it mattered; a run that
        is stopping for another reason keeps that reason), and free the figures."""
        self.pool.shutdown(wait=True)
        self.pending = []
        for figure in self.figures.values():
            figure.close()
        self.figures = {}


def draw_frames(run_dir: Path, one_basis: bool = False, writer: FrameWriter | None = None) -> list[Path]:
    """Draw each kept frame whose PNG is missing or older than its data, and copy the last frame
    to plots/features.png. Features wider than 2-D: each frame on its own principal components,
    or, with ``one_basis`` (the end of a run), every frame on the last one's, so that the GIF's
    frames share their axes. Returns the PNGs drawn."""
    run_dir = Path(run_dir)
    kept = sorted((run_dir / files.FEATURE_FRAMES).glob("*.pt"))  # epoch_NNN or step_NNNNNNN
    if not kept:
        return []
    last = torch.load(kept[-1], weights_only=True) if one_basis else None
    projection = plots.Projection.fit(last["panels"][-1][0]) if last is not None else None
    redraw_all = projection is not None and projection.components is not None
    todo = [p for p in kept if redraw_all or not _drawn(p)]
    own = writer is None
    writer = writer or FrameWriter()
    try:
        for path in todo:
            frame = last if last is not None and path == kept[-1] else torch.load(path, weights_only=True)
            writer.draw([tuple(p) for p in frame["panels"]], path.with_suffix(".png"), frame["title"], projection)
        writer.wait()
    finally:
        if own:
            writer.close()
    if todo or not (run_dir / files.FEATURES_PNG).exists():
        atomic_write_bytes(run_dir / files.FEATURES_PNG, kept[-1].with_suffix(".png").read_bytes())
    return [p.with_suffix(".png") for p in todo]


def _drawn(data: Path) -> bool:
    png = data.with_suffix(".png")
    return png.exists() and png.stat().st_mtime_ns >= data.stat().st_mtime_ns


def feature_gif(run_dir: Path, ready: dict | None = None) -> Path | None:
    """plots/features.gif from the frames in plots/features/ (``ready``: see plots.make_gif)."""
    frames = sorted((Path(run_dir) / files.FEATURE_FRAMES).glob("*.png"))  # epoch_NNN or step_NNNNNNN
    out = Path(run_dir) / files.FEATURES_GIF
    return out if plots.make_gif(frames, out, ready=ready) else None


def draw_figures(run_dir: Path, metrics: dict, writer: FrameWriter, one_basis: bool) -> list[Path]:
    """The frames not yet drawn (draw_frames), the loss curves once the run has rows, and with
    ``writer.gif`` the feature GIF. Returns the files written."""
    drawn = draw_frames(run_dir, one_basis, writer)
    written = drawn + ([run_dir / files.FEATURES_PNG] if drawn else [])
    if metrics.get("epoch"):  # none yet: a run stopped before its first evaluation
        plots.plot_loss_curves(metrics, run_dir / files.LOSS_CURVES, run_dir.name)
        written.append(run_dir / files.LOSS_CURVES)
    if writer.gif and (path := feature_gif(run_dir, writer.palettes)):
        written.append(path)
    return written


def redraw_run(run_dir: Path, metrics: dict[str, list[float]], gif: bool) -> list[Path]:
    """``centerexp plot``: a run's loss curves, the frames it kept but has not drawn (a run killed
    before its end), and its feature GIF; a run that kept no frames (the committed reference runs
    keep only their small files) gets features.png from features.pt instead. Returns the files
    written."""
    run_dir = Path(run_dir)
    (run_dir / files.PLOTS).mkdir(exist_ok=True)
    writer = FrameWriter(gif)
    try:
        written = draw_figures(run_dir, metrics, writer, one_basis=True)
    finally:
        writer.close()
    if not any((run_dir / files.FEATURE_FRAMES).glob("*.png")) and (run_dir / files.FEATURES).is_file():
        last = torch.load(run_dir / files.FEATURES, weights_only=True)
        when = f"epoch {last['epoch']:g}" if last["epoch"] == int(last["epoch"]) else f"step {last['step']}"
        panel = (last["features"], last["labels"], last["centers"], f"test features ({when})")
        plots.plot_features([panel], run_dir / files.FEATURES_PNG, f"{run_dir.name}: {when}")
        written.append(run_dir / files.FEATURES_PNG)
    return written


# ---------------------------------------------------------------------------------------------
# A run's outputs, evaluation by evaluation


def open_events(run_dir: Path, cfg: Config, committed_step: int) -> RunEvents:
    """The run's event writer, (re)starting at its checkpoint: a fresh tb/ with the hparams for a
    run starting from scratch; for a resumed run, its committed rows from metrics.csv again (after
    the purge; with the hparams too where tb/ is missing: made with plot.tensorboard off, or by an
    older version)."""
    events = RunEvents(run_dir, committed_step)
    write_records(events, run_dir, cfg, hparams=committed_step == 0 or not events.had_events)
    events.flush()
    return events


class RunOutputs:
    """One process's writing of a run's figures and events, from its checkpoint (``epoch``, ``step``)."""

    def __init__(self, run_dir: Path, cfg: Config, epoch: int, step: int):
        self.run_dir, self.cfg = Path(run_dir), cfg
        drop_frames_after(self.run_dir, epoch, step)
        self.events = open_events(self.run_dir, cfg, step) if cfg.plot.tensorboard else None
        self.logged: set[Path] = set()  # frames whose image this process logged
        self.writer = FrameWriter()
        self.drawn_at, self.cost = time.monotonic(), 0.0

    def evaluation(self, row: dict, frame: str, when: float, train_set, tr, te, test_set, parts, last: bool):
        """An evaluation's outputs, flushed before the checkpoint commits it: its frame kept, its
        row logged, after the last one the projector embedding of the test images the frame shows;
        the figures drawn when due."""
        shown = keep_frame(self.run_dir, self.cfg, when, row["step"], frame, train_set, tr, te, parts.aux_loss.points)
        if self.events:
            self.events.row(row)
            if last:
                points = parts.aux_loss.points
                self.events.embedding(
                    te["features"][shown], te["labels"][shown], test_set.images[shown], points, row["step"]
                )
        waited = time.monotonic() - self.drawn_at
        if waited >= REFRESH_SECONDS and self.cost <= REFRESH_SHARE * waited:
            self.draw()
        if self.events:
            self.events.flush()

    def draw(self, final: bool = False) -> None:
        """Draw the frames not yet drawn and the loss curves, and log the frames' images; at the
        ``final`` drawing, every frame on one basis and the GIF (plot.gif)."""
        start = time.monotonic()
        self.writer.gif = final and self.cfg.plot.gif
        metrics = run_metrics(self.run_dir)
        draw_figures(self.run_dir, metrics, self.writer, one_basis=final)
        if self.events:
            for step, png in frame_steps(self.run_dir, metrics):
                if png not in self.logged:
                    self.events.image(png, step)
                    self.logged.add(png)
            self.events.flush()
        self.drawn_at = time.monotonic()
        self.cost = self.drawn_at - start

    def close(self) -> None:
        try:
            self.writer.close()
        finally:
            if self.events:
                self.events.close()
