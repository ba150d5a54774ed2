"""Tests for sparsenets.data: offline loaders, registry errors and the batch iterator."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from sparsenets.data import DATASETS, Dataset, load_dataset
from sparsenets.data.fashion_mnist import DEFAULT_DIR, ENV_VAR
from sparsenets.data.registry import batches
from sparsenets.errors import SparsenetsError


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def mnist1d() -> Dataset:
    pytest.importorskip("mnist1d")
    return load_dataset("mnist1d")


def _check_common(ds: Dataset, n_train: int, n_test: int, shape: tuple[int, ...]) -> None:
    assert ds.input_shape == shape
    assert ds.num_classes == 10
    assert ds.x_train.shape == (n_train, *shape)
    assert ds.x_test.shape == (n_test, *shape)
    assert ds.y_train.shape == (n_train,)
    assert ds.y_test.shape == (n_test,)
    assert ds.x_train.dtype == torch.float32 and ds.x_test.dtype == torch.float32
    assert ds.y_train.dtype == torch.int64 and ds.y_test.dtype == torch.int64
    for y in (ds.y_train, ds.y_test):
        assert int(y.min()) >= 0 and int(y.max()) < ds.num_classes
    assert set(ds.y_train.tolist()) == set(range(10))
    assert torch.isfinite(ds.x_train).all() and torch.isfinite(ds.x_test).all()


def test_digits_shapes_and_standardization(digits: Dataset) -> None:
    _check_common(digits, 1437, 360, (1, 8, 8))
    assert digits.name == "digits"
    assert digits.num_features == 64
    assert abs(float(digits.x_train.mean())) < 1e-4
    assert abs(float(digits.x_train.std()) - 1.0) < 1e-2


def test_digits_deterministic(digits: Dataset) -> None:
    again = load_dataset("digits")
    assert torch.equal(again.x_train, digits.x_train)
    assert torch.equal(again.y_test, digits.y_test)


def test_mnist1d_shapes(mnist1d: Dataset) -> None:
    _check_common(mnist1d, 4000, 1000, (1, 40))
    assert mnist1d.num_features == 40
    assert abs(float(mnist1d.x_train.mean())) < 1e-4
    assert abs(float(mnist1d.x_train.std()) - 1.0) < 1e-2


def test_mnist1d_deterministic_and_preserves_global_rng(mnist1d: Dataset) -> None:
    import numpy as np

    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    again = load_dataset("mnist1d")
    assert np.random.rand() == expected
    assert torch.equal(again.x_train, mnist1d.x_train)
    assert torch.equal(again.y_train, mnist1d.y_train)


def test_dataset_is_frozen(digits: Dataset) -> None:
    with pytest.raises(AttributeError):
        digits.name = "other"  # type: ignore[misc]
    assert "digits" in repr(digits)


def _fashion_dir() -> str:
    return os.environ.get(ENV_VAR) or DEFAULT_DIR


@pytest.mark.skipif(
    not Path(_fashion_dir(), "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST files not installed",
)
def test_fashion_mnist_from_disk() -> None:
    ds = load_dataset("fashion_mnist")
    _check_common(ds, 60000, 10000, (1, 28, 28))
    assert ds.num_features == 784
    assert abs(float(ds.x_train.mean())) < 0.05
    assert abs(float(ds.x_train.std()) - 1.0) < 0.05


def test_fashion_mnist_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(SparsenetsError) as info:
        load_dataset("fashion_mnist", data_dir=str(tmp_path))
    msg = str(info.value)
    assert "\n" not in msg
    assert str(tmp_path) in msg
    assert "dataset-fashion-mnist" in msg
    assert ENV_VAR in msg


def test_fashion_mnist_env_var_is_searched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(SparsenetsError, match="nowhere"):
        load_dataset("fashion_mnist")
    assert ENV_VAR in os.environ


def test_fashion_mnist_bad_magic(tmp_path: Path) -> None:
    import gzip

    from sparsenets.data.fashion_mnist import FILES

    for fname in FILES.values():
        with gzip.open(tmp_path / fname, "wb") as fh:
            fh.write(b"\x00\x00\x08\x01" + b"\x00" * 12)
    with pytest.raises(SparsenetsError, match="magic"):
        load_dataset("fashion_mnist", data_dir=str(tmp_path))
    assert len(list(tmp_path.iterdir())) == 4


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(SparsenetsError) as info:
        load_dataset("cifar")
    msg = str(info.value)
    assert "'cifar'" in msg
    for name in DATASETS:
        assert name in msg


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("batch_size", [1, 7, 10, 64])
def test_batches_cover_every_sample_once(shuffle: bool, batch_size: int) -> None:
    n = 23
    x = torch.arange(n, dtype=torch.float32).reshape(n, 1) * 10
    y = torch.arange(n)
    gen = torch.Generator().manual_seed(0)
    seen: list[int] = []
    sizes = []
    for xb, yb in batches(x, y, batch_size, shuffle=shuffle, generator=gen):
        assert torch.equal(xb[:, 0], yb.float() * 10)
        seen.extend(yb.tolist())
        sizes.append(len(yb))
    assert sorted(seen) == list(range(n))
    assert all(s == batch_size for s in sizes[:-1]) and 0 < sizes[-1] <= batch_size
    if not shuffle:
        assert seen == list(range(n))


def test_batches_deterministic_with_seeded_generator() -> None:
    x, y = torch.randn(50, 3), torch.arange(50)

    def order(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        return [i for _, yb in batches(x, y, 8, shuffle=True, generator=gen) for i in yb.tolist()]

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert order(1) != list(range(50))


def test_batches_rejects_bad_input() -> None:
    with pytest.raises(SparsenetsError):
        list(batches(torch.zeros(4, 2), torch.zeros(4), 0, shuffle=False))
    with pytest.raises(SparsenetsError):
        list(batches(torch.zeros(4, 2), torch.zeros(3), 2, shuffle=False))
    assert list(batches(torch.zeros(0, 2), torch.zeros(0), 2, shuffle=True)) == []
