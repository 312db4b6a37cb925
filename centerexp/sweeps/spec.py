"""A sweep's runs as data: ``RunSpec`` (config, overrides, folder, status, identity), what to do
with an existing folder, and training one spec in this process. Knows runs, never the experiment:
the identity (experiment, arm, profile) is an opaque dict that lands in the run's run.json."""

from dataclasses import dataclass, field
from pathlib import Path

from centerexp.config import diff_configs, load_config
from centerexp.errors import CenterexpError
from centerexp.rundir import files, status
from centerexp.rundir.folder import is_run_dir, read_identity, write_identity


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: which config file, which overrides, which folder, its status when planned."""

    config: Path
    overrides: tuple[str, ...]  # profile + arm overrides, extra ones, train.seed
    run_dir: Path
    state: str  # a rundir.status value: NEW, DONE (kept), or resumable
    command: str  # recorded in the run's command.txt
    identity: dict = field(default_factory=dict, compare=False)  # written to run.json

    @property
    def name(self) -> str:
        return self.run_dir.name


def run_state(run_dir: Path, config: Path, overrides: tuple[str, ...], label: str) -> str:
    """The status of ``run_dir`` for a sweep that wants it trained with ``config`` + ``overrides``.
    Refuses a folder trained with another config: mixing them would make the report lie."""
    if not is_run_dir(run_dir):
        return status.NEW
    wanted = load_config(config, overrides).to_dict()
    changed = diff_configs(load_config(run_dir / files.CONFIG).to_dict(), wanted)
    if changed:
        raise CenterexpError(
            f"{run_dir} was trained with a different config ({', '.join(changed)} differ from "
            f"{label}): use another --runs-dir or remove it",
            exit_code=2,
        )
    return status.run_status(run_dir)


def adopt(spec: RunSpec) -> None:
    """Record the spec's identity in an existing run folder that lacks it (made before run.json
    existed), and its fingerprint, recomputed from its config and seed, so pairs can be checked."""
    if not (spec.identity and is_run_dir(spec.run_dir)):
        return
    current = read_identity(spec.run_dir)
    theirs, ours = current.get("experiment"), spec.identity.get("experiment")
    if theirs and ours and theirs != ours:
        raise CenterexpError(
            f"{spec.run_dir} belongs to experiment {theirs!r}, not {ours!r}: use another --runs-dir", exit_code=2
        )
    if any(current.get(k) != v for k, v in spec.identity.items()):
        write_identity(spec.run_dir, **spec.identity)
    if "fingerprint" not in current:
        from centerexp.training.train import fingerprint_of

        cfg = load_config(spec.run_dir / files.CONFIG)
        write_identity(spec.run_dir, fingerprint=fingerprint_of(cfg), fingerprint_source="recomputed when adopted")


def train_spec(spec: RunSpec, progress=None) -> dict:
    """Train one spec to the end in this process: start it, or resume it where it stopped. If
    another process created the folder meanwhile, resume it (which gives RunBusy while that
    process trains it)."""
    from centerexp.rundir.folder import RunExists
    from centerexp.training.train import resume_run, start_run

    def resume() -> dict:
        return resume_run(spec.run_dir, list(spec.overrides), progress=progress, command=spec.command)[1]

    if spec.state != status.NEW or is_run_dir(spec.run_dir):
        return resume()
    try:
        return start_run(
            spec.config,
            list(spec.overrides),
            spec.run_dir.parent,
            spec.name,
            progress=progress,
            command=spec.command,
            identity=spec.identity,
        )[1]
    except RunExists:
        return resume()


def train_sequentially(specs: list[RunSpec], progress=None, echo=print) -> list[tuple[RunSpec, str, str]]:
    """The in-process launcher: one run after another. Returns (spec, FAILED or BUSY, message) for
    the runs that did not complete: a failed run does not stop the others, and a run that another
    process is training (a second `reproduce` on the same runs dir) is left to that process."""
    from centerexp.rundir.folder import RunBusy
    from centerexp.training.train import Interrupted

    problems = []
    for spec in specs:
        if spec.state in status.DONE:
            echo(f"{spec.run_dir}: already {spec.state}, kept")
            continue
        if spec.state != status.NEW:
            echo(f"{spec.run_dir}: resuming")
        try:
            train_spec(spec, progress)
        except RunBusy as e:
            echo(f"{spec.run_dir}: skipped, {e}")
            problems.append((spec, status.BUSY, str(e)))
        except Interrupted:
            raise  # Ctrl-C / SIGTERM stops the sweep, not just this run
        except Exception as e:  # as a worker process's would: this run failed, the others go on
            message = str(e) if isinstance(e, CenterexpError) else f"{type(e).__name__}: {e}"
            echo(f"{spec.run_dir}: failed, {message}")
            problems.append((spec, status.FAILED, message))
    return problems
