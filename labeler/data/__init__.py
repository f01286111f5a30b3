"""Data sources: the built-in registry `DATASETS` and `read_source` for every source string.

Source strings (the CLI, the UI and `Project.source` use the same ones; a project imported from
an uploaded zip is recorded as `upload:NAME`, the uploaded file's name, for display only):

    digits | fashion-mnist | mnist     a built-in data set (see `labeler.data.builtin`)
    shapes                            the generated colour benchmark (see `labeler.data.shapes`)
    folder:PATH                       a folder of images (see `labeler.data.importer`)
    zip:PATH                          a zip of images, extracted safely first
    PATH                              an existing folder, or an existing .zip file

Nothing is read at import time.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .base import DataError, ImageSet
from .builtin import (
    FASHION_MNIST_DIR,
    default_download_dir,
    has_idx_files,
    load_digits_set,
    load_fashion_mnist,
    load_mnist,
)
from .images import IMAGE_EXTENSIONS
from .importer import import_folder, import_zip
from .shapes import load_shapes

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class BuiltinDataset:
    """One built-in data set: its registry name, a title and a line for the UI, and its loader."""

    name: str
    title: str
    description: str
    load: Callable[..., ImageSet]  # load(image_size=None, progress=None) -> ImageSet
    offline: Callable[[], bool]  # True when it can be loaded without a download


DATASETS: dict[str, BuiltinDataset] = {
    "digits": BuiltinDataset(
        "digits",
        "Digits (scikit-learn)",
        "1,797 handwritten digits, 8x8 gray; a fixed stratified 25 % test split (450 images).",
        load_digits_set,
        lambda: True,
    ),
    "fashion-mnist": BuiltinDataset(
        "fashion-mnist",
        "Fashion-MNIST",
        "70,000 clothing images, 28x28 gray, 10 classes; the official 10,000-image test split.",
        load_fashion_mnist,
        lambda: (
            has_idx_files(FASHION_MNIST_DIR) or has_idx_files(default_download_dir() / "FashionMNIST" / "raw")
        ),
    ),
    "mnist": BuiltinDataset(
        "mnist",
        "MNIST",
        "70,000 handwritten digits, 28x28 gray; the official 10,000-image test split (downloaded once).",
        load_mnist,
        lambda: has_idx_files(default_download_dir() / "MNIST" / "raw"),
    ),
    "shapes": BuiltinDataset(
        "shapes",
        "Shapes (generated colour benchmark)",
        "1,000 generated colour photos-like images in 4 shape classes; colour, size, position and "
        "background vary at random; a fixed 200-image test split (written on first use).",
        load_shapes,
        lambda: True,
    ),
}


def read_source(
    source: str,
    image_size: int | None = None,
    progress: Progress | None = None,
    classes: Sequence[str] | None = None,
    target: str | Path | None = None,
) -> ImageSet:
    """Read any source string (see the module docstring) into an ImageSet.

    image_size: working size in pixels (square); None keeps a built-in's native size and
    picks 28 (gray) or 32 (colour) for the user's images.
    progress: called as progress(done, total).
    classes: class names for a folder or zip (see `import_folder`); ignored for built-ins.
    target: where a zip is extracted (default: a new folder under `<data dir>/imports`).
    Raises DataError with a one-sentence message for anything that cannot be read.
    """
    source = source.strip()
    if source in DATASETS:
        return DATASETS[source].load(image_size=image_size, progress=progress)
    kind, sep, rest = source.partition(":")
    if sep and kind == "folder":
        return import_folder(
            source_path(kind, rest), image_size=image_size, classes=classes, progress=progress
        )
    if sep and kind == "zip":
        return import_zip(
            source_path(kind, rest), target=target, image_size=image_size, classes=classes, progress=progress
        )
    path = Path(source)
    if path.is_dir():
        return import_folder(path, image_size=image_size, classes=classes, progress=progress)
    if path.is_file() and (path.suffix.lower() == ".zip" or zipfile.is_zipfile(path)):
        return import_zip(path, target=target, image_size=image_size, classes=classes, progress=progress)
    raise _unknown(source)


def check_source(source: str) -> None:
    """Raise `read_source`'s DataError for a source it would not know, without reading anything
    (a command that reads its sources one after another checks them all first)."""
    source = source.strip()
    kind, sep, rest = source.partition(":")
    if sep and kind in ("folder", "zip"):
        path = source_path(kind, rest)
    elif source in DATASETS:
        return
    else:
        path, kind = Path(source), "folder" if Path(source).is_dir() else "zip"
    if (kind == "folder" and path.is_dir()) or (
        kind == "zip" and path.is_file() and zipfile.is_zipfile(path)
    ):
        return
    raise _unknown(source)


def source_path(kind: str, rest: str) -> Path:
    """The path of a `folder:` or `zip:` source; an empty one is refused (`folder:` read the
    current folder, whatever it held; an exploratory session)."""
    if not rest.strip():
        example = "/data/pets.zip" if kind == "zip" else "/data/pets"
        raise DataError(f"{kind}: needs a path after it, as in {kind}:{example}.")
    return Path(rest)


def _unknown(source: str) -> DataError:
    return DataError(
        f"Unknown data source {source!r}; use {', '.join(DATASETS)}, folder:PATH or zip:PATH "
        "(with a folder or zip that exists)."
    )


__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "BuiltinDataset",
    "DataError",
    "ImageSet",
    "check_source",
    "import_folder",
    "import_zip",
    "read_source",
]
