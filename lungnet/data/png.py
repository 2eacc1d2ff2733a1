"""A PNG's compressed pixel data checked against its header: does the stream hold every row?

Pillow stops decoding a PNG without complaint where its zlib stream ends, even when that is after 50 of the
header's 7999 rows: the rest of the image stays black and is read as valid. libpng calls that "Not enough image
data"; `short_pixel_data` is the same check, made by inflating the ``IDAT`` stream once more, in bounded pieces,
and counting the bytes it yields against what the header's size, bit depth, colour type and interlacing need.

`decode_gray8` decodes the commonest radiograph PNG (8-bit grey levels) with OpenCV, faster than Pillow.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from contextlib import nullcontext
from typing import BinaryIO

import cv2
import numpy as np

MAGIC = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
PIECE = 1 << 20  # bytes read or inflated at a time
TEXT = {b"tEXt", b"zTXt", b"iTXt"}  # chunks that start with a keyword


def raw_size(width: int, height: int, depth: int, colour: int, interlace: int) -> int:
    """Bytes of filtered scanlines (a filter byte per row) an image of this header inflates to."""
    bits = depth * CHANNELS[colour]

    def rows(w: int, h: int) -> int:
        return h * (1 + (w * bits + 7) // 8) if w and h else 0

    if not interlace:
        return rows(width, height)
    return sum(rows((width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy) for x0, y0, dx, dy in ADAM7)


def _chunks(fh: BinaryIO) -> Iterator[tuple[bytes, int]]:
    """(type, length) of each chunk, the file positioned at its data; stops at IEND or a torn chunk header."""
    while True:
        head = fh.read(8)
        if len(head) < 8:
            return
        length, kind = struct.unpack(">I4s", head)
        yield kind, length
        if kind == b"IEND":
            return


def chunk_heads(data: bytes) -> Iterator[tuple[bytes, int]]:
    """`_chunks` of a PNG held in memory: (type, offset of its data) of each chunk after the signature, IEND
    included; stops at IEND or a torn chunk header."""
    pos = len(MAGIC)
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        yield kind, pos + 8
        if kind == b"IEND":
            return
        pos += 12 + length


def _inflated(fh: BinaryIO, length: int, inflater, need: int) -> int:
    """Feeds ``length`` bytes of chunk data to ``inflater``; the bytes it yields, at most ``need`` more."""
    got = 0
    while length and got < need and not inflater.eof:
        data = fh.read(min(length, PIECE))
        if not data:
            break
        length -= len(data)
        while data and got < need:
            got += len(inflater.decompress(data, PIECE))
            data = inflater.unconsumed_tail
    return got


def short_pixel_data(path: str | os.PathLike | BinaryIO) -> str:
    """'' when the PNG at ``path`` (or in an open binary stream, read from its start) holds the pixel data its
    header needs, else why not (for one line).

    Only a zlib stream that ends cleanly before the last row is reported here: a torn file, a broken stream or
    a malformed header leave '' and are Pillow's to report when it decodes the file.
    """
    with nullcontext(path) if hasattr(path, "read") else open(path, "rb") as fh:
        if fh.read(8) != MAGIC:
            return ""
        need, width, height, interlace, inflater, got = 0, 0, 0, 0, zlib.decompressobj(), 0
        for kind, length in _chunks(fh):
            start = fh.tell()
            if kind == b"IHDR" and length == 13:
                header = fh.read(13)
                if len(header) < 13:
                    return ""
                width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
                if colour not in CHANNELS:
                    return ""
                need = raw_size(width, height, depth, colour, interlace)
            elif kind == b"IDAT" and need:
                try:
                    got += _inflated(fh, length, inflater, need - got)
                except zlib.error:
                    return ""  # a broken stream: Pillow's decoder names it
                if inflater.eof or got >= need:
                    break
            fh.seek(start + length + 4)  # past the data and the CRC
    if not need or got >= need or not inflater.eof:
        return ""
    if interlace:
        return f"truncated image: its pixel data end after {got} of {need} bytes (interlaced {width}x{height} px)"
    return f"truncated image: its pixel data end after {got * height // need} of {height} rows"


def _plain_gray8(data: bytes) -> bool:
    """True when ``data`` is a PNG of 8-bit grey levels (colour type 0, depth 8) with no tRNS chunk and no EXIF (an
    ``eXIf`` chunk, or the ``Raw profile type exif`` text Pillow also reads): pixels that every PNG decoder returns
    alike, with no transparency or orientation for the reader to apply."""
    if len(data) < 33 or not data.startswith(MAGIC) or data[12:16] != b"IHDR" or data[24:26] != b"\x08\x00":
        return False
    return not any(
        kind in {b"tRNS", b"eXIf"} or (kind in TEXT and data.startswith(b"Raw profile type exif", at))
        for kind, at in chunk_heads(data)
    )


def plain_png(data: bytes) -> bool:
    """Whether a PNG's rows are decoded top to bottom into the image as stored: not interlaced, no animation
    (``acTL``), no EXIF or XMP (``eXIf``, text chunks naming exif or xmp: Pillow would turn the image). The chunks
    after the pixel data count too (Pillow reads them into its info)."""
    if data[12:16] != b"IHDR" or len(data) < 29 or data[28] != 0:  # IHDR first; its last byte: interlace method
        return False
    return not any(
        kind in (b"acTL", b"eXIf") or (kind in TEXT and _names_orientation(data[at : at + 80]))
        for kind, at in chunk_heads(data)
    )


def _names_orientation(head: bytes) -> bool:
    """Whether a text chunk's keyword (before its NUL) names EXIF or XMP."""
    keyword = head.split(b"\0", 1)[0].lower()
    return b"exif" in keyword or b"xmp" in keyword


def decode_gray8(data: bytes, max_pixels: int) -> np.ndarray | None:
    """The uint8 (H, W) pixels of an 8-bit greyscale PNG (NIH's format) decoded by OpenCV's libpng, which takes ~20 %
    less CPU than Pillow on such files and returns the array without a copy; the same pixels (PNG is lossless).

    Returns:
        None where the file is not such a PNG, its header claims more than ``max_pixels`` pixels, or libpng refuses
        it: the caller's general reader (Pillow) reads it then, or names the problem.
    """
    if not _plain_gray8(data):
        return None
    width, height = struct.unpack_from(">II", data, 16)
    if width * height > max_pixels:
        return None
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None
    if arr is None or arr.dtype != np.uint8 or arr.shape != (height, width):
        return None
    return arr
