"""Image decoding: every mode and format we accept, and every reason to skip a file."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from labeler.data.base import DataError
from labeler.data.images import ImageSkipped, check_image, check_image_size, decode_image, extension_reason


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def gradient_rgb(w: int = 20, h: int = 10) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)
    array = np.stack([np.tile(x, (h, 1)), np.tile(x[::-1], (h, 1)), np.full((h, w), 90, np.uint8)], axis=-1)
    return Image.fromarray(array, "RGB")


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int, idat: bytes | None = None) -> bytes:
    """A tiny PNG claiming width x height gray pixels, with the pixel data of one row only."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1)) if idat is None else idat
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


MODES = {
    "L": lambda: gradient_rgb().convert("L"),
    "LA": lambda: gradient_rgb().convert("LA"),
    "RGB": gradient_rgb,
    "RGBA": lambda: gradient_rgb().convert("RGBA"),
    "P": lambda: gradient_rgb().convert("P", palette=Image.Palette.ADAPTIVE, colors=16),
    "1": lambda: gradient_rgb().convert("1"),
    "I;16": lambda: Image.fromarray(np.tile(np.linspace(0, 65535, 20).astype(np.uint16), (10, 1))),
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("channels", [1, 3])
def test_png_modes_decode_to_uint8(mode, channels):
    img = MODES[mode]()
    data = encode(img, "PNG")
    info = check_image(data, "a.png")
    assert info.format == "PNG" and (info.width, info.height) == (20, 10)
    out = decode_image(data, 16, channels)
    assert out.shape == (channels, 16, 16) and out.dtype == np.uint8
    assert out.max() > out.min()  # the gradient survived


@pytest.mark.parametrize(
    "low, high, expect",
    [
        (0.0, 1.0, (0, 255)),  # the usual float range: scaled by 255 (it showed almost black)
        (0.0, 200.0, (0, 200)),  # within 0..255: kept as it is
        (-5.0, 1000.0, (0, 255)),  # outside 0..255: stretched from its own min..max
    ],
)
def test_float_tiff_ranges(low, high, expect):
    img = Image.fromarray(np.tile(np.linspace(low, high, 20, dtype=np.float32), (20, 1)), "F")
    out = decode_image(encode(img, "TIFF"), 20, 1)
    assert (int(out.min()), int(out.max())) == expect


@pytest.mark.parametrize(
    "fmt, ext, kwargs",
    [
        ("PNG", ".png", {}),
        ("JPEG", ".jpg", {"quality": 95}),
        ("JPEG", ".jpeg", {}),
        ("GIF", ".gif", {}),
        ("WEBP", ".webp", {"lossless": True}),
        ("BMP", ".bmp", {}),
        ("TIFF", ".tiff", {}),
    ],
)
def test_formats(fmt, ext, kwargs):
    data = encode(gradient_rgb(), fmt, **kwargs)
    info = check_image(data, "picture" + ext.upper())  # extensions are case-insensitive
    assert not info.grayscale
    out = decode_image(data, 20, 3)
    # Letterbox: 20x10 -> rows 5..14 hold the image; the left edge is green, the right red.
    assert out.shape == (3, 20, 20)
    assert out[0, 10, 1] < 100 and out[1, 10, 1] > 150
    assert out[0, 10, 18] > 150 and out[1, 10, 18] < 100


def test_grayscale_detection():
    assert check_image(encode(gradient_rgb().convert("L"), "JPEG"), "a.jpg").grayscale
    gray_palette = gradient_rgb().convert("L").convert("P")
    assert check_image(encode(gray_palette, "GIF"), "a.gif").grayscale
    assert not check_image(encode(MODES["P"](), "PNG"), "a.png").grayscale
    cmyk = check_image(encode(gradient_rgb().convert("CMYK"), "JPEG"), "a.jpg")
    assert cmyk.mode == "CMYK" and not cmyk.grayscale


def test_cmyk_jpeg_decodes():
    out = decode_image(encode(gradient_rgb().convert("CMYK"), "JPEG", quality=95), 20, 3)
    assert out[0, 10, 1] < 100 and out[0, 10, 18] > 150


def test_transparency_composited_on_white():
    img = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    img.putpixel((4, 4), (0, 0, 0, 255))
    out = decode_image(encode(img, "PNG"), 8, 1)
    assert out[0, 0, 0] == 255 and out[0, 4, 4] == 0


def test_gif_first_frame():
    frames = [Image.new("L", (8, 8), 0), Image.new("L", (8, 8), 255)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(data, 8, 1).max() == 0


def test_letterbox_pads_with_border_colour():
    black = np.zeros((10, 40), np.uint8)
    black[:, 18:22] = 255  # a white stroke on black
    out = decode_image(encode(Image.fromarray(black), "PNG"), 20, 1)
    assert out[0, 0, 10] == 0 and out[0, 19, 10] == 0  # black bars, not white
    assert out[0, 10, 10] > 200


def test_exif_orientation_is_applied():
    img = Image.new("L", (20, 10), 0)
    img.paste(255, (0, 0, 10, 10))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = decode_image(encode(img, "JPEG", exif=exif.tobytes(), quality=95), 20, 1)
    # After rotation the image is 10 wide, 20 tall; the white half is on top.
    assert out[0, 2, 10] > 200 and out[0, 17, 10] < 50


@pytest.mark.parametrize(
    "data, name, reason",
    [
        (b"hello world\n", "notes.txt", "not an image file (extension .txt)"),
        (b"hello world\n", "README", "not an image file (no extension)"),
        (b"", "empty.png", "empty file"),
        (b"this is text, not a picture", "fake.jpg", "not an image"),
        (None, "lie.png", "content is JPEG but the extension is .png"),
        (png_header_only(10_000, 10_000), "bomb.png", "possible decompression bomb"),  # our limit
        (png_header_only(20_000, 20_000), "bomb.png", "possible decompression bomb"),  # Pillow's own
    ],
)
def test_skip_reasons_from_the_header(data, name, reason):
    if data is None:
        data = encode(gradient_rgb(), "JPEG")
    with pytest.raises(ImageSkipped) as raised:
        check_image(data, name)
    assert reason in raised.value.reason


def test_pixel_limit_is_an_argument():
    data = encode(gradient_rgb(), "PNG")  # 200 pixels
    with pytest.raises(ImageSkipped, match="decompression bomb"):
        check_image(data, "a.png", max_pixels=199)
    with pytest.raises(ImageSkipped, match="decompression bomb"):
        decode_image(data, 8, 1, max_pixels=199)
    check_image(data, "a.png", max_pixels=200)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF"])
def test_truncated_image_is_skipped_on_decode(fmt):
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = encode(noise, fmt)
    cut = data[: len(data) // 2]
    check_image(cut, "a." + fmt.lower())  # the header is intact
    with pytest.raises(ImageSkipped, match="truncated or corrupt"):
        decode_image(cut, 16, 3)


def test_png_with_garbage_pixel_data_is_corrupt_not_a_crash():
    with pytest.raises(ImageSkipped, match="truncated or corrupt"):
        decode_image(png_header_only(30, 30, idat=b"not zlib data"), 16, 1)


def test_extension_reason():
    assert extension_reason("a.PNG") is None and extension_reason("a.tif") is None
    assert extension_reason(".png") == "not an image file (no extension)"
    assert extension_reason("a.svg") == "not an image file (extension .svg)"


def test_check_image_size():
    assert check_image_size(28) == 28
    for bad in (2, 10_000, 12.5, "x", None):
        with pytest.raises(DataError):
            check_image_size(bad)
