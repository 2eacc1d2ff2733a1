"""A PNG whose compressed pixel data end before its last row is refused, whatever Pillow makes of it."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from lungnet.data.images import ImageReadError, read_image
from lungnet.data.png import ADAM7, raw_size, short_pixel_data
from tests.data.test_bad_inputs import png_chunk


def png(width: int, height: int, raw: bytes, interlace: int = 0, idat: bytes | None = None) -> bytes:
    """An 8-bit grayscale PNG whose IDAT holds exactly ``raw`` (filtered scanlines) compressed, or ``idat``."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, interlace)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(raw) if idat is None else idat)
        + png_chunk(b"IEND", b"")
    )


def scanlines(pixels: np.ndarray, interlace: int = 0) -> bytes:
    """Filter-0 scanlines of an 8-bit grayscale image, Adam7 passes one after the other when interlaced."""
    passes = ((0, 0, 1, 1),) if not interlace else ADAM7
    out = b""
    for x0, y0, dx, dy in passes:
        sub = pixels[y0::dy, x0::dx]
        if sub.size:
            out += b"".join(b"\0" + row.tobytes() for row in sub)
    return out


def test_a_stream_ending_after_50_of_7999_rows_is_refused(tmp_path):
    """The issue's file: Pillow reads it as valid with the rest black (and the app answered 200)."""
    pixels = (np.random.default_rng(0).random((7999, 64)) * 255).astype(np.uint8)
    path = tmp_path / "short.png"
    path.write_bytes(png(64, 7999, scanlines(pixels[:50])))
    with Image.open(path) as img:
        img.load()  # Pillow itself reports nothing
    with pytest.raises(ImageReadError, match="pixel data end after 50 of 7999 rows") as info:
        read_image(path)
    assert str(path) in str(info.value)
    with pytest.MonkeyPatch.context() as patch:  # a library that switched Pillow's lenience on changes nothing
        patch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
        with pytest.raises(ImageReadError, match="truncated image"):
            read_image(path)


def test_interlaced_pngs_are_read_whole_and_refused_short(tmp_path):
    pixels = (np.arange(37 * 29) % 251).astype(np.uint8).reshape(29, 37)
    whole, cut = tmp_path / "whole.png", tmp_path / "cut.png"
    raw = scanlines(pixels, interlace=1)
    assert len(raw) == raw_size(37, 29, 8, 0, 1)
    whole.write_bytes(png(37, 29, raw, interlace=1))
    cut.write_bytes(png(37, 29, raw[: len(raw) // 2], interlace=1))
    assert np.allclose(read_image(whole), pixels / 255.0)
    assert short_pixel_data(str(cut)).endswith(f"end after {len(raw) // 2} of {len(raw)} bytes (interlaced 37x29 px)")
    with pytest.raises(ImageReadError, match="truncated"):  # Pillow's own reason comes first here
        read_image(cut)


@pytest.mark.parametrize(
    ("mode", "bits"), [("1", 1), ("L", 8), ("P", 8), ("LA", 8), ("RGB", 8), ("RGBA", 8), ("I;16", 16)]
)
def test_every_kind_of_whole_png_passes(tmp_path, mode, bits):
    """raw_size agrees with what Pillow's own PNGs inflate to, for each colour type and bit depth."""
    pixels = (np.random.default_rng(1).random((23, 41)) * 255).astype(np.uint8)
    img = Image.fromarray(pixels).convert(mode) if mode != "I;16" else Image.fromarray(pixels.astype(np.uint16) * 257)
    buf = io.BytesIO()
    img.save(buf, "PNG", bits=bits) if mode == "P" else img.save(buf, "PNG")
    path = tmp_path / "ok.png"
    path.write_bytes(buf.getvalue())
    assert short_pixel_data(str(path)) == ""
    assert read_image(path).shape == (23, 41)


def test_files_the_check_does_not_judge_are_left_to_pillow(tmp_path):
    """Not a PNG, a torn file, a broken stream: '' here, and Pillow's own reason from read_image."""
    good = png(16, 16, scanlines(np.zeros((16, 16), np.uint8)))
    cases = {
        "jpeg.png": b"\xff\xd8\xff" + b"\0" * 64,
        "torn.png": good[:40],
        "broken.png": png(16, 16, b"", idat=b"\x78\x9c\xff\xff" * 4),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        assert short_pixel_data(str(tmp_path / name)) == "", name
        with pytest.raises(ImageReadError):
            read_image(tmp_path / name)
