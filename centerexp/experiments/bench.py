"""`centerexp bench`: the seed's plain training loop against centerexp's, same model, same sitting.

Plain loop (what the seed ran): torchvision ``MNIST`` with ``ToTensor()``, ``DataLoader(batch_size=256,
shuffle=True)``, fp32 eager, default memory format, cross-entropy + center loss, two SGD optimizers.
centerexp: the trainer's own ``train_one_epoch`` on data resident on the device, channels_last,
in fp32, in bf16, and in what ``train.precision: auto`` picks on this machine.

The library ceiling is the conv stack alone (forward + backward of the ConvLayers on resident
random images, no data, head, loss or optimizer) in each precision with the library's convolutions
(oneDNN/cuDNN): on these nets it does ~97% of the FLOP. centerexp's own convolution algorithms
(train.conv_algo, conv.py) can beat that ceiling; what bounds them is the machine's matmul peak,
measured in the same sitting in fp32 and bf16, against which a per-layer table shows each layer
shape's chosen algorithm, its speed and its share of the stack's time.

Everything is timed the same way: images over wall time of ``steps`` whole steps after
``warmup`` untimed ones, with the device synchronised. FLOP per image is counted by torch's
FlopCounterMode. From the measured rates, bench estimates the seconds of a full epoch and the
wall time of `centerexp reproduce` for each shipped experiment's profiles on this machine, and
stores its rates where reproduce's plans read them (rates.py). It also
times what a run's TensorBoard events cost (plot.tensorboard), against an epoch.
"""

import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from centerexp.config import MNIST_TEST_IMAGES, MNIST_TRAIN_IMAGES, Config, ModelConfig
from centerexp.experiments.bench_report import PRECISIONS, format_bench, reproduce_estimates
from centerexp.experiments.rates import BATCH, bench_config, centerexp_rates, centerexp_setup, store_rates, timed_rate
from centerexp.training import conv
from centerexp.training.data import Split, data_root, prepare_mnist
from centerexp.training.loop import train_one_epoch
from centerexp.training.losses import CenterLoss
from centerexp.training.models import build_model
from centerexp.training.runtime import Runtime, resolve_device
from centerexp.training.speedcache import median_seconds


def flop_per_image(arch: str, device: torch.device, batch: int = 8) -> float:
    """Forward + backward FLOP per training image, counted by torch (convolutions and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(ModelConfig(arch=arch)).to(device)
    x = torch.rand(batch, 1, 28, 28, device=device)
    with FlopCounterMode(display=False) as counter:
        features, logits = model(x)
        F.cross_entropy(logits, torch.zeros(batch, dtype=torch.long, device=device)).backward()
    return counter.get_total_flops() / batch


def plain_loop_rate(arch: str, device: torch.device, steps: int, warmup: int) -> float:
    """Images/s of the seed's recipe: DataLoader + ToTensor, fp32, default memory format."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    torch.manual_seed(0)
    root = prepare_mnist(data_root(Config().data))
    dataset = datasets.MNIST(str(root), train=True, download=False, transform=transforms.ToTensor())
    batches = iter(DataLoader(dataset, batch_size=BATCH, shuffle=True))
    model = build_model(ModelConfig(arch=arch)).to(device)
    center_loss = CenterLoss(10, 2).to(device)
    net_opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    center_opt = torch.optim.SGD(center_loss.parameters(), lr=0.5)
    model.train()

    def step() -> None:
        x, y = next(batches)  # loading is part of the recipe's cost, so it is inside the timing
        x, y = x.to(device), y.to(device)
        features, logits = model(x)
        loss = F.cross_entropy(logits, y) + center_loss(features, y)
        net_opt.zero_grad()
        center_opt.zero_grad()
        loss.backward()
        net_opt.step()
        center_opt.step()

    return timed_rate(step, BATCH, steps, warmup, device)


def conv_stack_ceiling(
    arch: str, precision: str, device: torch.device, steps: int, warmup: int, conv_algorithms: dict | None = None
) -> float | None:
    """Images/s of forward + backward through the conv stack alone (None for a net without one),
    with the library's convolutions or ``conv_algorithms``."""
    model = build_model(ModelConfig(arch=arch)).to(device)
    if not hasattr(model, "hidden_layer"):
        return None
    conv.use_algorithms(model, conv_algorithms or {})
    stack = model.hidden_layer.to(memory_format=torch.channels_last)
    x = torch.rand(BATCH, 1, 28, 28, device=device).contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = stack(x)
        out.float().sum().backward()

    return timed_rate(step, BATCH, steps, warmup, device)


def matmul_peak(precision: str, device: torch.device, size: int = 2048, repeats: int = 3) -> float:
    """GFLOP/s of a square ``size`` matmul in ``precision``: the most a GEMM-bound layer can reach."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(size, size, device=device).to(dtype)
    seconds = median_seconds({"matmul": lambda: a @ a}, device, repeats, 0.5)["matmul"]
    return 2 * size**3 / seconds / 1e9


def layer_table(arch: str, cfg_batch: int, precision: str, device: torch.device, chosen: dict) -> list[dict]:
    """Per layer shape of ``arch``: forward + backward seconds of the library and of the chosen
    algorithm, timed now at ``cfg_batch`` in ``precision``, and the chosen one's GFLOP/s counted
    as a direct convolution's work (what FlopCounterMode counts), so that the rows add up."""
    model = build_model(ModelConfig(arch=arch))
    rows, seen = [], set()
    for layer, h, w in conv.layer_inputs(model):
        key = layer.key(h, w)
        if key in seen:
            continue
        seen.add(key)
        k, p = layer.kernel_size[0], layer.padding[0]
        seconds = conv.measure_layer(
            layer.in_channels, layer.out_channels, k, p, h, w, cfg_batch, precision, device, True
        )
        algorithm = chosen.get(key, conv.LIBRARY)
        flop = 3 * 2 * cfg_batch * layer.out_channels * layer.in_channels * k * k * h * w  # forward + 2 backward
        rows.append(
            {
                "layer": key,
                "algorithm": algorithm,
                "library_seconds": seconds[conv.LIBRARY],
                "seconds": seconds[algorithm],
                "gflops": flop / seconds[algorithm] / 1e9,
                "library_gflops": flop / seconds[conv.LIBRARY] / 1e9,
            }
        )
    total = sum(r["seconds"] for r in rows)
    for r in rows:
        r["share"] = r["seconds"] / total
    return rows


def tensorboard_cost(points: int = 5000, evaluations: int = 5) -> dict:
    """What plot.tensorboard adds to a run, timed the way the trainer writes it: per evaluation the
    metrics row, the feature figure and a flush; once, the projector embedding of ``points`` test
    features (plot.max_points' default) with their thumbnails."""
    from centerexp import plots
    from centerexp.events import RunEvents
    from centerexp.rundir.schema import METRIC_COLUMNS

    gen = torch.Generator().manual_seed(0)
    features, labels = torch.randn(points, 2, generator=gen), torch.randint(0, 10, (points,), generator=gen)
    images = torch.randint(0, 256, (points, 1, 28, 28), dtype=torch.uint8, generator=gen)
    with tempfile.TemporaryDirectory() as tmp:
        frame = Path(tmp) / "frame.png"
        plots.plot_features([(features, labels, None, "train"), (features, labels, None, "test")], frame)
        events = RunEvents(Path(tmp))
        start = time.perf_counter()
        for step in range(1, evaluations + 1):
            events.row({**dict.fromkeys(METRIC_COLUMNS, 1.0), "step": step})
            events.image(frame, step)
            events.flush()
        per_evaluation = (time.perf_counter() - start) / evaluations
        start = time.perf_counter()
        events.embedding(features, labels, images, torch.randn(10, 2, generator=gen), evaluations)
        events.flush()
        embedding = time.perf_counter() - start
        events.close()
    return {"seconds_per_evaluation": per_evaluation, "embedding_seconds": embedding, "points": points}


def run_bench(
    archs=("deep", "shallow"),
    steps: int = 6,
    warmup: int = 1,
    device_name: str = "auto",
    profile: bool = False,
    echo=print,
    as_json: bool = False,
    precisions: tuple[str, ...] = PRECISIONS,
) -> dict:
    """``precisions``: which to time centerexp and the ceiling in (what auto picks always is): on
    a CPU without bf16 units a bf16 measurement takes many minutes and tells little."""
    from centerexp.rundir.provenance import env_info

    device = resolve_device(device_name)
    result = {"steps": steps, "warmup": warmup, "batch_size": BATCH, "models": {}}
    result["matmul_gflops"] = {}  # for the precisions timed on a net with convolutions
    rates = {}
    for arch in archs:
        flop = flop_per_image(arch, device)
        plain = plain_loop_rate(arch, device, steps, warmup)
        auto = Runtime.from_config(bench_config(arch, "auto", device_name))  # measured once, then cached
        timed = tuple(p for p in PRECISIONS if p in precisions or p == auto.precision)
        ours = {p: centerexp_rates(arch, p, device_name, steps, warmup) for p in timed}
        ceiling = {p: conv_stack_ceiling(arch, p, device, steps, warmup) for p in timed}
        chosen = ours[auto.precision]["conv_algorithms"]
        fast_ceiling = conv_stack_ceiling(arch, auto.precision, device, steps, warmup, chosen)
        rates[arch] = {p: {"train": ours[p]["train"], "eval": ours[p]["eval"]} for p in timed}
        if device_name == "auto":  # the device reproduce's estimate times on: its plans use these rates
            for p in timed:
                store_rates(arch, p, ours[p]["threads"], rates[arch][p], replace=True)
            result["stored_rates"] = True
        rates[arch]["auto"] = rates[arch][auto.precision]
        result["env"] = env_info(auto)
        m = {
            "gflop_per_image": flop / 1e9,
            "plain_fp32_images_per_s": plain,
            "auto_precision": auto.precision,
            "auto_choice": auto.precision_choice,
            "precisions": timed,
        }
        for p in timed:
            train_rate = ours[p]["train"]
            m[f"centerexp_{p}_images_per_s"] = train_rate
            m[f"centerexp_{p}_vs_plain"] = train_rate / plain
            m[f"centerexp_{p}_gflops"] = train_rate * flop / 1e9
            m[f"ceiling_{p}_images_per_s"] = ceiling[p]
            m[f"centerexp_{p}_fraction_of_ceiling"] = train_rate / ceiling[p] if ceiling[p] else None
            m[f"eval_{p}_images_per_s"] = ours[p]["eval"]
            m[f"seconds_per_epoch_{p}"] = MNIST_TRAIN_IMAGES / train_rate + MNIST_TEST_IMAGES / ours[p]["eval"]
        m["centerexp_auto_images_per_s"] = m[f"centerexp_{auto.precision}_images_per_s"]
        m["centerexp_auto_vs_plain"] = m[f"centerexp_{auto.precision}_vs_plain"]
        if ceiling[auto.precision]:
            for p in timed:
                if p not in result["matmul_gflops"]:
                    result["matmul_gflops"][p] = matmul_peak(p, device)
            m["centerexp_auto_vs_library_ceiling"] = m["centerexp_auto_images_per_s"] / ceiling[auto.precision]
            m["chosen_ceiling_images_per_s"] = fast_ceiling
            m["conv_layers"] = layer_table(arch, BATCH, auto.precision, device, chosen)
            peak = result["matmul_gflops"][auto.precision]
            for row in m["conv_layers"]:
                row["fraction_of_matmul_peak"] = row["gflops"] / peak
            stack_flop = sum(r["gflops"] * r["seconds"] for r in m["conv_layers"]) / BATCH  # GFLOP per image
            m["library_ceiling_fraction_of_matmul_peak"] = ceiling[auto.precision] * stack_flop / peak
            m["chosen_ceiling_fraction_of_matmul_peak"] = fast_ceiling * stack_flop / peak
        result["models"][arch] = m
    result["reproduce_estimates"] = reproduce_estimates(rates)
    result["tensorboard"] = tensorboard_cost()
    if profile:
        result["profile"] = profile_step(archs[0], device_name)
    if as_json:
        echo(json.dumps({k: v for k, v in result.items() if k != "profile"}, indent=2, default=str))
    else:
        echo(format_bench(result))
        if profile:
            echo(result["profile"])
    return result


def profile_step(arch: str, device_name: str, steps: int = 2, rows: int = 15) -> str:
    """torch.profiler table of centerexp's training step in the auto precision: where the time goes."""
    from torch.profiler import ProfilerActivity, profile

    cfg, rt, parts, train_split, _ = centerexp_setup(arch, "auto", device_name)
    part = Split(train_split.images[: BATCH * steps], train_split.labels[: BATCH * steps])
    train_one_epoch(parts, part, cfg, rt, 1)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if rt.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        train_one_epoch(parts, part, cfg, rt, 1)
    key = "self_cuda_time_total" if rt.device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)
