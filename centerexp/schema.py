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
RUN_FORMAT = 2


@dataclass(frozen=True)
class Column:
    name: str
    meaning: str
    unit: str = ""
    _: KW_ONLY  # the rest by name only: three optional fields are too easy to mix up by position
    timing: bool = False  # differs between otherwise identical runs (wall-clock measurements)
    digits: int = 4  # significant digits when shown in a table
    table: str | None = None  # heading of compare's column with the run's final value; None: not shown


def _3(heading: str) -> dict:
    """Shown in compare's table under ``heading``, to 3 significant digits."""
    return {"digits": 3, "table": heading}


METRICS: tuple[Column, ...] = (
    Column("epoch", "epochs finished", "epochs", digits=3),
    Column("step", "optimizer steps finished, cumulative over the run", "steps", digits=6),
    Column("lr", "network learning rate used during this epoch", "1"),
    Column("train_loss", "mean total loss (cross-entropy + center) over the epoch's training batches", "nats"),
    Column("train_ce", "mean cross-entropy over the epoch's training batches", "nats"),
    Column("train_center", "mean center loss over the epoch's training batches (distance form of the run)"),
    Column("train_acc", "training accuracy during the epoch (the network changes while it is measured)", "fraction"),
    Column("test_loss", "test cross-entropy + center loss after the epoch", "nats"),
    Column("test_ce", "test cross-entropy after the epoch", "nats", table="final test CE"),
    Column("test_center", "test center loss after the epoch, scored in chunks of the training batch size"),
    Column("test_acc", "test accuracy after the epoch", "fraction"),
    Column("intra_dist", "mean distance of a test feature to its class center", "feature units", **_3("intra dist")),
    Column("center_dist", "mean distance between two class centers", "feature units", **_3("center dist")),
    Column(
        "compactness", "intra_dist / center_dist: lower is tighter, better separated clusters", **_3("intra/center")
    ),
    Column("epoch_seconds", "wall time of the epoch: training + evaluation", "s", timing=True, digits=3),
    Column("train_seconds", "wall time of the epoch's training steps", "s", timing=True, digits=3),
    Column("eval_seconds", "wall time of the epoch's evaluation", "s", timing=True, digits=3),
    Column("wall_seconds", "training wall time of the run so far, over all its processes", "s", timing=True),
    Column("images_per_second", "training images per second during the epoch", "img/s", timing=True, digits=3),
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
