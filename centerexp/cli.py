"""The `centerexp` command line: a thin Typer layer over plain functions.

Errors the user can fix print one line (``error: ...``) and exit non-zero; tracebacks only with
``centerexp --debug ...`` or ``CENTEREXP_DEBUG=1``.
"""

import functools
import gc
import os
import shlex
from pathlib import Path
from typing import List, Optional

import typer

from centerexp.analysis import DEFAULT_THRESHOLDS
from centerexp.config import CHOICES
from centerexp.errors import CenterexpError

app = typer.Typer(
    help="Train, reproduce and compare center-loss experiments on MNIST.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _debug() -> bool:
    return os.environ.get("CENTEREXP_DEBUG", "") not in ("", "0")


def guarded(fn):
    """Turn CenterexpError (and anything unexpected) into one line on stderr and an exit status."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except CenterexpError as e:
            if _debug():
                raise
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("error: interrupted", err=True)
            raise typer.Exit(130) from None
        except Exception as e:
            if _debug():
                raise
            typer.echo(f"error: unexpected {type(e).__name__}: {e} (run with --debug for the traceback)", err=True)
            raise typer.Exit(1) from None

    return wrapper


@app.callback()
def main_options(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks (same as CENTEREXP_DEBUG=1)."),
):
    if debug:
        os.environ["CENTEREXP_DEBUG"] = "1"


def _train_command(config, overrides, runs_dir, name, overwrite, resume, allow_config_change) -> str:
    """The train command as parsed, spelled out canonically (also right under CliRunner, where argv is pytest's)."""
    words = ["centerexp", "train"]
    words += ["--resume", str(resume)] if resume is not None else [str(config), "--runs-dir", str(runs_dir or "runs")]
    words += ["--name", name] if name else []
    words += ["--overwrite"] if overwrite else []
    words += ["--allow-config-change"] if allow_config_change else []
    for item in overrides:
        words += ["--set", item]
    return shlex.join(words)


@app.command()
@guarded
def train(
    config: Optional[Path] = typer.Argument(
        None, help="YAML config, e.g. configs/v1_0.yaml (not needed with --resume)."
    ),
    set_: List[str] = typer.Option([], "--set", "-s", help="Override a config key: --set train.epochs=2 (repeatable)."),
    runs_dir: Optional[Path] = typer.Option(
        None, "--runs-dir", help="Folder that holds run folders.", show_default="runs"
    ),
    name: Optional[str] = typer.Option(None, "--name", help="Run folder name.", show_default="the config file's stem"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder of the same name."),
    resume: Optional[Path] = typer.Option(
        None, "--resume", help="Continue this run folder from its last checkpoint (its last evaluation)."
    ),
    allow_config_change: bool = typer.Option(
        False, "--allow-config-change", help="With --resume: accept a config that differs from the checkpoint's."
    ),
    deterministic: bool = typer.Option(False, "--deterministic", help="Same as --set train.deterministic=true."),
    threads: Optional[int] = typer.Option(
        None,
        "--threads",
        min=1,
        help="CPU threads for this process. A resumed run keeps the count it was trained with unless this "
        "says otherwise (the bits of a run depend on it); env.json records each.",
        show_default="train.threads, else one per core; on --resume the run's own",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
):
    """Train one run: writes RUNS_DIR/NAME/ (config, metrics, checkpoints, plots)."""
    from centerexp.config import load_config

    overrides = list(set_) + (["train.deterministic=true"] if deterministic else [])
    if config is not None and resume is None:
        load_config(config, overrides)  # a config error answers before torch is imported
    from centerexp.training.train import resume_run, start_run

    progress = False if quiet else None
    command = _train_command(config, overrides, runs_dir, name, overwrite, resume, allow_config_change)
    if resume is not None:
        if config is not None or runs_dir is not None or name is not None or overwrite:
            raise CenterexpError(
                "--resume RUN takes no CONFIG, --runs-dir, --name or --overwrite "
                "(a resumed run keeps its folder and its own config.yaml)",
                2,
            )
        run_dir, summary = resume_run(resume, overrides, allow_config_change, command, progress, threads)
    else:
        if config is None:
            raise CenterexpError("missing CONFIG (e.g. configs/v1_0.yaml) or --resume RUN", 2)
        run_dir, summary = start_run(
            config, overrides, runs_dir or Path("runs"), name, overwrite, command, progress, threads
        )
    acc = summary.get("final_test_acc")
    acc_text = f", final test acc {acc:.4f}, best {summary['best_test_acc']:.4f}" if acc is not None else ""
    typer.echo(f"{run_dir}: {summary['status']} after {summary.get('epochs_done', 0)} epochs{acc_text}")


@app.command()
@guarded
def compare(
    runs: List[Path] = typer.Argument(None, help="Run folders, e.g. runs/* (non-run folders are skipped)."),
    out: Path = typer.Option(Path("runs/compare"), "--out", help="Where report.md, compare.csv and figures go."),
    threshold: List[float] = typer.Option(
        [],
        "--threshold",
        help="Test-accuracy threshold (repeatable).",
        show_default="the experiment profile's, else " + ", ".join(f"{t:g}" for t in DEFAULT_THRESHOLDS),
    ),
    experiment: Optional[str] = typer.Option(
        None,
        "--experiment",
        help="Judge this experiment's claims (a file, or a name in configs/experiments/).",
        show_default="the one the runs' run.json names",
    ),
    csv: Optional[str] = typer.Option(None, "--csv", help="Also write the table as CSV to this path ('-' = stdout)."),
    all_keys: bool = typer.Option(False, "--all-keys", help="Show every config key, not only those that differ."),
):
    """Compare runs: table (grouped over seeds), overlaid curves, feature grid, report.md; the claims
    of their experiment with verdicts and 95% CIs (claims.json)."""
    from centerexp.analysis.compare import compare as run_compare
    from centerexp.experiments.matching import experiment_of_runs

    for t in threshold:
        if not 0 < t <= 1:
            raise CenterexpError(f"--threshold {t}: expected an accuracy in (0, 1]", 2)
    warn = lambda msg: typer.echo(f"warning: {msg}", err=True)  # noqa: E731
    claim_set, profile_thresholds = experiment_of_runs(list(runs or []), experiment, warn)
    run_compare(
        list(runs or []),
        out,
        threshold or profile_thresholds or DEFAULT_THRESHOLDS,
        csv,
        all_keys,
        echo=typer.echo,
        warn=warn,
        claim_set=claim_set,
    )


@app.command()
@guarded
def plot(
    run: Path = typer.Argument(..., help="A run folder."),
    gif: bool = typer.Option(
        True, "--gif/--no-gif", help="Also assemble plots/features.gif from the per-evaluation frames."
    ),
):
    """Redraw a run's loss curves and feature GIF from its files, e.g. while it is still training
    (a run without per-evaluation frames gets its last feature plot from features.pt)."""
    from centerexp.rundir.folder import NOT_A_RUN, is_run_dir
    from centerexp.rundir.records import run_metrics
    from centerexp.training.outputs import redraw_run

    if not is_run_dir(run):
        raise CenterexpError(f"{run}: {NOT_A_RUN}", 2)
    metrics = run_metrics(run)
    if not metrics.get("epoch"):
        raise CenterexpError(f"{run}: no evaluation yet, nothing to plot")
    for path in redraw_run(run, metrics, gif):
        typer.echo(f"wrote {path}")


LAUNCHER_HELP = "local (this machine), submitit-local (submitit's local jobs) or slurm."
JOBS_HELP = (
    "Runs at once (local: 1 = in this process). A new run gets 1/N of the CPU threads; a resumed one keeps its own."
)


@app.command()
@guarded
def reproduce(
    experiment: str = typer.Argument(
        ..., help="An experiment file, e.g. configs/experiments/v1.yaml, or its name (v1)."
    ),
    profile: str = typer.Option("full", "--profile", help="A profile of the experiment file (e.g. full, quick)."),
    seeds: Optional[int] = typer.Option(
        None, "--seeds", help="Seeds per arm (0, 1, ...).", show_default="the profile's"
    ),
    runs_dir: Optional[Path] = typer.Option(
        None, "--runs-dir", help="Where the runs and report.md go.", show_default="runs/EXPERIMENT/PROFILE"
    ),
    set_: List[str] = typer.Option([], "--set", "-s", help="Extra override for every run (e.g. train.threads=1)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    launcher: str = typer.Option("local", "--launcher", help=LAUNCHER_HELP),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help=JOBS_HELP, show_default="local: 1; slurm: all"),
    partition: Optional[str] = typer.Option(None, "--partition", help="Slurm partition (default: the cluster's)."),
    time_min: Optional[int] = typer.Option(
        None,
        "--time",
        help="Minutes per job; a job that runs out is requeued and resumes.",
        show_default="slurm: 240",
    ),
    gpus_per_job: Optional[int] = typer.Option(None, "--gpus-per-job", help="GPUs per job (slurm, submitit-local)."),
    cpus_per_job: Optional[int] = typer.Option(None, "--cpus-per-job", help="CPUs per job (slurm); sets its threads."),
    mem_gb: Optional[float] = typer.Option(None, "--mem-gb", help="Memory per job in GB (slurm)."),
    slurm_option: List[str] = typer.Option(
        [], "--slurm-option", help="Extra sbatch option KEY=VALUE, e.g. account=abc or qos=high (repeatable)."
    ),
    reuse: List[Path] = typer.Option(
        [],
        "--reuse",
        help="Also look here for done runs with the same config, seed and precision, and copy them instead "
        "of training them again (repeatable).",
        show_default="the runs root: the nearest folder named runs above --runs-dir",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the plan and its time estimate; train nothing, write no run folder."
    ),
    until_decided: bool = typer.Option(
        False,
        "--until-decided",
        help="Train one seed per arm at a time and judge the claims after each round from the 3rd, with a "
        "group-sequential design that keeps the error rate at 5%; stop when every claim is decided.",
    ),
    max_seeds: Optional[int] = typer.Option(
        None,
        "--max-seeds",
        min=3,
        help="With --until-decided: the most seeds per arm.",
        show_default="the profile's sequential.max_seeds, else 10",
    ),
):
    """Train an experiment's arms over seeds, then judge its claims (report.md, claims.json)."""
    from centerexp.experiments.reproduce import reproduce as run_reproduce
    from centerexp.sweeps.jobs import LaunchOptions

    options = LaunchOptions(
        launcher, jobs, partition, time_min, gpus_per_job, cpus_per_job, mem_gb, tuple(slurm_option)
    ).check()
    progress = False if quiet else None
    run_reproduce(
        experiment,
        profile,
        seeds,
        runs_dir,
        progress,
        list(set_),
        echo=typer.echo,
        launcher=options,
        reuse=list(reuse),
        dry_run=dry_run,
        until_decided=until_decided,
        max_seeds=max_seeds,
    )


@app.command()
@guarded
def parity(
    config: Path = typer.Argument(..., help="The config to train both ways, e.g. configs/v1_0.yaml."),
    seeds: int = typer.Option(5, "--seeds", help="Paired seeds (0, 1, ...); 3 at least for an interval."),
    runs_dir: Path = typer.Option(Path("runs/parity"), "--runs-dir", help="Where the runs and parity.json go."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Extra override for every run."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    launcher: str = typer.Option("local", "--launcher", help=LAUNCHER_HELP),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help=JOBS_HELP, show_default="local: 1"),
    compare: str = typer.Option(
        "precision", "--compare", help="precision: bf16 vs fp32; conv: train.conv_algo auto vs library."
    ),
):
    """A faster way to compute vs the reference way, same config and seeds: paired differences with
    95% CIs (parity.json)."""
    from centerexp.experiments.parity import COMPARISONS
    from centerexp.experiments.parity import parity as run_parity
    from centerexp.sweeps.jobs import LaunchOptions

    if seeds < 1:
        raise CenterexpError(f"--seeds must be >= 1, got {seeds}", 2)
    if compare not in COMPARISONS:
        raise CenterexpError(f"--compare must be one of {', '.join(COMPARISONS)}, got {compare!r}", 2)
    options = LaunchOptions(launcher, jobs).check()
    run_parity(config, seeds, runs_dir, list(set_), False if quiet else None, typer.echo, options, compare)


@app.command()
@guarded
def bench(
    arch: List[str] = typer.Option(["deep", "shallow"], "--arch", help="Models to time (repeatable)."),
    precision: List[str] = typer.Option(
        ["fp32", "bf16"], "--precision", help="Precisions to time (repeatable); the one auto picks always is."
    ),
    steps: int = typer.Option(6, "--steps", help="Timed steps of batch 256 per measurement."),
    warmup: int = typer.Option(1, "--warmup", help="Untimed steps first."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    profile: bool = typer.Option(False, "--profile", help="Also print a torch.profiler table of one training step."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """The seed's plain loop vs centerexp in fp32, bf16 and auto: img/s, % of the conv-stack ceiling,
    s/epoch and the estimated time of each shipped experiment's profiles on this machine."""
    from centerexp.experiments.bench import run_bench

    if device not in CHOICES["train.device"]:
        raise CenterexpError("--device must be auto, cpu or cuda", 2)
    if any(a not in CHOICES["model.arch"] for a in arch):
        raise CenterexpError(f"--arch must be one of {', '.join(CHOICES['model.arch'])}", 2)
    if steps < 1 or warmup < 1 or steps + warmup > 200:
        raise CenterexpError("--steps and --warmup must be >= 1, with steps + warmup <= 200", 2)
    if any(p not in ("fp32", "bf16") for p in precision):
        raise CenterexpError("--precision must be fp32 or bf16", 2)
    run_bench(tuple(arch), steps, warmup, device, profile, typer.echo, json_out, tuple(precision))


@app.command()
@guarded
def board(
    paths: Optional[List[Path]] = typer.Argument(
        None, help="Run folders, or folders with run folders beneath them.", show_default="runs"
    ),
    port: int = typer.Option(6006, "--port", help="Port on 127.0.0.1."),
):
    """TensorBoard over runs (scalars, hparams, feature images, projector), on 127.0.0.1; Ctrl-C stops it.
    A run without tb/ gets it written first from its own files."""
    from centerexp.board import board as serve_board

    if not 1 <= port <= 65535:
        raise CenterexpError(f"--port must be in 1..65535, got {port}", 2)
    serve_board(paths or [Path("runs")], port, typer.echo)


def main():
    try:
        app()
    finally:
        # The interpreter's last garbage collection walks torch's and matplotlib's objects: 0.5 s
        # of a small run's exit on the 2-core VMs (docs/performance.md). Everything that must reach
        # disk was written and closed by now; the OS frees the memory.
        gc.freeze()


if __name__ == "__main__":
    main()
