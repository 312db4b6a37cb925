"""Reading runs back: run-level metrics, statistics, claims, the comparison and its report."""
