"""The run format, declared once: metrics.csv's columns, what each means, and how it is shown.

The trainer writes a row with exactly these names, the run folder code reads and pads rows by
them, compare and the README's reference table follow from them. Adding a metric is one entry
here plus the line in the trainer that computes it.

Forward and backward compatibility: a run written by an older or newer version may lack some of
these columns or carry others. Readers treat a missing column as NaN (shown as "—"), never as an
error, and keep unknown ones.
"""

from dataclasses import KW_ONLY, dataclass

# Bumped when a run folder's layout or meaning changes in a way readers must know about.
# 1: the first release (no run_format field in summary.json). 2: + "step" column, run_format field.
# 3: compactness against the test features' own class means (intra_class, inter_class,
#    compactness_ratio) and center_lag replace intra_dist / center_dist / compactness, which measured
#    against the learned centers; rows inside an epoch (train.eval_every); run.json.
RUN_FORMAT = 3


@dataclass(frozen=True)
class Column:
    name: str
    meaning: str
    unit: str = ""
    _: KW_ONLY  # the rest by name only: three optional fields are too easy to mix up by position
    timing: bool = False  # differs between otherwise identical runs (wall-clock measurements)
    digits: int = 4  # significant digits when shown in a table
    table: str | None = None  # heading of compare's column with the run's final value; None: not shown

    @property
    def tag(self) -> str:
        """Its TensorBoard tag: grouped as train/, test/, clusters/ (the test features' geometry),
        time/ and progress/, so that the dashboard shows related curves together."""
        side, _, rest = self.name.partition("_")
        if self.timing:
            return f"time/{self.name}"
        if side in ("train", "test"):
            return f"{side}/{rest}"
        if self.name in ("epoch", "step", "lr"):
            return f"progress/{self.name}"
        return f"clusters/{self.name}"


def _3(heading: str) -> dict:
    """Shown in compare's table under ``heading``, to 3 significant digits."""
    return {"digits": 3, "table": heading}


METRICS: tuple[Column, ...] = (
    Column("epoch", "epochs finished; fractional for an evaluation inside an epoch", "epochs", digits=3),
    Column("step", "optimizer steps finished, cumulative over the run", "steps", digits=6),
    Column("lr", "network learning rate used for the row's steps", "1"),
    Column(
        "train_loss", "mean total loss (cross-entropy + center) over the training batches since the last row", "nats"
    ),
    Column("train_ce", "mean cross-entropy over the training batches since the last row", "nats"),
    Column("train_center", "mean center loss over the training batches since the last row (the run's distance form)"),
    Column(
        "train_acc", "training accuracy over the batches since the last row (the network changes meanwhile)", "fraction"
    ),
    Column("test_loss", "test cross-entropy + center loss at this step", "nats"),
    Column("test_ce", "test cross-entropy at this step", "nats", table="final test CE"),
    Column("test_center", "test center loss at this step, scored in chunks of the training batch size"),
    Column("test_acc", "test accuracy at this step", "fraction"),
    Column(
        "intra_class",
        "mean distance of a test feature to the mean of its class's test features",
        "feature units",
        **_3("intra"),
    ),
    Column("inter_class", "mean distance between two class means of the test features", "feature units", **_3("inter")),
    Column(
        "compactness_ratio",
        "intra_class / inter_class: lower is tighter, better separated classes",
        **_3("intra/inter"),
    ),
    Column(
        "center_lag",
        "mean distance of a learned class center to its class's test-feature mean (how far the centers trail)",
        "feature units",
        **_3("center lag"),
    ),
    Column("epoch_seconds", "wall time since the last row: training + evaluation", "s", timing=True, digits=3),
    Column("train_seconds", "wall time of the training steps since the last row", "s", timing=True, digits=3),
    Column("eval_seconds", "wall time of this row's evaluation", "s", timing=True, digits=3),
    Column("wall_seconds", "training wall time of the run so far, over all its processes", "s", timing=True),
    Column("images_per_second", "training images per second since the last row", "img/s", timing=True, digits=3),
)

METRIC_COLUMNS: list[str] = [c.name for c in METRICS]
TIMING_COLUMNS: set[str] = {c.name for c in METRICS if c.timing}
BY_NAME: dict[str, Column] = {c.name: c for c in METRICS}
TABLE_COLUMNS: list[Column] = [c for c in METRICS if c.table]  # shown by compare as final values

MISSING = "—"  # how a value absent from a run (older/newer format, NaN) is shown


def format_value(value: float | None, digits: int = 4) -> str:
    """A number for a table: ``digits`` significant digits, "—" when absent or NaN."""
    if value is None or value != value:  # NaN != NaN
        return MISSING
    return f"{value:.{digits}g}"


def reference_table() -> str:
    """The README's metrics.csv reference, generated from METRICS (a test keeps the README in step)."""
    lines = ["| column | unit | meaning |", "|---|---|---|"]
    lines += [f"| `{c.name}` | {c.unit or '—'} | {c.meaning} |" for c in METRICS]
    return "\n".join(lines)
