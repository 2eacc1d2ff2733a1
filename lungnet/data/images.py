"""The one image reader: PNG, JPEG, TIFF, 16-bit, RGBA, palette, CMYK and DICOM into a float array.

Every file lungnet reads goes through `read_image`, which returns a 2-D float32 array in [0, 1] (grayscale; chest
X-rays carry no colour information) or raises `ImageReadError` naming the file and the problem. Nothing else in the
package opens image files. `collect_inputs` finds the files a user named (a file, a folder or a glob).
"""

from __future__ import annotations

import glob
import io
import logging
import os
import stat
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError

from lungnet.data.formats import IMAGE_SUFFIXES, walk_images
from lungnet.data.png import decode_gray8, short_pixel_data
from lungnet.io import printable

log = logging.getLogger(__name__)

MIN_SIDE = 8
MAX_PIXELS = 64_000_000  # larger headers are treated as decompression bombs
ORIENTATION = 0x0112  # the EXIF tag exif_transpose reads
DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian
_OPEN_LOCK = threading.Lock()  # warnings filters are process-global: one header parse at a time


class ImageReadError(ValueError):
    """An image file that cannot be turned into pixels; carries the path and a readable reason."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{printable(self.path)}: {reason}")


# magic bytes of the raster formats Pillow reads: the content decides, not the suffix
_RASTER_MAGIC = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",  # JPEG
    b"II*\x00",  # TIFF little-endian
    b"MM\x00*",  # TIFF big-endian
    b"BM",  # BMP
    b"GIF8",
    b"\x00\x00\x00\x0cjP  ",  # JPEG 2000
)


def _head(path: Path, n: int = 132) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def _fresh(path: Path, data: bytes | None):
    """What the decoders open: the file's bytes already read (a new stream each time), else the path."""
    return io.BytesIO(data) if data is not None else path


def is_dicom(path: str | os.PathLike, data: bytes | None = None) -> bool:
    """True when the file (or its bytes ``data``) carries the ``DICM`` magic at byte 128, or has a DICOM suffix and
    no raster magic."""
    try:
        head = data[:132] if data is not None else _head(Path(path))
    except OSError:
        return False
    if head[128:132] == b"DICM":
        return True
    return Path(path).suffix.lower() in {".dcm", ".dicom"} and not head.startswith(_RASTER_MAGIC)


def read_bytes(path: str | os.PathLike) -> bytes:
    """A file's whole content, read once, for `read_image` (``data=``) and a content hash of the same bytes.

    Raises:
        ImageReadError: the file is missing, unreadable, not a regular file or empty (as `read_image` says).
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise ImageReadError(path, "not a regular file")
            data = fh.read()
    except OSError as exc:
        raise ImageReadError(path, f"cannot read file ({exc.strerror or exc})") from exc
    if not data:
        raise ImageReadError(path, "empty file (0 bytes)")
    return data


def _meta_syntax(path: Path, data: bytes | None, pydicom) -> str:
    """The transfer syntax of the file meta, read without the data set ('' when there is no file meta)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if data is None:
            meta = pydicom.filereader.read_file_meta_info(path)
        else:  # read_file_meta_info opens a path only: the same two steps on the bytes
            fp = io.BytesIO(data)
            pydicom.filereader.read_preamble(fp, False)
            meta = pydicom.filereader._read_file_meta_info(fp)
    return str(meta.get("TransferSyntaxUID", ""))


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (decoder plugins write multi-line explanations)."""
    return " ".join(str(exc).split())


def _scale_to_unit(arr: np.ndarray) -> np.ndarray:
    """Min-max scales any numeric array to float32 [0, 1] (a constant image becomes zeros)."""
    arr = arr.astype(np.float32, copy=False)
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError("pixel data holds no finite values")
    if hi <= lo:
        return np.zeros_like(arr, dtype=np.float32)
    return (arr - lo) / (hi - lo)


def _header_int(ds, path: Path, keyword: str, high: int) -> int:
    """A whole-number header element in [0, high] (0 when absent or empty); any other value refuses the file.

    pydicom parses an element when it is first read, so a wrong value (``Rows`` as ``LO 'abc'``) or a wrong length
    (``US`` in 3 bytes) raises there, in one of many exception types: each becomes one `ImageReadError`.
    """
    expected = f"expected a whole number in [0, {high}]"
    try:
        value = ds.get(keyword)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for a malformed element
        reason = f"{type(exc).__name__}: {_one_line(exc)[:160]}"
        raise ImageReadError(path, f"DICOM header {keyword} cannot be read ({reason}): {expected}") from exc
    if value is None or value == "":
        return 0
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 0 <= value <= high:
        raise ImageReadError(path, f"DICOM header {keyword} is {' '.join(repr(value).split())[:80]}: {expected}")
    return int(value)


def _dicom_header(path: Path, pydicom, data: bytes | None = None):
    """The header without the pixel data, refused when decoding it could take more memory than the file suggests:
    a deflated data set (inflated whole in memory) or a frame above `MAX_PIXELS` (rows x columns x samples)."""
    try:
        syntax = _meta_syntax(path, data, pydicom)
    except Exception:  # noqa: BLE001 - no file meta (a bare data set): read with force below
        syntax = ""
    if syntax == DEFLATED:
        raise ImageReadError(path, "deflated DICOM is not read (it inflates whole in memory): decompress it first")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(_fresh(path, data), force=True, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad files
        raise ImageReadError(path, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    rows, cols = _header_int(ds, path, "Rows", 65535), _header_int(ds, path, "Columns", 65535)
    samples = _header_int(ds, path, "SamplesPerPixel", 4) or 1
    if rows * cols * samples > MAX_PIXELS:
        raise ImageReadError(path, f"DICOM header claims {cols}x{rows} px x {samples} samples (decompression bomb?)")
    return ds


def _read_dicom(path: Path, data: bytes | None = None) -> np.ndarray:
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError as exc:  # pragma: no cover - pydicom is a runtime dependency
        raise ImageReadError(path, "reading DICOM needs pydicom: pip install pydicom") from exc
    _dicom_header(path, pydicom, data)  # checked before the pixel data are read
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about every oddity of the header
            ds = pydicom.dcmread(_fresh(path, data), force=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad files
        raise ImageReadError(path, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageReadError(path, "DICOM file has no pixel data (PixelData element missing)")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        ds.pixel_array_options(index=0)  # the first frame only: never more than the header's size check allowed
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoder plugins raise their own types
        name = getattr(syntax, "name", str(syntax))
        hint = ""
        if syntax is not None and "2000" in name:
            hint = "; install a JPEG 2000 decoder: pip install pylibjpeg pylibjpeg-openjpeg"
        elif syntax is not None and "JPEG" in name:
            hint = "; install a JPEG decoder: pip install pylibjpeg pylibjpeg-libjpeg"
        raise ImageReadError(
            path,
            f"cannot decode DICOM pixel data (transfer syntax {name}: {type(exc).__name__}: {_one_line(exc)}){hint}",
        ) from exc
    try:
        if arr.ndim == 3 and getattr(ds, "SamplesPerPixel", 1) == 1:
            arr = arr[0]  # multi-frame: first frame
        arr = apply_modality_lut(arr, ds)
        arr = apply_voi_lut(arr, ds)
        if arr.ndim == 3:  # colour DICOM
            arr = arr[..., :3].mean(axis=-1)
        arr = _scale_to_unit(np.asarray(arr))
    except Exception as exc:  # noqa: BLE001 - malformed LUTs fail in many ways
        raise ImageReadError(
            path, f"cannot apply the DICOM intensity transforms ({type(exc).__name__}: {exc})"
        ) from exc
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = 1.0 - arr  # MONOCHROME1 stores bright as low values: invert so lungs come out dark
    return arr


def _stored_bits(arr: np.ndarray) -> int | None:
    """The bit depth an integer image was stored at, from its brightest pixel (None: not an unsigned range).

    16-bit containers usually hold 10-, 12- or 14-bit detector values (a 12-bit radiograph peaks at 4095):
    dividing those by 65535 would leave the image almost black, so the smallest common depth that holds the
    brightest pixel decides. Negative values and 32-bit ranges have no such depth (min-max scaling instead).
    """
    if arr.dtype.kind not in "ui" or arr.size == 0 or int(arr.min()) < 0:
        return None
    top = int(arr.max())
    return next((bits for bits in (8, 10, 12, 14, 16) if top < 2**bits), None)


def _pil_to_gray(img: Image.Image) -> np.ndarray:
    """Grayscale pixels: uint8 for 8-bit images (scaled by the caller, once the decoded image is released)."""
    if img.mode in {"I;16", "I;16B", "I;16L", "I", "F"}:
        arr = np.asarray(img)
        bits = _stored_bits(arr)
        return arr.astype(np.float32) / float(2**bits - 1) if bits else _scale_to_unit(arr)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in {"RGBA", "LA"}:
        # composited on black (gray * alpha), one 8-bit plane at a time: a 64 Mpx RGBA image never needs
        # more than its own size again (a full RGBA composite needed three more copies of it)
        return np.asarray(ImageChops.multiply(img.convert("L"), img.getchannel("A")))
    if img.mode not in {"L", "RGB"}:
        img = img.convert("RGB")  # CMYK, YCbCr, palette, 1-bit ...
    return np.asarray(img if img.mode == "L" else img.convert("L"))


def _open(path: Path, data: bytes | None = None) -> Image.Image:
    """Opens (header only) with Pillow; refuses oversized headers before any pixel is allocated."""
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own, lower limit decides
        img = Image.open(_fresh(path, data))
    width, height = img.size
    if width * height > MAX_PIXELS:
        img.close()
        raise ImageReadError(path, f"image header claims {width}x{height} px (decompression bomb?)")
    return img


def _read_pil(path: Path, keep_uint8: bool = False, verified: bool = False, data: bytes | None = None) -> np.ndarray:
    try:
        with _open(path, data) as img:
            img.load()
            # Pillow keeps the missing rows of a short PNG black
            short = short_pixel_data(_fresh(path, data)) if img.format == "PNG" and not verified else ""
            if short:
                raise ImageReadError(path, short)
            if img.getexif().get(ORIENTATION, 1) != 1:  # exif_transpose copies the image even when it is upright
                img = ImageOps.exif_transpose(img)
            arr = _pil_to_gray(img)
        if arr.dtype == np.uint8 and not keep_uint8:  # scaled here, after the decoded image was released
            arr = arr.astype(np.float32)
            arr /= 255.0
        return arr
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"image too large, refused as a decompression bomb ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageReadError(path, "not an image file (unrecognised format)") from exc
    except ImageReadError:
        raise
    except OSError as exc:
        raise ImageReadError(path, f"corrupt or truncated image ({exc})") from exc
    except MemoryError as exc:
        raise ImageReadError(path, "not enough memory to decode the image") from exc
    except Exception as exc:  # noqa: BLE001 - Pillow plugins raise ValueError, SyntaxError, struct.error ...
        raise ImageReadError(path, f"corrupt image ({type(exc).__name__}: {exc})") from exc


def read_image(
    path: str | os.PathLike, keep_uint8: bool = False, verified: bool = False, data: bytes | None = None
) -> np.ndarray:
    """Reads one image file as grayscale.

    The file's content decides the format, not its suffix (a JPEG named ``.png`` reads fine).
    DICOM files get the modality LUT (rescale slope/intercept), the VOI LUT or window, and
    MONOCHROME1 inversion; 16-bit PNG/TIFF keep their full range; RGBA is composited on black;
    palette and CMYK are converted; EXIF orientation is applied. Headers claiming more than
    `MAX_PIXELS` pixels are refused before any pixel is decoded.

    Args:
        path: the image file.
        keep_uint8: an 8-bit image (PNG, JPEG, ...) comes back as its uint8 grey levels (0-255), unscaled: resizing
            and augmenting 8-bit pixels is several times cheaper than float32 (`lungnet.data.transforms`). Other
            images (16-bit, DICOM) are float32 in [0, 1] either way.
        verified: the file was read whole by this function before (the data checks at setup): the second pass over
            a PNG's compressed data that finds missing rows is skipped.
        data: the file's content, already read (`read_bytes`): decoded from memory, the file is not opened again
            (``path`` then only names it in messages and its suffix counts as for the file); an 8-bit greyscale PNG
            given so is decoded by OpenCV (`lungnet.data.png.decode_gray8`: the same pixels, ~20 % less CPU).

    Returns:
        A float32 array of shape (H, W) with values in [0, 1], or with ``keep_uint8`` a uint8 (H, W) array.

    Raises:
        ImageReadError: the file is missing, unreadable, empty, not an image, corrupt, truncated, too
            small or too large, a DICOM without pixel data or with an undecodable transfer syntax.
    """
    path = Path(path)
    if data is None:
        try:
            size = path.stat().st_size
            _head(path, 1)
        except OSError as exc:
            raise ImageReadError(path, f"cannot read file ({exc.strerror or exc})") from exc
        if not path.is_file():
            raise ImageReadError(path, "not a regular file")
    else:
        size = len(data)
    if size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    dicom = is_dicom(path, data)
    arr = None if dicom or data is None else decode_gray8(data, MAX_PIXELS)  # None: not for this decoder
    if arr is not None and not verified and (short := short_pixel_data(io.BytesIO(data))):
        raise ImageReadError(path, short)
    if arr is None:
        arr = _read_dicom(path, data) if dicom else _read_pil(path, keep_uint8, verified, data)
    elif not keep_uint8:
        arr = arr.astype(np.float32) / np.float32(255.0)
    if arr.ndim != 2:
        raise ImageReadError(path, f"unexpected pixel array shape {arr.shape}")
    if min(arr.shape) < MIN_SIDE:
        raise ImageReadError(path, f"image is {arr.shape[1]}x{arr.shape[0]} px, below the {MIN_SIDE} px minimum")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if not np.isfinite(arr).all():
        raise ImageReadError(path, "pixel data holds NaN or infinite values")
    return np.ascontiguousarray(arr, dtype=np.float32)


def native_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file as stored, read from its header alone (a DICOM's Columns x Rows).

    Raises:
        ImageReadError: not a readable image or DICOM header, or a header refused as for `read_image`.
    """
    path = Path(path)
    if is_dicom(path):
        import pydicom

        ds = _dicom_header(path, pydicom)
        size = _header_int(ds, path, "Columns", 65535), _header_int(ds, path, "Rows", 65535)
        if min(size) <= 0:
            raise ImageReadError(path, "DICOM header names no Rows and Columns (not an image, or not DICOM)")
        return size
    try:
        with _open(path) as img:
            return img.size
    except UnidentifiedImageError as exc:
        raise ImageReadError(path, "not an image file (unrecognised format)") from exc
    except OSError as exc:
        raise ImageReadError(path, f"cannot read file ({exc.strerror or _one_line(exc)})") from exc


def _wanted(path: Path, folder: Path) -> bool:
    """Not inside a hidden folder; an image suffix, or no suffix and the DICOM magic (DICOMs often have none)."""
    if any(part.startswith(".") for part in path.relative_to(folder).parts):
        return False
    suffix = path.suffix.lower()
    return suffix in IMAGE_SUFFIXES or (suffix == "" and is_dicom(path))


def collect_inputs(spec: str | os.PathLike) -> list[Path]:
    """Files named by a file, a folder (searched recursively for images) or a glob pattern.

    A file or glob match is kept whatever its type (an unreadable one becomes an error row); in a
    folder only image files (and suffix-less DICOM) are taken, through the symlink-safe walker of the
    data sets (`lungnet.data.formats.walk_images`). Hidden files and folders are skipped.

    Raises:
        FileNotFoundError: nothing matches.
    """
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        found = walk_images(path, wanted=lambda p: _wanted(p, path))
        if not found:
            raise FileNotFoundError(f"No image files ({', '.join(sorted(IMAGE_SUFFIXES))} or DICOM) under {path}")
        return found
    if glob.has_magic(text):
        found = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True) if Path(p).is_file())
        if not found:
            raise FileNotFoundError(f"No files match {text}")
        return found
    raise FileNotFoundError(f"Input not found: {path} (give a file, a folder or a glob pattern)")
