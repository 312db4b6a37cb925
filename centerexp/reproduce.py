"""`make reproduce`: V1.0, V1.1 and V1.2 over several seeds, then the comparison report.

Profiles:
  full   the configs as written (30 epochs on all 60,000 images): hours on a 2-core CPU, minutes on a GPU.
  quick  a random 1,920-image training subset, 1,000 test images, batch 64, 3 epochs (90 steps):
         under 20 minutes for 3 configs x 3 seeds on the 2-core CPU this project is developed on
         (fp32, ~58 images/s; batch 64 runs as fast per image as 256 there and takes 4x the steps).
         It measures the early convergence the seed's claims are about, not final accuracies.
"""

from pathlib import Path

from centerexp.config import diff_configs, load_config
from centerexp.errors import CenterexpError
from centerexp.runs import is_run_dir, read_json

CONFIGS = {"v1_0": "V1.0", "v1_1": "V1.1", "v1_2": "V1.2"}
PROFILES = {
    "full": [],
    "quick": [
        "train.epochs=3",
        "train.batch_size=64",
        "data.train_subset=1920",
        "data.test_subset=1000",
        "data.subset_mode=random",
    ],
}
QUICK_THRESHOLDS = (0.4, 0.5)  # the quick profile stops long before 0.98 (it ends near 0.45)


def config_dir() -> Path:
    """configs/ of the source checkout (the repo root is the package's parent)."""
    return Path(__file__).resolve().parent.parent / "configs"


def reproduce(
    profile: str = "full",
    seeds: int = 3,
    runs_dir: Path = Path("runs/reproduce"),
    progress=None,
    extra: list[str] = (),
    echo=print,
) -> dict:
    """Train every missing or unfinished run (seed-major, so partial results cover all configs), then compare."""
    from centerexp.compare import DEFAULT_THRESHOLDS, compare
    from centerexp.train import resume_run, start_run

    if profile not in PROFILES:
        raise CenterexpError(f"unknown profile {profile!r}: expected one of {', '.join(PROFILES)}", exit_code=2)
    if seeds < 1:
        raise CenterexpError(f"--seeds must be >= 1, got {seeds}", exit_code=2)
    runs_dir = Path(runs_dir)
    overrides = PROFILES[profile] + list(extra)
    run_dirs = []
    for seed in range(seeds):
        for stem in CONFIGS:
            run_dir = runs_dir / f"{stem}_s{seed}"
            run_dirs.append(run_dir)
            args = [*overrides, f"train.seed={seed}"]
            if is_run_dir(run_dir):
                wanted = load_config(config_dir() / f"{stem}.yaml", args).to_dict()
                changed = diff_configs(load_config(run_dir / "config.yaml").to_dict(), wanted)
                if changed:
                    raise CenterexpError(
                        f"{run_dir} was trained with a different config ({', '.join(changed)} differ from "
                        f"--profile {profile}): use another --runs-dir or remove it",
                        exit_code=2,
                    )
                if read_json(run_dir / "summary.json").get("status") == "completed":
                    echo(f"{run_dir}: already completed, kept")
                    continue
                echo(f"{run_dir}: resuming")
                resume_run(run_dir, args, progress=progress, command=f"centerexp reproduce --profile {profile}")
            else:
                start_run(
                    config_dir() / f"{stem}.yaml",
                    args,
                    runs_dir,
                    run_dir.name,
                    progress=progress,
                    command=f"centerexp reproduce --profile {profile}",
                )
    thresholds = QUICK_THRESHOLDS if profile == "quick" else DEFAULT_THRESHOLDS
    return compare(run_dirs, runs_dir, thresholds=thresholds, echo=echo)
