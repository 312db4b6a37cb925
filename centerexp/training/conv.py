"""Convolution algorithms for the ConvLayers, each exact in maths, chosen per layer shape.

The library (oneDNN on CPU, cuDNN on CUDA) runs the 28x28 and 14x14 layers near matmul speed but
not the 7x7 and 3x3 ones: a 5x5 kernel with padding 2 on a tiny map is mostly padding. Other ways
to compute the same linear map:

- ``toeplitz``: on a map no larger than the kernel (3x3 here) every output sees every input, so
  the layer is one dense matrix from ``cin*h*w`` to ``cout*h*w`` values. Its entries are the
  kernel's taps, gathered from the weight inside autograd at every step; then one GEMM.
- ``fft``: the convolution theorem on an ``N1 x N2`` grid just large enough that the circular
  wrap-around only ever reads zeros (N = h + padding for a kernel of 2*padding+1). Transform,
  multiply frequency by frequency (a batched complex GEMM over channels), transform back. The
  2-D transforms go one axis at a time, each a small fixed real matrix (built from torch.fft on
  unit vectors) with the complex arithmetic folded in, so every phase is a GEMM: for 5x5 on 14x14
  the per-frequency products do ~4x fewer multiply-adds than direct convolution, and the
  transforms ~5x fewer than one dense 2-D transform matrix would. Under autocast only the
  per-frequency products run in bf16; the transforms stay in fp32.
- ``fft_bf16``: ``fft`` with the transforms in bf16 too (fp32 accumulation inside each GEMM), under
  bf16 autocast only. The transforms are then as fast as the products and no fp32 copies are
  made, at the price of four more bf16 roundings (the transformed input, the products, the half-
  way inverse and the matrices themselves): about twice the library's bf16 error, measured in
  tests/test_conv.py and bounded there.

``Conv2d`` is ``nn.Conv2d`` with the same parameters and state_dict (checkpoints and old runs load
unchanged) and a per-input-size choice of algorithm, set by ``use_algorithms``.
``choose_algorithms`` decides it for ``train.conv_algo: auto`` by timing forward + backward of
every algorithm that applies on the run's own layer shapes, batch size and precision, once per
machine (speedcache.py); an algorithm is chosen only when it is at least MIN_SPEEDUP times as
fast as the library, so that auto never loses to the library by more than timing noise. On CUDA
auto keeps cuDNN: nothing here has been measured on a GPU.
"""

import functools

import torch
import torch.nn.functional as F
from torch import nn

from centerexp.config import Config
from centerexp.training.speedcache import median_seconds, remembered_all

LIBRARY = "library"
FFT_BF16 = "fft_bf16"
ALGORITHMS = (LIBRARY, "toeplitz", "fft", FFT_BF16)
MIN_SPEEDUP = 1.1  # over the library; repeated timings of one layer on a busy 2-core VM spread by a few %
PROBE_REPEATS = 3  # timed forward + backward passes per algorithm at least, interleaved
PROBE_MIN_SECONDS = 0.3  # and at least this long per layer shape in all


def shape_key(c_in: int, c_out: int, kernel: int, padding: int, height: int, width: int) -> str:
    """One name per layer shape, used in the speed cache and env.json: "512->256 k5p2 @3x3"."""
    return f"{c_in}->{c_out} k{kernel}p{padding} @{height}x{width}"


def applies(algorithm: str, kernel: int, padding: int, height: int, width: int, precision: str) -> bool:
    """Whether ``algorithm`` computes this (stride 1, square kernel) layer in ``precision`` (the
    run's resolved train.precision); the library always does."""
    if algorithm == "toeplitz":  # dense only pays where the map is no bigger than the kernel
        return height * width <= kernel * kernel
    if algorithm == "fft":
        return padding < kernel
    if algorithm == FFT_BF16:  # in fp32 it would be fft itself
        return applies("fft", kernel, padding, height, width, precision) and precision == "bf16"
    return algorithm == LIBRARY


# ---------------------------------------------------------------------------------------------
# Dense Toeplitz


@functools.cache
def _tap_index(height: int, width: int, kernel: int, padding: int, device: torch.device) -> torch.Tensor:
    """(h*w outputs, h*w inputs) -> which of the kernel's taps joins them; kernel*kernel: none (zero)."""
    out_i, out_j = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    a = torch.arange(height).view(1, -1, 1) - out_i.reshape(-1, 1, 1) + padding  # kernel row
    b = torch.arange(width).view(1, 1, -1) - out_j.reshape(-1, 1, 1) + padding  # kernel column
    inside = (a >= 0) & (a < kernel) & (b >= 0) & (b < kernel)
    tap = torch.where(inside, a * kernel + b, torch.full_like(a, kernel * kernel))
    return tap.reshape(height * width, height * width).to(device)


def toeplitz_conv(x: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
    n, c_in, h, w = x.shape
    c_out, k = weight.shape[0], weight.shape[-1]
    taps = torch.cat([weight.reshape(c_out, c_in, k * k), weight.new_zeros(c_out, c_in, 1)], dim=2)
    dense = taps[:, :, _tap_index(h, w, k, padding, x.device)]  # (cout, cin, hw out, hw in)
    # Rows and columns ordered (position, channel): a channels_last x is then a plain view.
    dense = dense.permute(2, 0, 3, 1).reshape(h * w * c_out, h * w * c_in)
    y = x.permute(0, 2, 3, 1).reshape(n, h * w * c_in) @ dense.T
    return y.view(n, h, w, c_out).permute(0, 3, 1, 2)  # NCHW shape, channels_last memory


# ---------------------------------------------------------------------------------------------
# FFT as GEMMs


def _grid(size: int, kernel: int, padding: int) -> int:
    """The smallest circular grid along one axis whose wrap-around only ever reads zeros."""
    return max(size + padding, size + kernel - 1 - padding)


def _complex_as_real(m: torch.Tensor, complex_first: bool) -> torch.Tensor:
    """The complex (p, q) matrix ``m`` as a real (2p, 2q) one acting on real and imaginary parts.
    ``complex_first``: rows ordered (re/im, p) and columns (q, re/im), else rows (p, re/im) and
    columns (re/im, q): the orders in which fft_conv's data arrive and must leave."""
    real = torch.zeros(2, m.shape[0], m.shape[1], 2, dtype=torch.float64)
    real[0, ..., 0], real[0, ..., 1], real[1, ..., 0], real[1, ..., 1] = m.real, -m.imag, m.imag, m.real
    if not complex_first:
        real = real.permute(1, 0, 3, 2)  # (p, re/im out, re/im in, q)
    return real.reshape(2 * m.shape[0], 2 * m.shape[1])


@functools.cache
def _fourier_matrices(height: int, width: int, kernel: int, padding: int, dtype: torch.dtype, device: torch.device):
    """The real matrices of the 2-D transforms, applied one axis at a time, in float64 from torch.fft
    on unit vectors, then cast: (rows (2*F2, w): each row's real DFT, real parts then imaginary;
    columns (2*N1, 2*h): the complex DFT down each column; inverse columns (2*h, 2*N1); inverse
    rows (w, 2*F2): back to real values, keeping the first h x w of the grid). F2 = N2 // 2 + 1."""
    n1, n2 = _grid(height, kernel, padding), _grid(width, kernel, padding)
    rows = torch.fft.rfft(torch.eye(width, dtype=torch.float64), n=n2).T  # (F2, w)
    columns = torch.fft.fft(torch.eye(height, dtype=torch.float64), n=n1).T  # (N1, h)
    inverse_columns = torch.fft.ifft(torch.eye(n1, dtype=torch.complex128), dim=1)[:, :height].T  # (h, N1)
    units = torch.eye(n2 // 2 + 1, dtype=torch.complex128)
    inverse_rows = torch.cat(
        [torch.fft.irfft(units, n=n2)[:, :width].T, torch.fft.irfft(1j * units, n=n2)[:, :width].T], dim=1
    )
    matrices = (
        torch.cat([rows.real, rows.imag]),
        _complex_as_real(columns, complex_first=True),
        _complex_as_real(inverse_columns, complex_first=False),
        inverse_rows,
    )
    return tuple(m.to(dtype=dtype, device=device).contiguous() for m in matrices)


@functools.cache
def _kernel_spectrum(height: int, width: int, kernel: int, padding: int, dtype: torch.dtype, device: torch.device):
    """(2F, k*k): each kernel tap's spectrum on the grid, real parts then imaginary, conjugated
    (Conv2d is a cross-correlation: the input's spectrum times the kernel's conjugate spectrum)."""
    n1, n2 = _grid(height, kernel, padding), _grid(width, kernel, padding)
    taps = torch.zeros(kernel * kernel, n1, n2, dtype=torch.float64)
    for a in range(kernel):
        for b in range(kernel):
            taps[a * kernel + b, (a - padding) % n1, (b - padding) % n2] = 1
    spectrum = torch.fft.rfft2(taps).reshape(kernel * kernel, -1).T.conj()  # (F, k*k)
    return torch.cat([spectrum.real, spectrum.imag]).to(dtype=dtype, device=device).contiguous()


def _fft_conv(x: torch.Tensor, weight: torch.Tensor, padding: int, low_precision_transforms: bool) -> torch.Tensor:
    n, c_in, h, w = x.shape
    c_out, k = weight.shape[0], weight.shape[-1]
    kind = x.device.type
    product_dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None
    with torch.autocast(kind, enabled=False):
        wide = torch.float32 if x.dtype in (torch.bfloat16, torch.float16) else x.dtype
        dtype = product_dtype if low_precision_transforms and product_dtype is not None else wide
        rows, columns, inverse_columns, inverse_rows = _fourier_matrices(h, w, k, padding, dtype, x.device)
        n1, f2 = columns.shape[0] // 2, rows.shape[0] // 2
        f = n1 * f2
        # Each image row's real DFT (h GEMMs sharing one matrix), then each column's complex DFT (one
        # GEMM): (h, w, N) -> (h, re/im x F2, N) -> (re/im x N1, F2 x N) = (2, F, n, cin).
        by_rows = x.permute(2, 3, 0, 1).to(dtype, memory_format=torch.contiguous_format)  # one copy: (h, w, n, cin)
        by_rows = torch.matmul(rows, by_rows.reshape(h, w, n * c_in))
        spectrum = (columns @ by_rows.view(2 * h, f2 * n * c_in)).view(2, f, n, c_in)
        w_spectrum = _kernel_spectrum(h, w, k, padding, wide, x.device) @ weight.to(wide).reshape(c_out * c_in, k * k).T
        w_spectrum = w_spectrum.view(2, f, c_out, c_in).transpose(2, 3)  # (2, F, cin, cout)
        if product_dtype is not None:
            spectrum, w_spectrum = spectrum.to(product_dtype), w_spectrum.to(product_dtype)
        (xr, xi), (wr, wi) = spectrum, w_spectrum
        yr = torch.baddbmm(torch.bmm(xr, wr), xi, wi, alpha=-1)  # (F, n, cout): complex product, real part
        yi = torch.baddbmm(torch.bmm(xr, wi), xi, wr)  # and imaginary part
        y = torch.stack([yr, yi]).to(dtype).view(2 * n1, f2 * n * c_out)
        # and back: columns (one GEMM), then rows (h GEMMs), keeping the first h x w of the grid
        by_columns = (inverse_columns @ y).view(h, 2 * f2, n * c_out)
        y = torch.matmul(inverse_rows, by_columns).view(h, w, n, c_out)
    y = y.permute(2, 3, 0, 1).contiguous(memory_format=torch.channels_last)
    return y if product_dtype is None else y.to(product_dtype)


def fft_conv(x: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
    return _fft_conv(x, weight, padding, low_precision_transforms=False)


def fft_bf16_conv(x: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
    return _fft_conv(x, weight, padding, low_precision_transforms=True)


FUNCTIONS = {
    LIBRARY: lambda x, weight, padding: F.conv2d(x, weight, padding=padding),
    "toeplitz": toeplitz_conv,
    "fft": fft_conv,
    FFT_BF16: fft_bf16_conv,
}


# ---------------------------------------------------------------------------------------------
# The layer


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (stride 1, no bias, square kernel, as the ConvLayers use) that runs the algorithm
    chosen for its input size, the library where none is. Parameters and state_dict are nn.Conv2d's."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int):
        super().__init__(in_channels, out_channels, kernel_size, stride=1, padding=padding, bias=False)
        self.algorithms: dict[tuple[int, int], str] = {}  # (height, width) -> algorithm; not state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        algorithm = self.algorithms.get(tuple(x.shape[-2:]), LIBRARY)
        if algorithm == LIBRARY:
            return super().forward(x)
        return FUNCTIONS[algorithm](x, self.weight, self.padding[0])

    def key(self, height: int, width: int) -> str:
        return shape_key(self.in_channels, self.out_channels, self.kernel_size[0], self.padding[0], height, width)


def layer_inputs(
    model: nn.Module, image_size: tuple[int, int] = (28, 28), known: tuple | None = None
) -> list[tuple[Conv2d, int, int]]:
    """(layer, input height, input width) of each Conv2d in ``model``, from one forward pass of a
    1-image batch (in eval mode, so that BatchNorm statistics are not touched). ``known``: the
    ``named_inputs`` of a model of the same architecture, found before: no forward pass."""
    if known is not None:
        return [(model.get_submodule(name), h, w) for name, h, w in known]
    seen = []
    hooks = [
        m.register_forward_pre_hook(lambda m, args: seen.append((m, *args[0].shape[-2:])))
        for m in model.modules()
        if isinstance(m, Conv2d)
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            parameter = next(model.parameters())
            model(torch.zeros(1, 1, *image_size, device=parameter.device, dtype=parameter.dtype))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return seen


def named_inputs(model: nn.Module, inputs: list[tuple[Conv2d, int, int]]) -> tuple[tuple[str, int, int], ...]:
    """``layer_inputs`` as plain data: (module name, height, width), to apply to another instance."""
    names = {m: name for name, m in model.named_modules()}
    return tuple((names[layer], h, w) for layer, h, w in inputs)


def use_algorithms(model: nn.Module, chosen: dict[str, str], known: tuple | None = None) -> None:
    """Set each Conv2d's algorithm from ``chosen`` (shape_key -> algorithm); unlisted shapes use the
    library. ``known``: see layer_inputs."""
    for layer, h, w in layer_inputs(model, known=known):
        layer.algorithms[(h, w)] = chosen.get(layer.key(h, w), LIBRARY)


# ---------------------------------------------------------------------------------------------
# Choosing by measurement


def measure_layer(
    c_in: int,
    c_out: int,
    kernel: int,
    padding: int,
    height: int,
    width: int,
    batch: int,
    precision: str,
    device: torch.device,
    channels_last: bool,
) -> dict[str, float]:
    """Median seconds of forward + backward (input and weight gradients) of each algorithm that
    applies, on random data of this shape, batch size, precision and memory format."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        x = torch.randn(batch, c_in, height, width, device=device)
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        x.requires_grad_()
        weight = torch.randn(c_out, c_in, kernel, kernel, device=device, requires_grad=True)

    def step(algorithm: str) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            y = FUNCTIONS[algorithm](x, weight, padding)
        y.float().sum().backward()

    candidates = {a: lambda a=a: step(a) for a in candidates_for(kernel, padding, height, width, precision)}
    return median_seconds(candidates, device, PROBE_REPEATS, PROBE_MIN_SECONDS)


def candidates_for(kernel: int, padding: int, height: int, width: int, precision: str) -> list[str]:
    """The algorithms that apply to this layer shape in ``precision``, the library first."""
    return [a for a in ALGORITHMS if applies(a, kernel, padding, height, width, precision)]


def fastest(seconds: dict[str, float]) -> str:
    """The fastest algorithm if it beats the library by MIN_SPEEDUP, else the library."""
    best = min(seconds, key=seconds.get)
    return best if seconds[LIBRARY] >= MIN_SPEEDUP * seconds[best] else LIBRARY


def choose_algorithms(
    cfg: Config, model: nn.Module, device: torch.device, channels_last: bool, precision: str, measure=None
) -> tuple[dict[str, str], dict, tuple]:
    """({shape_key: algorithm} for every Conv2d of ``model``, how it was chosen, the layer shapes
    found (``named_inputs``, so that the run's own model needs no second forward pass to find them)).
    ``measure`` replaces ``measure_layer`` (for tests)."""
    inputs = layer_inputs(model)
    found = named_inputs(model, inputs)
    shapes = {layer.key(h, w): (layer, h, w) for layer, h, w in inputs}
    wanted = cfg.train.conv_algo
    if wanted != "auto":
        chosen = {
            key: wanted if applies(wanted, layer.kernel_size[0], layer.padding[0], h, w, precision) else LIBRARY
            for key, (layer, h, w) in shapes.items()
        }
        return chosen, {"mode": "set in config (the library where it does not apply)"}, found
    if device.type == "cuda":
        return dict.fromkeys(shapes, LIBRARY), {"mode": "auto: cuDNN on CUDA (not measured)"}, found
    batch, layout = cfg.train.batch_size, "nhwc" if channels_last else "nchw"
    wanted_measurements = {}
    for key, (layer, h, w) in shapes.items():
        args = (layer.in_channels, layer.out_channels, layer.kernel_size[0], layer.padding[0], h, w)
        run = lambda args=args: (measure or measure_layer)(*args, batch, precision, device, channels_last)  # noqa: E731
        # what was timed names the candidates: a measurement from before an algorithm existed is
        # taken again rather than read back without it
        timed = "+".join(candidates_for(*args[2:], precision))
        wanted_measurements[key] = (["conv", key, f"batch {batch}", precision, layout, timed], run)
    seconds, from_cache, path = remembered_all(cfg, wanted_measurements)  # the cache file read once
    chosen = {key: fastest(s) for key, s in seconds.items()}
    how = {
        "mode": f"auto: measured at batch {batch} in {precision}, another algorithm if >= {MIN_SPEEDUP}x the library",
        "seconds": seconds,
        "cached": all(from_cache.values()),
        **({"cache": str(path)} if shapes else {}),
    }
    return chosen, how, found
