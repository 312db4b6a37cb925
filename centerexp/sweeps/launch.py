"""How `centerexp reproduce` (and parity) get their runs trained: ``launch(specs, options, runs_dir)``
trains every spec that is not done, with the launcher named in ``options`` (jobs.LAUNCHERS), and
returns the outcomes of those that did not complete. A failed job is reported with its log and never
stops the others; a run that another process is training is reported and skipped.
"""

import importlib
from pathlib import Path

from centerexp.rundir import status
from centerexp.rundir.folder import RunBusy, RunLock, is_run_dir
from centerexp.sweeps.jobs import LAUNCHERS, LOG_DIR, LaunchOptions, Outcome, Sweep
from centerexp.sweeps.spec import RunSpec, adopt, train_sequentially


def launch(specs: list[RunSpec], options: LaunchOptions, runs_dir: Path, progress=None, echo=print) -> list[Outcome]:
    """Train the specs that are not done; return the outcomes of those that did not complete."""
    options.check()
    for spec in specs:
        adopt(spec)  # a run folder made before run.json existed learns which experiment and arm it is
    if options.in_process:
        problems = train_sequentially(specs, progress, echo)
        return [Outcome(spec.name, state, error=message) for spec, state, message in problems]
    todo = []
    for spec in specs:
        if spec.state in status.DONE:
            echo(f"{spec.run_dir}: already {spec.state}, kept")
        else:
            todo.append(spec)
    if not todo:
        return []
    sweep = Sweep(todo, options.launcher, progress, echo)
    for spec in list(todo):
        busy = busy_elsewhere(spec)
        if busy:
            sweep.finish(spec, Outcome(spec.name, status.BUSY, error=busy))
            todo.remove(spec)
        elif spec.state != status.NEW:
            sweep.say(f"{spec.run_dir}: resuming")
    log_dir = Path(runs_dir) / LOG_DIR
    log_dir.mkdir(parents=True, exist_ok=True)
    module, function = LAUNCHERS[options.launcher].split(":")
    run = getattr(importlib.import_module(module), function)  # submitit is imported only when it is used
    try:
        if todo:
            run(todo, options, log_dir, sweep)
    finally:
        sweep.close()
    return [o for o in sweep.outcomes.values() if o.status != status.COMPLETED]


def busy_elsewhere(spec: RunSpec) -> str | None:
    """The RunBusy message when another live process holds the run's lock, else None."""
    if not is_run_dir(spec.run_dir):
        return None
    try:
        RunLock(spec.run_dir).acquire().release()
    except RunBusy as e:
        return str(e)
    return None
