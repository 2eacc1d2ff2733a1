"""The one image reader: PNG, JPEG, TIFF, 16-bit, RGBA, palette, CMYK and DICOM into a float array.

Every file lungnet reads goes through `read_image`, which returns a 2-D float32 array in [0, 1]
(grayscale; chest X-rays carry no colour information) or raises `ImageReadError` naming the file
and the problem. Nothing else in the package opens image files.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"}
MIN_SIDE = 8
MAX_PIXELS = 64_000_000  # larger headers are treated as decompression bombs


class ImageReadError(ValueError):
    """An image file that cannot be turned into pixels; carries the path and a readable reason."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def is_dicom(path: str | os.PathLike) -> bool:
    """True when the file has a DICOM suffix or the ``DICM`` magic at byte 128."""
    if Path(path).suffix.lower() in {".dcm", ".dicom"}:
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _scale_to_unit(arr: np.ndarray) -> np.ndarray:
    """Min-max scales any numeric array to float32 [0, 1] (a constant image becomes zeros)."""
    arr = arr.astype(np.float32, copy=False)
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError("pixel data holds no finite values")
    if hi <= lo:
        return np.zeros_like(arr, dtype=np.float32)
    return (arr - lo) / (hi - lo)


def _read_dicom(path: Path) -> np.ndarray:
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError as exc:  # pragma: no cover - pydicom is a runtime dependency
        raise ImageReadError(path, "reading DICOM needs pydicom: pip install pydicom") from exc
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad files
        raise ImageReadError(path, f"not a readable DICOM file ({exc})") from exc
    if "PixelData" not in ds:
        raise ImageReadError(path, "DICOM file has no pixel data (PixelData element missing)")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoder plugins raise their own types
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        hint = ""
        if syntax is not None and "2000" in name:
            hint = "; install a JPEG 2000 decoder: pip install pylibjpeg pylibjpeg-openjpeg"
        elif syntax is not None and "JPEG" in name:
            hint = "; install a JPEG decoder: pip install pylibjpeg pylibjpeg-libjpeg"
        raise ImageReadError(path, f"cannot decode DICOM pixel data (transfer syntax {name}){hint}") from exc
    if arr.ndim == 3 and getattr(ds, "SamplesPerPixel", 1) == 1:
        arr = arr[0]  # multi-frame: first frame
    arr = apply_modality_lut(arr, ds)
    arr = apply_voi_lut(arr, ds)
    if arr.ndim == 3:  # colour DICOM
        arr = arr[..., :3].mean(axis=-1)
    arr = _scale_to_unit(np.asarray(arr))
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = 1.0 - arr  # MONOCHROME1 stores bright as low values: invert so lungs come out dark
    return arr


def _pil_to_gray(img: Image.Image) -> np.ndarray:
    if img.mode in {"I;16", "I;16B", "I;16L", "I", "F"}:
        arr = np.asarray(img)
        if arr.dtype.kind in "ui":
            bits = 16 if arr.max(initial=0) > 255 else 8
            return arr.astype(np.float32) / float(2**bits - 1)
        return _scale_to_unit(arr)
    if img.mode == "RGBA" or img.mode == "LA" or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "L":
        img = img.convert("RGB").convert("L")
    return np.asarray(img, dtype=np.float32) / 255.0


def _read_pil(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS
        try:
            with Image.open(path) as img:
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise ImageReadError(path, f"image header claims {width}x{height} px (decompression bomb?)")
                img.load()
                img = ImageOps.exif_transpose(img)
                return _pil_to_gray(img)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageReadError(path, f"image too large, refused as a decompression bomb ({exc})") from exc
        except UnidentifiedImageError as exc:
            raise ImageReadError(path, "not an image file (unrecognised format)") from exc
        except OSError as exc:
            raise ImageReadError(path, f"corrupt or truncated image ({exc})") from exc
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Reads one image file as grayscale.

    DICOM files get the modality LUT (rescale slope/intercept), the VOI LUT or window, and
    MONOCHROME1 inversion; 16-bit PNG/TIFF keep their full range; RGBA is composited on black;
    EXIF orientation is applied.

    Args:
        path: the image file.

    Returns:
        A float32 array of shape (H, W) with values in [0, 1].

    Raises:
        ImageReadError: the file is missing, empty, not an image, corrupt, too small or too large.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageReadError(path, f"cannot access file ({exc.strerror or exc})") from exc
    if size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    arr = _read_dicom(path) if is_dicom(path) else _read_pil(path)
    if arr.ndim != 2:
        raise ImageReadError(path, f"unexpected pixel array shape {arr.shape}")
    if min(arr.shape) < MIN_SIDE:
        raise ImageReadError(path, f"image is {arr.shape[1]}x{arr.shape[0]} px, below the {MIN_SIDE} px minimum")
    if not np.isfinite(arr).all():
        raise ImageReadError(path, "pixel data holds NaN or infinite values")
    return np.ascontiguousarray(arr, dtype=np.float32)
