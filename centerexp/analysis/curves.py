"""One run's curve of a metric against optimizer step, read as a number: the area under test
accuracy, the first step reaching a threshold, the value at a fraction of training.

Steps, not epochs or seconds: the arms of a claim take the same optimizer steps, and steps do not
depend on the machine. The curve starts at (step 0, chance): no evaluation is made before
training, and an untrained 10-class net is at chance in expectation.
"""

import math

from centerexp.analysis.stats import finite
from centerexp.config import steps_per_epoch, train_images

CHANCE = 0.1  # test accuracy of a 10-class guess: the curve's start


def steps_from_config(epochs: list[float], train_subset: int | None, batch_size: int) -> list[float]:
    """Cumulative steps at the end of each epoch, for runs written before metrics.csv had ``step``."""
    per_epoch = steps_per_epoch(train_images(train_subset), batch_size)
    return [e * per_epoch for e in epochs]


def accuracy_auc(steps: list[float], accs: list[float], chance: float = CHANCE) -> float:
    """Normalised area under test accuracy vs step, from (0, chance) to the last evaluation.

    NaN when there is no evaluation or a value is not finite (a diverged run has no area).
    """
    if not steps or len(steps) != len(accs) or not all(map(finite, [*steps, *accs])) or steps[-1] <= 0:
        return math.nan
    xs, ys = [0.0, *steps], [chance, *accs]
    area = sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]))
    return area / steps[-1]


def first_step_reaching(steps: list[float], accs: list[float], threshold: float) -> float | None:
    """The step of the first evaluation with test accuracy >= threshold; None if none did (censored)."""
    return next((s for s, a in zip(steps, accs) if finite(a) and a >= threshold), None)


def value_at_fraction(steps: list[float], values: list[float], fraction: float) -> float:
    """``values`` at ``fraction`` of the run's last step, joining evaluations by straight lines.

    NaN before the first evaluation (nothing is measured there) or where values are missing.
    """
    if not steps or not finite(steps[-1]):
        return math.nan
    target = fraction * steps[-1]
    for i, (x1, y1) in enumerate(zip(steps, values)):
        if x1 < target:
            continue
        if x1 == target:
            return y1 if finite(y1) else math.nan
        if i == 0:  # before the first evaluation
            return math.nan
        x0, y0 = steps[i - 1], values[i - 1]
        if not (finite(y0) and finite(y1)):
            return math.nan
        return y0 + (y1 - y0) * (target - x0) / (x1 - x0)
    return math.nan
