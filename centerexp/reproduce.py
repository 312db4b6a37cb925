"""`make reproduce`: V1.0, V1.1 and V1.2 over several seeds, then the comparison report.

Three steps, each a plain function: ``plan_runs`` turns a profile into one ``RunSpec`` per
(config, seed) and checks existing run folders against it; a launcher trains the specs that are
not finished (``train_sequentially`` here, others in launch.py); ``compare`` writes the report.

Both profiles pin ``train.precision=fp32`` (the source trained in fp32).

Profiles:
  full   the configs as written: 30 epochs of 235 steps (batch 256, all 60,000 images) = 7,050 steps.
         Hours on a 2-core CPU, minutes on a GPU.
  quick  a pipeline check, not a test of the claims: 90 steps (1.3% of the full run's 7,050), about
         20-25 minutes for 3 configs x 3 seeds on a 2-core CPU in fp32 (estimated at 40-45 img/s for
         the deep net; not yet timed end to end). A random 960-image training
         subset (new per seed), 6 epochs of 15 steps at batch 64, evaluated after each epoch on 500
         test images: the same 5,760 training and 3,000 evaluated images per run as the earlier
         3 x 1,920 profile, but 6 points on the accuracy curve instead of 3.

         Batch 64 with lamda = 1 x 64/256 = 0.25 keeps the recipe's dynamics per step. The loss is
         lamda/(2B) * sum_i d_i / n_{y_i} with n_j ~ B/10, so its gradient on one feature is
         ~ lamda * 10/(2 B^2) * grad d_i, against 1/B * grad CE_i from the batch-mean cross-entropy:
         the pull relative to cross-entropy scales as lamda / B. A center's gradient is
         lamda/(2B) * (mean over its n_j samples), so its SGD step (center_lr 0.5) also scales as
         lamda / B. Both match batch 256 at lamda 1 exactly when lamda = B/256. (What does not match:
         gradient noise is ~2x larger at batch 64, and n_j ~ 6 per class is a noisier count.)

         Thresholds 0.325 and 0.55 are fixed by the accuracy scale, not by where runs end: a quarter
         and half of the way from chance (0.1) to perfect (1.0). Runs that never reach one are
         counted as censored ("k/n reached"), so a threshold few runs reach costs nothing.
"""

from dataclasses import dataclass
from pathlib import Path

from centerexp.config import diff_configs, load_config
from centerexp.errors import CenterexpError
from centerexp.runs import is_run_dir, read_json

CONFIGS = {"v1_0": "V1.0", "v1_1": "V1.1", "v1_2": "V1.2"}
PROFILES = {
    "full": ["train.precision=fp32"],
    "quick": [
        "train.precision=fp32",
        "train.epochs=6",
        "train.batch_size=64",
        "loss.lamda=0.25",  # 1 x 64/256: the recipe's center pull and center step per step (docstring)
        "data.train_subset=960",
        "data.test_subset=500",
        "data.subset_mode=random",
    ],
}
DEFAULT_SEEDS = {"full": 5, "quick": 3}  # seeds per config: n >= 3 for a verdict; 5 where runs are cheap
# chance + 1/4 and + 1/2 of the way from chance (0.1) to 1, chosen before the profile's results
QUICK_THRESHOLDS = (0.325, 0.55)


def config_dir() -> Path:
    """configs/ of the source checkout (the repo root is the package's parent)."""
    return Path(__file__).resolve().parent.parent / "configs"


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: which config file, which overrides, which folder, and whether it is done."""

    config: Path  # configs/<stem>.yaml
    overrides: tuple[str, ...]  # profile overrides + extra + train.seed
    run_dir: Path
    state: str  # "new" (no folder yet) | "unfinished" (resume it) | "completed" / "diverged" (keep it)
    command: str  # recorded in the run's command.txt

    @property
    def name(self) -> str:
        return self.run_dir.name


def run_state(run_dir: Path, config: Path, overrides: tuple[str, ...], label: str) -> str:
    """What a sweep should do with ``run_dir``: "new", "unfinished" (resume it), or leave it as
    "completed" or "diverged" (a run whose loss became NaN/inf: a result, not an accident; it would
    diverge again the same way). Refuses a folder trained with another config: mixing them would
    make the report lie."""
    if not is_run_dir(run_dir):
        return "new"
    wanted = load_config(config, overrides).to_dict()
    changed = diff_configs(load_config(run_dir / "config.yaml").to_dict(), wanted)
    if changed:
        raise CenterexpError(
            f"{run_dir} was trained with a different config ({', '.join(changed)} differ from "
            f"{label}): use another --runs-dir or remove it",
            exit_code=2,
        )
    summary = read_json(run_dir / "summary.json")
    if summary.get("status") == "completed":
        return "completed"
    return "diverged" if summary.get("status") == "failed" and summary.get("diverged") else "unfinished"


DONE_STATES = ("completed", "diverged")  # kept as they are by every launcher


def plan_runs(profile: str, seeds: int | None, runs_dir: Path, extra: list[str] = ()) -> list[RunSpec]:
    """One spec per config and seed (seed-major, so partial results cover all configs)."""
    if profile not in PROFILES:
        raise CenterexpError(f"unknown profile {profile!r}: expected one of {', '.join(PROFILES)}", exit_code=2)
    seeds = DEFAULT_SEEDS[profile] if seeds is None else seeds
    if seeds < 1:
        raise CenterexpError(f"--seeds must be >= 1, got {seeds}", exit_code=2)
    specs = []
    for seed in range(seeds):
        for stem in CONFIGS:
            run_dir = Path(runs_dir) / f"{stem}_s{seed}"
            config = config_dir() / f"{stem}.yaml"
            overrides = (*PROFILES[profile], *extra, f"train.seed={seed}")
            state = run_state(run_dir, config, overrides, f"--profile {profile}")
            specs.append(RunSpec(config, overrides, run_dir, state, f"centerexp reproduce --profile {profile}"))
    return specs


def train_spec(spec: RunSpec, progress=None) -> dict:
    """Train one spec to the end in this process: start it, or resume it where it stopped. If
    another process created the folder meanwhile, resume it (which gives RunBusy while that
    process trains it)."""
    from centerexp.runs import RunExists
    from centerexp.train import resume_run, start_run

    def resume() -> dict:
        return resume_run(spec.run_dir, list(spec.overrides), progress=progress, command=spec.command)[1]

    if spec.state == "unfinished" or is_run_dir(spec.run_dir):
        return resume()
    try:
        return start_run(
            spec.config, list(spec.overrides), spec.run_dir.parent, spec.name, progress=progress, command=spec.command
        )[1]
    except RunExists:
        return resume()


def train_sequentially(specs: list[RunSpec], progress=None, echo=print) -> list[tuple[RunSpec, str, str]]:
    """The default launcher: one run after another in this process. Returns (spec, "failed" or
    "busy", message) for the runs that did not complete: a failed run does not stop the others,
    and a run that another process is training (a second `reproduce` on the same runs dir) is left
    to that process."""
    from centerexp.runs import RunBusy
    from centerexp.train import Interrupted

    problems = []
    for spec in specs:
        if spec.state in DONE_STATES:
            echo(f"{spec.run_dir}: already {spec.state}, kept")
            continue
        if spec.state == "unfinished":
            echo(f"{spec.run_dir}: resuming")
        try:
            train_spec(spec, progress)
        except RunBusy as e:
            echo(f"{spec.run_dir}: skipped, {e}")
            problems.append((spec, "busy", str(e)))
        except Interrupted:
            raise  # Ctrl-C / SIGTERM stops the sweep, not just this run
        except CenterexpError as e:
            echo(f"{spec.run_dir}: failed, {e}")
            problems.append((spec, "failed", str(e)))
    return problems


def reproduce(
    profile: str = "full",
    seeds: int | None = None,  # None: DEFAULT_SEEDS[profile]
    runs_dir: Path = Path("runs/reproduce"),
    progress=None,
    extra: list[str] = (),
    echo=print,
    launcher=None,
) -> dict:
    """Train every missing or unfinished run, then compare them all into runs_dir/report.md.

    ``launcher`` (a ``launch.LaunchOptions``) spreads the runs over processes or Slurm jobs; without
    it they train one after another in this process. Runs that fail under a launcher do not stop the
    others: the report is written, then a CenterexpError names them with their logs.
    """
    from centerexp.compare import DEFAULT_THRESHOLDS, compare
    from centerexp.launch import LaunchOptions, launch

    specs = plan_runs(profile, seeds, runs_dir, extra)
    unfinished = launch(specs, (launcher or LaunchOptions()).check(), Path(runs_dir), progress, echo)
    thresholds = QUICK_THRESHOLDS if profile == "quick" else DEFAULT_THRESHOLDS
    result = compare([s.run_dir for s in specs], Path(runs_dir), thresholds=thresholds, echo=echo)
    if unfinished:
        lines = "\n  ".join(o.describe() for o in unfinished)
        raise CenterexpError(
            f"{len(unfinished)} of {len(specs)} runs did not finish (the report covers the others):\n  {lines}\n"
            "run the same command again to train or resume them"
        )
    return result
