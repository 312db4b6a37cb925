"""reproduce --until-decided: rounds of one seed per arm, a group-sequential look after each from the
third, a stop when every claim is decided (or at max_seeds), and the design in claims.json and
report.md. Real tiny linear runs; the statistics themselves are tested in test_sequential.py."""

import json

import pytest
from typer.testing import CliRunner

from centerexp.cli import app
from centerexp.errors import CenterexpError
from centerexp.experiments.reproduce import reproduce
from centerexp.experiments.spec import load_experiment

from .conftest import CONFIGS

# 'trained' learns for 32 steps; 'frozen' has a learning rate of 1e-9, so its test cross-entropy
# stays near log(10) whatever the seed: an effect far larger than the spread of the differences.
EXPERIMENT = """\
name: sure_thing
title: a trained net against a frozen one
arms:
  - {{name: trained, config: {configs}/baseline.yaml}}
  - {{name: frozen, config: {configs}/baseline.yaml, overrides: [train.lr=1e-9]}}
seeds: 3
profiles:
  tiny:
    precision: fp32
    overrides: [train.epochs=2, train.batch_size=64, data.train_subset=1024, data.test_subset=256,
                plot.gif=false, plot.tensorboard=false]
  {extra_profile}
claims:
  - {{id: "1", says: training lowers the test cross-entropy, better: trained, than: frozen,
     metric: final_test_ce, design: paired}}
  {extra_claim}
"""


def experiment(tmp_path, extra_profile: str = "", extra_claim: str = ""):
    path = tmp_path / "sure.yaml"
    path.write_text(EXPERIMENT.format(configs=CONFIGS, extra_profile=extra_profile, extra_claim=extra_claim))
    return path


def test_a_clear_effect_stops_before_max_seeds_and_the_design_is_reported(tmp_path):
    runs = tmp_path / "runs"
    out = []
    reproduce(experiment(tmp_path), "tiny", runs_dir=runs, progress=False, echo=out.append,
              until_decided=True, max_seeds=8)  # fmt: skip
    looks = [line for line in out if line.startswith("look at ")]
    assert looks[0] == "look at 3 seeds per arm: claim 1: continue"  # O'Brien-Fleming: |t| > 53.8 at n = 3
    assert looks[-1].endswith("claim 1: supported") and len(looks) < 6
    stopped = len(looks) + 2
    assert f"every claim is decided: stopped at {stopped} of at most 8 seeds per arm" in out
    trained = sorted(p.name for p in runs.iterdir() if (p / "summary.json").exists())
    assert trained == sorted(f"{arm}_s{s}" for arm in ("trained", "frozen") for s in range(stopped))

    claim = json.loads((runs / "claims.json").read_text())[0]
    assert claim["verdict"] == "supported" and claim["n_a"] == stopped
    seq = claim["sequential"]
    assert seq["design"] == "sequential" and seq["max_seeds"] == 8 and seq["stopped_at"] == stopped
    assert seq["looks_taken"] == list(range(3, stopped + 1))
    assert 0 < seq["alpha_spent"] < 0.05
    assert f"looks taken at n = {', '.join(map(str, range(3, stopped + 1)))}" in (runs / "report.md").read_text()

    out.clear()  # run again: everything is done, nothing is trained, the same stop
    reproduce(experiment(tmp_path), "tiny", runs_dir=runs, progress=False, echo=out.append,
              until_decided=True, max_seeds=8)  # fmt: skip
    assert not any("train loss" in line for line in out) and looks[-1] in out


def test_an_open_claim_trains_to_max_seeds_and_ends_inconclusive(tmp_path):
    # claim 2 compares two arms that compute the same thing (one also draws a GIF): it never crosses
    same = '- {id: "2", says: drawing a GIF helps, better: trained_gif, than: trained, metric: final_test_ce}'
    path = experiment(tmp_path, extra_claim=same)
    gif = f"  - {{name: trained_gif, config: {CONFIGS}/baseline.yaml, overrides: [plot.gif=true]}}\nseeds: 3\n"
    path.write_text(path.read_text().replace("seeds: 3\n", gif))
    runs = tmp_path / "runs"
    out = []
    reproduce(path, "tiny", runs_dir=runs, progress=False, echo=out.append, until_decided=True, max_seeds=4)
    looks = [line for line in out if line.startswith("look at ")]
    assert looks[0] == "look at 3 seeds per arm: claim 1: continue; claim 2: continue"
    assert len(looks) == 2 and looks[1].startswith("look at 4 seeds per arm") and "claim 2: inconclusive" in looks[1]
    claims = {c["id"]: c for c in json.loads((runs / "claims.json").read_text())}
    assert claims["2"]["verdict"] == "inconclusive" and claims["2"]["sequential"]["looks_taken"] == [3, 4]
    assert claims["2"]["sequential"]["stopped_at"] == 4 and claims["2"]["n_a"] == 4


def test_a_profile_can_ask_for_it_and_bad_combinations_are_refused(tmp_path):
    path = experiment(tmp_path)
    text = path.read_text()
    tiny = text[text.index("  tiny:") : text.index("  \nclaims")]
    path.write_text(
        text.replace("  \nclaims", tiny.replace("tiny:", "seq:") + "    sequential: {max_seeds: 6}\nclaims")
    )
    assert load_experiment(path).profiles["seq"].max_seeds == 6
    out = []
    cost = reproduce(path, "seq", runs_dir=tmp_path / "r", echo=out.append, dry_run=True)
    assert cost.steps_total == 2 * 6 * 32  # 2 arms x 6 seeds x (2 epochs of 1024 / 64 steps), the most it may train
    assert len(cost.runs) == 12 and "at most" in out[0] and not (tmp_path / "r").exists()
    with pytest.raises(CenterexpError, match="--seeds fixes n"):
        reproduce(path, "seq", seeds=3, runs_dir=tmp_path / "r", dry_run=True)
    with pytest.raises(CenterexpError, match="--max-seeds goes with --until-decided"):
        reproduce(path, "tiny", max_seeds=5, runs_dir=tmp_path / "r", dry_run=True)
    bad = experiment(tmp_path, extra_profile="seq: {sequential: {max_seeds: 2}}")
    result = CliRunner().invoke(app, ["reproduce", str(bad), "--profile", "tiny", "--dry-run"])
    assert (
        result.exit_code == 2 and "profiles.seq.sequential.max_seeds: expected a whole number from 3" in result.output
    )


def test_help_shows_the_sequential_options():
    result = CliRunner().invoke(app, ["reproduce", "--help"])
    assert "--until-decided" in result.output and "--max-seeds" in result.output
