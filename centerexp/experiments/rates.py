"""How fast centerexp trains here: images/s of its own training and evaluation code, timed as a run
runs them (`centerexp bench`), and the speed cache's copy that `reproduce` prices its plans with
(estimate.py): read back when present, timed when missing, replaced by bench's longer timing."""

import contextlib
import time

import torch

from centerexp.config import Config
from centerexp.training.conv import ALGORITHMS
from centerexp.training.data import Split, load_mnist
from centerexp.training.loop import build_parts, evaluate, train_one_epoch
from centerexp.training.runtime import Runtime
from centerexp.training.speedcache import lookup, remembered

BATCH = 256
RATE_STEPS = 2  # timed steps of batch 256 when a rate is missing from the cache (after one warm-up step)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_rate(step, images_per_step: int, steps: int, warmup: int, device: torch.device) -> float:
    """Images/s of ``step()`` over ``steps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return images_per_step * steps / (time.perf_counter() - start)


def bench_config(arch: str, precision: str, device_name: str, threads: int | None = None) -> Config:
    """A default run's config for ``arch``; ``threads``: the CPU threads (None: one per core)."""
    cfg = Config()
    cfg.model.arch, cfg.train.precision, cfg.train.device = arch, precision, device_name
    cfg.train.threads = threads
    return cfg


def centerexp_setup(arch: str, precision: str, device_name: str, threads: int | None = None):
    """(config, runtime, parts, train split, test split) as a run of ``arch`` would have them."""
    cfg = bench_config(arch, precision, device_name, threads)
    rt = Runtime.from_config(cfg)
    torch.manual_seed(0)
    parts = build_parts(cfg, rt.device, rt.channels_last, rt.conv_algorithms, rt.conv_layers)
    train_split, test_split = load_mnist(cfg.data, 0, rt.device)
    return cfg, rt, parts, train_split, test_split


def centerexp_rates(
    arch: str, precision: str, device_name: str, steps: int, warmup: int, threads: int | None = None
) -> dict:
    """Training and evaluation images/s of centerexp's own code at ``threads`` CPU threads (None:
    one per core), and the precision it ran in.

    Training is timed as one ``train_one_epoch`` call over ``steps`` batches of 256 resident
    images (after one over ``warmup`` batches), as in a run: one host sync per epoch, not per step.
    """
    cfg, rt, parts, train_split, test_split = centerexp_setup(arch, precision, device_name, threads)

    def epoch_over(first: int, batches: int) -> Split:
        s, e = first * BATCH, (first + batches) * BATCH
        return Split(train_split.images[s:e], train_split.labels[s:e])

    train_one_epoch(parts, epoch_over(0, warmup), cfg, rt, 1)  # warm-up: kernel choice, allocations
    timed = epoch_over(warmup, steps)
    train_rate = timed_rate(lambda: train_one_epoch(parts, timed, cfg, rt, 1), BATCH * steps, 1, 0, rt.device)
    eval_images = min(len(test_split), cfg.train.eval_batch_size)
    part = Split(test_split.images[:eval_images], test_split.labels[:eval_images])
    return {
        "threads": torch.get_num_threads(),  # as the Runtime set them
        "precision": rt.precision,
        "choice": rt.precision_choice,
        "conv_algorithms": rt.conv_algorithms,
        "train": train_rate,
        "eval": timed_rate(lambda: evaluate(parts, part, cfg, rt), eval_images, 1, 1, rt.device),
    }


@contextlib.contextmanager
def _at_threads(threads: int):
    """This process's torch threads set to ``threads`` for the block, the caller's after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _rate_key(arch: str, precision: str) -> list[str]:
    # a rate timed with auto's choice among fewer convolution algorithms is stale once one is added
    return ["rates", arch, precision, f"batch {BATCH}", "+".join(ALGORITHMS)]


def store_rates(arch: str, precision: str, threads: int, rates: dict, replace: bool = False) -> None:
    """Put {"train", "eval"} images/s into the speed cache as if measured (bench's own figures, which
    ``replace`` what was there, or a test's fake ones)."""
    with _at_threads(threads):  # the cache keys a rate by the threads it was timed at
        remembered(Config(), _rate_key(arch, precision), lambda: dict(rates), replace)


def measure_rates(arch: str, precision: str, threads: int) -> dict:
    """{"train", "eval"} images/s of ``arch`` in ``precision`` at ``threads`` CPU threads, from the
    speed cache, else measured now (and cached) the way `centerexp bench` measures."""
    what = _rate_key(arch, precision)
    with _at_threads(threads):
        cached = lookup(Config(), what)
        if cached is not None:
            return cached
        # at ``threads``: a run's Runtime sets the process's threads (to one per core unless told)
        r = centerexp_rates(arch, precision, "auto", RATE_STEPS, 1, threads)  # takes the conv cache lock itself
        return remembered(Config(), what, lambda: {"train": r["train"], "eval": r["eval"]})[0]
