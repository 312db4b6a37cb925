"""`centerexp reproduce EXPERIMENT --profile P`: train an experiment's runs, then judge its claims.

Three steps, each a plain function: ``plan`` turns (experiment, profile) into one ``RunSpec`` per
(arm, seed), deciding the precision once for all of them and checking existing run folders; a
launcher (sweeps.launch) trains the specs that are not done; compare writes the table, the
figures, report.md and claims.json. Every experiment goes through this one path.
"""

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
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


DEFAULT_MAX_SEEDS = 10  # --until-decided without --max-seeds or a profile's sequential.max_seeds


@dataclass
class Session:
    """What every round of one `reproduce` call shares: where runs go, how they are launched and priced."""

    runs_dir: Path
    options: LaunchOptions
    roots: list[Path]  # where identical done runs are looked for (sweeps.reuse)
    progress: object
    echo: Callable
    rates: Callable | None = None  # replaces the measured rates (tests)

    def price(self, specs: list[RunSpec], reused: int = 0) -> Estimate:
        from centerexp.experiments.estimate import estimate
        from centerexp.sweeps.jobs import cpu_count

        return estimate(
            specs, self.options.jobs or 1, cpu_count(), reused, **({"rates": self.rates} if self.rates else {})
        )

    def dry_run(self, specs: list[RunSpec], note: str = "") -> Estimate:
        """Print the plan and its estimate; train nothing, write no run folder."""
        from centerexp.sweeps.reuse import reusable

        sources = reusable(specs, self.roots, self.runs_dir)
        planned = [replace(s, state=status.COMPLETED) if s.name in sources else s for s in specs]
        cost = self.price(planned, len(sources))
        self.echo(f"plan: {cost.line()}{note}")
        for name, source in sources.items():
            self.echo(f"  {name}: would reuse {source}")
        self.echo("dry run: nothing trained, no run folder written")
        return cost

    def train(self, specs: list[RunSpec]) -> tuple[list[RunSpec], list]:
        """Reuse identical done runs, print the plan, train the rest: (the specs as now, unfinished outcomes)."""
        from centerexp.experiments.estimate import ExperimentBar, duration
        from centerexp.sweeps.reuse import reuse_completed

        before = {s.name for s in specs if s.state in status.DONE}
        specs = reuse_completed(specs, self.roots, self.runs_dir, self.echo)
        cost = self.price(specs, sum(s.state in status.DONE and s.name not in before for s in specs))
        self.echo(f"plan: {cost.line()}")
        started = time.monotonic()
        show = sys.stderr.isatty() if self.progress is None else self.progress
        with ExperimentBar(specs, cost, enabled=show and bool(cost.to_run)):
            unfinished = launch(specs, self.options, self.runs_dir, self.progress, self.echo)
        if cost.to_run:
            self.echo(f"trained in {duration(time.monotonic() - started)} (estimated {duration(cost.seconds)})")
        return specs, unfinished


def sequential_design(profile: Profile, seeds: int | None, until_decided: bool, max_seeds: int | None):
    """The group-sequential design of a `reproduce` call, or None for the fixed n (the default)."""
    if max_seeds is not None and not until_decided and profile.max_seeds is None:
        raise CenterexpError("--max-seeds goes with --until-decided (or a profile's sequential: {max_seeds: N})", 2)
    if not (until_decided or profile.max_seeds):
        return None
    if seeds is not None:
        raise CenterexpError("--seeds fixes n: with seeds until decided, give --max-seeds instead", exit_code=2)
    from centerexp.analysis.sequential_design import SequentialDesign

    return SequentialDesign(max_n=max_seeds or profile.max_seeds or DEFAULT_MAX_SEEDS)


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
    until_decided: bool = False,
    max_seeds: int | None = None,
) -> dict | Estimate:
    """Train every missing or unfinished run, then compare them all into runs_dir/report.md.

    Before training: runs identical to a done run under ``reuse`` or the runs root (same config,
    seed and precision) are copied instead of trained (sweeps.reuse), and the plan line says what
    is left and what it will cost here (experiments.estimate; ``rates`` replaces the measured
    rates in tests). ``dry_run``: print the plan and return its Estimate; nothing is trained or
    written but the speed cache. ``until_decided`` (or the profile's ``sequential`` key): train in
    rounds of one seed per arm and judge the claims by the group-sequential design after each
    round from the third, stopping when every claim is decided or at ``max_seeds``. Runs that fail
    do not stop the others: the report is written, then a CenterexpError names them.
    """
    experiment = load_experiment(find_experiment(experiment_file))
    chosen = profile_of(experiment, profile)
    design = sequential_design(chosen, seeds, until_decided, max_seeds)
    runs_dir = Path(runs_dir or Path("runs") / experiment.name / profile)
    options = (launcher or LaunchOptions()).check()
    from centerexp.sweeps.reuse import runs_root

    default_root = runs_root(runs_dir)  # None outside a runs/ tree
    roots = [Path(r) for r in reuse] + ([default_root] if default_root else [])
    session = Session(runs_dir, options, roots, progress, echo, rates)
    claims = replace(claim_set(experiment), sequential=design)
    if design is None:
        specs = plan(experiment, profile, seeds, runs_dir, list(extra), measure)
        if dry_run:
            return session.dry_run(specs)
        specs, unfinished = session.train(specs)
    else:
        if dry_run:
            specs = plan(experiment, profile, design.max_n, runs_dir, list(extra), measure)
            note = f"; at most: seeds until decided stops earlier when every claim is decided (up to {design.max_n})"
            return session.dry_run(specs, note)
        specs, unfinished = train_until_decided(experiment, profile, design, session, claims, list(extra), measure)
    result = compare([s.run_dir for s in specs], runs_dir, chosen.thresholds, echo=echo, claim_set=claims)
    if unfinished:
        lines = "\n  ".join(o.describe() for o in unfinished)
        raise CenterexpError(
            f"{len(unfinished)} of {len(specs)} runs did not finish (the report covers the others):\n  {lines}\n"
            "run the same command again to train or resume them"
        )
    return result


def train_until_decided(experiment, profile: str, design, session: Session, claims, extra, measure):
    """Rounds of one seed per arm (the first round brings every arm to the design's first look), each
    followed by a look at every claim; stop when all are decided, at max_n, or when runs did not finish."""
    from centerexp.analysis.compare import judge_runs
    from centerexp.analysis.runs import load_runs
    from centerexp.analysis.until_decided import all_decided

    for n in design.looks:
        specs, unfinished = session.train(plan(experiment, profile, n, session.runs_dir, extra, measure))
        if unfinished:
            return specs, unfinished
        runs = load_runs([s.run_dir for s in specs], session.echo)
        results = judge_runs(runs, claims, lambda msg: session.echo(f"warning: {msg}"))
        verdicts = "; ".join(f"claim {cr.claim.id}: {_look_verdict(cr)}" for cr in results)
        session.echo(f"look at {n} seeds per arm: {verdicts}")
        if all_decided(results):
            if n < design.max_n:
                session.echo(f"every claim is decided: stopped at {n} of at most {design.max_n} seeds per arm")
            break
    return specs, unfinished


def _look_verdict(cr) -> str:
    h = cr.sequential
    return cr.result.verdict if h is None or h.done else "continue"
