"""Run-level metrics a claim can be about: one number per run, and which way is better.

Adding a metric for claims is one entry in METRICS. Each takes a run (analysis.runs.Run, with its
figures computed) and the claim's parameters, and returns a float (NaN: the run has no such value).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

from centerexp.analysis import curves
from centerexp.analysis.runs import Run
from centerexp.analysis.stats import finite


@dataclass(frozen=True)
class RunMetric:
    name: str
    meaning: str  # for the report: what the number is
    direction: str  # "higher" or "lower": which way is better
    value: Callable[[Run, dict], float]  # (run, claim parameters) -> value
    parameters: tuple[str, ...] = ()  # the claim keys it reads (a claim must give them)


def _compactness(run: Run, params: dict) -> float:
    return curves.value_at_fraction(run.steps, run.column("compactness_ratio"), params.get("at", 1.0))


def _steps_to(run: Run, params: dict) -> float:
    """The step of the first evaluation at or above the threshold; +inf when the run never reached it.

    Censored: such a run would reach it later than its last step, if ever, and how much later is
    unknown. Counting it at its last step would make the answer depend on where training stopped, so
    ``steps_to`` claims are judged with survival methods (analysis.survival), never averaged; +inf is
    not a number for the other statistics (claim_value turns it into NaN).
    """
    step = curves.first_step_reaching(run.steps, run.column("test_acc"), params["threshold"])
    return step if step is not None else math.inf


METRICS = {
    m.name: m
    for m in (
        RunMetric(
            "acc_auc",
            "normalised area under test accuracy vs training step (the mean test accuracy over training)",
            "higher",
            lambda r, p: r.figures.get("acc_auc", math.nan),
        ),
        RunMetric(
            "final_test_acc",
            "test accuracy at the last evaluation",
            "higher",
            lambda r, p: r.figures.get("final_test_acc", math.nan),
        ),
        RunMetric(
            "best_test_acc",
            "best test accuracy over the evaluations",
            "higher",
            lambda r, p: r.figures.get("best_test_acc", math.nan),
        ),
        RunMetric(
            "final_test_ce",
            "test cross-entropy at the last evaluation",
            "lower",
            lambda r, p: r.figures.get("final_test_ce", math.nan),
        ),
        RunMetric(
            "compactness",
            "intra-class / inter-class distance of the test features (class means), at fraction `at` of training",
            "lower",
            _compactness,
            ("at",),
        ),
        RunMetric(
            "steps_to",
            "optimizer steps until test accuracy first reached `threshold`; a run that never did is censored "
            "at its last step",
            "lower",
            _steps_to,
            ("threshold",),
        ),
    )
}


def claim_value(metric: str, run: Run, params: dict) -> float:
    value = METRICS[metric].value(run, params)
    return value if finite(value) else math.nan
