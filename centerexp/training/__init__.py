"""Training one run: data, models, losses, runtime, checkpoints, the loop."""
