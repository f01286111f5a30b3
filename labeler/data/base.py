"""What every data source returns: images at one working size, with keys and optional truth."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class DataError(ValueError):
    """A data source cannot be read; the message says what went wrong and what to do."""


@dataclass
class ImageSet:
    """Images read from one source, ready to become a project's items.

    pixels: uint8 (N, C, H, W), C in {1, 3}, one working size for the whole set.
    keys:   N names, unique, relative (e.g. "cat/001.png" or "train/00017.png").
    sha256: N hex digests of the original file bytes (or of the pixels for built-ins).
    truth:  int64 (N,) ground-truth class index, -1 where unknown.
    splits: N of "pool" or "test" (official test split of a built-in set).
    classes: class names; index i in `truth` means classes[i].
    files:  N paths of original files to keep beside the project (None for built-ins).
    skipped: (path, reason) of every file that was not imported.
    """

    pixels: np.ndarray
    keys: list[str]
    sha256: list[str]
    truth: np.ndarray
    splits: list[str]
    classes: list[str]
    files: list[str | None] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.pixels)
        if not self.files:
            self.files = [None] * n
        lengths = {len(self.keys), len(self.sha256), len(self.truth), len(self.splits), len(self.files)}
        if lengths != {n}:
            raise ValueError(f"ImageSet fields disagree in length: {n} images, lengths {sorted(lengths)}")
        if self.pixels.dtype != np.uint8 or self.pixels.ndim != 4 or self.pixels.shape[1] not in (1, 3):
            raise ValueError(
                f"pixels must be uint8 (N, 1|3, H, W), got {self.pixels.dtype} {self.pixels.shape}"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.pixels.shape[1:])
