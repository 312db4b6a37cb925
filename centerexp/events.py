"""A run's TensorBoard event files (RUN/tb/), derived from the same records as its own files.

What TensorBoard shows of a run: every metrics.csv column as a scalar at x = optimizer step (its
tag is schema.METRICS's Column.tag, e.g. test/acc, not a second list of names), the run's hparams (its flattened config
and experiment/arm/profile, with the metric columns as the HParams dashboard's metrics: it shows
their last value, the run's final one), each evaluation's feature figure as an image, and at the
end the test features as a projector embedding (digit labels, MNIST thumbnails as a sprite, the
class centers as ten extra labelled points).

Resume: a resumed run purges every event after step 0 (SummaryWriter's purge_step) and logs its
committed rows again (training/outputs.py: the feature images come from the process that draws the
frames), so a killed and resumed run shows each step once; rows are flushed before each checkpoint
is written, so nothing the checkpoint commits can be lost. A run that starts from step 0 starts a
fresh tb/.
"""

import math
import shutil
import struct
import time
from pathlib import Path

import torch

from centerexp.config import Config, flatten
from centerexp.rundir import files
from centerexp.rundir.folder import read_identity
from centerexp.rundir.records import run_metrics
from centerexp.rundir.schema import BY_NAME, METRIC_COLUMNS, METRICS

FEATURES_IMAGE = "features"  # the tag of the feature figure
EMBEDDING = "test_features"  # the tag of the projector embedding
EMBEDDING_HEADER = ["digit", "point"]  # projector metadata columns: colour by digit, tell centers apart
# The columns the HParams dashboard compares runs by (their last value: the run's final result).
HPARAM_METRICS = [c.tag for c in METRICS if not c.timing and c.name not in ("epoch", "step", "lr")]


def hparam_value(value):
    """HParams take bool, number or string: anything else (None, a list) is shown as YAML would."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return "null" if value is None else str(value)


class RunEvents:
    """The writer of one run's tb/. ``committed_step``: the step the run (re)starts from; 0 for a
    run that starts from scratch (tb/ is started afresh), else every event after step 0 (the
    hparams) is purged, for the run to log again."""

    def __init__(self, run_dir: Path, committed_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when used

        self.dir = Path(run_dir) / files.TENSORBOARD
        if committed_step == 0:
            shutil.rmtree(self.dir, ignore_errors=True)
        existing = list(self.dir.glob("events.out.tfevents.*"))
        self.had_events = bool(existing)
        purge = 1 if committed_step and self.had_events else None
        if purge:
            wait_for_a_later_second(existing)
        self.writer = SummaryWriter(str(self.dir), purge_step=purge, flush_secs=3600)  # we flush ourselves

    def hparams(self, cfg: Config, identity: dict | None = None) -> None:
        from torch.utils.tensorboard.summary import hparams

        values = {k: hparam_value(v) for k, v in flatten(cfg.to_dict()).items()}
        for key in ("experiment", "arm", "profile"):
            if identity and key in identity:
                values[key] = identity[key]
        for summary in hparams(values, {name: math.nan for name in HPARAM_METRICS}):
            self.writer.file_writer.add_summary(summary)

    def row(self, row: dict) -> None:
        """One metrics.csv row: each column under its tag at x = the row's step (absent or NaN
        values, and columns this version does not know, skipped)."""
        step = int(row["step"])
        for name, value in row.items():
            if name in BY_NAME and name != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(BY_NAME[name].tag, value, step)

    def image(self, png: Path, step: int, tag: str = FEATURES_IMAGE) -> None:
        """A PNG file as the image at ``step``, as it is: not decoded and encoded again."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        data = Path(png).read_bytes()
        width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
        channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}[data[25]]  # by PNG colour type
        image = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=data)
        self.writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    def embedding(self, features, labels, images, centers, step: int) -> None:
        """The projector's points: test features (full width) with their digit and thumbnail, and
        the class centers, each with its digit and its class's mean thumbnail. Rewritten, never
        appended: the run has one embedding, from its last evaluation."""
        features = features.detach().float().cpu()
        labels = labels.cpu()
        thumbnails = images.detach().float().cpu().reshape(-1, 1, 28, 28) / 255
        points, meta, sprite = [features], [[str(int(y)), "test image"] for y in labels], [thumbnails]
        if centers is not None:
            centers = centers.detach().float().cpu()
            points.append(centers)
            meta += [[str(c), "center"] for c in range(len(centers))]
            blank = torch.zeros(1, 1, 28, 28)
            sprite.append(
                torch.cat(
                    [
                        thumbnails[labels == c].mean(0, keepdim=True) if (labels == c).any() else blank
                        for c in range(len(centers))
                    ]
                )
            )
        (self.dir / "projector_config.pbtxt").unlink(missing_ok=True)  # add_embedding appends to it
        shutil.rmtree(self.dir / f"{step:05d}", ignore_errors=True)
        self.writer.add_embedding(
            torch.cat(points), meta, torch.cat(sprite), step, EMBEDDING, metadata_header=EMBEDDING_HEADER
        )

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def wait_for_a_later_second(event_files: list[Path]) -> None:
    """TensorBoard reads a folder's event files in name order, and a name starts with the second
    its writer was made in (then the pid): a resumed run's file must sort after every earlier
    one, or the purge it carries would hide the rows it writes. Waits at most a second."""
    stamps = [p.name.split(".")[3] for p in event_files]
    newest = max((int(s) for s in stamps if s.isdigit()), default=0)
    give_up = time.monotonic() + 2  # a file dated ahead (another node's clock) is not waited for
    while int(time.time()) <= newest and time.monotonic() < give_up:
        time.sleep(0.02)


def frame_steps(run_dir: Path, metrics: dict | None = None) -> list[tuple[int, Path]]:
    """The feature frames a run kept (plots/features/), each with the step it shows (``metrics``:
    the run's metrics.csv columns, if already read)."""
    m = run_metrics(run_dir) if metrics is None else metrics
    pairs = zip(m.get("epoch", []), m.get("step", []))
    step_of_epoch = {int(e): int(s) for e, s in pairs if e == e and s == s and e == int(e)}  # NaN: e != e
    found = []
    for png in sorted((Path(run_dir) / files.FEATURE_FRAMES).glob("*.png")):
        kind, _, number = png.stem.partition("_")
        if kind == "step" and number.isdigit():
            found.append((int(number), png))
        elif kind == "epoch" and number.isdigit() and int(number) in step_of_epoch:
            found.append((step_of_epoch[int(number)], png))
    return found


def write_records(events: RunEvents, run_dir: Path, cfg: Config, hparams: bool = True) -> int | None:
    """The run's hparams (unless not ``hparams``) and its metrics.csv rows as scalars (a run
    starting afresh or resumed, `centerexp board` for a run without tb/). Returns the last row's
    step (None: no rows)."""
    if hparams:
        events.hparams(cfg, read_identity(run_dir))
    m = run_metrics(run_dir)
    steps = [i for i, step in enumerate(m.get("step", [])) if step == step]  # a row of run format 1 has no step
    for i in steps:
        events.row({c: m[c][i] for c in METRIC_COLUMNS})
    return int(m["step"][steps[-1]]) if steps else None
