"""How labeler turns an image file into what its models see: a uint8 (C, S, S) array.

This file needs only NumPy and Pillow, and is shipped as `prepare.py` with every exported model,
so that code outside labeler feeds an exported model exactly what it was trained on (a plain
resize instead changed 24 of 60 predictions in an exploratory session):

    import numpy as np
    from PIL import Image
    from prepare import prepare

    x = np.stack([prepare(Image.open(path), size=32, channels=3) for path in paths])
    images = x.astype(np.float32) / 255  # (B, C, S, S) in [0, 1], the models' input

The steps: JPEGs decoded at a reduced scale where that is still at least S x S (libjpeg's
draft mode); EXIF orientation applied; 16-bit grey values scaled by 1/257, float values all in
0..1 by 255, other 32-bit integer or float values outside 0..255 stretched from their own
min..max; transparent pixels composited onto white (as a browser shows them); grey or RGB; the
longer side resized to S (Lanczos) keeping the aspect ratio, and the rest filled with the
median colour of the resized image's border (a black-background digit gets black bars, a
product photo on white gets white ones).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps


def prepare(img: Image.Image, size: int, channels: int) -> np.ndarray:
    """An opened image (not loaded yet, for JPEG's reduced-scale decoding) -> uint8 (channels,
    size, size), channels 1 (grey) or 3 (RGB)."""
    if img.format in ("JPEG", "MPO"):
        # Let libjpeg decode at 1/2..1/8 scale when that is still at least size x size.
        img.draft("L" if channels == 1 else "RGB", (size, size))
    img.load()
    return _to_array(img, size, channels)


def is_deep(img: Image.Image) -> bool:
    """A 16-bit, 32-bit integer or float grey image (one `eight_bit` converts)."""
    return img.mode in ("I", "F") or img.mode.startswith("I;16")


def eight_bit(img: Image.Image) -> Image.Image:
    """A deep grey image (`is_deep`) as 8-bit grey, as the model sees it: 16-bit values scaled by
    1/257, float values all in 0..1 scaled by 255 (they showed almost black), 32-bit integer and
    float values outside 0..255 stretched from their own min..max. The Label page shows it
    through this too (PIL's own conversion clips at 255: a 16-bit image showed almost white)."""
    values = np.asarray(img, dtype=np.float64)  # (H, W)
    if img.mode.startswith("I;16"):
        values = values / 257.0
    elif img.mode == "F" and values.size and values.min() >= 0 and values.max() <= 1:
        values = values * 255.0
    elif values.size and (values.min() < 0 or values.max() > 255):
        low, high = values.min(), values.max()
        values = (values - low) * (255.0 / max(high - low, 1e-12))
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")


def _to_array(img: Image.Image, size: int, channels: int) -> np.ndarray:
    try:
        img = ImageOps.exif_transpose(img) or img
    except Exception:  # noqa: BLE001, S110 - a broken EXIF block: the pixels are fine, keep them unrotated
        pass
    if is_deep(img):
        img = eight_bit(img)
    elif img.mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    img = img.convert("L" if channels == 1 else "RGB")

    scale = size / max(img.width, img.height)
    new_w, new_h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
    if (new_w, new_h) != img.size:
        img = img.resize((new_w, new_h), Image.Resampling.LANCZOS, reducing_gap=3.0)
    resized = np.asarray(img).reshape(new_h, new_w, channels)  # (h, w, C)
    border = np.concatenate([resized[0], resized[-1], resized[:, 0], resized[:, -1]])  # (n, C)
    canvas = np.empty((size, size, channels), dtype=np.uint8)
    canvas[:] = np.median(border, axis=0).round().astype(np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = resized
    return np.ascontiguousarray(canvas.transpose(2, 0, 1))  # (C, S, S)
