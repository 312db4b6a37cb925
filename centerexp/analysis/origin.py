"""Where a report's runs come from: the machines and software that trained them, and which runs
were reused from identical runs of another experiment (sweeps.reuse) rather than trained."""

from centerexp.analysis.stats import finite
from centerexp.rundir import files
from centerexp.rundir.folder import REUSED_FROM
from centerexp.rundir.io import read_json


def _envs(run) -> list[dict]:
    """env.json of the run's first process and of each process that resumed it (maybe elsewhere)."""
    try:
        env = read_json(run.path / files.ENV)
    except (OSError, ValueError):
        return []
    return [env, *env.get("resumes", [])]


def describe(env: dict) -> str:
    git = env.get("git") or {}
    commit = f"commit {str(git.get('commit'))[:10]}" + (" (dirty)" if git.get("dirty") else "")
    device = f"{env.get('device_name')} ({env.get('device', '?')}, {env.get('threads')} threads)"
    tf32 = (
        " (cuDNN TF32 convolutions, PyTorch's default on CUDA)"
        if str(env.get("device", "")).startswith("cuda") and env.get("precision") == "fp32"
        else ""
    )
    return f"{device}, precision {env.get('precision')}{tf32}, torch {env.get('torch')}, {commit}"


def machine(env: dict) -> str:
    """The CPU (or GPU) and the code path oneDNN/ATen took on it: what decides a run's bits."""
    path = env.get("cpu_capability")
    caps = ", ".join(f"{k}={v}" for k, v in sorted((env.get("isa_caps") or {}).items()))
    detail = ", ".join(x for x in (path, caps) if x)
    return f"{env.get('device_name')}" + (f" ({detail})" if detail else "")


def provenance(runs: list) -> list[str]:
    """Machine, device, precision, software and commit of the runs, and their total training time."""
    envs = [e for r in runs for e in _envs(r)]
    if envs:
        lines = [f"Produced on: {'; '.join(sorted({describe(e) for e in envs}))}."]
    else:
        asked = sorted({f"{r.config.get('train.device')} / {r.config.get('train.precision')}" for r in runs})
        lines = [f"Device and precision: not recorded (no env.json); the configs ask for {', '.join(asked)}."]
    total = sum(r.column("wall_seconds")[-1] for r in runs if r.rows and finite(r.column("wall_seconds")[-1]))
    lines.append(f"Training wall time of all runs together: {total / 60:.1f} min.")
    return [" ".join(lines), *machines(runs), *reused(runs)]


def machines(runs: list) -> list[str]:
    """Which machine trained each run; a run trained in pieces lists each machine it ran on."""
    by_machine: dict[str, list[str]] = {}
    pieces = []
    for r in runs:
        seen = list(dict.fromkeys(machine(e) for e in _envs(r)))
        for m in seen:
            by_machine.setdefault(m, []).append(r.name)
        if len(seen) > 1:
            pieces.append(r.name)
    if not by_machine:
        return []
    lines = ["", "Machines: " + "; ".join(f"{m}: {', '.join(names)}" for m, names in sorted(by_machine.items())) + "."]
    if len(by_machine) > 1:
        split = f" ({', '.join(pieces)} in pieces on more than one)" if pieces else ""
        lines.append(
            f"The runs were trained on {len(by_machine)} kinds of CPU or code path{split}: with the same "
            "precision, device type and torch version their numbers are close, not bit-identical "
            "(docs/reproducibility.md)."
        )
    return lines


def reused(runs: list) -> list[str]:
    """The runs copied from identical runs elsewhere (same config, seed and precision), with their sources."""
    pairs = [(r.name, r.identity[REUSED_FROM]) for r in runs if r.identity.get(REUSED_FROM)]
    if not pairs:
        return []
    listed = ", ".join(f"{name} (from {source})" for name, source in pairs)
    return ["", f"Reused, not trained again ({len(pairs)}; same config, seed and precision): {listed}."]
