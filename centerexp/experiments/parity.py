"""`centerexp parity`: does a faster way to compute train like the reference way? The same config
and seeds both ways, compared in pairs.

Two comparisons ship (COMPARISONS): ``precision`` (bf16 against fp32) and ``conv`` (the
convolution algorithms ``train.conv_algo: auto`` picks on this machine against the library's).
With the same ``train.seed`` the two runs of a pair start from the same weights and centers and
see the same batches; only the arithmetic differs. So the per-seed difference (candidate -
reference) is the unit, and its mean gets a paired t 95% interval (``stats.paired_test``), for the
primary metric of the shipped claims (area under test accuracy vs step) and for the final test
accuracy. An interval that contains 0 bounds the difference; it does not prove there is none. When
every pair differs by the same amount (often exactly 0, where the candidate changes no number) a t
interval would have zero width and prove nothing: the exact sign test's p is given instead, with
its interval only where the seeds are enough for 95% (6 or more).

The default profile is the quick profile's dynamics (batch 64 with lamda scaled to 0.25) at twice
its length: 1,920 images x 6 epochs = 180 steps, 2.6% of the full recipe. It says nothing about
the last epochs of a full run, where accuracy differences of a few tenths of a point would matter.
"""

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from centerexp.analysis.claim_text import p_text
from centerexp.analysis.metrics import METRICS
from centerexp.analysis.stats import finite, paired_test
from centerexp.rundir import status
from centerexp.rundir.io import write_json
from centerexp.sweeps.jobs import LaunchOptions
from centerexp.sweeps.launch import launch
from centerexp.sweeps.spec import RunSpec, run_state


@dataclass(frozen=True)
class Comparison:
    key: str  # the config key whose two values are compared
    reference: str
    candidate: str

    @property
    def values(self) -> tuple[str, str]:
        return self.reference, self.candidate


COMPARISONS = {
    "precision": Comparison("train.precision", "fp32", "bf16"),
    "conv": Comparison("train.conv_algo", "library", "auto"),
}
PROFILE = [
    "train.epochs=6",
    "train.batch_size=64",
    "loss.lamda=0.25",
    "data.train_subset=1920",
    "data.test_subset=500",
    "data.subset_mode=random",
]


def parity_specs(config: Path, seeds: int, runs_dir: Path, extra: list[str], comparison: Comparison) -> list[RunSpec]:
    specs = []
    for seed in range(seeds):
        for value in comparison.values:
            run_dir = Path(runs_dir) / f"{Path(config).stem}_{value}_s{seed}"
            overrides = (*PROFILE, *extra, f"{comparison.key}={value}", f"train.seed={seed}")
            state = run_state(run_dir, config, overrides, "this parity profile")
            specs.append(RunSpec(Path(config), overrides, run_dir, state, "centerexp parity"))
    return specs


def pair_figures(run_dir: Path) -> dict:
    """AUC of test accuracy vs step, final test accuracy, training seconds per epoch, read as
    compare reads a run: NaN for a failed run (counted as failed), None for one that did not
    finish (left out)."""
    from centerexp.analysis.runs import load_runs, run_figures

    runs = load_runs([run_dir], warn=lambda _: None)
    outcome = runs[0].outcome if runs else status.RUNNING
    if outcome != status.COMPLETED:
        missing = math.nan if outcome == status.FAILED else None
        return {"auc": missing, "final_test_acc": missing, "train_seconds": missing}
    figures = run_figures(runs[0], thresholds=())
    return {
        "auc": figures["acc_auc"],
        "final_test_acc": figures["final_test_acc"],
        "train_seconds": statistics.fmean(runs[0].column("train_seconds")),
    }


def _json_safe(x):
    """NaN as null: parity.json stays valid JSON."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return None if isinstance(x, float) and math.isnan(x) else x


def parity(
    config: Path,
    seeds: int = 5,
    runs_dir: Path = Path("runs/parity"),
    extra: list[str] = (),
    progress=None,
    echo=print,
    launcher: LaunchOptions | None = None,
    compare: str = "precision",
) -> dict:
    """Train the missing runs (with any launcher), then compare ``COMPARISONS[compare]``'s candidate
    with its reference seed by seed; writes parity.json."""
    comparison = COMPARISONS[compare]
    specs = parity_specs(config, seeds, runs_dir, list(extra), comparison)
    launch(specs, (launcher or LaunchOptions()).check(), Path(runs_dir), progress, echo)
    figures = {
        v: [pair_figures(s.run_dir) for s in specs if f"{comparison.key}={v}" in s.overrides] for v in comparison.values
    }
    reference, candidate = figures[comparison.reference], figures[comparison.candidate]
    result = {
        "config": str(config),
        "compared": comparison.key,
        "reference": comparison.reference,
        "candidate": comparison.candidate,
        "profile": PROFILE + list(extra),
        "seeds": seeds,
        "metrics": {},
    }
    for key, name in (("auc", METRICS["acc_auc"].meaning), ("final_test_acc", "final test accuracy")):
        t = paired_test([f[key] for f in candidate], [f[key] for f in reference])
        result["metrics"][key] = {
            "name": name,
            "difference": t.diff,  # candidate - reference
            "ci_low": t.ci_low,  # NaN (null) where there is no 95% interval
            "ci_high": t.ci_high,
            "test": t.test,  # "paired t", or "exact sign test" when every difference is the same
            "p_value": t.p_value,  # two-sided, against no difference
            "n": t.n_a,
            "failed_candidate": t.failed_a,
            "failed_reference": t.failed_b,
            "mean_candidate": t.mean_a,
            "mean_reference": t.mean_b,
        }
    speed = [
        ref["train_seconds"] / cand["train_seconds"]
        for ref, cand in zip(reference, candidate)
        if finite(ref["train_seconds"]) and finite(cand["train_seconds"])
    ]
    result["per_seed"] = figures
    result["speedup"] = statistics.fmean(speed) if speed else float("nan")  # reference time / candidate time
    write_json(Path(runs_dir) / "parity.json", _json_safe(result))
    echo(format_parity(result))
    return result


def _mean(x, sign: str = "") -> str:
    """A mean or difference to 4 decimals; "-" where there is none (null in parity.json)."""
    return format(x, f"{sign}.4f") if finite(x) else "-"


def format_parity(r: dict) -> str:
    ref, cand = r["reference"], r["candidate"]
    lines = [f"{r['compared']}: {cand} vs {ref}, {r['config']}, {r['seeds']} paired seeds, {' '.join(r['profile'])}"]
    for m in r["metrics"].values():
        failed = m["failed_candidate"] + m["failed_reference"]
        counts = f"n={m['n']}" + (
            f", failed: {cand} {m['failed_candidate']}, {ref} {m['failed_reference']}" if failed else ""
        )
        has_ci = finite(m["ci_low"]) and finite(m["ci_high"])
        interval = f"95% CI [{m['ci_low']:+.4f}, {m['ci_high']:+.4f}]" if has_ci else None
        test = m.get("test", "paired t")  # parity.json written before it recorded its test: always paired t
        if test == "paired t":
            judged = f"{interval or 'no 95% CI'} ({test}, {counts})"
        else:  # every difference equal: a t interval would have zero width; the exact test's p instead
            judged = (
                f"all {m['n']} differences equal: {test} p = {p_text(m.get('p_value'))}, "
                f"{interval or 'too few pairs for a 95% CI'} ({counts})"
            )
        lines.append(
            f"  {m['name']}: {cand} {_mean(m['mean_candidate'])}, {ref} {_mean(m['mean_reference'])}, "
            f"difference {_mean(m['difference'], '+')}, {judged}"
        )
    speedup = f"{r['speedup']:.2f}x" if finite(r["speedup"]) else "-"
    lines.append(f"  training time per epoch, {ref} / {cand}: {speedup}")
    return "\n".join(lines)
