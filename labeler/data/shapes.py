"""`shapes`: a generated colour benchmark where the class is an object's shape and nothing else.

Each image holds one filled shape (circle, cross, square or triangle) on a noisy background.
Everything but the shape is drawn at random, independently of the class, so none of it gives
the class away:

- the image's long side is 40-120 px, its aspect ratio 1-1.5, either way up (the importer
  letterboxes it to 32x32);
- the background is a random colour at a random brightness, with a random linear gradient
  and Gaussian pixel noise of random strength;
- the object has a random colour (at least `MIN_CONTRAST` grey levels away from the
  background's mean, so a person can always see it), a random area of 6-20 % of the image,
  a random position (wholly inside the image) and a random rotation; every shape is scaled
  to the same area, so size says nothing about the class either;
- the file is RGB, RGBA (semi-transparent background, composited over white by the importer)
  or greyscale, saved as PNG or JPEG (quality 60-95; RGBA always PNG).

The folder is written as class sub-folders (`circle/pool-0007.png`, `square/test-0003.jpg`),
so it imports as `folder:PATH` like a person's own images. `load_shapes` (the built-in
`shapes` data set) reads it through the same importer and makes the files named `test-*` a
fixed test split, held out of the pool; as `folder:PATH` the same folder gets `simulate`'s
stratified random hold-out instead.

Generation is deterministic: image i of class k draws from `np.random.default_rng((seed, k,
i))`, so the same seed writes the same bytes. Nothing is written at import time; the cache
folder is filled on first use and reused afterwards.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .base import DataError, ImageSet

Progress = Callable[[int, int], None]

SHAPES_CLASSES = ["circle", "cross", "square", "triangle"]  # sorted: the importer's class order
SHAPES_POOL_PER_CLASS = 200
SHAPES_TEST_PER_CLASS = 50
SHAPES_SEED = 0
# Bump when the drawing changes, so an old cache is never mistaken for the current data set.
SHAPES_VERSION = 1
MIN_CONTRAST = 60  # grey levels between the object's and the background's mean luminance
_DONE = "shapes.json"


def shapes_dir() -> Path:
    """The cache folder of the built-in `shapes` set: `<data dir>/builtin/shapes-v<N>`."""
    from labeler.config import data_dir

    return data_dir() / "builtin" / f"shapes-v{SHAPES_VERSION}"


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114])


def _outline(kind: str, rng: np.random.Generator) -> np.ndarray:
    """The shape's polygon, centred on 0 with unit area, rotated at random: (V, 2)."""
    if kind == "circle":
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        points = np.stack([np.cos(t), np.sin(t)], 1)
    elif kind == "square":
        points = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    elif kind == "triangle":
        t = np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        points = np.stack([np.cos(t), np.sin(t)], 1)
        points -= points.mean(0)
    elif kind == "cross":
        a, b = 1.0, 0.32  # arm half-length and half-width
        points = np.array(
            [
                [-b, -a],
                [b, -a],
                [b, -b],
                [a, -b],
                [a, b],
                [b, b],
                [b, a],
                [-b, a],
                [-b, b],
                [-a, b],
                [-a, -b],
                [-b, -b],
            ]
        )
    else:
        raise ValueError(f"Unknown shape {kind!r}")
    x, y = points[:, 0], points[:, 1]
    area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))  # shoelace
    points = points / math.sqrt(area)
    angle = rng.uniform(0, 2 * np.pi)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return points @ rot.T


def draw_shape(kind: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """One image of shape `kind`, drawn from `rng`: (file bytes, extension "png" or "jpg")."""
    from PIL import Image, ImageDraw

    long_side = int(rng.integers(40, 121))
    short_side = round(long_side / float(rng.uniform(1.0, 1.5)))
    w, h = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
    base = rng.uniform(0, 255, size=3) * rng.uniform(0.3, 1.0)  # colour times brightness
    gradient = rng.normal(0, 30, size=(2, 3))  # change over the image, per axis and channel
    yy, xx = np.mgrid[0:h, 0:w]
    bg = (
        base
        + (xx / w - 0.5)[..., None] * gradient[0]
        + (yy / h - 0.5)[..., None] * gradient[1]
        + rng.normal(0, rng.uniform(5, 30), size=(h, w, 3))
    )
    bg_lum = float(_luminance(np.clip(bg, 0, 255).mean((0, 1))))
    for _ in range(100):
        colour = rng.uniform(0, 255, size=3)
        if abs(float(_luminance(colour)) - bg_lum) >= MIN_CONTRAST:
            break
    else:  # a mid-grey background with no contrasting draw: take black or white
        colour = np.zeros(3) if bg_lum > 127 else np.full(3, 255.0)

    outline = _outline(kind, rng) * math.sqrt(rng.uniform(0.06, 0.20) * w * h)
    low, high = -outline.min(0), np.array([w, h]) - outline.max(0)
    centre = rng.uniform(low, np.maximum(low, high))
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).polygon([tuple(p) for p in outline + centre], fill=255)
    alpha = np.asarray(mask, dtype=np.float64)[..., None] / 255.0
    object_noise = rng.normal(0, rng.uniform(0, 15), size=(h, w, 3))
    pixels = np.clip(alpha * (colour + object_noise) + (1 - alpha) * bg, 0, 255).astype(np.uint8)

    mode = rng.choice(["RGB", "RGB", "RGB", "RGBA", "L"])
    image = Image.fromarray(pixels, "RGB")
    if mode == "L":
        image = image.convert("L")
    elif mode == "RGBA":
        opacity = np.where(alpha[..., 0] > 0, 255, rng.integers(170, 256)).astype(np.uint8)
        image = Image.fromarray(np.dstack([pixels, opacity]), "RGBA")
    buffer = io.BytesIO()
    if mode != "RGBA" and rng.random() < 0.5:
        image.save(buffer, format="JPEG", quality=int(rng.integers(60, 96)))
        return buffer.getvalue(), "jpg"
    image.save(buffer, format="PNG")
    return buffer.getvalue(), "png"


def generate_shapes(
    folder: str | Path,
    pool_per_class: int = SHAPES_POOL_PER_CLASS,
    test_per_class: int = SHAPES_TEST_PER_CLASS,
    seed: int = SHAPES_SEED,
    progress: Progress | None = None,
) -> Path:
    """Write the data set into `folder` (which must not exist yet), one sub-folder per class.

    Written into a temporary sibling first and renamed at the end, so an interrupted run never
    leaves a half data set under `folder`. Returns `folder`.
    """
    folder = Path(folder)
    if folder.exists():
        raise DataError(
            f"{folder} already exists; remove it or choose another folder for the shapes data set."
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}-{uuid.uuid4().hex[:8]}")
    per_class = pool_per_class + test_per_class
    total, done = per_class * len(SHAPES_CLASSES), 0
    try:
        for k, kind in enumerate(SHAPES_CLASSES):
            (tmp / kind).mkdir(parents=True)
            for i in range(per_class):
                data, ext = draw_shape(kind, np.random.default_rng((seed, k, i)))
                split, j = ("test", i - pool_per_class) if i >= pool_per_class else ("pool", i)
                (tmp / kind / f"{split}-{j:04d}.{ext}").write_bytes(data)
                done += 1
                if progress is not None and done % 50 == 0:
                    progress(done, total)
        manifest = {
            "version": SHAPES_VERSION,
            "seed": seed,
            "pool_per_class": pool_per_class,
            "test_per_class": test_per_class,
            "classes": SHAPES_CLASSES,
        }
        (tmp / _DONE).write_text(json.dumps(manifest))
        try:
            tmp.rename(folder)
        except OSError:
            # Another process wrote the same data set meanwhile (two benchmarks started at once
            # on a fresh machine): keep its copy, which has the same bytes.
            done_file = folder / _DONE
            if not done_file.is_file() or json.loads(done_file.read_text()) != manifest:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_shapes(
    image_size: int | None = None, progress: Progress | None = None, folder: str | Path | None = None
) -> ImageSet:
    """The built-in `shapes` set: generated into `folder` (default `shapes_dir()`) on first use,
    then imported like a person's folder; files named `test-*` are the fixed test split."""
    from .importer import import_folder

    folder = Path(folder) if folder is not None else shapes_dir()
    if not (folder / _DONE).is_file():
        if folder.exists():  # not ours, or from an interrupted older version: never overwrite it
            raise DataError(
                f"{folder} exists but is not a complete shapes data set; remove it and try again."
            )
        generate_shapes(folder)
    images = import_folder(folder, image_size=image_size, progress=progress)
    images.splits = ["test" if Path(key).name.startswith("test-") else "pool" for key in images.keys]
    return images
