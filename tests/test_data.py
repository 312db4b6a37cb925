from pathlib import Path

import pytest
import torch

from centerexp.config import DataConfig
from centerexp.errors import CenterexpError
from centerexp.training.data import SHA256, load_mnist, prepare_mnist, to_float


def test_real_mnist_is_unpacked_verified_and_loaded(mnist_root):
    for name in SHA256:
        assert (mnist_root / "MNIST" / "raw" / name).is_file()
    train, test = load_mnist(DataConfig(), seed=0)
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    assert train.labels[:5].tolist() == [5, 0, 4, 1, 9]  # the well-known first MNIST labels
    assert torch.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    x = to_float(train.images[:64], normalize=False)
    assert x.dtype == torch.float32 and x.min() == 0 and x.max() == 1


def test_subsets_first_and_seeded_random():
    first, _ = load_mnist(DataConfig(train_subset=100, test_subset=50), seed=0)
    full, _ = load_mnist(DataConfig(), seed=0)
    assert len(first) == 100 and torch.equal(first.labels, full.labels[:100])
    r1, t1 = load_mnist(DataConfig(train_subset=100, test_subset=50, subset_mode="random"), seed=1)
    r2, _ = load_mnist(DataConfig(train_subset=100, test_subset=50, subset_mode="random"), seed=1)
    r3, _ = load_mnist(DataConfig(train_subset=100, test_subset=50, subset_mode="random"), seed=2)
    assert len(t1) == 50
    assert torch.equal(r1.labels, r2.labels) and not torch.equal(r1.images, r3.images)
    assert not torch.equal(r1.images, first.images)


def test_normalize_option():
    train, _ = load_mnist(DataConfig(train_subset=1000), seed=0)
    x = to_float(train.images, normalize=True)
    assert x.mean().item() == pytest.approx(0.0, abs=0.05) and x.std().item() == pytest.approx(1.0, abs=0.05)


def test_corrupt_cached_file_is_a_clear_error(tmp_path, mnist_root):
    root = prepare_mnist(tmp_path / "cache")
    victim = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(CenterexpError, match=r"MNIST file .*t10k-labels-idx1-ubyte fails its checksum.*delete it"):
        prepare_mnist(root)


def test_corrupt_packaged_file_is_a_clear_error(tmp_path):
    import shutil

    from centerexp.training.data import PACKAGED

    pkg = tmp_path / "pkg"
    shutil.copytree(PACKAGED, pkg)
    (pkg / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(CenterexpError, match="train-labels-idx1-ubyte"):
        prepare_mnist(tmp_path / "cache", packaged=pkg)
    assert not (tmp_path / "cache" / "MNIST" / "raw" / "train-labels-idx1-ubyte").exists()


def _unpack(root: str) -> None:
    prepare_mnist(Path(root))


def test_two_processes_unpacking_into_one_empty_cache_both_succeed(tmp_path):
    """Two first runs on a new machine (reproduce --jobs 2) unpack MNIST at the same moment."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    children = [ctx.Process(target=_unpack, args=(str(tmp_path),)) for _ in range(2)]
    for c in children:
        c.start()
    for c in children:
        c.join(60)
        assert c.exitcode == 0
    prepare_mnist(tmp_path)  # verifies every file's checksum
    assert sorted(p.name for p in (tmp_path / "MNIST" / "raw").iterdir()) == sorted(SHA256)
