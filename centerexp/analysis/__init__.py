"""Reading runs back: run-level metrics, statistics, claims, the comparison and its report."""

DEFAULT_THRESHOLDS = (0.98, 0.99)  # test accuracies for "steps to threshold" when nothing says otherwise
