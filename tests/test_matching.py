"""Runs trained by hand are matched to an experiment's arms: by a profile, or by the protocol they share.

No network is trained: run folders are written by hand (tests.test_compare.fake_run) with the config
`centerexp train configs/v1_X.yaml --set ...` writes, or copied from the committed quick reference
runs with run.json reduced to what `centerexp train` writes (a fingerprint, no experiment).
"""

import json
import shutil

from typer.testing import CliRunner

from centerexp.analysis.compare import compare
from centerexp.cli import app
from centerexp.config import dump_config, load_config
from centerexp.experiments.matching import claim_set, experiment_of_runs, find_experiment
from centerexp.experiments.spec import load_experiment

from .conftest import CONFIGS, REPO
from .test_compare import fake_run, quiet

runner = CliRunner()
PROTOCOL = ("train.epochs=2", "data.train_subset=1024")
PROTOCOL_TEXT = "the arms' configs with data.train_subset=1024, train.epochs=2"
CURVES = {  # V1.0 above V1.1 on every seed, V1.1 and V1.2 overlapping
    "v1_0": lambda s: [0.50 + 0.02 * s, 0.80 + 0.013 * s],
    "v1_1": lambda s: [0.40 + 0.025 * s, 0.75 + 0.01 * s],
    "v1_2": lambda s: [0.42 + 0.03 * (s % 2), 0.74 + 0.02 * s],
}


def hand_run(root, arm, seed, *extra, name=None, labelled=False):
    """What `centerexp train configs/{arm}.yaml --set train.epochs=2 --set data.train_subset=1024
    --set train.seed=S [--set EXTRA]` leaves (``labelled``: as `centerexp reproduce` would label it)."""
    run = fake_run(root, name or f"{arm}_s{seed}", CURVES[arm](seed), seed=seed)
    cfg = load_config(CONFIGS / f"{arm}.yaml", [*PROTOCOL, *extra, f"train.seed={seed}"])
    (run / "config.yaml").write_text(dump_config(cfg))
    identity = {"fingerprint": {"init": f"i{seed}", "data": f"d{seed}"}}
    if labelled:
        identity.update(experiment="v1", experiment_file="configs/experiments/v1.yaml", arm=arm, profile="hand")
    (run / "run.json").write_text(json.dumps(identity))
    return run


def v1_by_hand(root, labelled=False):
    return [hand_run(root, arm, s, labelled=labelled) for s in range(3) for arm in CURVES]


def claims(out):
    return json.loads((out / "claims.json").read_text())


def verdicts(out):
    """What a claim's judgement says, without secondaries that another resampling could move."""
    keys = (
        "id",
        "verdict",
        "test",
        "diff",
        "ci_low",
        "ci_high",
        "p_value",
        "n_a",
        "n_b",
        "failed_a",
        "failed_b",
        "notes",
    )
    return [{k: c.get(k) for k in keys} for c in claims(out)]


def test_hand_trained_v1_runs_are_judged_under_their_protocol(tmp_path):
    runs = v1_by_hand(tmp_path / "runs")
    out = tmp_path / "out"
    result = runner.invoke(app, ["compare", *map(str, runs), "--experiment", "v1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"protocol: {PROTOCOL_TEXT}" in result.output
    assert "matches no arm" not in result.output
    judged = verdicts(out)
    assert [(c["n_a"], c["n_b"]) for c in judged] == [(3, 3), (3, 3)]
    # the same numbers as when run.json names each run's arm
    labelled = v1_by_hand(tmp_path / "labelled", labelled=True)
    compare(
        labelled, tmp_path / "out_labelled", echo=quiet, claim_set=claim_set(load_experiment(find_experiment("v1")))
    )
    assert judged == verdicts(tmp_path / "out_labelled")
    assert judged[0]["verdict"] == "supported"
    report = (out / "report.md").read_text()
    assert f"**protocol: {PROTOCOL_TEXT}.**" in report and "Runs that match no arm" not in report
    assert "protocol:" not in (tmp_path / "out_labelled" / "report.md").read_text()


def test_a_run_that_matches_no_arm_is_listed_with_the_keys_that_differ(tmp_path):
    runs = v1_by_hand(tmp_path)
    runs.append(hand_run(tmp_path, "v1_0", 3, "train.lr=0.01"))  # off the protocol
    runs.append(hand_run(tmp_path, "v1_2", 4, "loss.distance=squared", name="shallow_squared_s4"))  # no such arm
    warnings = []
    cs, thresholds = experiment_of_runs(runs, "v1", warnings.append)
    assert cs.protocol == PROTOCOL_TEXT and thresholds == ()
    assert warnings == [
        "v1_0_s3 matches no arm of v1: closest is v1_0 (under the runs' protocol), which differs in "
        "train.lr=0.01 (arm: 0.001)",
        "shallow_squared_s4 matches no arm of v1: closest is v1_0 (under the runs' protocol), which differs in "
        "model.arch=shallow (arm: deep)",
    ]
    compare(runs, tmp_path / "out", echo=quiet, claim_set=cs)
    assert [(c["n_a"], c["n_b"]) for c in claims(tmp_path / "out")] == [(3, 3), (3, 3)]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Runs that match no arm (not judged):\n\n- v1_0_s3 matches no arm of v1" in report


def test_runs_of_two_protocols_are_never_judged_together(tmp_path):
    runs = [hand_run(tmp_path, arm, 0) for arm in CURVES]
    runs += [hand_run(tmp_path, arm, 1, "train.epochs=3") for arm in CURVES]
    warnings = []
    cs, _ = experiment_of_runs(runs, "v1", warnings.append)
    assert cs.protocol == "" and len(warnings) == 7
    assert warnings[-1].startswith("these 6 runs follow 2 protocols")
    assert "closest is v1_0 (profile full), which differs in data.train_subset=1024 (arm: null), " in warnings[0]
    compare(runs, tmp_path / "out", echo=quiet, claim_set=cs)
    assert [(c["n_a"], c["n_b"]) for c in claims(tmp_path / "out")] == [(0, 0), (0, 0)]


def test_hand_runs_beside_an_experiments_own_runs_are_not_matched_by_protocol(tmp_path):
    runs = v1_by_hand(tmp_path / "own", labelled=True)
    stray = hand_run(tmp_path / "hand", "v1_0", 7)
    warnings = []
    cs, _ = experiment_of_runs([*runs, stray], None, warnings.append)  # the experiment their run.json names
    assert cs.name == "v1" and cs.protocol == "" and len(warnings) == 1
    assert warnings[0].startswith("v1_0_s7 matches no arm of v1: closest is v1_0 (profile full)")


def test_reference_runs_trained_by_hand_get_the_reference_verdicts(tmp_path):
    """The committed quick runs with run.json as `centerexp train` leaves it: matched by the quick
    profile; then, with a key that no profile sets, by their protocol; the verdicts stay the same."""
    reference = REPO / "runs" / "reference" / "quick"
    runs = []
    for src in sorted(reference.glob("v1_*_s*")):
        run = shutil.copytree(src, tmp_path / "runs" / src.name)
        identity = json.loads((run / "run.json").read_text())
        (run / "run.json").write_text(json.dumps({"fingerprint": identity["fingerprint"]}))
        runs.append(run)
    v1 = claim_set(load_experiment(find_experiment("v1")))
    compare(sorted(reference.glob("v1_*_s*")), tmp_path / "reference", echo=quiet, claim_set=v1)
    expected = verdicts(tmp_path / "reference")

    cs, _ = experiment_of_runs(runs, "v1", quiet)
    assert cs.protocol == ""  # the quick profile's configs
    compare(runs, tmp_path / "profile", echo=quiet, claim_set=cs)
    assert verdicts(tmp_path / "profile") == expected

    for run in runs:
        text = (run / "config.yaml").read_text()
        (run / "config.yaml").write_text(text.replace("eval_batch_size: 1024", "eval_batch_size: 512"))
    cs, _ = experiment_of_runs(runs, "v1", quiet)
    assert cs.protocol == (
        "the arms' configs with data.train_subset=960, data.test_subset=500, data.subset_mode=random, "
        "loss.lamda=0.25, train.epochs=6, train.batch_size=64, train.eval_batch_size=512"
    )
    compare(runs, tmp_path / "protocol", echo=quiet, claim_set=cs)
    assert verdicts(tmp_path / "protocol") == expected
