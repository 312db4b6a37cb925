"""Many runs: run specs and the launchers (local processes, submitit, Slurm). No experiment knowledge."""
