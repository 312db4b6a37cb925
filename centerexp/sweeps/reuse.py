"""Identical runs train once: a sweep reuses a completed run of the same inputs instead of training it.

A run's result is a function of its inputs: the resolved config (file + overrides, with the seed
and the precision in it). ``input_key`` hashes exactly that, as Snakemake and DVC key a cached
output by its inputs; keys that change how fast a run computes, not what it computes
(config.RUNTIME_ONLY_KEYS: threads, convolution algorithm), are left out, as ``diff_configs``
leaves them out when a run is resumed. When a sweep plans a run that does not exist yet and a
completed run with the same key lies under one of the search roots, ``reuse_completed`` copies it
(its small files: no checkpoints, logs or lock) into the planned folder and records the source in
run.json (``reused_from``). The copy is made in a temporary sibling folder and renamed into place,
so a kill leaves either no run folder or a whole one.

Knows runs and configs, never the experiment: the sweep's identity dict is written as given.
"""

import hashlib
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

from centerexp.config import RUNTIME_ONLY_KEYS, flatten, load_config, normalize_config_dict
from centerexp.errors import CenterexpError
from centerexp.rundir import files, status
from centerexp.rundir.folder import REUSED_FROM, is_run_dir, read_identity, write_identity
from centerexp.sweeps.spec import RunSpec

NOT_COPIED = {"checkpoints", "logs", "tb", files.LOCK, files.LAUNCHER}  # resume state, derived or per-process


def input_key(cfg_dict: dict) -> str:
    """The hash of what a run computes: its resolved config, runtime-only keys aside."""
    flat = flatten(normalize_config_dict(cfg_dict))
    inputs = {k: v for k, v in sorted(flat.items()) if k not in RUNTIME_ONLY_KEYS}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def spec_key(spec: RunSpec) -> str:
    return input_key(load_config(spec.config, list(spec.overrides)).to_dict())


def completed_runs(roots: list[Path], skip: Path | None = None) -> dict[str, Path]:
    """input key -> a done (completed or diverged) run folder under ``roots`` (the first found, in sorted order);
    ``skip``: a folder whose runs are not candidates (the sweep's own)."""
    found: dict[str, Path] = {}
    skip = skip.resolve() if skip else None
    for root in roots:
        for dirpath, dirnames, _ in os.walk(root):
            here = Path(dirpath)
            dirnames[:] = sorted(d for d in dirnames if d not in NOT_COPIED and d != files.PLOTS)
            if skip and (here.resolve() == skip or skip in here.resolve().parents):
                dirnames[:] = []
                continue
            if not is_run_dir(here):
                continue
            dirnames[:] = []  # run folders do not nest
            if status.run_status(here) not in status.DONE:
                continue  # a diverged run is a result of its inputs too; an unfinished one is not
            try:
                key = input_key(load_config(here / files.CONFIG).to_dict())
            except CenterexpError:
                continue  # a config this version cannot read is no candidate
            found.setdefault(key, here)
    return found


def copy_run(source: Path, target: Path, identity: dict) -> None:
    """Copy ``source``'s files (NOT_COPIED aside) to the new folder ``target``, whole or not at all,
    and record the sweep's identity with the source in its run.json."""
    if target.exists():
        raise CenterexpError(f"{target} exists already: it cannot receive a reused run", exit_code=2)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.reuse-partial")
    shutil.rmtree(partial, ignore_errors=True)  # left by a copy that was killed
    shutil.copytree(source, partial, ignore=lambda d, names: [n for n in names if n in NOT_COPIED])
    theirs = read_identity(source)
    write_identity(
        partial,
        **identity,
        **{k: theirs[k] for k in ("fingerprint", "fingerprint_source") if k in theirs},
        **{REUSED_FROM: str(source), "reused_identity": {k: v for k, v in theirs.items() if k != REUSED_FROM}},
    )
    os.replace(partial, target)


def runs_root(runs_dir: Path) -> Path | None:
    """Where a sweep looks for identical runs by default: the nearest folder named ``runs`` above
    its runs dir (runs/EXPERIMENT/PROFILE -> runs); None outside such a tree (a scratch folder's
    neighbours are no one's results)."""
    runs_dir = Path(runs_dir).resolve()
    return next((p for p in runs_dir.parents if p.name == "runs"), None)


def reusable(specs: list[RunSpec], roots: list[Path], runs_dir: Path) -> dict[str, Path]:
    """Spec name -> the done run under ``roots`` it can reuse, for each spec with no folder yet.
    Only runs of the same key are taken: the same config after overrides, seed and precision."""
    new = [s for s in specs if s.state == status.NEW and not is_run_dir(s.run_dir)]
    roots = [Path(r) for r in roots if Path(r).is_dir()]
    if not new or not roots:
        return {}
    candidates = completed_runs(roots, skip=Path(runs_dir))
    found = {s.name: candidates.get(spec_key(s)) for s in new} if candidates else {}
    return {name: source for name, source in found.items() if source is not None}


def reuse_completed(specs: list[RunSpec], roots: list[Path], runs_dir: Path, echo=print) -> list[RunSpec]:
    """The specs, with each one that ``reusable`` finds copied from its source and marked done."""
    sources = reusable(specs, roots, runs_dir)
    out = []
    for spec in specs:
        source = sources.get(spec.name)
        if source is None:
            out.append(spec)
            continue
        copy_run(source, spec.run_dir, spec.identity)
        echo(f"{spec.run_dir}: reused {source} (same config, seed and precision), not trained again")
        out.append(replace(spec, state=status.run_status(spec.run_dir)))
    return out
