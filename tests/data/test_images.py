import zlib

import numpy as np
import pytest
from PIL import Image

from lungnet.data.images import MAX_PIXELS, ImageReadError, collect_inputs, native_size, read_image
from lungnet.data.png import decode_gray8
from tests.conftest import shared
from tests.data.test_png import png, scanlines


def test_8bit_rgb_rgba_palette_and_16bit(tmp_path):
    base = (np.arange(64 * 64).reshape(64, 64) % 256).astype(np.uint8)
    Image.fromarray(base).save(tmp_path / "g.png")
    Image.fromarray(np.stack([base] * 3, -1)).save(tmp_path / "rgb.jpg", quality=100)
    rgba = np.dstack([base, base, base, np.full_like(base, 255)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(base).convert("P").save(tmp_path / "pal.png")
    Image.fromarray(base.astype(np.uint16) * 256).save(tmp_path / "16.png")
    g = read_image(tmp_path / "g.png")
    assert g.shape == (64, 64) and g.dtype == np.float32 and 0 <= g.min() and g.max() <= 1
    for name in ("rgb.jpg", "rgba.png", "pal.png", "16.png"):
        arr = read_image(tmp_path / name)
        assert arr.shape == (64, 64)
        assert np.abs(arr - g).mean() < 0.02, name


def test_transparency_is_composited_on_black(tmp_path):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (48, 40, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgba[..., [0, 3]], "LA").save(tmp_path / "la.png")
    luma = (rgba[..., :3].astype(np.float64) @ [0.299, 0.587, 0.114]) / 255
    alpha = rgba[..., 3] / 255
    assert np.abs(read_image(tmp_path / "rgba.png") - luma * alpha).max() < 2.5 / 255  # 8-bit rounding only
    assert np.abs(read_image(tmp_path / "la.png") - rgba[..., 0] / 255 * alpha).max() < 1.5 / 255


def test_16bit_png_keeps_more_than_8_bits(tmp_path):
    arr = np.linspace(0, 4095, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "12bit.png")
    out = read_image(tmp_path / "12bit.png")
    assert len(np.unique(out)) > 256


def test_12bit_values_in_a_16bit_container_fill_the_range(tmp_path):
    """A 12-bit radiograph stored as 16-bit PNG peaks at 4095: divided by 65535 it would come out almost black."""
    arr = np.linspace(0, 4095, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "12bit.png")
    Image.fromarray((arr.astype(np.int32) * 16).astype(np.uint16)).save(tmp_path / "16bit.png")
    twelve, sixteen = read_image(tmp_path / "12bit.png"), read_image(tmp_path / "16bit.png")
    assert twelve.max() == pytest.approx(1.0) and twelve.min() == 0.0
    assert np.abs(twelve - sixteen).max() < 0.01  # the same picture whichever depth it was stored at


def test_signed_32bit_pixels_are_min_max_scaled(tmp_path):
    arr = np.linspace(-1000, 3000, 64 * 64).reshape(64, 64).astype(np.int32)
    Image.fromarray(arr, "I").save(tmp_path / "signed.tif")
    out = read_image(tmp_path / "signed.tif")
    assert out.min() == 0.0 and out.max() == pytest.approx(1.0)


def test_native_size_reads_headers_and_names_bad_files(tmp_path):
    Image.fromarray(np.zeros((20, 30), dtype=np.uint8)).save(tmp_path / "a.png")
    assert native_size(tmp_path / "a.png") == (30, 20)
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "text.dcm").write_text("not a DICOM file either")
    for name in ("text.png", "text.dcm"):
        with pytest.raises(ImageReadError, match=name):
            native_size(tmp_path / name)


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "empty file"), (b"this is text, not an image", "not an image"), (None, "truncated")],
)
def test_bad_files_raise_readable_errors(tmp_path, content, reason):
    path = tmp_path / "bad.png"
    if content is None:  # a real PNG cut in half
        rng = np.random.default_rng(0)
        Image.fromarray((rng.random((64, 64)) * 255).astype(np.uint8)).save(path)
        content = path.read_bytes()[: len(path.read_bytes()) // 2]
    path.write_bytes(content)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert str(path) in str(info.value) and reason in str(info.value)


def test_tiny_image_is_refused(tmp_path):
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tmp_path / "px.png")
    with pytest.raises(ImageReadError, match="below the"):
        read_image(tmp_path / "px.png")


def test_real_monochrome1_dicom_is_inverted():
    path = shared("dicom") / "RG1_UNCR.dcm"
    img = read_image(path)
    assert img.shape == (1955, 1841)
    h, w = img.shape
    # lung fields (upper middle, left and right of the spine) must come out darker than the mediastinum/spine
    lungs = np.concatenate(
        [img[h // 4 : h // 2, w // 5 : w // 3].ravel(), img[h // 4 : h // 2, 2 * w // 3 : 4 * w // 5].ravel()]
    )
    spine = img[h // 4 : h // 2, int(w * 0.47) : int(w * 0.53)]
    assert lungs.mean() < spine.mean() - 0.1


def test_collect_inputs_walks_folders_like_the_data_sets(tmp_path):
    """A folder is walked by `walk_images`: symlinked folders followed once, loops and hidden folders skipped,
    suffix-less DICOM kept."""
    images = tmp_path / "in"
    (images / "a").mkdir(parents=True)
    (images / ".ipynb_checkpoints").mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.new("L", (16, 16)).save(images / "a" / "x.png")
    Image.new("L", (16, 16)).save(images / ".ipynb_checkpoints" / "x.png")  # hidden folder: skipped
    Image.new("L", (16, 16)).save(outside / "y.png")
    (images / "a" / "scan").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)  # DICOM magic, no suffix
    (images / "a" / "notes").write_bytes(b"not an image")
    (images / "linked").symlink_to(outside, target_is_directory=True)
    (images / "a" / "loop").symlink_to(images, target_is_directory=True)  # back to a parent: not followed
    found = [p.relative_to(images).as_posix() for p in collect_inputs(images)]
    assert found == ["a/scan", "a/x.png", "linked/y.png"]


def _dicom(path, rows: int, cols: int, frames: int = 1, syntax=None):
    """An 8-bit MONOCHROME2 DICOM of ``frames`` frames, frame k filled with k (``syntax``: how it is written)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    frame = (np.arange(rows * cols) % 200).astype(np.uint8).reshape(rows, cols)
    ds.PixelData = np.concatenate([frame + k for k in range(frames)]).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_bombs_are_refused_before_their_pixels_are_read(tmp_path):
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from lungnet.data import images

    deflated = _dicom(tmp_path / "deflated.dcm", 16, 16, syntax=DeflatedExplicitVRLittleEndian)
    with pytest.raises(ImageReadError, match="deflated DICOM is not read"):
        read_image(deflated)
    with pytest.raises(ImageReadError, match="deflated DICOM is not read"):  # from bytes already read (predict)
        read_image(deflated, data=deflated.read_bytes())
    many = _dicom(tmp_path / "frames.dcm", 16, 24, frames=5)
    first = read_image(many)
    np.testing.assert_array_equal(read_image(many, data=many.read_bytes()), first)
    assert first.shape == (16, 24)  # the first frame only
    assert np.allclose(first, read_image(_dicom(tmp_path / "one.dcm", 16, 24)))
    large = _dicom(tmp_path / "large.dcm", 64, 64)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(images, "MAX_PIXELS", 64 * 63)
        with pytest.raises(ImageReadError, match="claims 64x64 px x 1 samples"):
            read_image(large)


def _recoded(path, tag: int, vr: str, value):
    """The DICOM at ``path`` with element ``tag`` rewritten as ``vr`` ``value`` (no check of either)."""
    import pydicom
    from pydicom.dataelem import DataElement

    ds = pydicom.dcmread(path)
    ds[tag] = DataElement(tag, vr, value)
    ds.save_as(path)
    return path


def _three_byte_rows(path):
    """``Rows`` kept as US but stored in 3 bytes: pydicom raises its own exception when the value is read."""
    data = path.read_bytes()
    at = data.index(b"\x28\x00\x10\x00US\x02\x00")
    path.write_bytes(data[:at] + b"\x28\x00\x10\x00US\x03\x00" + data[at + 8 : at + 10] + b"\0" + data[at + 10 :])
    return path


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (lambda p: _recoded(p, 0x00280010, "LO", "abc"), "DICOM header Rows is 'abc': expected a whole number in"),
        (_three_byte_rows, r"DICOM header Rows cannot be read \(BytesLengthException"),
        (lambda p: _recoded(p, 0x00280011, "SS", -5), "DICOM header Columns is -5: expected a whole number in"),
        (lambda p: _recoded(p, 0x00280010, "US", [16, 16]), r"DICOM header Rows is \[16, 16\]"),
        (lambda p: _recoded(p, 0x00280002, "US", 9), r"SamplesPerPixel is 9: expected a whole number in \[0, 4\]"),
    ],
)
def test_malformed_dicom_header_values_are_one_reason_naming_the_element(tmp_path, fault, expected):
    """Was a ValueError traceback from int() (or pydicom's own exception) in train.py and evaluate.py."""
    path = fault(_dicom(tmp_path / "bad.dcm", 16, 16))
    for read in (read_image, native_size):
        with pytest.raises(ImageReadError, match=expected) as info:
            read(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_8bit_gray_png_from_memory_is_decoded_by_opencv_with_pillows_pixels(tmp_path):
    gray = np.random.default_rng(3).integers(0, 256, (37, 53), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: Pillow's reader applies it
    Image.fromarray(gray).save(tmp_path / "g.png")
    (tmp_path / "i.png").write_bytes(png(53, 37, scanlines(gray, interlace=1), interlace=1))
    Image.fromarray(gray).save(tmp_path / "t.png", transparency=0)
    Image.fromarray(gray).save(tmp_path / "e.png", exif=exif)
    Image.fromarray(gray.astype(np.uint16) * 16).save(tmp_path / "16.png")
    for name, opencv in (("g.png", True), ("i.png", True), ("t.png", False), ("e.png", False), ("16.png", False)):
        data = (tmp_path / name).read_bytes()
        assert (decode_gray8(data, MAX_PIXELS) is not None) == opencv, name
        for keep in (True, False):
            out, ref = read_image(tmp_path / name, keep, data=data), read_image(tmp_path / name, keep)
            assert out.dtype == ref.dtype and out.flags.c_contiguous, name
            np.testing.assert_array_equal(out, ref)
    interlaced = read_image(tmp_path / "i.png", keep_uint8=True, data=(tmp_path / "i.png").read_bytes())
    np.testing.assert_array_equal(interlaced, gray)
    assert read_image(tmp_path / "e.png").shape == (53, 37)
    assert decode_gray8((tmp_path / "g.png").read_bytes(), max_pixels=37 * 53 - 1) is None


def test_a_short_8bit_gray_png_from_memory_is_refused_unless_verified(tmp_path):
    pixels = np.random.default_rng(4).integers(1, 256, (120, 64), dtype=np.uint8)
    raw = scanlines(pixels)
    data = png(64, 120, b"", idat=zlib.compress(raw[: len(raw) // 4]))
    with pytest.raises(ImageReadError, match="truncated image"):
        read_image(tmp_path / "short.png", data=data)
    (tmp_path / "short.png").write_bytes(data)
    verified = read_image(tmp_path / "short.png", keep_uint8=True, verified=True, data=data)
    np.testing.assert_array_equal(verified, read_image(tmp_path / "short.png", keep_uint8=True, verified=True))
