"""`centerexp reproduce EXPERIMENT --profile P`: train an experiment's runs, then judge its claims.

Three steps, each a plain function: ``plan`` turns (experiment, profile) into one ``RunSpec`` per
(arm, seed), deciding the precision once for all of them and checking existing run folders; a
launcher (sweeps.launch) trains the specs that are not done; compare writes the table, the
figures, report.md and claims.json. Every experiment goes through this one path.
"""

from dataclasses import replace
from pathlib import Path

from centerexp.analysis.compare import compare
from centerexp.config import load_config
from centerexp.errors import CenterexpError
from centerexp.experiments.estimate import Estimate
from centerexp.experiments.matching import claim_set, find_experiment
from centerexp.experiments.matching import shown as _shown
from centerexp.experiments.spec import Experiment, Profile, load_experiment
from centerexp.rundir import files, status
from centerexp.rundir.folder import is_run_dir
from centerexp.sweeps.jobs import LaunchOptions
from centerexp.sweeps.launch import launch
from centerexp.sweeps.spec import RunSpec, run_state


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
    reuse: list[Path] = (),
    dry_run: bool = False,
    rates=None,
) -> dict | Estimate:
    """Train every missing or unfinished run, then compare them all into runs_dir/report.md.

    Before training: runs identical to a done run under ``reuse`` or the runs root (same config,
    seed and precision) are copied instead of trained (sweeps.reuse), and the plan line says what
    is left and what it will cost here (experiments.estimate; ``rates`` replaces the measured
    rates in tests). ``dry_run``: print the plan and return its Estimate; nothing is trained or
    written but the speed cache. Runs that fail do not stop the others: the report is written,
    then a CenterexpError names them.
    """
    import sys
    import time

    from centerexp.experiments.estimate import ExperimentBar, duration, estimate
    from centerexp.sweeps.jobs import cpu_count
    from centerexp.sweeps.reuse import reusable, reuse_completed, runs_root

    experiment = load_experiment(find_experiment(experiment_file))
    runs_dir = Path(runs_dir or Path("runs") / experiment.name / profile)
    options = (launcher or LaunchOptions()).check()
    specs = plan(experiment, profile, seeds, runs_dir, list(extra), measure)
    roots = [*map(Path, reuse), runs_root(runs_dir)]
    jobs = options.jobs or 1
    price = {"rates": rates} if rates else {}
    if dry_run:
        sources = reusable(specs, roots, runs_dir)
        planned = [replace(s, state=status.COMPLETED) if s.name in sources else s for s in specs]
        cost = estimate(planned, jobs, cpu_count(), reused=len(sources), **price)
        echo(f"plan: {cost.line()}")
        for name, source in sources.items():
            echo(f"  {name}: would reuse {source}")
        echo("dry run: nothing trained, no run folder written")
        return cost
    before = {s.name for s in specs if s.state in status.DONE}
    specs = reuse_completed(specs, roots, runs_dir, echo)
    reused = sum(s.state in status.DONE and s.name not in before for s in specs)
    cost = estimate(specs, jobs, cpu_count(), reused=reused, **price)
    echo(f"plan: {cost.line()}")
    started = time.monotonic()
    show = sys.stderr.isatty() if progress is None else progress
    with ExperimentBar(specs, cost, enabled=show and bool(cost.to_run)):
        unfinished = launch(specs, options, runs_dir, progress, echo)
    if cost.to_run:
        echo(f"trained in {duration(time.monotonic() - started)} (estimated {duration(cost.seconds)})")
    thresholds = experiment.profiles[profile].thresholds
    result = compare([s.run_dir for s in specs], runs_dir, thresholds, echo=echo, claim_set=claim_set(experiment))
    if unfinished:
        lines = "\n  ".join(o.describe() for o in unfinished)
        raise CenterexpError(
            f"{len(unfinished)} of {len(specs)} runs did not finish (the report covers the others):\n  {lines}\n"
            "run the same command again to train or resume them"
        )
    return result
