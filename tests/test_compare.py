"""compare on synthetic run folders (exact table values, claims.json), and end to end on two tiny real runs."""

import csv
import json
import re
import shutil
import statistics

import pytest
import yaml
from typer.testing import CliRunner

from centerexp.analysis.compare import compare
from centerexp.cli import app
from centerexp.config import Config
from centerexp.experiments.matching import claim_set, find_experiment
from centerexp.experiments.spec import load_experiment
from centerexp.rundir.schema import METRIC_COLUMNS

from .conftest import REPO, write_config
from .test_claims import paired_ci, welch_ci

runner = CliRunner()
STEPS = 235  # per epoch at the default config: 60,000 images, batch 256


def fake_run(
    root,
    name,
    accs,
    *,
    seed=0,
    arch="deep",
    distance="squared",
    status="completed",
    epoch_seconds=10.0,
    epochs=None,
    columns=METRIC_COLUMNS,
    error=None,
    arm=None,
):
    """A run folder written by hand: config.yaml, summary.json and metrics.csv with the given test
    accuracies. ``columns``: the metrics.csv header (an older or newer run format). ``arm``: the V1
    arm it is, recorded in run.json as `centerexp reproduce` records it."""
    run = root / name
    run.mkdir(parents=True)
    if arm:
        identity = {"experiment": "v1", "experiment_file": "configs/experiments/v1.yaml", "arm": arm}
        (run / "run.json").write_text(json.dumps({**identity, "profile": "full"}))
    cfg = Config().to_dict()
    if epochs is None:
        epochs = len(accs) if status == "completed" else len(accs) + 5
    cfg["train"].update(seed=seed, epochs=epochs)
    cfg["model"]["arch"], cfg["loss"]["distance"] = arch, distance
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "summary.json").write_text(json.dumps({"status": status, "epochs_done": len(accs), "error": error}))
    with open(run / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for i, acc in enumerate(accs, 1):
            row = {c: 0.5 for c in columns}
            row.update(
                epoch=i,
                step=i * STEPS,
                test_acc=acc,
                test_ce=2.0 / i,
                train_ce=2.5 / i,
                epoch_seconds=epoch_seconds,
                wall_seconds=epoch_seconds * i,
                train_center=1.0 / i,
                intra_class=1.0,
                inter_class=4.0,
                compactness_ratio=0.25,
                center_lag=0.1,
            )
            w.writerow(row)
    return run


def quiet(*_):
    pass


def auc(accs):
    """The primary metric by its definition: trapezoid from (0, 0.1) over equal epochs, over the last step."""
    ys = [0.1, *accs]
    return sum((y0 + y1) / 2 for y0, y1 in zip(ys, ys[1:])) / len(accs)


def test_single_runs_thresholds_and_values(tmp_path):
    a = fake_run(tmp_path, "a", [0.5, 0.985, 0.991])
    b = fake_run(tmp_path, "b", [0.4, 0.6, 0.97], distance="sqrt", epoch_seconds=20.0)
    result = compare([a, b], tmp_path / "out", echo=quiet)
    header, rows = result["header"], {r[0]: dict(zip(result["header"], r)) for r in result["rows"]}
    assert "loss.distance" in header and "train.epochs" not in header  # only keys that differ
    assert rows["a"]["final test acc %"] == "99.10" and rows["a"]["best test acc %"] == "99.10"
    assert rows["a"]["steps"] == "705" and rows["a"]["acc AUC"] == f"{auc([0.5, 0.985, 0.991]):.4g}"
    assert rows["a"]["steps to 0.98"] == "470" and rows["a"]["s to 0.98"] == "20"
    assert rows["a"]["steps to 0.99"] == "705" and rows["a"]["s to 0.99"] == "30"
    assert rows["b"]["steps to 0.98"] == "> 705 (not reached)" and rows["b"]["s to 0.99"] == "> 60 (not reached)"
    assert rows["b"]["s/epoch"] == "20" and rows["a"]["final test CE"] == "0.6667"
    assert rows["a"]["intra/inter"] == "0.25" and rows["a"]["center lag"] == "0.1"
    assert "final center loss" not in header  # squared and sqrt center losses are in different units
    for name in ["report.md", "compare.csv", "accuracy.png", "cross_entropy.png", "compactness.png"]:
        assert (tmp_path / "out" / name).is_file()
    assert not (tmp_path / "out" / "claims.json").exists()  # no V1 triple
    with open(tmp_path / "out" / "compare.csv") as f:
        assert list(csv.reader(f))[0] == header


def test_seeds_form_a_group_with_mean_and_std(tmp_path):
    runs = [fake_run(tmp_path, f"v1_0_s{s}", [0.9, acc], seed=s) for s, acc in enumerate([0.97, 0.98, 0.99])]
    runs.append(fake_run(tmp_path, "v1_1_s0", [0.8, 0.96], distance="sqrt"))
    result = compare(runs, tmp_path / "out", thresholds=[0.98], echo=quiet)
    rows = {r[0]: dict(zip(result["header"], r)) for r in result["rows"]}
    assert set(rows) == {"v1_0", "v1_1_s0"}
    g = rows["v1_0"]
    assert g["n"] == "3"
    sd = statistics.stdev([97, 98, 99])
    assert g["final test acc %"] == f"98.00 ± {sd:.2f}"
    # one seed never got there: the median counts it as later than both that did, it is not left out
    assert g["steps to 0.98"] == "470 (2/3 reached)"
    assert "train.seed" not in result["header"]


def test_threshold_median_is_censored_when_most_runs_never_reach(tmp_path):
    runs = [fake_run(tmp_path, f"x_s{s}", [0.5, acc], seed=s) for s, acc in enumerate([0.99, 0.5, 0.6])]
    rows = compare(runs, tmp_path / "out", thresholds=[0.98], echo=quiet)["rows"]
    assert "> 470 (1/3 reached)" in rows[0]  # not "235 (1/3 reached)", which flatters the group


def test_old_and_new_run_formats_group_together_and_show_missing_values(tmp_path):
    old_columns = [c for c in METRIC_COLUMNS if c not in ("step", "compactness_ratio", "test_ce")]
    old = fake_run(tmp_path, "r_s0", [0.5, 0.9], columns=old_columns)
    new = fake_run(tmp_path, "r_s1", [0.5, 0.9], seed=1, columns=[*METRIC_COLUMNS, "some_future_metric"])
    cfg = yaml.safe_load((new / "config.yaml").read_text())
    cfg["train"]["some_future_key"] = 3  # a key added in a later version
    (new / "config.yaml").write_text(yaml.safe_dump(cfg))
    result = compare([old, new], tmp_path / "out", echo=quiet)
    assert len(result["groups"]) == 1
    row = dict(zip(result["header"], result["rows"][0]))
    assert row["n"] == "2" and row["steps"] == "470"  # old run: steps derived from the config
    assert row["acc AUC"] == f"{auc([0.5, 0.9]):.4g}"
    assert row["intra/inter"] == "0.25 (1/2)" and row["final test CE"] == "1 (1/2)"
    alone = compare([old], tmp_path / "out2", echo=quiet)
    row = dict(zip(alone["header"], alone["rows"][0]))
    assert row["intra/inter"] == "—" and row["final test CE"] == "—"
    assert "train.some_future_key" in (tmp_path / "out" / "report.md").read_text()


def test_unfinished_runs_are_marked_and_never_grouped(tmp_path):
    done = [fake_run(tmp_path, f"r_s{s}", [0.9, 0.95], seed=s) for s in range(2)]
    running = fake_run(tmp_path, "r_s2", [0.9], seed=2, status="running")
    failed = fake_run(tmp_path, "r_s3", [0.1], seed=3, status="failed", epochs=2, error="training loss became nan")
    result = compare([*done, running, failed], tmp_path / "out", echo=quiet)
    rows = {r[0]: dict(zip(result["header"], r)) for r in result["rows"]}
    assert rows["r"]["n"] == "2"
    assert rows["r_s2 [running]"]["status"] == "running (1/6 epochs)"
    assert rows["r_s3 [failed]"]["status"] == "failed (1/2 epochs)"
    assert [r[0] for r in result["rows"]] == ["r", "r_s3 [failed]", "r_s2 [running]"]  # failed run next to its group


def v1_runs(root, seeds=3, failed=()):
    """V1.0 above V1.1 on every seed (claim 1 supported); V1.1 and V1.2 overlap (claim 2 inconclusive).
    ``failed``: (label, seed) pairs whose run diverged after one epoch."""
    curves = {
        "V1.0": lambda s: [0.50 + 0.02 * s, 0.80 + 0.01 * s, 0.95],
        "V1.1": lambda s: [0.40 + 0.02 * s, 0.75 + 0.012 * s, 0.95],
        "V1.2": lambda s: [0.42 + 0.03 * (s % 2), 0.74 + 0.02 * s, 0.95],
    }
    kinds = {"V1.0": ("deep", "squared"), "V1.1": ("deep", "sqrt"), "V1.2": ("shallow", "sqrt")}
    runs, aucs = [], {label: {} for label in curves}
    for s in range(seeds):
        for label, curve in curves.items():
            arch, distance = kinds[label]
            name = f"v1_{label[-1]}_s{s}"
            if (label, s) in failed:
                err = "training loss became nan at epoch 2, batch 3: run stopped"
                runs.append(fake_run(root, name, curve(s)[:1], seed=s, arch=arch, distance=distance, epochs=3,
                                     status="failed", error=err, arm=name[:4]))  # fmt: skip
                continue
            runs.append(fake_run(root, name, curve(s), seed=s, arch=arch, distance=distance, arm=name[:4]))
            aucs[label][s] = auc(curve(s))
    return runs, aucs


V1 = claim_set(load_experiment(find_experiment("v1")))


def test_v1_claims_json_matches_scipy(tmp_path):
    runs, aucs = v1_runs(tmp_path)
    result = compare(runs, tmp_path / "out", echo=quiet, claim_set=V1)
    data = json.loads((tmp_path / "out" / "claims.json").read_text())
    assert [c["id"] for c in data] == ["1", "2"]
    c1, c2 = data
    a, b = list(aucs["V1.0"].values()), list(aucs["V1.1"].values())
    diff, low, high = paired_ci(a, b)
    assert c1["verdict"] == "supported" and c1["test"] == "paired t"
    assert (c1["diff"], c1["ci_low"], c1["ci_high"]) == pytest.approx((diff, low, high))
    assert (c1["n_a"], c1["n_b"], c1["failed_a"], c1["failed_b"]) == (3, 3, 0, 0)
    a, b = list(aucs["V1.1"].values()), list(aucs["V1.2"].values())
    diff, low, high, _ = welch_ci(a, b)
    assert c2["verdict"] == "inconclusive" and c2["test"] == "Welch t"
    assert (c2["diff"], c2["ci_low"], c2["ci_high"]) == pytest.approx((diff, low, high))
    assert c2["metric"] == "acc_auc" and c2["direction"] == "higher" and c2["design_used"] == "welch"
    assert [cr.result.verdict for cr in result["claims"]] == ["supported", "inconclusive"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## The claims of experiment `v1`" in report and "| 1. squared center loss" in report
    assert "What the numbers mean" in report and "Welch" in report
    assert "705 optimizer steps: 10.0% of the full profile's 7,050" in report
    assert "only the first 705 steps of training" in report
    assert "pairing not verified" in report  # hand-made runs carry no fingerprint
    assert "Regenerate this report: `centerexp compare" in report


def test_v1_failed_runs_are_shown_counted_and_can_leave_too_few(tmp_path):
    runs, _ = v1_runs(tmp_path, failed={("V1.1", 2)})
    result = compare(runs, tmp_path / "out", echo=quiet, claim_set=V1)
    rows = {r[0] for r in result["rows"]}
    assert "v1_1_s2 [failed]" in rows
    c1, c2 = json.loads((tmp_path / "out" / "claims.json").read_text())
    assert c1["verdict"] == "insufficient evidence" and (c1["n_a"], c1["failed_b"]) == (2, 1)
    assert c2["verdict"] == "insufficient evidence" and (c2["n_a"], c2["failed_a"], c2["n_b"]) == (2, 1, 3)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "failed: training loss became nan at epoch 2" in report


def test_v1_a_failed_run_with_three_left_keeps_the_verdict(tmp_path):
    # the failed run is of the worse arm: counted as the worst value instead, it leaves the verdict as it is
    # (one whose verdict hangs on leaving a failure out is inconclusive: tests/test_verdicts.py)
    runs, aucs = v1_runs(tmp_path, seeds=4, failed={("V1.1", 3)})
    compare(runs, tmp_path / "out", echo=quiet, claim_set=V1)
    c1 = json.loads((tmp_path / "out" / "claims.json").read_text())[0]
    diff, low, high = paired_ci([aucs["V1.0"][s] for s in range(3)], [aucs["V1.1"][s] for s in range(3)])
    assert c1["verdict"] == "supported" and (c1["n_b"], c1["failed_b"]) == (3, 1)
    assert c1["failures_as_worst"]["verdict"] == "supported"
    assert (c1["diff"], c1["ci_low"], c1["ci_high"]) == pytest.approx((diff, low, high))


def test_a_glob_over_a_compared_folder_skips_compares_own_files_quietly(tmp_path):
    runs, _ = v1_runs(tmp_path, seeds=1)
    compare(runs, tmp_path, echo=quiet, claim_set=V1)
    (tmp_path / "notes.txt").write_text("not a run")
    warnings = []
    result = compare(sorted(tmp_path.iterdir()), tmp_path, echo=quiet, warn=warnings.append, claim_set=V1)
    assert len(result["rows"]) == 3 and (tmp_path / "claims.json").is_file()
    assert warnings == [
        f"skipping {tmp_path / 'notes.txt'}: not a centerexp run folder (no config.yaml and summary.json)"
    ]


def test_stale_claims_json_is_removed_when_no_experiment_is_judged(tmp_path):
    runs, _ = v1_runs(tmp_path, seeds=1)
    compare(runs, tmp_path / "out", echo=quiet, claim_set=V1)
    c1 = json.loads((tmp_path / "out" / "claims.json").read_text())[0]
    assert c1["verdict"] == "insufficient evidence" and c1["ci_low"] is None  # n = 1: no interval
    compare(runs[:2], tmp_path / "out", echo=quiet)
    assert not (tmp_path / "out" / "claims.json").exists()


def test_cli_skips_non_runs_and_fails_on_none(tmp_path):
    (tmp_path / "junk").mkdir()
    result = runner.invoke(app, ["compare", str(tmp_path / "junk"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "skipping" in result.output and "error: compare: no run folders given" in result.output
    assert not (tmp_path / "out").exists()
    result = runner.invoke(app, ["compare", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "no run folders" in result.output


def test_csv_to_stdout(tmp_path):
    a = fake_run(tmp_path, "a", [0.5, 0.99])
    result = runner.invoke(app, ["compare", str(a), "--out", str(tmp_path / "out"), "--csv", "-", "--all-keys"])
    assert result.exit_code == 0, result.output
    assert "run,n,status,data.download" in result.output  # --all-keys lists every config key


@pytest.fixture(scope="module")
def two_real_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    cfg = write_config(root / "base.yaml", train={"epochs": 2}, data={"train_subset": 1024, "test_subset": 512})
    for seed in (0, 1):
        r = runner.invoke(
            app,
            [
                "train",
                str(cfg),
                "--runs-dir",
                str(root / "runs"),
                "--name",
                f"base_s{seed}",
                "--set",
                f"train.seed={seed}",
                "-q",
            ],
        )
        assert r.exit_code == 0, r.output
    return root / "runs"


def test_compare_end_to_end_on_real_runs(two_real_runs, tmp_path):
    out = tmp_path / "cmp"
    result = runner.invoke(
        app, ["compare", *map(str, sorted(two_real_runs.iterdir())), "--out", str(out), "--threshold", "0.2"]
    )
    assert result.exit_code == 0, result.output
    assert "| base " in result.output and "| 2 " in result.output  # the two seeds form one group
    for name in [
        "report.md",
        "compare.csv",
        "accuracy.png",
        "cross_entropy.png",
        "compactness.png",
        "features_grid.png",
    ]:
        assert (out / name).stat().st_size > 0, name
    assert "![features_grid.png](features_grid.png)" in (out / "report.md").read_text()


def test_plot_command_rebuilds_curves_and_gif(two_real_runs):
    run = two_real_runs / "base_s0"
    (run / "plots" / "features.gif").unlink()
    result = runner.invoke(app, ["plot", str(run)])
    assert result.exit_code == 0, result.output
    assert (run / "plots" / "features.gif").read_bytes()[:6] == b"GIF89a"


def test_plot_command_draws_a_reference_run_that_kept_only_its_small_files(tmp_path):
    run = tmp_path / "v1_1_s0"
    reference = REPO / "runs" / "reference" / "quick" / "v1_1_s0"
    shutil.copytree(reference, run, ignore=shutil.ignore_patterns("plots", "tb"))
    result = runner.invoke(app, ["plot", str(run)])
    assert result.exit_code == 0, result.output
    for name in ("loss_curves.png", "features.png"):
        assert (run / "plots" / name).read_bytes()[:4] == b"\x89PNG", name
        assert f"wrote {run / 'plots' / name}" in result.output
    assert not (run / "plots" / "features.gif").exists()  # no frames kept: nothing to animate


def test_a_run_given_twice_counts_once(tmp_path):
    a = fake_run(tmp_path, "a", [0.5, 0.99])
    result = compare([a, a, tmp_path / "a"], tmp_path / "out", echo=quiet)
    assert [r[1] for r in result["rows"]] == ["1"]


def test_runs_of_no_arm_are_not_judged_and_the_cli_finds_the_experiment(tmp_path):
    runs = [
        fake_run(tmp_path, "v1_0", [0.9, 0.99]),
        fake_run(tmp_path, "v1_1", [0.5, 0.97], distance="sqrt"),
    ]  # no run.json, and default configs that match no V1 arm
    result = compare(runs, tmp_path / "out", echo=quiet, claim_set=V1)
    assert [cr.result.n_a for cr in result["claims"]] == [0, 0]
    assert {cr.result.verdict for cr in result["claims"]} == {"insufficient evidence"}
    tagged, _ = v1_runs(tmp_path / "tagged")  # run.json names the experiment: the CLI judges its claims
    out = runner.invoke(app, ["compare", *map(str, tagged), "--out", str(tmp_path / "cli")])
    assert out.exit_code == 0, out.output
    assert "claim 1. squared center loss converges faster than sqrt (V1.0 vs V1.1): supported" in out.output


# The committed quick references, experiment -> folder, in the order the docs list their claims. Their
# reports are generated, never hand-kept, so they must be what today's code writes from the committed runs.
REFERENCES = {"v1": "runs/reference/quick", "center_vs_softmax": "runs/reference/center_vs_softmax/quick"}


@pytest.mark.parametrize("experiment", list(REFERENCES))
def test_reproduce_over_the_committed_reference_runs_writes_the_committed_report(tmp_path, monkeypatch, experiment):
    """Byte for byte: report.md, claims.json, compare.csv (figures are drawn and checked elsewhere; here
    drawing is skipped and only their names reach the report)."""
    import centerexp.plots

    folder = REFERENCES[experiment]
    shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("*.png", "tb", "plots"))
    monkeypatch.chdir(tmp_path)  # the report records the run paths as given, relative to the checkout
    monkeypatch.setattr(centerexp.plots, "plot_step_curves", lambda *args, **kwargs: True)
    monkeypatch.setattr(centerexp.plots, "plot_feature_panels", lambda *args, **kwargs: None)
    result = runner.invoke(app, ["reproduce", experiment, "--profile", "quick", "--runs-dir", folder])
    assert result.exit_code == 0, result.output
    assert "epoch 1/" not in result.output  # nothing trained: every run was complete
    for name in ["report.md", "claims.json", "compare.csv"]:
        assert (tmp_path / folder / name).read_text() == (REPO / folder / name).read_text(), name


# The reference reports whose claims the docs quote, in the order they quote them: the quick ones,
# then v1's early profile (trained in pieces over sessions, so not in REFERENCES' reproduce test).
DOC_TABLES = [*REFERENCES.values(), "runs/reference/early", "runs/reference/center_vs_softmax/early"]


@pytest.mark.parametrize("document", ["README.md", "docs/results.md"])
def test_the_claim_tables_of_the_docs_are_the_committed_claims(document):
    """Each row with a bold verdict, in DOC_TABLES' order: verdict, effect, CI and test as
    claims.json has them (3 decimals)."""
    rows = [line for line in (REPO / document).read_text().splitlines() if re.match(r"\|[^|]*\| \*\*", line)]
    expected = [c for folder in DOC_TABLES for c in json.loads((REPO / folder / "claims.json").read_text())]
    assert len(rows) == len(expected) == 8
    for row, c in zip(rows, expected):
        cells = [cell.strip().replace("\u2212", "-") for cell in row.strip("|").split("|")]
        assert cells[1] == f"**{c['verdict']}**", row
        assert cells[2].endswith(f"{c['diff']:+.3f}"), row
        assert cells[3] == f"[{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]", row
        assert cells[4].startswith(c["test"]), row
