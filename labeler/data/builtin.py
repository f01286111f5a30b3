"""Built-in data sets: scikit-learn digits, Fashion-MNIST and MNIST, as `ImageSet`s.

Each keeps an official (or, for digits, a fixed) test split out of the pool: rows with
split "test" are for evaluation only. Keys are `train/NNNNN.png` / `test/NNNNN.png`, the
row's index in its official file (for digits: in `load_digits()`), so a key always names the
same image. `sha256` is the digest of the native uint8 pixel bytes, computed before any
resizing, so it does not depend on the working size.

MNIST and Fashion-MNIST come as IDX files (LeCun et al., "Gradient-based learning applied to
document recognition", 1998; Xiao et al., "Fashion-MNIST", 2017). `read_idx` parses them
itself, plain or gzipped, and checks the header, so a corrupt download is a clear
`DataError` rather than a reshape error deep in numpy.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .base import DataError, ImageSet

Progress = Callable[[int, int], None]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
DIGIT_CLASSES = [str(d) for d in range(10)]

# The digits set has no official split: 25 % of it, stratified by class with a fixed seed,
# is the test split (450 of 1797 images), so every project on digits sees the same split.
DIGITS_TEST_SIZE = 0.25
DIGITS_SPLIT_SEED = 0

# The four files of an MNIST-format data set; each may also be stored with ".gz".
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# IDX type byte -> numpy dtype (big-endian, as the format stores numbers).
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def default_download_dir() -> Path:
    """Where torchvision downloads go: `<data dir>/downloads`."""
    from labeler.config import data_dir

    return data_dir() / "downloads"


# ---------------------------------------------------------------------------------------
# IDX files


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (plain or gzipped) into a numpy array in native byte order.

    Layout: two zero bytes, a type byte (0x08 uint8 ... 0x0E float64), a byte with the number
    of dimensions d, then d big-endian uint32 sizes, then prod(sizes) values, big-endian.
    Raises DataError when the file is missing, is not IDX, or its size disagrees with its
    header (truncated or with trailing bytes).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(
            f"Cannot read the IDX file {path} ({error.strerror}); check the file exists."
        ) from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise DataError(f"{path} is a corrupt gzip file ({error}); download it again.") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number); download it again.")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path} has a broken IDX header; download it again.")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    count = math.prod(dims)
    expected = count * dtype.itemsize
    if len(raw) - header != expected:
        what = "truncated" if len(raw) - header < expected else "longer than its header says"
        raise DataError(
            f"{path} is {what} ({len(raw) - header} data bytes, header says {expected}); download it again."
        )
    array = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)


def find_idx(folder: str | Path, stem: str) -> Path | None:
    """The file `stem` or `stem.gz` in `folder`, plain first; None when neither exists."""
    for name in (stem, stem + ".gz"):
        candidate = Path(folder) / name
        if candidate.is_file():
            return candidate
    return None


def has_idx_files(folder: str | Path) -> bool:
    """True when `folder` holds all four MNIST-format files (plain or gzipped)."""
    return all(find_idx(folder, stem) is not None for stem in IDX_FILES.values())


def read_idx_set(
    folder: str | Path,
    classes: list[str],
    image_size: int | None = None,
    progress: Progress | None = None,
) -> ImageSet:
    """An MNIST-format folder as an ImageSet: the train files are the pool, t10k the test split."""
    folder = Path(folder)
    arrays = {}
    for part, stem in IDX_FILES.items():
        path = find_idx(folder, stem)
        if path is None:
            raise DataError(f"{folder} has no {stem} (or {stem}.gz); put the four MNIST-format files there.")
        arrays[part] = read_idx(path)
    blocks = []
    for split, prefix in (("pool", "train"), ("test", "test")):
        images, labels = arrays[f"{prefix}_images"], arrays[f"{prefix}_labels"]
        if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"The {prefix} files in {folder} do not match: images {images.dtype} {images.shape}, "
                f"labels {labels.dtype} {labels.shape}; download them again."
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise DataError(
                f"The {prefix} labels in {folder} are outside 0..{len(classes) - 1}; download them again."
            )
        blocks.append((split, prefix, images, labels))
    pixels = np.concatenate([images for *_, images, _ in blocks])[:, None]  # (N, 1, H, W)
    truth = np.concatenate([labels for *_, labels in blocks]).astype(np.int64)
    keys = [f"{prefix}/{i:05d}.png" for _, prefix, images, _ in blocks for i in range(len(images))]
    splits = [split for split, _, images, _ in blocks for _ in range(len(images))]
    return _finish(pixels, keys, truth, splits, classes, image_size, progress)


# ---------------------------------------------------------------------------------------
# The three built-in sets


def load_digits_set(image_size: int | None = None, progress: Progress | None = None) -> ImageSet:
    """scikit-learn's 1797 8x8 digits; a fixed stratified 25 % test split (seed 0).

    Values 0..16 are scaled to 0..255 (x * 255 / 16, rounded).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    truth = digits.target.astype(np.int64)
    _, test_rows = train_test_split(
        np.arange(len(truth)), test_size=DIGITS_TEST_SIZE, stratify=truth, random_state=DIGITS_SPLIT_SEED
    )
    is_test = np.zeros(len(truth), dtype=bool)
    is_test[test_rows] = True
    splits = ["test" if t else "pool" for t in is_test]
    keys = [f"{'test' if t else 'train'}/{i:05d}.png" for i, t in enumerate(is_test)]
    return _finish(pixels, keys, truth, splits, DIGIT_CLASSES, image_size, progress)


def load_fashion_mnist(
    image_size: int | None = None,
    progress: Progress | None = None,
    folder: str | Path = FASHION_MNIST_DIR,
    download_dir: str | Path | None = None,
) -> ImageSet:
    """Fashion-MNIST: 60k pool images, the official 10k test split, 28x28 grayscale.

    Reads `folder` (the Debian package `dataset-fashion-mnist` installs the IDX files in
    /usr/share/datasets/fashion-mnist). When they are not there it uses a previous download
    in `download_dir`, and else downloads with torchvision into `download_dir`.
    """
    if has_idx_files(folder):
        return read_idx_set(folder, FASHION_MNIST_CLASSES, image_size, progress)
    raw = _download("FashionMNIST", download_dir)
    if raw is None:
        raise DataError(
            f"Fashion-MNIST is not in {folder} and could not be downloaded; run "
            "`apt-get install dataset-fashion-mnist` or allow the download."
        )
    return read_idx_set(raw, FASHION_MNIST_CLASSES, image_size, progress)


def load_mnist(
    image_size: int | None = None,
    progress: Progress | None = None,
    download_dir: str | Path | None = None,
) -> ImageSet:
    """MNIST: 60k pool images, the official 10k test split; downloaded once with torchvision."""
    raw = _download("MNIST", download_dir)
    if raw is None:
        raise DataError(
            f"MNIST could not be downloaded into {download_dir or default_download_dir()}; "
            "allow the download "
            "(network access) or put the four MNIST IDX files in <that folder>/MNIST/raw."
        )
    return read_idx_set(raw, DIGIT_CLASSES, image_size, progress)


def _download(name: str, download_dir: str | Path | None) -> Path | None:
    """The raw IDX folder of torchvision data set `name`, downloading it when absent; None on failure."""
    root = Path(download_dir) if download_dir is not None else default_download_dir()
    raw = root / name / "raw"  # where torchvision keeps the IDX files
    if has_idx_files(raw):
        return raw
    try:
        import torchvision.datasets

        root.mkdir(parents=True, exist_ok=True)
        getattr(torchvision.datasets, name)(root=str(root), train=True, download=True)
    except Exception:  # noqa: BLE001 - no network, a proxy error, a full disk: all mean "not available"
        return None
    return raw if has_idx_files(raw) else None


# ---------------------------------------------------------------------------------------


def _finish(
    pixels: np.ndarray,
    keys: list[str],
    truth: np.ndarray,
    splits: list[str],
    classes: list[str],
    image_size: int | None,
    progress: Progress | None,
) -> ImageSet:
    total = len(pixels)
    if progress is not None:
        progress(0, total)
    sha = [hashlib.sha256(image.tobytes()).hexdigest() for image in pixels]
    if image_size is not None and image_size != pixels.shape[-1]:
        pixels = resize_array(pixels, image_size)
    if progress is not None:
        progress(total, total)
    return ImageSet(
        pixels=np.ascontiguousarray(pixels),
        keys=keys,
        sha256=sha,
        truth=truth,
        splits=splits,
        classes=list(classes),
    )


def resize_array(pixels: np.ndarray, size: int, chunk: int = 4096) -> np.ndarray:
    """Resize uint8 (N, C, H, W) to (N, C, size, size), bilinear with antialiasing."""
    import torch
    import torch.nn.functional as F

    from .images import check_image_size

    size = check_image_size(size)
    out = np.empty((len(pixels), pixels.shape[1], size, size), dtype=np.uint8)
    for start in range(0, len(pixels), chunk):
        block = torch.from_numpy(pixels[start : start + chunk]).float()  # (B, C, H, W)
        block = F.interpolate(block, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + chunk] = block.round().clamp(0, 255).to(torch.uint8).numpy()
    return out
