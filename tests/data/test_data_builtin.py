"""Built-in data sets and the IDX parser, on small files the tests write (no network)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from labeler.data import DATASETS, DataError, builtin, read_source
from labeler.data.builtin import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    IDX_FILES,
    load_fashion_mnist,
    load_mnist,
    read_idx,
)


def idx_bytes(array: np.ndarray, type_byte: int = 0x08) -> bytes:
    dtype = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[type_byte]
    header = bytes([0, 0, type_byte, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    data = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def write_idx_set(folder: Path, n_train: int, n_test: int, gz: bool, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for part, stem in IDX_FILES.items():
        write_idx(folder / stem, arrays[part], gz)
    return arrays


# ---- digits


def test_digits_split_is_fixed_stratified_and_disjoint():
    data = read_source("digits")
    assert data.pixels.shape == (1797, 1, 8, 8) and data.pixels.dtype == np.uint8
    assert data.pixels.max() == 255 and data.pixels.min() == 0
    assert data.classes == [str(d) for d in range(10)]
    test = np.array([s == "test" for s in data.splits])
    assert test.sum() == 450 and (~test).sum() == 1347
    # Stratified: each class has 25 % of its images in the test split, up to rounding.
    for c in range(10):
        in_class = data.truth == c
        assert abs(test[in_class].sum() - 0.25 * in_class.sum()) <= 1
    keys = data.keys
    assert len(set(keys)) == len(keys)
    assert all(k.startswith("test/") == t for k, t in zip(keys, test))
    assert data.files == [None] * 1797
    # The split does not change between calls.
    assert read_source("digits").splits == data.splits


def test_digits_resize_keeps_sha_of_native_pixels():
    native, resized = read_source("digits"), read_source("digits", image_size=16)
    assert resized.pixels.shape == (1797, 1, 16, 16)
    assert resized.sha256 == native.sha256


def test_progress_is_called_to_the_end():
    calls = []
    read_source("digits", progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (1797, 1797)


# ---- IDX parser


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, gz):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x-idx3-ubyte", images, gz)
    path = tmp_path / ("x-idx3-ubyte.gz" if gz else "x-idx3-ubyte")
    np.testing.assert_array_equal(read_idx(path), images)


def test_read_idx_big_endian_int32(tmp_path):
    values = np.array([1, -2, 70000], dtype=np.int32)
    (tmp_path / "a").write_bytes(idx_bytes(values, 0x0C))
    out = read_idx(tmp_path / "a")
    np.testing.assert_array_equal(out, values)
    assert out.dtype.isnative


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x00\x00\x08", "not an IDX"),
        (b"PK\x03\x04rest", "not an IDX"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "not an IDX"),  # unknown type byte
        (b"\x00\x00\x08\x03\x00\x00\x00\x02", "broken IDX header"),
        (idx_bytes(np.zeros((2, 3, 3), np.uint8))[:-1], "truncated"),
        (idx_bytes(np.zeros((2, 3, 3), np.uint8)) + b"\0", "longer than"),
        (b"\x1f\x8b\x08\x00garbage", "corrupt gzip"),
    ],
)
def test_read_idx_rejects_corrupt_files(tmp_path, data, message):
    (tmp_path / "bad").write_bytes(data)
    with pytest.raises(DataError, match=message):
        read_idx(tmp_path / "bad")


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="Cannot read"):
        read_idx(tmp_path / "nope")


# ---- Fashion-MNIST and MNIST from fake folders


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_from_folder(tmp_path, gz):
    arrays = write_idx_set(tmp_path, n_train=6, n_test=4, gz=gz)
    data = load_fashion_mnist(folder=tmp_path, download_dir=tmp_path / "dl")
    assert data.pixels.shape == (10, 1, 28, 28)
    assert data.splits == ["pool"] * 6 + ["test"] * 4
    assert data.keys[0] == "train/00000.png" and data.keys[6] == "test/00000.png"
    assert data.classes == FASHION_MNIST_CLASSES
    np.testing.assert_array_equal(data.truth[:6], arrays["train_labels"])
    np.testing.assert_array_equal(data.pixels[6:, 0], arrays["test_images"])
    assert not (tmp_path / "dl").exists()


def test_fashion_mnist_mismatched_files(tmp_path):
    write_idx_set(tmp_path, n_train=6, n_test=4, gz=False)
    write_idx(tmp_path / IDX_FILES["train_labels"], np.zeros(5, np.uint8), gz=False)
    with pytest.raises(DataError, match="do not match"):
        load_fashion_mnist(folder=tmp_path, download_dir=tmp_path / "dl")


def test_fashion_mnist_without_files_or_download(tmp_path, monkeypatch):
    import torchvision.datasets

    def no_network(*args, **kwargs):
        raise RuntimeError("Error downloading")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", no_network)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(folder=tmp_path / "missing", download_dir=tmp_path / "dl")


def test_fashion_mnist_uses_previous_download(tmp_path):
    write_idx_set(tmp_path / "dl" / "FashionMNIST" / "raw", n_train=3, n_test=2, gz=True)
    data = load_fashion_mnist(folder=tmp_path / "missing", download_dir=tmp_path / "dl")
    assert len(data.keys) == 5


def test_mnist_reads_torchvision_raw_folder(tmp_path, monkeypatch):
    write_idx_set(tmp_path / "MNIST" / "raw", n_train=5, n_test=3, gz=False)
    data = load_mnist(download_dir=tmp_path)
    assert data.classes == [str(d) for d in range(10)] and data.splits.count("test") == 3
    # The registry entry finds the same files through the data folder setting.
    monkeypatch.setenv("LABELER_DATA_DIR", str(tmp_path.parent / tmp_path.name / "data"))
    write_idx_set(tmp_path / "data" / "downloads" / "MNIST" / "raw", n_train=2, n_test=2, gz=True)
    assert DATASETS["mnist"].offline()
    assert len(read_source("mnist").keys) == 4


def test_mnist_download_failure_is_a_data_error(tmp_path, monkeypatch):
    import torchvision.datasets

    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "MNIST", no_network)
    with pytest.raises(DataError, match="allow the download"):
        load_mnist(download_dir=tmp_path)


@pytest.mark.skipif(
    not builtin.has_idx_files(FASHION_MNIST_DIR), reason="dataset-fashion-mnist is not installed"
)
def test_real_fashion_mnist():
    data = read_source("fashion-mnist")
    assert data.pixels.shape == (70000, 1, 28, 28)
    assert data.splits.count("test") == 10000
    assert np.bincount(data.truth[:60000], minlength=10).tolist() == [6000] * 10


@pytest.mark.parametrize("name", list(DATASETS))
def test_every_registry_entry_loads(name, monkeypatch, tmp_path):
    """Each built-in loads through read_source; MNIST (and Fashion-MNIST when not installed) from
    small fake IDX files in the download folder, since tests have no network."""
    downloads = builtin.default_download_dir()
    write_idx_set(downloads / "MNIST" / "raw", n_train=4, n_test=2, gz=True)
    write_idx_set(downloads / "FashionMNIST" / "raw", n_train=4, n_test=2, gz=True)
    assert DATASETS[name].offline()
    data = read_source(name, image_size=12)
    channels, n_classes = (3, 4) if name == "shapes" else (1, 10)  # shapes: the colour benchmark
    assert data.pixels.shape[1:] == (channels, 12, 12) and data.splits.count("test") > 0
    assert len(data.classes) == n_classes and data.truth.min() >= 0


def test_registry_entries_describe_themselves():
    assert list(DATASETS) == ["digits", "fashion-mnist", "mnist", "shapes"]
    for name, entry in DATASETS.items():
        assert entry.name == name and entry.title and entry.description
    assert DATASETS["digits"].offline()


def test_unknown_source():
    with pytest.raises(DataError, match="Unknown data source"):
        read_source("cifar")
