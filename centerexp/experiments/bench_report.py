"""`centerexp bench`'s report: the table it prints (format_bench), and the estimated wall time of
`centerexp reproduce` for each shipped experiment's profiles at the rates bench measured
(reproduce_estimate). The measuring is in bench.py.
"""

import math

from centerexp.config import MNIST_TEST_IMAGES, load_config, steps_per_epoch, train_images
from centerexp.experiments.matching import EXPERIMENTS
from centerexp.experiments.spec import load_experiment

PRECISIONS = ("fp32", "bf16")


def reproduce_estimate(experiment, profile_name: str, rates: dict) -> float:
    """Seconds `centerexp reproduce EXPERIMENT --profile profile_name` would take at
    ``rates[arch][precision]`` ({"train": img/s, "eval": img/s}, measured at batch 256), training and
    evaluation only: plots, checkpoints and process start-up come on top. ``auto`` precision counts
    at the faster of the two, as its measurement would pick."""
    profile = experiment.profiles[profile_name]
    total = 0.0
    for arm in experiment.arms:
        cfg = load_config(arm.config, experiment.overrides(arm, profile))
        arch = rates[cfg.model.arch]
        r = max(arch.values(), key=lambda x: x["train"]) if profile.precision == "auto" else arch[profile.precision]
        n_train = train_images(cfg.data.train_subset)
        n_test = cfg.data.test_subset or MNIST_TEST_IMAGES
        per_epoch = steps_per_epoch(n_train, cfg.train.batch_size)
        evals = math.ceil(per_epoch / cfg.train.eval_every) if cfg.train.eval_every else 1
        total += cfg.train.epochs * (n_train / r["train"] + evals * n_test / r["eval"])
    return total * profile.seeds


def reproduce_estimates(rates: dict) -> dict:
    """Every shipped experiment whose models were timed: profile -> (seconds, seeds)."""
    estimates = {}
    for path in sorted(EXPERIMENTS.glob("*.yaml")):
        experiment = load_experiment(path)
        archs = {load_config(a.config, list(a.overrides)).model.arch for a in experiment.arms}
        if archs <= set(rates):
            estimates[experiment.name] = {
                p: {"seconds": reproduce_estimate(experiment, p, rates), "seeds": experiment.profiles[p].seeds}
                for p in experiment.profiles
                if experiment.profiles[p].precision in {"auto", *(q for r in rates.values() for q in r)}
            }
    return estimates


def _pct(x: float | None) -> str:
    return f"{100 * x:.0f}%" if x is not None else "—"


def _rate(x: float | None) -> str:
    return f"{x:.1f}" if x is not None else "—"


def format_bench(r: dict) -> str:
    env = r["env"]
    lines = [
        f"device: {env['device_name']} ({env['device']}), {env['threads']} threads, torch {env['torch']}",
        f"timed: {r['steps']} steps of batch {r['batch_size']} after {r['warmup']} warm-up, all in this sitting",
        "",
        f"{'model':8} {'loop':18} {'img/s':>8} {'vs plain':>9} {'GFLOP/s':>8} {'lib. ceiling':>14} "
        f"{'% of lib. ceil.':>15} {'s/epoch':>8}",
    ]
    for arch, m in r["models"].items():
        choice = m["auto_choice"]
        speedup = choice.get("bf16_speedup")
        why = f" (measured bf16/fp32 step {speedup:.2f}x)" if speedup else f" ({choice.get('mode', '')})"
        lines.append(
            f"{arch:8} {'plain (seed) fp32':18} {m['plain_fp32_images_per_s']:8.1f} {'1.00x':>9} "
            f"{m['plain_fp32_images_per_s'] * m['gflop_per_image']:8.0f}"
        )
        for p in m.get("precisions", PRECISIONS):
            mark = " <- auto" if p == m["auto_precision"] else ""
            lines.append(
                f"{'':8} {'centerexp ' + p:18} {m[f'centerexp_{p}_images_per_s']:8.1f} "
                f"{m[f'centerexp_{p}_vs_plain']:8.2f}x {m[f'centerexp_{p}_gflops']:8.0f} "
                f"{_rate(m[f'ceiling_{p}_images_per_s']):>14} {_pct(m[f'centerexp_{p}_fraction_of_ceiling']):>15} "
                f"{m[f'seconds_per_epoch_{p}']:8.0f}{mark}"
            )
        lines.append(f"{'':8} auto picks {m['auto_precision']}{why}; {m['gflop_per_image']:.2f} GFLOP per image")
    lines.append(
        "lib. ceiling: the conv stack alone with the library's convolutions; s/epoch: 60,000 training + "
        "10,000 test images at the measured rates."
    )
    if r.get("matmul_gflops"):
        mm = r["matmul_gflops"]
        shown = ", ".join(f"{p} {gflops:.0f} GFLOP/s" for p, gflops in mm.items())
        lines.append(f"matmul peak (2048^3, this sitting): {shown}")
    for arch, m in r["models"].items():
        if not m.get("conv_layers"):
            continue
        p = m["auto_precision"]
        lines.append(
            f"{arch} in {p}: conv stack {_rate(m[f'ceiling_{p}_images_per_s'])} img/s with the library "
            f"({_pct(m['library_ceiling_fraction_of_matmul_peak'])} of the matmul peak), "
            f"{_rate(m['chosen_ceiling_images_per_s'])} img/s with the chosen algorithms "
            f"({_pct(m['chosen_ceiling_fraction_of_matmul_peak'])}); "
            f"training {m['centerexp_auto_images_per_s']:.1f} img/s "
            f"= {m['centerexp_auto_vs_library_ceiling']:.2f}x the library ceiling, "
            f"{m['centerexp_auto_vs_plain']:.2f}x the plain loop"
        )
        lines.append(
            f"  {'layer':24} {'algorithm':9} {'ms':>8} {'GFLOP/s':>8} {'% of peak':>9} {'share':>6} {'vs library':>10}"
        )
        for row in m["conv_layers"]:
            lines.append(
                f"  {row['layer']:24} {row['algorithm']:9} {1000 * row['seconds']:8.0f} {row['gflops']:8.0f} "
                f"{_pct(row['fraction_of_matmul_peak']):>9} {_pct(row['share']):>6} "
                f"{row['library_seconds'] / row['seconds']:9.2f}x"
            )
        lines.append("  (forward + backward at batch 256; GFLOP/s counts a direct convolution's work)")
    if r.get("reproduce_estimates"):
        lines.append(
            "estimated `centerexp reproduce EXPERIMENT --profile P` here (training + evaluation at these rates):"
        )
    for name, profiles in r.get("reproduce_estimates", {}).items():
        shown = ", ".join(f"{p} ({e['seeds']} seeds) {_duration(e['seconds'])}" for p, e in profiles.items())
        lines.append(f"  {name}: {shown}")
    if r.get("stored_rates"):
        lines.append("These rates are now in the speed cache: reproduce prices its plans on this machine with them.")
    if r.get("tensorboard"):
        tb = r["tensorboard"]
        arch, m = next(iter(r["models"].items()))
        epoch = m[f"seconds_per_epoch_{m['auto_precision']}"]
        share = (tb["seconds_per_evaluation"] + tb["embedding_seconds"]) / epoch
        lines.append(
            f"TensorBoard events (plot.tensorboard): {1000 * tb['seconds_per_evaluation']:.0f} ms per evaluation "
            f"(row + feature figure), {tb['embedding_seconds']:.2f} s once for the projector ({tb['points']:,} "
            f"points); a one-epoch {arch} run with one evaluation: {100 * share:.3f}% of its {epoch:.0f} s"
        )
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
