"""``train.precision: auto``: pick fp32 or bf16 by timing the run's own model on this machine.

CPU flags do not predict it: bf16 convolutions were ~3x fp32 on a Xeon with AMX, ~2x on an AMD
Zen 4 with AVX512-BF16 and no AMX, and slower than fp32 on a Sapphire Rapids VM with AVX512-BF16
but no AMX exposed. So the first run of a model on a machine times a few training steps in both
precisions and caches the rates; bf16 is chosen only when it is at least MIN_SPEEDUP times fp32,
which keeps ``auto`` from ever losing to fp32 by more than measurement noise (speedcache.py).

On CUDA the rule is by compute capability: bf16 tensor cores from sm_80 (Ampere) on.
"""

import torch
import torch.nn.functional as F

from centerexp.config import Config
from centerexp.training.speedcache import median_seconds, remembered

MIN_SPEEDUP = 1.2
PROBE_BATCH = 32  # small enough for a few seconds on 2 cores, large enough to keep the conv kernels busy
PROBE_STEPS = 3  # timed steps per precision at least, interleaved, after one warm-up step each
PROBE_MIN_SECONDS = 1.0  # and at least this long in all, so that fast steps are not timed by noise
CLEAR_LOSER = 2.0  # a precision whose first timed step is 2x the other's cannot reach MIN_SPEEDUP: stop timing it


def measure_step_rates(cfg: Config, device: torch.device, channels_last: bool) -> dict[str, float]:
    """Training images/s of ``cfg.model`` in fp32 and bf16: forward, backward and an SGD step on
    random images, the two precisions interleaved so that a slow moment hits both alike."""
    from centerexp.training.models import build_model
    from centerexp.training.optim import SGD

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        model = build_model(cfg.model).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = SGD(model.parameters(), lr=1e-6, momentum=0.9)
        x = torch.rand(PROBE_BATCH, 1, 28, 28, device=device)
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        y = torch.randint(0, 10, (PROBE_BATCH,), device=device)

        def step(precision: str) -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                _, logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        seconds = median_seconds(
            {p: lambda p=p: step(p) for p in ("fp32", "bf16")}, device, PROBE_STEPS, PROBE_MIN_SECONDS, CLEAR_LOSER
        )
    return {p: PROBE_BATCH / s for p, s in seconds.items()}


def choose_precision(cfg: Config, device: torch.device, channels_last: bool, measure=None) -> tuple[str, dict]:
    """(precision, how it was chosen). ``measure`` replaces ``measure_step_rates`` (for tests)."""
    wanted = cfg.train.precision
    if wanted != "auto":
        return wanted, {"mode": "set in config"}
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        chosen = "bf16" if major >= 8 else "fp32"
        return chosen, {"mode": f"auto: CUDA compute capability {major}.{minor}", "chosen": chosen}

    if cfg.model.arch == "linear":  # the linear net computes in fp32 under autocast: nothing to gain
        return "fp32", {"mode": "auto: the linear net runs in fp32", "chosen": "fp32"}

    what = ["precision", cfg.model.arch, "nhwc" if channels_last else "nchw"]
    rates, cached, path = remembered(cfg, what, lambda: (measure or measure_step_rates)(cfg, device, channels_last))
    speedup = rates["bf16"] / rates["fp32"]
    chosen = "bf16" if speedup >= MIN_SPEEDUP else "fp32"
    return chosen, {
        "mode": f"auto: measured, bf16 if >= {MIN_SPEEDUP}x fp32",
        "images_per_second": rates,
        "bf16_speedup": speedup,
        "chosen": chosen,
        "cached": cached,
        "cache": str(path),
    }
