"""Run-format stability: a run folder written by this version (tests/fixtures/run_v3) stays
readable by compare and resumable, also after a later version adds or removes columns; runs of
format 2 (tests/fixtures/run_v2: compactness against the learned centers, no run.json) and of the
first format (no step column, no loss.kind key) still read and resume."""

import csv
import json
import shutil
from pathlib import Path

import pytest

from centerexp.analysis.compare import compare
from centerexp.rundir.records import read_metrics
from centerexp.rundir.schema import METRIC_COLUMNS, MISSING, RUN_FORMAT, reference_table
from centerexp.training.train import resume_run

FIXTURE = Path(__file__).parent / "fixtures" / "run_v3"
FORMAT_2 = Path(__file__).parent / "fixtures" / "run_v2"


@pytest.fixture
def run(tmp_path) -> Path:
    copy = tmp_path / "runs" / "run_v3"
    shutil.copytree(FIXTURE, copy)
    return copy


@pytest.fixture
def run_v2(tmp_path) -> Path:
    copy = tmp_path / "runs" / "run_v2"
    shutil.copytree(FORMAT_2, copy)
    return copy


def rewrite_metrics(path: Path, drop=(), add=None) -> None:
    rows = read_metrics(path)
    names = [c for c in rows[0] if c not in drop] + list(add or {})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows({**r, **(add or {})} for r in rows)


def table_cell(result: dict, row: int, heading: str) -> str:
    return result["rows"][row][result["header"].index(heading)]


def test_the_fixture_is_this_versions_format():
    assert json.loads((FIXTURE / "summary.json").read_text())["run_format"] == RUN_FORMAT
    assert list(read_metrics(FIXTURE / "metrics.csv")[0]) == METRIC_COLUMNS


def test_the_fixture_reads_in_compare_and_resumes(run, tmp_path):
    result = compare([run], tmp_path / "out", echo=lambda *_: None)
    assert table_cell(result, 0, "final test acc %") == "14.84"
    resume_run(run, ["train.epochs=3"], allow_config_change=True, progress=False)
    rows = read_metrics(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and [r["step"] for r in rows] == ["4", "8", "12"]
    assert rows[:2] == read_metrics(FIXTURE / "metrics.csv")  # the old rows are kept, byte for byte


def test_a_later_version_that_removed_and_added_columns(run, tmp_path):
    rewrite_metrics(run / "metrics.csv", drop=["compactness_ratio", "center_lag"], add={"future_metric": "0.5"})
    (run / "features.pt").unlink()  # nothing to recompute them from
    warnings = []
    result = compare([run], tmp_path / "out", echo=lambda *_: None, warn=warnings.append)
    assert table_cell(result, 0, "intra/inter") == MISSING and table_cell(result, 0, "center lag") == MISSING
    assert table_cell(result, 0, "final test acc %") == "14.84"
    resume_run(run, ["train.epochs=3"], allow_config_change=True, progress=False)
    rows = read_metrics(run / "metrics.csv")
    assert list(rows[0]) == METRIC_COLUMNS  # rewritten in this version's columns
    assert rows[0]["compactness_ratio"] == "" and rows[2]["compactness_ratio"] not in ("", "nan")


def test_a_format_2_run_reads_and_resumes_in_this_versions_columns(run_v2, tmp_path):
    result = compare([run_v2], tmp_path / "out", echo=lambda *_: None)
    assert table_cell(result, 0, "final test acc %") == "14.84"
    resume_run(run_v2, ["train.epochs=3"], allow_config_change=True, progress=False)
    rows = read_metrics(run_v2 / "metrics.csv")
    assert list(rows[0]) == METRIC_COLUMNS and "compactness" not in rows[0]  # the old meaning is dropped
    assert rows[0]["intra_class"] == "" and float(rows[2]["intra_class"]) > 0
    assert [r["test_acc"] for r in rows[:2]] == [r["test_acc"] for r in read_metrics(FORMAT_2 / "metrics.csv")]


def test_a_first_format_run_without_step_column_or_loss_kind(run, tmp_path):
    rewrite_metrics(run / "metrics.csv", drop=["step"])
    config = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(config.replace("  kind: center\n", ""))
    summary = json.loads((run / "summary.json").read_text())
    del summary["run_format"]
    (run / "summary.json").write_text(json.dumps(summary))
    result = compare([run], tmp_path / "out", echo=lambda *_: None)
    assert table_cell(result, 0, "steps") == "8"  # derived from the config: 256 images / batch 64 x 2 epochs
    # The checkpoint's config lacks loss.kind too; its default fills both, so no --allow-config-change.
    resume_run(run, progress=False)
    assert json.loads((run / "summary.json").read_text())["run_format"] == RUN_FORMAT


def test_the_reference_lists_every_metrics_column():
    readme = (Path(__file__).parent.parent / "docs" / "reference.md").read_text()
    assert reference_table() in readme
