"""Safe image decoding: user files -> uint8 (C, S, S) arrays, or a short reason to skip them.

Only PNG, JPEG, GIF (first frame), WebP, BMP and TIFF are accepted, by extension and by
content; Pillow is told to try only those decoders, so an exotic format (EPS, which runs
Ghostscript, and the like) is never parsed. A file is skipped, with a one-line reason, when
it is empty, too large, not an image, not the format its extension says, larger than
`max_pixels` (a decompression bomb), truncated or corrupt.

Working size: every image is letterboxed into an S x S square: the longer side is resized
to S (Lanczos) keeping the aspect ratio, and the rest is filled with the median colour of
the resized image's border, so a black-background digit gets black bars and a product photo
on white gets white ones. Transparent pixels are composited onto white (as a browser shows
them). EXIF orientation is applied. 16-bit images are scaled by 1/257; float images whose
values all lie in 0..1 (the usual range of float images) are scaled by 255; 32-bit integer
and float images outside 0..255 are stretched from their own min..max to 0..255.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from .prepare import prepare

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff")

# Extension -> the Pillow formats its content may have.
_EXTENSION_FORMATS = {
    ".png": {"PNG"},
    ".jpg": {"JPEG", "MPO"},
    ".jpeg": {"JPEG", "MPO"},
    ".gif": {"GIF"},
    ".webp": {"WEBP"},
    ".bmp": {"BMP", "DIB"},
    ".tif": {"TIFF"},
    ".tiff": {"TIFF"},
}
# The decoders Pillow may try; MPO (multi-picture JPEG) comes out of the JPEG decoder.
_PIL_FORMATS = ["PNG", "JPEG", "GIF", "WEBP", "BMP", "DIB", "TIFF"]

MAX_PIXELS = 50_000_000  # 50 megapixels: more is refused as a possible decompression bomb
MAX_FILE_BYTES = 256 * 2**20
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 4, 512

_GRAY_MODES = {"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}


class ImageSkipped(Exception):
    """A file cannot be used as an image; `reason` says why in a few words."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ImageInfo:
    """What the header of an image says, without decoding its pixels."""

    format: str
    mode: str
    width: int
    height: int
    grayscale: bool


def check_image_size(size) -> int:
    """`size` as an int in [MIN_IMAGE_SIZE, MAX_IMAGE_SIZE], else DataError."""
    from .base import DataError

    try:
        value = int(size)
        if value != size:
            raise ValueError
    except (TypeError, ValueError):
        raise DataError(f"The image size must be a whole number of pixels, got {size!r}.") from None
    if not MIN_IMAGE_SIZE <= value <= MAX_IMAGE_SIZE:
        raise DataError(
            f"The image size must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} pixels, got {value}."
        )
    return value


def extension_reason(name: str) -> str | None:
    """Why a file name is not an image name (None when its extension is one we read)."""
    dot = name.rfind(".")
    ext = name[dot:].lower() if dot > 0 else ""
    if ext in _EXTENSION_FORMATS:
        return None
    return f"not an image file (extension {ext})" if ext else "not an image file (no extension)"


def file_size_reason(n_bytes: int, max_file_bytes: int = MAX_FILE_BYTES) -> str | None:
    """Why a file of `n_bytes` is refused before reading it (None when its size is fine)."""
    if n_bytes == 0:
        return "empty file"
    if n_bytes > max_file_bytes:
        return f"file too large ({n_bytes / 2**20:.0f} MiB, limit {max_file_bytes / 2**20:.0f} MiB)"
    return None


def check_image(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> ImageInfo:
    """Read only the header of `data` (the bytes of file `name`) and check it is a usable image.

    Raises ImageSkipped for an unknown extension, an empty file, a non-image, content that
    does not match the extension, or more than `max_pixels` pixels.
    """
    with _open_checked(data, name, max_pixels) as img:
        return ImageInfo(img.format, img.mode, img.width, img.height, is_grayscale(img))


@contextmanager
def _open_checked(data: bytes, name: str, max_pixels: int) -> Iterator[Image.Image]:
    """The image in `data`, opened once its extension, size and format agree; else ImageSkipped."""
    reason = extension_reason(name) or ("empty file" if not data else None)
    if reason:
        raise ImageSkipped(reason)
    ext = name[name.rfind(".") :].lower()
    with _open(data, max_pixels) as img:
        if img.format not in _EXTENSION_FORMATS[ext]:
            raise ImageSkipped(f"content is {img.format} but the extension is {ext}")
        yield img


def is_grayscale(img: Image.Image) -> bool:
    """True for gray modes, and for palette images whose palette is all gray."""
    if img.mode in _GRAY_MODES:
        return True
    if img.mode in ("P", "PA") and img.palette is not None and img.palette.mode in ("RGB", "RGBA"):
        # img.palette, not getpalette(): the latter decodes the pixels, and this is a header check.
        step, raw = len(img.palette.mode), bytes(img.palette.palette)
        return all(raw[i] == raw[i + 1] == raw[i + 2] for i in range(0, len(raw) - 2, step))
    return False


def decode_image(data: bytes, size: int, channels: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode `data` to a uint8 (channels, size, size) array, letterboxed (see module docstring).

    Raises ImageSkipped when the bytes are not a readable image of at most `max_pixels`.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    with _open(data, max_pixels) as img:
        return _decode(img, size, channels, max_pixels)


def check_and_decode(
    data: bytes, name: str, target: Callable[[bool], tuple[int, int]], max_pixels: int = MAX_PIXELS
) -> tuple[bool, np.ndarray]:
    """`check_image` and `decode_image` with one parse of the bytes, for imports of many
    images: target(grayscale) gives the (size, channels) to decode at. Returns (grayscale,
    uint8 (channels, size, size)); raises ImageSkipped as those two do."""
    with _open_checked(data, name, max_pixels) as img:
        gray = is_grayscale(img)
        size, channels = target(gray)
        return gray, _decode(img, size, channels, max_pixels)


def _decode(img: Image.Image, size: int, channels: int, max_pixels: int) -> np.ndarray:
    try:
        return prepare(img, size, channels)
    except ImageSkipped:
        raise
    except Image.DecompressionBombError:
        raise ImageSkipped(_bomb_reason(img.width, img.height, max_pixels)) from None
    except Exception as error:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, struct.error ...
        raise ImageSkipped(f"truncated or corrupt image ({_short(error)})") from None


def _open(data: bytes, max_pixels: int) -> Image.Image:
    with warnings.catch_warnings():
        # Our own max_pixels check below is stricter than Pillow's warning threshold.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=_PIL_FORMATS)
        except Image.DecompressionBombError:
            raise ImageSkipped("image too large (possible decompression bomb)") from None
        except UnidentifiedImageError:
            raise ImageSkipped(
                "not an image, or not a supported format (PNG, JPEG, GIF, WebP, BMP, TIFF)"
            ) from None
        except Exception as error:  # noqa: BLE001 - any failure to parse the header means "corrupt"
            raise ImageSkipped(f"corrupt image ({_short(error)})") from None
    if img.width < 1 or img.height < 1:
        img.close()
        raise ImageSkipped(f"image has no pixels ({img.width}x{img.height})")
    if img.width * img.height > max_pixels:
        img.close()
        raise ImageSkipped(_bomb_reason(img.width, img.height, max_pixels))
    return img


def _bomb_reason(width: int, height: int, max_pixels: int) -> str:
    return (
        f"image too large ({width}x{height} pixels, limit {max_pixels / 1e6:g} megapixels; "
        "possible decompression bomb)"
    )


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:120]
