"""The experiment file: arms, seeds, profiles, thresholds and claims, declared in YAML.

An experiment is data. ``load_experiment(path)`` reads and checks a file as strictly as a config
(unknown keys are refused with a did-you-mean; every arm's config, with every profile's and arm's
overrides, is loaded and validated; claims must name declared arms and a registered metric).
Paths in the file (an arm's ``config``) are relative to the file itself. See
docs/reference.md#experiment-file for the format, and configs/experiments/ for examples.
"""

import difflib
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from centerexp.analysis import DEFAULT_THRESHOLDS
from centerexp.analysis.claims import ADJUSTMENTS, DESIGNS, ClaimSpec
from centerexp.analysis.metrics import METRICS
from centerexp.config import CHOICES, load_config, load_yaml, parse_override, steps_per_epoch, train_images
from centerexp.errors import ConfigError

PRECISIONS = ("auto", *[p for p in CHOICES["train.precision"] if p != "auto"])
TOP_KEYS = ("name", "title", "description", "arms", "seeds", "thresholds", "profiles", "claims", "adjust")
ARM_KEYS = ("name", "label", "config", "overrides", "grid")
PROFILE_KEYS = ("description", "overrides", "seeds", "thresholds", "precision", "sequential")
SEQUENTIAL_KEYS = ("max_seeds",)
CLAIM_KEYS = ("id", "says", "better", "than", "metric", "at", "threshold", "design", "margin", "why")


@dataclass(frozen=True)
class ArmSpec:
    name: str  # used in run folder names (NAME_sSEED) and by claims
    label: str  # shown in reports
    config: Path
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    overrides: tuple[str, ...]
    seeds: int
    thresholds: tuple[float, ...]
    precision: str  # auto: measured once for the whole experiment; or pinned
    max_seeds: int | None = None  # sequential: {max_seeds: N}: seeds until decided, up to N per arm


@dataclass(frozen=True)
class Experiment:
    path: Path
    name: str
    title: str
    description: str
    arms: tuple[ArmSpec, ...]
    profiles: dict[str, Profile]
    claims: tuple[ClaimSpec, ...]
    full_recipe: dict = field(default_factory=dict)  # steps, batch_size, lamda of the "full" profile

    def arm(self, name: str) -> ArmSpec:
        return next(a for a in self.arms if a.name == name)

    def overrides(self, arm: ArmSpec, profile: Profile) -> tuple[str, ...]:
        """Profile overrides, then the arm's (the arm says what differs; it wins)."""
        return (*profile.overrides, *arm.overrides)


def _unknown(key: str, known, where: str) -> ConfigError:
    close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"{where}: unknown key '{key}'{hint}; expected one of {', '.join(known)}")


def _mapping(value: Any, known, where: str, required=()) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    for key in value:
        if key not in known:
            raise _unknown(key, known, where)
    for key in required:
        if key not in value:
            raise ConfigError(f"{where}: missing key '{key}'")
    return value


def _text(value: Any, what: str, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected {what}, got {value!r}")
    return value


PLANNED_KEYS = ("train.seed", "train.precision")  # the plan sets these for every run: a file may not


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a list of KEY=VALUE strings, got {value!r}")
    for v in value:
        try:
            key, _ = parse_override(v)  # KEY=VALUE shape; keys and values are checked when the configs load
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        if key in PLANNED_KEYS:
            raise ConfigError(
                f"{where}: {key} is set by the plan (seeds: the `seeds` key; precision: a profile's `precision`)"
            )
    return tuple(value)


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*$")  # safe in a folder name


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not NAME.match(value):
        raise ConfigError(f"{where}: expected a name of letters, digits, '.', '_' or '-', got {value!r}")
    return value


def _seeds(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{where}: expected a number of seeds >= 1, got {value!r}")
    return value


def _thresholds(value: Any, where: str) -> tuple[float, ...]:
    ok = isinstance(value, list) and all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in value)
    if not ok or not all(0 < t <= 1 for t in value):
        raise ConfigError(f"{where}: expected a list of test accuracies in (0, 1], got {value!r}")
    return tuple(sorted(float(t) for t in value))


def _slug(value: Any) -> str:
    return str(value).replace("/", "-").replace(" ", "")


def _arms(raw: Any, base: Path, where: str) -> list[ArmSpec]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: expected a list of arms, each with name and config")
    arms = []
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        item = _mapping(item, ARM_KEYS, at, required=("name", "config"))
        name = _name(item["name"], f"{at}.name")
        config = (base / _text(item["config"], "a config path", f"{at}.config")).resolve()
        if not config.is_file():
            raise ConfigError(f"{at}.config: config file not found: {config}")
        overrides = _strings(item.get("overrides"), f"{at}.overrides")
        grid = item.get("grid")
        if grid is None:
            arms.append(ArmSpec(name, str(item.get("label", name)), config, overrides))
            continue
        ok = isinstance(grid, dict) and grid and all(isinstance(k, str) for k in grid)
        if not ok or not all(isinstance(v, list) and v for v in grid.values()):
            raise ConfigError(f"{at}.grid: expected a mapping KEY: [VALUE, ...], e.g. {{loss.lamda: [0, 1]}}")
        if set(grid) & set(PLANNED_KEYS):
            raise ConfigError(f"{at}.grid: {', '.join(set(grid) & set(PLANNED_KEYS))} is set by the plan")
        keys = list(grid)
        for values in itertools.product(*(grid[k] for k in keys)):  # one arm per combination, like a multirun
            suffix = "_".join(f"{k.split('.')[-1]}{_slug(v)}" for k, v in zip(keys, values))
            sets = tuple(f"{k}={v}" for k, v in zip(keys, values))
            label = f"{item.get('label', name)} " + ", ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, values))
            arms.append(ArmSpec(_name(f"{name}_{suffix}", f"{at}.grid"), label, config, (*overrides, *sets)))
    names = [a.name for a in arms]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{where}: arm names must be unique, got {', '.join(duplicates)} twice")
    return arms


def _profiles(raw: Any, seeds: int, thresholds, where: str) -> dict[str, Profile]:
    raw = {"full": {}} if raw is None else raw
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: expected a mapping of profile names to override sets")
    profiles = {}
    for name, body in raw.items():
        at = f"{where}.{name}"
        name = _name(str(name), at)
        body = _mapping(body or {}, PROFILE_KEYS, at)
        precision = body.get("precision", "auto")
        if precision not in PRECISIONS:
            raise ConfigError(f"{at}.precision: must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        overrides = _strings(body.get("overrides"), f"{at}.overrides")
        if any(o.split("=", 1)[0].strip() == "train.precision" for o in overrides):
            raise ConfigError(f"{at}.overrides: set the precision with '{at}.precision', once for every arm")
        profiles[name] = Profile(
            str(name),
            str(body.get("description", "")),
            overrides,
            _seeds(body.get("seeds", seeds), f"{at}.seeds"),
            _thresholds(body["thresholds"], f"{at}.thresholds") if "thresholds" in body else thresholds,
            precision,
            _sequential(body.get("sequential"), f"{at}.sequential"),
        )
    return profiles


def _sequential(raw: Any, where: str) -> int | None:
    """A profile's ``sequential: {max_seeds: N}`` (seeds until decided), as N; None when absent."""
    if raw is None:
        return None
    body = _mapping(raw, SEQUENTIAL_KEYS, where, required=SEQUENTIAL_KEYS)
    from centerexp.analysis.sequential_design import MAX_SEEDS
    from centerexp.analysis.stats import MIN_RUNS

    n = body["max_seeds"]
    if isinstance(n, bool) or not isinstance(n, int) or not MIN_RUNS <= n <= MAX_SEEDS:
        raise ConfigError(f"{where}.max_seeds: expected a whole number from {MIN_RUNS} to {MAX_SEEDS}, got {n!r}")
    return n


def _claims(raw: Any, arms: list[ArmSpec], where: str, adjust: str = "none") -> tuple[ClaimSpec, ...]:
    """The claims; ``adjust`` (the file's top-level key: none | holm, across its claims) goes on each."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: expected a list of claims")
    names = [a.name for a in arms]
    claims, ids = [], set()
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        item = _mapping(item, CLAIM_KEYS, at, required=("id", "says", "better", "than", "metric"))
        cid = str(item["id"])
        if cid in ids:
            raise ConfigError(f"{at}.id: claim id {cid!r} is used twice")
        ids.add(cid)
        for key in ("better", "than"):
            if item[key] not in names:
                close = difflib.get_close_matches(str(item[key]), names, n=1, cutoff=0.6)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(
                    f"{at}.{key}: {item[key]!r} is not an arm of this experiment{hint}; arms: {', '.join(names)}"
                )
        if item["better"] == item["than"]:
            raise ConfigError(f"{at}: better and than must be two different arms")
        metric = item["metric"]
        if not isinstance(metric, str) or metric not in METRICS:
            raise _unknown(metric, list(METRICS), f"{at}.metric")
        params = []
        for p in ("at", "threshold"):
            if p in item and p not in METRICS[metric].parameters:
                raise ConfigError(f"{at}.{p}: metric {metric} takes no '{p}'")
        for p in METRICS[metric].parameters:
            value = item.get(p, 1.0 if p == "at" else None)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 1:
                raise ConfigError(f"{at}.{p}: metric {metric} needs '{p}', a fraction in (0, 1], got {value!r}")
            params.append((p, float(value)))
        design = item.get("design", "paired")
        if design not in DESIGNS:
            raise ConfigError(f"{at}.design: must be one of {', '.join(DESIGNS)}, got {design!r}")
        margin = item.get("margin", 0.0)
        if not isinstance(margin, (int, float)) or isinstance(margin, bool) or margin < 0:
            raise ConfigError(f"{at}.margin: expected a number >= 0, got {margin!r}")
        claims.append(
            ClaimSpec(
                cid,
                str(item["says"]),
                item["better"],
                item["than"],
                metric,
                design,
                tuple(params),
                float(margin),
                str(item.get("why", "")).strip(),
                adjust,
            )
        )
    return tuple(claims)


def load_experiment(path: str | Path) -> Experiment:
    path = Path(path)
    raw = load_yaml(path)
    where = str(path)
    raw = _mapping(raw, TOP_KEYS, where, required=("name", "arms"))
    name = _text(raw["name"], "a name", f"{where}: name")
    seeds = _seeds(raw.get("seeds", 3), f"{where}: seeds")
    thresholds = _thresholds(raw.get("thresholds", list(DEFAULT_THRESHOLDS)), f"{where}: thresholds")
    arms = _arms(raw["arms"], path.parent, f"{where}: arms")
    profiles = _profiles(raw.get("profiles"), seeds, thresholds, f"{where}: profiles")
    adjust = raw.get("adjust", "none")
    if adjust not in ADJUSTMENTS:
        raise ConfigError(f"{where}: adjust: must be one of {', '.join(ADJUSTMENTS)}, got {adjust!r}")
    claims = _claims(raw.get("claims"), arms, f"{where}: claims", adjust)
    for profile in profiles.values():  # every run this file can ask for is a valid config
        for arm in arms:
            try:
                load_config(arm.config, [*profile.overrides, *arm.overrides])
            except ConfigError as e:
                raise ConfigError(f"{where}: profile {profile.name}, arm {arm.name}: {e}") from None
    experiment = Experiment(
        path, name, str(raw.get("title", name)), str(raw.get("description", "")).strip(), tuple(arms), profiles, claims
    )
    return _with_recipe(experiment)


def _with_recipe(experiment: Experiment) -> Experiment:
    """The full profile's steps, batch and lamda for the first claim's better arm (the report's yardstick)."""
    if "full" not in experiment.profiles:
        return experiment
    arm = experiment.arm(experiment.claims[0].better) if experiment.claims else experiment.arms[0]
    cfg = load_config(arm.config, experiment.overrides(arm, experiment.profiles["full"]))
    steps = cfg.train.epochs * steps_per_epoch(train_images(cfg.data.train_subset), cfg.train.batch_size)
    recipe = {"steps": steps, "batch_size": cfg.train.batch_size, "lamda": cfg.loss.lamda}
    return Experiment(**{**experiment.__dict__, "full_recipe": recipe})
