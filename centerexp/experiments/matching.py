"""Which experiment, and which of its arms, a run folder is: the experiment as compare sees it.

A run that `centerexp reproduce` trained names its experiment, arm and profile in run.json. A run
without one (trained by hand, or before run.json existed) is matched by its config, the seed,
precision and runtime-only keys aside:

1. to an arm under one of the experiment's profiles (the arm's config with the profile's and the
   arm's overrides);
2. else, when the runs share one *protocol* (they agree on every key the arms do not set, e.g. all
   trained by hand with the same ``--set train.epochs=2``), to the arm whose own config and
   overrides give the run's values of the keys the arms do set. The report names the protocol:
   "the arms' configs with train.epochs=2".

Runs of two protocols are never judged together: the protocol step applies only when no run was
matched by run.json or a profile, and takes the protocol most of the other runs share. A run that
matches no arm is listed, with the keys that differ from the closest arm.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from centerexp.analysis.compare import ClaimSet
from centerexp.analysis.runs import Run
from centerexp.config import RUNTIME_ONLY_KEYS, flatten, load_config, parse_override, read_run_config
from centerexp.errors import CenterexpError
from centerexp.experiments.spec import Experiment, Profile, load_experiment
from centerexp.rundir import files
from centerexp.rundir.folder import is_run_dir, read_identity

REPO = Path(__file__).resolve().parents[2]  # the source checkout (configs/ lives there)
EXPERIMENTS = REPO / "configs" / "experiments"
IGNORED_KEYS = frozenset({"train.seed", "train.precision", *RUNTIME_ONLY_KEYS})  # never tell arms apart
SHOWN_KEYS = 6  # differing keys named per unmatched run


def find_experiment(name_or_path: str | Path) -> Path:
    """An experiment file by path, or by name under configs/experiments/ (``NAME`` -> NAME.yaml)."""
    path = Path(name_or_path)
    for candidate in (path, EXPERIMENTS / path, EXPERIMENTS / f"{path}.yaml", REPO / path):
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(p.stem for p in EXPERIMENTS.glob("*.yaml")))
    raise CenterexpError(f"experiment file not found: {name_or_path} (experiments in {EXPERIMENTS}: {known})", 2)


def shown(path: Path) -> str:
    """How a path is recorded: relative to the source checkout when inside it (so a clone elsewhere finds it)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path.resolve())


def _without_seed(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in IGNORED_KEYS}


def _value(v) -> str:
    """A config value as --set writes it."""
    return json.dumps(v) if v is None or isinstance(v, bool) else str(v)


def _arm_configs(experiment: Experiment, profile: Profile | None = None) -> dict[str, dict]:
    """Arm name -> its flat config (seed aside): under ``profile``, or as the arm itself writes it."""
    return {
        arm.name: _without_seed(
            flatten(load_config(arm.config, experiment.overrides(arm, profile) if profile else arm.overrides).to_dict())
        )
        for arm in experiment.arms
    }


@dataclass(frozen=True)
class Protocol:
    """What a set of hand-trained runs share: their values of every key the arms do not set."""

    arm_keys: frozenset  # the keys the arms set: where their configs differ, and those their overrides name
    arms: dict  # arm name -> its values of arm_keys (its own config and overrides)
    values: dict  # the runs' values of every other key
    text: str  # "the arms' configs with train.epochs=2, ..."

    @classmethod
    def of(cls, experiment: Experiment, cfg: dict) -> "Protocol":
        own = _arm_configs(experiment)
        keys = {k for c in own.values() for k in c}
        differ = {k for k in keys if len({repr(c.get(k)) for c in own.values()}) > 1}
        named = {parse_override(o)[0] for arm in experiment.arms for o in arm.overrides}
        arm_keys = frozenset(differ | named)
        values = {k: v for k, v in cfg.items() if k not in arm_keys}
        first = next(iter(own.values()))
        changed = [f"{k}={_value(v)}" for k, v in values.items() if k not in first or first[k] != v]
        text = "the arms' configs " + (f"with {', '.join(changed)}" if changed else "as written")
        arms = {name: {k: c.get(k) for k in arm_keys} for name, c in own.items()}
        return cls(arm_keys, arms, values, text)

    def shares(self, cfg: dict) -> bool:
        return {k: v for k, v in cfg.items() if k not in self.arm_keys} == self.values

    def arm_of(self, cfg: dict) -> str | None:
        if not self.shares(cfg):
            return None
        return next((name for name, own in self.arms.items() if all(cfg.get(k) == v for k, v in own.items())), None)

    def configs(self) -> dict[str, dict]:
        """Arm name -> the full config an arm's run has under this protocol."""
        return {name: {**self.values, **own} for name, own in self.arms.items()}


def _hand_runs(experiment: Experiment, paths, by_config) -> tuple[list[tuple[str, dict]], bool]:
    """(name, config) of each run folder in ``paths`` that neither run.json nor a profile places,
    and whether some run was placed that way (then no protocol is looked for)."""
    hand, placed = [], False
    for path in map(Path, paths):
        if not is_run_dir(path):
            continue
        identity = read_identity(path)
        if identity.get("experiment"):
            placed |= identity["experiment"] == experiment.name
            continue
        try:
            cfg = _without_seed(flatten(read_run_config(path / files.CONFIG)[0].to_dict()))
        except (OSError, ValueError, KeyError, AttributeError, CenterexpError):
            continue  # compare says so when it reads the runs
        if any(cfg == c for c, _ in by_config):
            placed = True
        else:
            hand.append((path.name, cfg))
    return hand, placed


def _most_shared_protocol(experiment: Experiment, hand) -> tuple[Protocol | None, int]:
    """The protocol most hand-trained runs share (None on a tie), and how many protocols there are."""
    protocols: list[tuple[Protocol, int]] = []
    for _, cfg in hand:
        i = next((i for i, (p, _) in enumerate(protocols) if p.shares(cfg)), None)
        if i is None:
            protocols.append((Protocol.of(experiment, cfg), 1))
        else:
            protocols[i] = (protocols[i][0], protocols[i][1] + 1)
    counts = sorted((n for _, n in protocols), reverse=True)
    if not counts or (len(counts) > 1 and counts[0] == counts[1]):
        return None, len(protocols)
    return max(protocols, key=lambda pn: pn[1])[0], len(protocols)


def _unmatched_line(experiment: Experiment, name: str, cfg: dict, candidates) -> str:
    """``name`` matches no arm: the keys in which it differs from the closest arm of ``candidates``
    ((where, arm name -> config), in order of preference)."""
    best = None
    for where, configs in candidates:
        for arm, arm_cfg in configs.items():
            keys = [k for k in {**arm_cfg, **cfg} if cfg.get(k) != arm_cfg.get(k)]
            if best is None or len(keys) < len(best[2]):
                best = (where, arm, keys, arm_cfg)
    where, arm, keys, arm_cfg = best
    diffs = ", ".join(f"{k}={_value(cfg.get(k))} (arm: {_value(arm_cfg.get(k))})" for k in keys[:SHOWN_KEYS])
    more = f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
    return f"{name} matches no arm of {experiment.name}: closest is {arm} ({where}), which differs in {diffs}{more}"


def claim_set(experiment: Experiment, paths=(), warn=None) -> ClaimSet:
    """The experiment as compare sees it. A run is an arm by its run.json; a run folder without one
    is matched by its config (the seed and precision aside) under a profile, else under the protocol
    that the run folders in ``paths`` share (see the module's docstring). Each run in ``paths`` that
    matches no arm gets a line in the ClaimSet's ``unmatched`` and a ``warn``."""
    profiles = [(f"profile {p.name}", _arm_configs(experiment, p)) for p in experiment.profiles.values()]
    by_config = [(cfg, name) for _, configs in profiles for name, cfg in configs.items()]
    hand, placed = _hand_runs(experiment, paths, by_config)
    protocol, protocol_count = _most_shared_protocol(experiment, hand) if hand and not placed else (None, 0)
    candidates = ([("under the runs' protocol", protocol.configs())] if protocol else []) + profiles
    unmatched = [
        _unmatched_line(experiment, name, cfg, candidates)
        for name, cfg in hand
        if not (protocol and protocol.arm_of(cfg))
    ]
    if hand and not placed and protocol is None and protocol_count > 1:
        unmatched.append(
            f"these {len(hand)} runs follow {protocol_count} protocols (configs that differ in more than the keys the "
            f"arms set), none of them shared by most: compare the runs of one protocol at a time"
        )
    for line in unmatched:
        (warn or print)(line)
    if protocol and len(unmatched) == len(hand):
        protocol = None  # it matched no run

    def arm_of(run: Run) -> str | None:
        if run.identity.get("experiment") == experiment.name:
            return run.identity.get("arm")
        if run.identity.get("experiment"):
            return None  # another experiment's run
        key = _without_seed(run.config)
        found = next((name for cfg, name in by_config if cfg == key), None)
        return found or (protocol.arm_of(key) if protocol else None)

    return ClaimSet(
        experiment.name,
        shown(experiment.path),
        experiment.title,
        {a.name: a.label for a in experiment.arms},
        experiment.claims,
        arm_of,
        experiment.full_recipe,
        protocol=protocol.text if protocol else "",
        unmatched=tuple(unmatched),
    )


def experiment_of_runs(paths: list[Path], name_or_path: str | None = None, warn=print) -> tuple[ClaimSet | None, tuple]:
    """(the experiment's ClaimSet, its profile's thresholds) for compare: the one named, or the one
    the runs' run.json names (when they all name the same); (None, ()) for runs of no experiment,
    or (with a warning) when the file their run.json names cannot be read any more."""
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
    return claim_set(experiment, paths, warn), profile.thresholds if profile else ()
