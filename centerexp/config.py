"""Experiment configuration: typed sections with defaults, strict YAML loading and overrides.

Each section is a dataclass that owns its defaults (minGPT style). A config file only needs the
keys it changes; unknown keys, wrong types and out-of-range values are one-line errors.
"""

import contextlib
import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from centerexp.errors import ConfigError


@dataclass
class DataConfig:
    root: Optional[str] = None  # cache folder for the unpacked IDX files; null: $CENTEREXP_DATA or ~/.cache/centerexp
    download: bool = False  # fetch with torchvision instead of the copy shipped in the package
    train_subset: Optional[int] = None  # number of training images (>= 2); null: all 60,000
    test_subset: Optional[int] = None  # number of test images; null: all 10,000
    subset_mode: str = "first"  # first: the first N images; random: N images drawn with train.seed
    test_subset_seed: Optional[int] = None  # random test subset drawn with this seed; null: train.seed
    normalize: bool = False  # subtract 0.1307 and divide by 0.3081 (the seed used ToTensor only: off)


@dataclass
class ModelConfig:
    arch: str = "deep"  # deep (9 ConvLayers) | shallow (6 ConvLayers) | linear (overview document)
    feat_dim: int = 2  # size of the feature the center loss acts on; 2 so it can be plotted


@dataclass
class LossConfig:
    kind: str = "center"  # the auxiliary loss added to cross-entropy (losses.AUX_LOSSES)
    distance: str = "squared"  # squared: ||x - c||^2 | sqrt: ||x - c||
    lamda: float = 1.0  # center-loss weight, applied as lamda / 2 * mean(...)
    count_normalized: bool = True  # divide each sample's distance by its class count in the batch
    center_update: str = "sgd"  # sgd: own SGD optimizer at center_lr | ema: Wen et al. Eq. 4 with alpha
    center_lr: float = 0.5  # learning rate of the centers' SGD optimizer (center_update: sgd)
    alpha: float = 0.5  # center step size in [0, 1] (center_update: ema)


@dataclass
class TrainConfig:
    epochs: int = 30  # passes over the training split
    batch_size: int = 256  # images per training step
    eval_batch_size: int = 1024  # images per evaluation step (no gradients, so larger)
    optimizer: str = "sgd"  # sgd (the seed) | adam (the overview document)
    lr: float = 0.001  # network learning rate
    momentum: float = 0.9  # sgd only
    lr_step_epochs: Optional[int] = 20  # StepLR period in epochs; null: constant lr
    lr_gamma: float = 0.8  # StepLR factor
    seed: int = 0  # seeds Python, NumPy, torch (model, centers) and the shuffle generator
    device: str = "auto"  # auto (cuda when present) | cpu | cuda
    precision: str = "auto"  # auto (bf16 if a measured training step is >= 1.2x fp32) | fp32 | bf16
    channels_last: bool = True  # memory format for the conv nets; faster with oneDNN and cuDNN
    conv_algo: str = "auto"  # auto (the fastest measured per layer shape) | library | toeplitz | fft | fft_bf16
    deterministic: bool = False  # torch.use_deterministic_algorithms and friends
    threads: Optional[int] = None  # torch intra-op threads; null: torch's default (one per core)
    eval_every: Optional[int] = None  # also evaluate (and checkpoint) every N optimizer steps; null: epoch ends only


@dataclass
class PlotConfig:
    max_points: int = 5000  # points per feature scatter (a seeded sample of the split)
    gif: bool = True  # assemble the per-epoch feature plots into plots/features.gif at the end
    tensorboard: bool = True  # TensorBoard event files in RUN/tb/ (scalars, hparams, figures, projector)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    plot: PlotConfig = field(default_factory=PlotConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES = {
    "data.subset_mode": ("first", "random"),
    "model.arch": ("deep", "shallow", "linear"),
    "loss.kind": ("center",),
    "loss.distance": ("squared", "sqrt"),
    "loss.center_update": ("sgd", "ema"),
    "train.optimizer": ("sgd", "adam"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.precision": ("auto", "fp32", "bf16"),
    "train.conv_algo": ("auto", "library", "toeplitz", "fft", "fft_bf16"),
}

# (check, what is expected) for numeric keys; None values pass (they mean "all"/"off").
RANGES = {
    "data.train_subset": (lambda v: v >= 2, ">= 2 (BatchNorm trains on 2+ samples) or null"),
    "data.test_subset": (lambda v: v >= 1, ">= 1 or null"),
    "model.feat_dim": (lambda v: v >= 1, ">= 1"),
    "loss.lamda": (lambda v: v >= 0, ">= 0"),
    "loss.center_lr": (lambda v: v > 0, "> 0"),
    "loss.alpha": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "train.epochs": (lambda v: v >= 1, ">= 1"),
    "train.batch_size": (lambda v: v >= 1, ">= 1"),
    "train.eval_batch_size": (lambda v: v >= 1, ">= 1"),
    "train.lr": (lambda v: v > 0, "> 0"),
    "train.momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "train.lr_step_epochs": (lambda v: v >= 1, ">= 1 or null"),
    "train.lr_gamma": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "train.seed": (lambda v: 0 <= v < 2**63, "in [0, 2**63)"),
    "train.threads": (lambda v: v >= 1, ">= 1 or null"),
    "train.eval_every": (lambda v: v >= 1, ">= 1 or null"),
    "data.test_subset_seed": (lambda v: 0 <= v < 2**63, "in [0, 2**63) or null"),
    "plot.max_points": (lambda v: v >= 1, ">= 1"),
}


def _sections() -> dict[str, type]:
    return {f.name: f.type for f in dataclasses.fields(Config)}


def all_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, cls in _sections().items() for f in dataclasses.fields(cls)]


def _field_types() -> dict[str, Any]:
    return {f"{s}.{f.name}": f.type for s, cls in _sections().items() for f in dataclasses.fields(cls)}


def _type_name(tp) -> str:
    if typing.get_origin(tp) is typing.Union:
        inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
        return f"{_type_name(inner)} or null"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}[tp]


def _coerce(value: Any, tp, where: str) -> Any:
    """Return ``value`` as type ``tp`` or raise ConfigError; no lossy conversions."""
    if typing.get_origin(tp) is typing.Union:
        if value is None:
            return None
        tp = [a for a in typing.get_args(tp) if a is not type(None)][0]
    ok = False
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def _unknown_key(key: str, known: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"{where}: unknown key '{key}'{hint}")


def _validate_value(key: str, value: Any, where: str) -> None:
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{where}: {key} must be one of {', '.join(CHOICES[key])}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: {key} must be a finite number, got {value!r}")
    if key in RANGES and value is not None:
        check, expected = RANGES[key]
        if not check(value):
            raise ConfigError(f"{where}: {key} must be {expected}, got {value!r}")


def from_dict(raw: Any, source: str = "config") -> Config:
    """Build a Config from nested dicts, checking every key, type and range."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections (data, model, ...), got {type(raw).__name__}")
    sections = _sections()
    types = _field_types()
    values: dict[str, dict] = {}
    for section, body in raw.items():
        if section not in sections:
            raise _unknown_key(str(section), list(sections), source)
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: section '{section}' must be a mapping, got {body!r}")
        for key, value in body.items():
            dotted = f"{section}.{key}"
            if dotted not in types:
                raise _unknown_key(dotted, all_keys(), source)
            value = _coerce(value, types[dotted], f"{source}: {dotted}")
            _validate_value(dotted, value, source)
            values.setdefault(section, {})[key] = value
    cfg = Config(**{name: cls(**values.get(name, {})) for name, cls in sections.items()})
    if cfg.model.arch != "linear" and cfg.train.batch_size < 2:
        raise ConfigError(f"{source}: train.batch_size must be >= 2 for model.arch {cfg.model.arch} (BatchNorm), got 1")
    return cfg


MNIST_TRAIN_IMAGES = 60_000
MNIST_TEST_IMAGES = 10_000


def batch_starts(n: int, batch_size: int) -> list[int]:
    """Where each training batch of an epoch over ``n`` images starts. A lone trailing image is
    left out: BatchNorm cannot train on a batch of one."""
    return [s for s in range(0, n, batch_size) if n - s > 1]


def train_images(train_subset: int | None) -> int:
    """Training images a run sees per epoch: its subset, or all of MNIST's."""
    return min(train_subset or MNIST_TRAIN_IMAGES, MNIST_TRAIN_IMAGES)


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimizer steps in one epoch over ``n_train`` images (the same in every epoch)."""
    return len(batch_starts(n_train, batch_size))


def load_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}:{line}: YAML syntax error: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: YAML error: {e}") from None


def parse_override(text: str) -> tuple[str, Any]:
    """'train.epochs=2' -> ('train.epochs', 2); the value is read as a YAML scalar."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. train.epochs=2")
    key, raw_value = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"--set {key}: cannot read value {raw_value!r}") from None
    return key, value


def apply_overrides(raw: Any, overrides: list[str]) -> dict:
    """Merge ``--set KEY=VALUE`` strings into a raw config dict (checked later by from_dict)."""
    # Copy the sections that are mappings; anything else is left for from_dict to report.
    merged = {s: dict(b) if isinstance(b, dict) else b for s, b in (raw or {}).items()}
    known = all_keys()
    types = _field_types()
    for text in overrides:
        key, value = parse_override(text)
        if key not in types:
            raise _unknown_key(key, known, "--set")
        value = _coerce(value, types[key], f"--set {key}")
        _validate_value(key, value, "--set")
        section, name = key.split(".", 1)
        if merged.get(section) is None:  # absent or empty section
            merged[section] = {}
        if isinstance(merged[section], dict):  # anything else is reported by from_dict
            merged[section][name] = value
    return merged


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read a YAML config, apply overrides, validate; the single entry point for the CLI."""
    raw = load_yaml(path)
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data, model, ...), got {type(raw).__name__}")
    return from_dict(apply_overrides(raw, list(overrides)), source=str(path))


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


# Keys that change how fast a run computes, not what it computes in maths (its bits, yes): a run resumed or
# adopted with another value is the same run (env.json records what each stretch used).
RUNTIME_ONLY_KEYS = {"train.threads", "train.conv_algo"}


def diff_configs(a: dict, b: dict) -> list[str]:
    """Dotted keys whose values differ between two resolved config dicts (RUNTIME_ONLY_KEYS aside).

    Both are first completed with this version's defaults (and stripped of keys it does not
    know), so a run written before a key with a default was added still matches its checkpoint.
    """
    a, b = normalize_config_dict(a), normalize_config_dict(b)
    keys = sorted({f"{s}.{k}" for d in (a, b) for s, body in d.items() for k in body})
    return [k for k in keys if k not in RUNTIME_ONLY_KEYS and flat_get(a, k) != flat_get(b, k)]


def flat_get(d: dict, dotted: str, default: Any = None) -> Any:
    section, key = dotted.split(".", 1)
    return d.get(section, {}).get(key, default)


def flatten(d: dict) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, body in d.items() for k, v in body.items()}


def _known_part(raw: dict) -> tuple[dict, list[str]]:
    """(the sections and keys of ``raw`` this version knows, the dotted keys it does not)."""
    known = set(all_keys())
    kept, dropped = {}, []
    for section, body in raw.items():
        for key, value in body.items() if isinstance(body, dict) else []:
            if f"{section}.{key}" in known:
                kept.setdefault(section, {})[key] = value
            else:
                dropped.append(f"{section}.{key}")
    return kept, dropped


def normalize_config_dict(raw: dict) -> dict:
    """A resolved config dict as this version would write it: unknown keys dropped, defaults filled."""
    return from_dict(_known_part(raw)[0]).to_dict()


def read_run_config(path: str | Path) -> tuple[Config, list[str]]:
    """A run folder's config.yaml, read leniently for comparing old and new runs.

    Keys this version does not know (written by a newer or older version) are dropped and
    returned, keys it lacks take their defaults, so runs that differ only by a key added later
    still group together. Values are checked as strictly as in ``load_config``.
    """
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data, model, ...), got {type(raw).__name__}")
    kept, dropped = _known_part(raw)
    return from_dict(kept, source=str(path)), dropped
