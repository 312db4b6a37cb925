"""`centerexp bench`: the seed's plain training loop against centerexp's, same model, same sitting.

Plain loop (what the seed ran): torchvision ``MNIST`` with ``ToTensor()``, ``DataLoader(batch_size=256,
shuffle=True)``, fp32 eager, default memory format, cross-entropy + center loss, two SGD optimizers.
centerexp: the trainer's own ``train_one_epoch`` on data resident on the device, with the precision
and memory format a run would pick (``train.precision: auto``, channels_last).

Both are timed the same way: images over wall time of ``steps`` whole steps (data, forward,
backward, both optimizer steps) after ``warmup`` untimed ones, with the device synchronised.
FLOP per image is counted by torch's FlopCounterMode, and the matmul peak is measured in the
same process, so the fraction of peak is like for like.
"""

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from centerexp.config import Config, ModelConfig
from centerexp.data import data_root, load_mnist, prepare_mnist
from centerexp.losses import CenterLoss
from centerexp.models import build_model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 6) -> float:
    """Best-of GFLOP/s of an n x n x n matmul."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def flop_per_image(arch: str, device: torch.device, batch: int = 8) -> float:
    """Forward + backward FLOP per image, counted by torch (convolutions and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(ModelConfig(arch=arch)).to(device)
    x = torch.rand(batch, 1, 28, 28, device=device)
    with FlopCounterMode(display=False) as counter:
        features, logits = model(x)
        F.cross_entropy(logits, torch.zeros(batch, dtype=torch.long, device=device)).backward()
    return counter.get_total_flops() / batch


def plain_loop_rate(arch: str, device: torch.device, steps: int, warmup: int, root: Path) -> float:
    """Images/s of the seed's recipe: DataLoader + ToTensor, fp32, default memory format."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    torch.manual_seed(0)
    dataset = datasets.MNIST(str(root), train=True, download=False, transform=transforms.ToTensor())
    loader = DataLoader(dataset, batch_size=256, shuffle=True)
    model = build_model(ModelConfig(arch=arch)).to(device)
    center_loss = CenterLoss(10, 2).to(device)
    net_opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    center_opt = torch.optim.SGD(center_loss.parameters(), lr=0.5)
    model.train()
    batches = iter(loader)
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        x, y = next(batches)  # loading is part of the recipe's cost, so it is inside the timing
        x, y = x.to(device), y.to(device)
        features, logits = model(x)
        loss = F.cross_entropy(logits, y) + center_loss(features, y)
        net_opt.zero_grad()
        center_opt.zero_grad()
        loss.backward()
        net_opt.step()
        center_opt.step()
    sync(device)
    return 256 * steps / (time.perf_counter() - start)


def centerexp_epoch(arch: str, device: torch.device, precision: str):
    """centerexp's own training step on ``arch``: returns (run, precision used), where run(steps)
    is one train_one_epoch pass over the first ``steps`` x 256 resident training images."""
    from centerexp.data import Split
    from centerexp.train import StopFlag, build_parts, resolve_precision, train_one_epoch, uses_channels_last

    cfg = Config()
    cfg.model.arch = arch
    used = resolve_precision(precision, device)
    torch.manual_seed(0)
    parts = build_parts(cfg, device)
    train_split, _ = load_mnist(cfg.data, 0, device)
    args = (cfg, device, used, uses_channels_last(cfg), 1, StopFlag(), False)

    def run(steps: int) -> None:
        n = 256 * steps
        train_one_epoch(parts, Split(train_split.images[:n], train_split.labels[:n]), *args)

    return run, used


def centerexp_rate(arch: str, device: torch.device, steps: int, warmup: int, precision: str) -> tuple[float, str]:
    """Images/s of centerexp's own training step over ``steps`` batches of 256, after ``warmup``."""
    run, used = centerexp_epoch(arch, device, precision)
    run(warmup)
    sync(device)
    t = time.perf_counter()
    run(steps)
    sync(device)
    return 256 * steps / (time.perf_counter() - t), used


def profile_step(arch: str, device: torch.device, precision: str, steps: int = 3, rows: int = 15) -> str:
    """torch.profiler table of centerexp's training step: where the time goes."""
    from torch.profiler import ProfilerActivity, profile

    run, _ = centerexp_epoch(arch, device, precision)
    run(steps)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run(steps)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def run_bench(
    archs=("deep", "shallow"),
    steps: int = 8,
    warmup: int = 2,
    precision: str = "auto",
    device_name: str = "auto",
    profile: bool = False,
    echo=print,
    as_json: bool = False,
) -> dict:
    from centerexp.runs import env_info
    from centerexp.train import resolve_device, resolve_precision

    device = resolve_device(device_name)
    root = prepare_mnist(data_root(Config().data))
    used = resolve_precision(precision, device)
    peaks = {"fp32": matmul_peak(device, torch.float32), "bf16": matmul_peak(device, torch.bfloat16)}
    result = {
        "env": env_info(device, used, True),
        "matmul_peak_gflops": peaks,
        "steps": steps,
        "batch_size": 256,
        "models": {},
    }
    for arch in archs:
        flop = flop_per_image(arch, device)
        plain = plain_loop_rate(arch, device, steps, warmup, root)
        ours, prec = centerexp_rate(arch, device, steps, warmup, precision)
        result["models"][arch] = {
            "gflop_per_image": flop / 1e9,
            "plain_images_per_s": plain,
            "centerexp_images_per_s": ours,
            "speedup": ours / plain,
            "centerexp_precision": prec,
            "plain_gflops": plain * flop / 1e9,
            "centerexp_gflops": ours * flop / 1e9,
            "plain_fraction_of_fp32_peak": plain * flop / 1e9 / peaks["fp32"],
            "centerexp_fraction_of_peak": ours * flop / 1e9 / peaks[prec],
            "seconds_per_60k_epoch_train": 60000 / ours,
        }
    if profile:
        result["profile"] = profile_step(archs[0], device, precision)
    if as_json:
        echo(json.dumps({k: v for k, v in result.items() if k != "profile"}, indent=2))
    else:
        echo(format_bench(result))
        if profile:
            echo(result["profile"])
    return result


def format_bench(r: dict) -> str:
    env, peaks = r["env"], r["matmul_peak_gflops"]
    lines = [
        f"device: {env['device_name']} ({env['device']}), {env['threads']} threads, torch {env['torch']}",
        f"matmul peak (2048^3, measured now): fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s",
        f"timed: {r['steps']} steps of batch {r['batch_size']} after warm-up",
        "",
        f"{'model':8} {'GFLOP/img':>9} {'plain img/s':>12} {'centerexp img/s':>16} {'speedup':>8} {'precision':>9} "
        f"{'plain GFLOP/s':>14} {'ours GFLOP/s':>13} {'ours % of peak':>15} {'s/epoch (60k)':>14}",
    ]
    for arch, m in r["models"].items():
        lines.append(
            f"{arch:8} {m['gflop_per_image']:9.2f} {m['plain_images_per_s']:12.1f} "
            f"{m['centerexp_images_per_s']:16.1f} {m['speedup']:7.2f}x {m['centerexp_precision']:>9} "
            f"{m['plain_gflops']:14.0f} {m['centerexp_gflops']:13.0f} "
            f"{100 * m['centerexp_fraction_of_peak']:14.0f}% {m['seconds_per_60k_epoch_train']:14.0f}"
        )
    return "\n".join(lines)
