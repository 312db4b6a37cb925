"""MNIST, shipped with the package: verify, unpack once into a cache, load whole splits as tensors.

The four original IDX files travel gzip-compressed inside the package (centerexp/assets/mnist).
On first use they are checked against the SHA-256 sums below (of the uncompressed bytes) and
unpacked into ``<root>/MNIST/raw/``, the layout torchvision's ``datasets.MNIST`` reads. Each
split is then held in memory as one uint8 tensor on the training device and converted to float
per batch, so no DataLoader or worker processes are involved.
"""

import gzip
import hashlib
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from centerexp.config import DataConfig
from centerexp.errors import CenterexpError

PACKAGED = Path(__file__).parent / "assets" / "mnist"

# SHA-256 of the uncompressed original IDX files (Y. LeCun, C. Cortes, C. J. C. Burges; CC BY-SA 3.0).
SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

MEAN, STD = 0.1307, 0.3081  # the usual MNIST statistics, used only with data.normalize


def default_root() -> Path:
    if os.environ.get("CENTEREXP_DATA"):
        return Path(os.environ["CENTEREXP_DATA"])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "centerexp"


def data_root(cfg: DataConfig) -> Path:
    return Path(cfg.root) if cfg.root else default_root()


def raw_dir(root: Path) -> Path:
    """Where the unpacked IDX files live under a data root (torchvision's MNIST layout)."""
    return Path(root) / "MNIST" / "raw"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# Files verified in this process, keyed by (path, size, mtime): a run checks its data once even
# though both the CLI (before creating the run folder) and the trainer ask.
_verified: set[tuple[str, int, int]] = set()


def _check(path: Path, name: str, fix: str) -> None:
    if not path.is_file():
        raise CenterexpError(f"MNIST file missing: {path} ({fix})")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _verified:
        return
    digest = sha256_of(path)
    if digest != SHA256[name]:
        raise CenterexpError(
            f"MNIST file {path} fails its checksum: sha256 {digest[:12]}..., expected {SHA256[name][:12]}... ({fix})"
        )
    _verified.add(key)


def prepare_mnist(root: Path, download: bool = False, packaged: Path = PACKAGED) -> Path:
    """Make sure ``root/MNIST/raw`` holds the four verified IDX files; return ``root``.

    Raises CenterexpError naming the file on a missing or corrupt file, never continues silently.
    """
    raw = raw_dir(root)
    try:
        raw.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CenterexpError(f"cannot create the MNIST cache folder {raw}: {e.strerror}") from None
    if download:
        from torchvision.datasets import MNIST

        for train in (True, False):
            MNIST(str(root), train=train, download=True)
    for name in SHA256:
        target = raw / name
        if not target.exists():
            source = packaged / f"{name}.gz"
            if not source.is_file():
                raise CenterexpError(f"MNIST file missing from the package: {source} (reinstall centerexp)")
            tmp = raw / f".{name}.{os.getpid()}.partial"  # per process: two first runs may unpack at once
            try:
                with gzip.open(source, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            except (OSError, EOFError) as e:
                tmp.unlink(missing_ok=True)
                raise CenterexpError(f"cannot unpack MNIST file {source}: {e}") from None
            try:
                _check(tmp, name, "the packaged copy is damaged: reinstall centerexp")
            except CenterexpError:
                tmp.unlink(missing_ok=True)
                raise
            os.replace(tmp, target)
        else:
            _check(target, name, "delete it and it will be unpacked again")
    return root


@dataclass
class Split:
    """One MNIST split held as tensors on the training device."""

    images: torch.Tensor  # uint8, (N, 1, 28, 28)
    labels: torch.Tensor  # int64, (N,)

    def __len__(self) -> int:
        return len(self.labels)


def _subset(split: Split, n: int | None, mode: str, seed: int) -> Split:
    if n is None or n >= len(split):
        return split
    if mode == "first":
        idx = torch.arange(n)
    else:  # random: its own generator, so the subset does not depend on anything else drawn
        idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return Split(split.images[idx], split.labels[idx])


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file of unsigned bytes (MNIST's format: two zero bytes, type 0x08, the number of
    dimensions, each dimension as a big-endian uint32, the data), as torchvision's MNIST reads it,
    without importing torchvision (whose import costs a small run seconds)."""
    data = bytearray(Path(path).read_bytes())  # writable: torch.frombuffer warns on read-only bytes
    if data[:3] != b"\x00\x00\x08":
        raise CenterexpError(f"{path} is not an IDX file of unsigned bytes")
    dims = data[3]
    shape = struct.unpack(f">{dims}I", data[4 : 4 + 4 * dims])
    return torch.frombuffer(data, dtype=torch.uint8, offset=4 + 4 * dims).view(*shape)


def load_mnist(cfg: DataConfig, seed: int, device: torch.device | str = "cpu") -> tuple[Split, Split]:
    """Return (train, test) splits, subset as configured, resident on ``device``."""
    raw = raw_dir(prepare_mnist(data_root(cfg), download=cfg.download))
    splits = []
    test_seed = seed if cfg.test_subset_seed is None else cfg.test_subset_seed  # one test set for a whole sweep
    for prefix, n, subset_seed in (("train", cfg.train_subset, seed), ("t10k", cfg.test_subset, test_seed)):
        images, labels = read_idx(raw / f"{prefix}-images-idx3-ubyte"), read_idx(raw / f"{prefix}-labels-idx1-ubyte")
        split = Split(images.unsqueeze(1), labels.long())
        split = _subset(split, n, cfg.subset_mode, subset_seed)
        splits.append(Split(split.images.to(device), split.labels.to(device)))
    return splits[0], splits[1]


def to_float(images: torch.Tensor, normalize: bool) -> torch.Tensor:
    """uint8 images -> float in [0, 1] like ToTensor(); optionally standardised."""
    x = images.float().div_(255.0)
    if normalize:
        x = x.sub_(MEAN).div_(STD)
    return x
