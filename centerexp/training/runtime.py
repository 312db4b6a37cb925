"""Where and how a run computes: device, precision, memory format, convolution algorithms,
threads, determinism, RNG state.

``Runtime.from_config`` is called once per run (and by bench); the trainer and the evaluation
take the resulting object instead of a list of loose flags.
"""

import os
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from centerexp.config import Config
from centerexp.errors import CenterexpError
from centerexp.training.conv import choose_algorithms
from centerexp.training.precision import choose_precision

DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice, restored when train.threads is null


@dataclass(frozen=True)
class Pinned:
    """What a run trains with instead of deciding anew: a resumed run's own settings from env.json
    (its bits depend on them), or a thread count chosen by the caller. None: decide now."""

    threads: int | None = None  # ahead of train.threads and torch's default
    precision: str | None = None  # what train.precision: auto resolved to when the run started
    conv_algorithms: dict | None = None  # what train.conv_algo: auto resolved to ({}: the library)


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str  # "fp32" | "bf16" (autocast for the conv trunk; heads and losses stay fp32)
    channels_last: bool  # NHWC activations for the conv nets (faster with oneDNN and cuDNN)
    threads: int  # torch intra-op threads
    deterministic: bool
    precision_choice: dict = field(default_factory=dict, compare=False)  # how "auto" decided, for env.json
    conv_algorithms: dict = field(default_factory=dict)  # layer shape key -> algorithm (conv.py)
    conv_choice: dict = field(default_factory=dict, compare=False)  # how they were chosen, for env.json
    # (module name, height, width) of each Conv2d, found while choosing (conv.named_inputs); None: not
    # looked for (a resumed run's recorded choice), the run's model finds them itself
    conv_layers: tuple | None = field(default=None, compare=False)

    @classmethod
    def from_config(cls, cfg: Config, pinned: Pinned = Pinned(), *, measure=None, measure_conv=None) -> "Runtime":
        """Resolve "auto" settings, unless ``pinned``, and apply the process-wide ones (threads,
        determinism). ``measure``, ``measure_conv`` replace the precision and convolution
        measurements (tests inject them); see precision.py and conv.py."""
        device = resolve_device(cfg.train.device)
        threads = pinned.threads or cfg.train.threads or DEFAULT_THREADS
        precision, conv_algorithms = pinned.precision, pinned.conv_algorithms
        torch.set_num_threads(threads)
        configure_determinism(cfg.train.deterministic, device)
        channels_last = cfg.train.channels_last and cfg.model.arch != "linear"
        if precision and cfg.train.precision == "auto":
            choice = {"mode": "auto, resolved when the run started (env.json)", "chosen": precision}
        else:
            precision, choice = choose_precision(cfg, device, channels_last, measure=measure)
        conv_layers = None
        if conv_algorithms is not None and cfg.train.conv_algo == "auto":
            recorded = "" if conv_algorithms else "; none recorded: the library, as before conv_algo"
            conv_choice = {"mode": f"auto, resolved when the run started (env.json{recorded})"}
        else:
            conv_algorithms, conv_choice, conv_layers = resolve_conv_algorithms(
                cfg, device, channels_last, precision, measure_conv
            )
        return cls(
            device,
            precision,
            channels_last,
            threads,
            cfg.train.deterministic,
            choice,
            conv_algorithms,
            conv_choice,
            conv_layers,
        )

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def memory_format(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def resolve_conv_algorithms(
    cfg: Config, device, channels_last: bool, precision: str, measure
) -> tuple[dict, dict, tuple]:
    """conv.choose_algorithms on the layer shapes of ``cfg.model`` (none for the linear net)."""
    from centerexp.training.models import build_model

    with torch.random.fork_rng(devices=[]):  # the run seeds its model after this; leave no trace
        model = build_model(cfg.model)
    return choose_algorithms(cfg, model, device, channels_last, precision, measure)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise CenterexpError("train.device is 'cuda' but no CUDA GPU is available (use auto or cpu)", exit_code=2)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def configure_determinism(deterministic: bool, device: torch.device) -> None:
    if device.type == "cuda" and deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # must precede the first cuBLAS call
    # Only when it changes something: the switch imports torch._inductor's config, which took 2.4 s
    # of a tiny run's start, to set what is already torch's default.
    if (
        torch.are_deterministic_algorithms_enabled() != deterministic
        or torch.is_deterministic_algorithms_warn_only_enabled()
    ):
        torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state(shuffle: torch.Generator) -> dict:
    """Every random state the run touches, as plain data (loads with weights_only=True)."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "shuffle": shuffle.get_state(),
    }


def set_rng_state(state: dict, shuffle: torch.Generator) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    shuffle.set_state(state["shuffle"])
