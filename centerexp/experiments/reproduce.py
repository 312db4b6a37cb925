"""`centerexp reproduce EXPERIMENT --profile P`: train an experiment's runs, then judge its claims.

Three steps, each a plain function: ``plan`` turns (experiment, profile) into one ``RunSpec`` per
(arm, seed), deciding the precision once for all of them and checking existing run folders; a
launcher (sweeps.launch) trains the specs that are not done; compare writes the table, the
figures, report.md and claims.json. Every experiment goes through this one path.
"""

from pathlib import Path

from centerexp.analysis.compare import ClaimSet, compare
from centerexp.analysis.runs import Run
from centerexp.config import flatten, load_config
from centerexp.errors import CenterexpError
from centerexp.experiments.spec import Experiment, Profile, load_experiment
from centerexp.rundir import files
from centerexp.rundir.folder import is_run_dir
from centerexp.sweeps.jobs import LaunchOptions
from centerexp.sweeps.launch import launch
from centerexp.sweeps.spec import RunSpec, run_state

REPO = Path(__file__).resolve().parents[2]  # the source checkout (configs/ lives there)
EXPERIMENTS = REPO / "configs" / "experiments"


def find_experiment(name_or_path: str | Path) -> Path:
    """An experiment file by path, or by name under configs/experiments/ (``NAME`` -> NAME.yaml)."""
    path = Path(name_or_path)
    for candidate in (path, EXPERIMENTS / path, EXPERIMENTS / f"{path}.yaml", REPO / path):
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(p.stem for p in EXPERIMENTS.glob("*.yaml")))
    raise CenterexpError(f"experiment file not found: {name_or_path} (experiments in {EXPERIMENTS}: {known})", 2)


def _shown(path: Path) -> str:
    """How a path is recorded: relative to the source checkout when inside it (so a clone elsewhere finds it)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path.resolve())


def profile_of(experiment: Experiment, name: str) -> Profile:
    if name not in experiment.profiles:
        raise CenterexpError(
            f"{experiment.path}: no profile {name!r}; it has {', '.join(experiment.profiles)}", exit_code=2
        )
    return experiment.profiles[name]


def decide_precision(experiment: Experiment, profile: Profile, run_dirs: list[Path], extra=(), measure=None) -> str:
    """One precision for every run of the experiment, so that no claim compares arithmetic.

    Pinned by the profile, else kept from runs this plan already has (a rerun must not flip it),
    else measured once (training.precision) on the first arm's model, which then holds for all.
    """
    if profile.precision != "auto":
        return profile.precision
    for run_dir in run_dirs:
        if is_run_dir(run_dir):
            return load_config(run_dir / files.CONFIG).train.precision
    from centerexp.training.precision import choose_precision
    from centerexp.training.runtime import resolve_device

    arm = experiment.arms[0]
    cfg = load_config(arm.config, [*experiment.overrides(arm, profile), *extra])
    device = resolve_device(cfg.train.device)
    precision, _ = choose_precision(
        cfg, device, cfg.train.channels_last and cfg.model.arch != "linear", measure=measure
    )
    return precision


def plan(
    experiment: Experiment,
    profile_name: str,
    seeds: int | None,
    runs_dir: Path,
    extra: list[str] = (),
    measure=None,
) -> list[RunSpec]:
    """One spec per arm and seed (seed-major, so partial results cover every arm)."""
    profile = profile_of(experiment, profile_name)
    seeds = profile.seeds if seeds is None else seeds
    if seeds < 1:
        raise CenterexpError(f"--seeds must be >= 1, got {seeds}", exit_code=2)
    grid = [(seed, arm) for seed in range(seeds) for arm in experiment.arms]
    run_dirs = [Path(runs_dir) / f"{arm.name}_s{seed}" for seed, arm in grid]
    precision = decide_precision(experiment, profile, run_dirs, extra, measure)
    command = f"centerexp reproduce {_shown(experiment.path)} --profile {profile.name}"
    specs = []
    for (seed, arm), run_dir in zip(grid, run_dirs):
        overrides = (*experiment.overrides(arm, profile), f"train.precision={precision}", *extra, f"train.seed={seed}")
        state = run_state(run_dir, arm.config, overrides, f"arm {arm.name} of profile {profile.name}")
        identity = {
            "experiment": experiment.name,
            "experiment_file": _shown(experiment.path),
            "arm": arm.name,
            "profile": profile.name,
        }
        specs.append(RunSpec(arm.config, overrides, run_dir, state, command, identity))
    return specs


def claim_set(experiment: Experiment) -> ClaimSet:
    """The experiment as compare sees it. A run is an arm by its run.json; a run folder made
    without one (before run.json existed) is matched by its config, the seed and precision aside."""
    by_config = []
    for profile in experiment.profiles.values():
        for arm in experiment.arms:
            cfg = flatten(load_config(arm.config, experiment.overrides(arm, profile)).to_dict())
            by_config.append((_without_seed(cfg), arm.name))

    def arm_of(run: Run) -> str | None:
        if run.identity.get("experiment") == experiment.name:
            return run.identity.get("arm")
        if run.identity.get("experiment"):
            return None  # another experiment's run
        key = _without_seed(run.config)
        return next((name for cfg, name in by_config if cfg == key), None)

    return ClaimSet(
        experiment.name,
        _shown(experiment.path),
        experiment.title,
        {a.name: a.label for a in experiment.arms},
        experiment.claims,
        arm_of,
        experiment.full_recipe,
    )


def _without_seed(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in ("train.seed", "train.precision", "train.threads")}


def reproduce(
    experiment_file: str | Path,
    profile: str = "full",
    seeds: int | None = None,
    runs_dir: Path | None = None,
    progress=None,
    extra: list[str] = (),
    echo=print,
    launcher: LaunchOptions | None = None,
    measure=None,
) -> dict:
    """Train every missing or unfinished run, then compare them all into runs_dir/report.md.

    Runs that fail do not stop the others: the report is written, then a CenterexpError names them.
    """
    experiment = load_experiment(find_experiment(experiment_file))
    runs_dir = Path(runs_dir or Path("runs") / experiment.name / profile)
    specs = plan(experiment, profile, seeds, runs_dir, list(extra), measure)
    unfinished = launch(specs, (launcher or LaunchOptions()).check(), runs_dir, progress, echo)
    thresholds = experiment.profiles[profile].thresholds
    result = compare([s.run_dir for s in specs], runs_dir, thresholds, echo=echo, claim_set=claim_set(experiment))
    if unfinished:
        lines = "\n  ".join(o.describe() for o in unfinished)
        raise CenterexpError(
            f"{len(unfinished)} of {len(specs)} runs did not finish (the report covers the others):\n  {lines}\n"
            "run the same command again to train or resume them"
        )
    return result


def experiment_of_runs(paths: list[Path], name_or_path: str | None = None, warn=print) -> tuple[ClaimSet | None, tuple]:
    """(the experiment's ClaimSet, its profile's thresholds) for compare: the one named, or the one
    the runs' run.json names (when they all name the same); (None, ()) for runs of no experiment,
    or (with a warning) when the file their run.json names cannot be read any more."""
    from centerexp.rundir.folder import read_identity

    identities = [read_identity(p) for p in map(Path, paths) if is_run_dir(p)]
    if name_or_path is None:
        files_named = {i.get("experiment_file") for i in identities if i.get("experiment_file")}
        if len(files_named) != 1:
            return None, ()
        try:
            experiment = load_experiment(find_experiment(files_named.pop()))
        except CenterexpError as e:
            warn(f"the runs' experiment cannot be read ({e}): comparing without its claims")
            return None, ()
    else:
        experiment = load_experiment(find_experiment(name_or_path))
    profiles = {i.get("profile") for i in identities if i.get("experiment") == experiment.name}
    profile = experiment.profiles.get(profiles.pop()) if len(profiles) == 1 else None
    return claim_set(experiment), profile.thresholds if profile else ()
