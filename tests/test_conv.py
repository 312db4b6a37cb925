"""Convolution algorithms (conv.py): each computes nn.Conv2d's function, values and gradients, and
auto picks by measurement, cached, never a measured loser; a run records and keeps its choice."""

import json

import pytest
import torch
import torch.nn.functional as F

from centerexp.config import Config
from centerexp.training import conv, speedcache
from centerexp.training.models import deep_net
from centerexp.training.runtime import Runtime

# (c_in, c_out, height) of every layer shape the shipped nets have (5x5 kernels, padding 2), in miniature channels
SHAPES = [(1, 3, 28), (3, 4, 14), (4, 5, 7), (5, 3, 3), (2, 2, 5), (3, 2, 1)]


def draws(c_in, c_out, h, width=None):
    """A case's input, weight and output gradient in fp64, seeded by its shape."""
    gen = torch.Generator().manual_seed(c_in * 100 + h)
    x = torch.randn(3, c_in, h, width or h, generator=gen, dtype=torch.float64)
    w = torch.randn(c_out, c_in, 5, 5, generator=gen, dtype=torch.float64)
    grad = torch.randn(3, c_out, h, width or h, generator=gen, dtype=torch.float64)
    return x, w, grad


def library(x, w):
    return F.conv2d(x, w, padding=2)


def candidate(algorithm):
    return lambda x, w: conv.FUNCTIONS[algorithm](x, w, 2)


def through(fn, x, w, grad, bf16=False):
    """Output, input gradient and weight gradient of ``fn(x, w)`` (under bf16 autocast with ``bf16``)."""
    xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = fn(xi, wi)
    y.float().backward(grad.float())
    return y, xi.grad, wi.grad


def reference_and_candidate(algorithm, c_in, c_out, h, width=None):
    """The library's and ``algorithm``'s (output, input gradient, weight gradient), both in fp64."""
    x, w, grad = draws(c_in, c_out, h, width)
    x = x.contiguous(memory_format=torch.channels_last)
    return through(library, x, w, grad), through(candidate(algorithm), x, w, grad)


@pytest.mark.parametrize(
    "algorithm, c_in, c_out, h",
    [(a, *s) for a in ("toeplitz", "fft", "fft_bf16") for s in SHAPES if conv.applies(a, 5, 2, s[2], s[2], "bf16")],
)
def test_each_algorithm_is_the_convolution_in_fp64(algorithm, c_in, c_out, h):
    (y, gx, gw), (y2, gx2, gw2) = reference_and_candidate(algorithm, c_in, c_out, h)
    for a, b in ((y, y2), (gx, gx2), (gw, gw2)):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() < 1e-10 * max(1.0, a.abs().max().item())


@pytest.mark.parametrize("algorithm", ["fft", "fft_bf16"])
def test_fft_handles_a_rectangular_map(algorithm):
    (y, gx, gw), (y2, gx2, gw2) = reference_and_candidate(algorithm, 3, 4, 6, width=9)
    assert max((a - b).abs().max().item() for a, b in ((y, y2), (gx, gx2), (gw, gw2))) < 1e-10


def errors_against_fp64(algorithm: str, c_in: int, c_out: int, h: int, bf16: bool) -> list[float]:
    """Largest error of the output, input gradient and weight gradient computed in fp32 (or under
    bf16 autocast) by ``algorithm``, against fp64 library truth, relative to each one's largest value."""
    x, w, grad = draws(c_in, c_out, h)
    truth = through(library, x, w, grad)
    got = through(candidate(algorithm), x.float().contiguous(memory_format=torch.channels_last), w.float(), grad, bf16)
    assert got[0].dtype == (torch.bfloat16 if bf16 else torch.float32)  # what the library returns too
    return [((a.double() - t).abs().max() / t.abs().max()).item() for a, t in zip(got, truth)]


@pytest.mark.parametrize("algorithm", conv.ALGORITHMS)
def test_fp32_and_bf16_are_as_close_to_fp64_as_the_library_is(algorithm):
    # Measured here (worst of 5 seeds, output relative to its largest value, against fp64):
    # fp32 library 1.1e-6, fft 3.6e-7, toeplitz 1.5e-7; bf16 autocast library 4.2e-3, fft 4.5e-3,
    # toeplitz 3.4e-3 (bf16 keeps 8 bits: 3.9e-3 per rounding). The bounds are ~10x and ~3x those.
    c_in, c_out, h = (16, 8, 3) if algorithm == "toeplitz" else (16, 8, 7)
    assert max(errors_against_fp64(algorithm, c_in, c_out, h, bf16=False)) < 1e-5
    assert max(errors_against_fp64(algorithm, c_in, c_out, h, bf16=True)) < 1.5e-2


@pytest.mark.parametrize("c_in, c_out, h", [(16, 8, 7), (16, 8, 14), (8, 16, 28)])
def test_fft_bf16_rounds_at_most_two_and_a_half_times_as_much_as_the_library(c_in, c_out, h):
    # Its transforms run in bf16: four more roundings than the library's. Measured here (worst of 5
    # seeds, output / input gradient / weight gradient against fp64): library 3.6-4.7e-3, fft
    # 3.6-4.6e-3, fft_bf16 5.4-7.4e-3; on these draws fft reaches 1.28x the library's, fft_bf16 1.87x.
    library_errors = errors_against_fp64("library", c_in, c_out, h, bf16=True)
    for algorithm, ratio in (("fft", 1.5), ("fft_bf16", 2.5)):
        errors = errors_against_fp64(algorithm, c_in, c_out, h, bf16=True)
        assert max(errors) < ratio * max(library_errors), (algorithm, errors, library_errors)


def test_fft_bf16_applies_only_to_bf16_runs(tmp_path):
    assert conv.candidates_for(5, 2, 14, 14, "bf16") == ["library", "fft", "fft_bf16"]
    assert conv.candidates_for(5, 2, 14, 14, "fp32") == ["library", "fft"]
    cfg = shallow_config(tmp_path, "fft_bf16")
    assert set(Runtime.from_config(cfg).conv_algorithms.values()) == {"library"}  # fp32: where it does not apply
    cfg.train.precision = "bf16"
    chosen = Runtime.from_config(cfg).conv_algorithms
    assert chosen["1->32 k5p2 @28x28"] == "fft_bf16" and set(chosen.values()) == {"fft_bf16"}


def test_a_measurement_cached_before_an_algorithm_existed_is_taken_again(tmp_path):
    """The cache key names the algorithms timed: an entry without fft_bf16 (as every cache written
    before it holds) must not hide it from auto."""
    cfg = shallow_config(tmp_path)
    cfg.train.precision = "bf16"
    rt = Runtime.from_config(cfg, measure_conv=lambda *a: {"library": 1.0, "fft": 0.5})  # as if timed before
    cache_path = tmp_path / speedcache.CACHE_FILE
    cache = json.loads(cache_path.read_text())
    old = {k.rsplit("|", 1)[0]: v for k, v in cache.items() if v["what"][0] == "conv"}  # keys without the candidates
    assert old and all(v["what"][-1] == "library+fft+fft_bf16" for v in cache.values() if v["what"][0] == "conv")
    cache_path.write_text(json.dumps({**{k: v for k, v in cache.items() if v["what"][0] != "conv"}, **old}))
    measure, calls = timings({h: {"library": 1.0, "fft": 0.5, "fft_bf16": 0.25} for h in (28, 14, 7)})
    rt = Runtime.from_config(cfg, measure_conv=measure)
    assert len(calls) == 6 and set(rt.conv_algorithms.values()) == {"fft_bf16"}


def test_the_layer_keeps_nn_conv2d_state_and_runs_the_algorithm_chosen_for_its_input_size(monkeypatch):
    torch.manual_seed(0)
    model = deep_net()
    names = [k for k in model.state_dict() if "hidden_layer" in k][:3]
    assert names == ["hidden_layer.0.0.weight", "hidden_layer.0.1.weight", "hidden_layer.0.1.bias"]
    shapes = conv.layer_inputs(model)
    assert [layer.key(h, w) for layer, h, w in shapes][::3] == [
        "1->32 k5p2 @28x28",
        "128->256 k5p2 @14x14",
        "512->256 k5p2 @3x3",
    ]
    calls = []
    monkeypatch.setitem(
        conv.FUNCTIONS, "fft", lambda x, w, p: calls.append(tuple(x.shape[-2:])) or F.conv2d(x, w, padding=p)
    )
    conv.use_algorithms(model, {"256->512 k5p2 @7x7": "fft", "512->512 k5p2 @7x7": "fft"})
    model(torch.rand(2, 1, 28, 28))
    assert calls == [(7, 7), (7, 7)]
    assert sum(a == "library" for layer, h, w in shapes for a in layer.algorithms.values()) == len(shapes) - 2


def test_a_model_with_chosen_algorithms_computes_what_the_library_model_does():
    """The whole conv trunk in fp64 (the head always computes in fp32), forward and backward."""
    torch.manual_seed(0)
    library, fast = deep_net(), deep_net()
    fast.load_state_dict(library.state_dict())
    chosen = {layer.key(h, w): ("toeplitz" if h <= 3 else "fft") for layer, h, w in conv.layer_inputs(fast)}
    conv.use_algorithms(fast, chosen)
    assert sum(a != "library" for m in fast.modules() if isinstance(m, conv.Conv2d) for a in m.algorithms.values()) == 9
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64)
    y1, y2 = library.hidden_layer.double()(x), fast.hidden_layer.double()(x)
    y1.sum().backward(), y2.sum().backward()
    assert (y1 - y2).abs().max() < 1e-10 * y1.abs().max()
    for p1, p2 in zip(library.hidden_layer.parameters(), fast.hidden_layer.parameters()):
        assert (p1.grad - p2.grad).abs().max() < 1e-10 * max(1.0, p1.grad.abs().max().item())


# --- choosing -----------------------------------------------------------------------------------


def shallow_config(tmp_path, conv_algo="auto") -> Config:
    cfg = Config()
    cfg.data.root, cfg.model.arch, cfg.train.device = str(tmp_path), "shallow", "cpu"
    cfg.train.precision, cfg.train.conv_algo, cfg.train.batch_size = "fp32", conv_algo, 8
    return cfg


def timings(table):
    """A fake measure_layer: seconds per algorithm by map height, from ``table``; records calls."""
    calls = []

    def measure(c_in, c_out, k, p, h, w, batch, precision, device, channels_last):
        calls.append((c_in, c_out, h, batch, precision))
        return {a: s for a, s in table[h].items() if conv.applies(a, k, p, h, w, precision)}

    return measure, calls


def test_auto_picks_the_fastest_only_when_it_beats_the_library_by_the_margin(tmp_path):
    measure, calls = timings(
        {
            28: {"library": 1.0, "fft": 1.05},  # slower: library
            14: {"library": 1.0, "fft": 0.95},  # faster, but within the margin: library
            7: {"library": 1.0, "fft": 0.5},
            3: {"library": 1.0, "toeplitz": 0.6, "fft": 0.7},
        }
    )
    rt = Runtime.from_config(shallow_config(tmp_path), measure_conv=measure)
    assert rt.conv_algorithms == {
        "1->32 k5p2 @28x28": "library",
        "32->64 k5p2 @28x28": "library",
        "64->128 k5p2 @14x14": "library",
        "128->256 k5p2 @14x14": "library",
        "256->512 k5p2 @7x7": "fft",
        "512->512 k5p2 @7x7": "fft",
    }
    assert len(calls) == 6 and {c[3:] for c in calls} == {(8, "fp32")}
    assert rt.conv_choice["cached"] is False and rt.conv_choice["seconds"]["512->512 k5p2 @7x7"]["fft"] == 0.5
    again = Runtime.from_config(shallow_config(tmp_path), measure_conv=measure)
    assert len(calls) == 6 and again.conv_choice["cached"] is True and again.conv_algorithms == rt.conv_algorithms
    cfg = shallow_config(tmp_path)
    cfg.train.batch_size = 16  # another batch size is another measurement
    Runtime.from_config(cfg, measure_conv=measure)
    assert len(calls) == 12
    cache = json.loads((tmp_path / speedcache.CACHE_FILE).read_text())
    assert sum(v["what"][0] == "conv" for v in cache.values()) == 12


def test_a_run_finds_its_layer_shapes_once_and_reads_the_speed_cache_once(tmp_path, monkeypatch):
    """Choosing the algorithms finds the layer shapes (one forward pass) and reads the speed cache
    once for all of them; the run's own model takes the shapes found, with no second pass."""
    from centerexp.training.loop import build_parts

    measure, _ = timings({28: {"library": 1.0}, 14: {"library": 1.0}, 7: {"library": 1.0, "fft": 0.5}})
    Runtime.from_config(shallow_config(tmp_path), measure_conv=measure)  # measured and cached
    passes, reads = [], []
    real_inputs, real_read = conv.layer_inputs, speedcache._read

    def layer_inputs(model, image_size=(28, 28), known=None):
        passes.append(known is None)
        return real_inputs(model, image_size, known)

    monkeypatch.setattr(conv, "layer_inputs", layer_inputs)
    monkeypatch.setattr(speedcache, "_read", lambda path: reads.append(path) or real_read(path))
    cfg = shallow_config(tmp_path)
    rt = Runtime.from_config(cfg, measure_conv=measure)
    parts = build_parts(cfg, rt.device, rt.channels_last, rt.conv_algorithms, rt.conv_layers)
    assert passes == [True, False] and len(reads) == 1 and rt.conv_choice["cached"]
    fft = {
        (h, w)
        for m in parts.model.modules()
        if isinstance(m, conv.Conv2d)
        for (h, w), a in m.algorithms.items()
        if a == "fft"
    }
    assert fft == {(7, 7)}
    assert sum(len(m.algorithms) for m in parts.model.modules() if isinstance(m, conv.Conv2d)) == 6


def test_a_set_algorithm_applies_where_it_can_and_the_library_elsewhere(tmp_path):
    rt = Runtime.from_config(shallow_config(tmp_path, "toeplitz"), measure_conv=lambda *a: pytest.fail("measured"))
    assert set(rt.conv_algorithms.values()) == {"library"}  # the shallow net has no map as small as 5x5
    cfg = Config()
    cfg.model.arch, cfg.train.device, cfg.train.conv_algo, cfg.train.precision = "deep", "cpu", "toeplitz", "fp32"
    deep = Runtime.from_config(cfg)
    assert {k for k, a in deep.conv_algorithms.items() if a == "toeplitz"} == {
        "512->256 k5p2 @3x3",
        "256->128 k5p2 @3x3",
        "128->64 k5p2 @3x3",
    }
    assert len(deep.conv_algorithms) == 9 and deep.conv_choice["mode"].startswith("set in config")
    cfg.model.arch = "linear"
    assert Runtime.from_config(cfg).conv_algorithms == {}


def test_the_real_measurement_times_every_algorithm_that_applies():
    seconds = conv.measure_layer(8, 8, 5, 2, 3, 3, 4, "fp32", torch.device("cpu"), True)
    assert set(seconds) == {"library", "toeplitz", "fft"} and all(s > 0 for s in seconds.values())
    seconds = conv.measure_layer(4, 8, 5, 2, 14, 14, 4, "bf16", torch.device("cpu"), True)
    assert set(seconds) == {"library", "fft", "fft_bf16"}
