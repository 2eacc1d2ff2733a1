"""Every kind of bad or odd image file: read, or listed as bad with a reason, never a crash.

The last tests mix all of them into a folder of real DarkCovidNet radiographs (copied into tmp_path)
and train + evaluate on it; with ``data.on_bad_file=error`` train.py stops with one readable message.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lungnet.data.checks import handle_bad_files, scan_files
from lungnet.data.formats import walk_images
from lungnet.data.images import ImageReadError, read_image
from lungnet.data.sources import DataError
from lungnet.io import printable
from tests.conftest import ROOT, shared

NON_UTF8 = b"\xff\xfe.png"  # not valid UTF-8: Python sees it as '\udcff\udcfe.png'


def gradient(h: int = 48, w: int = 64) -> np.ndarray:
    """An asymmetric uint8 test image (rows and columns differ, so rotations are visible)."""
    y, x = np.mgrid[0:h, 0:w]
    return ((x * 3 + y * 1.5) % 256).astype(np.uint8)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(path: Path, side: int = 100_000) -> Path:
    """A tiny PNG whose header claims side x side pixels (10 gigapixels at the default)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + png_chunk(b"IEND", b"")
    )
    return path


def dicom(path: Path, pixels: bool = True, syntax: str | None = None) -> Path:
    """A small DICOM; ``syntax`` declares a transfer syntax the raw pixel bytes do not follow."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax if syntax and syntax.startswith("1.2.840.") else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    if pixels:
        ds.Rows = ds.Columns = 32
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation = 7, 0
        raw = gradient(32, 32).tobytes()
        ds.PixelData = encapsulate([raw]) if meta.TransferSyntaxUID != ExplicitVRLittleEndian else raw
    ds.save_as(path, enforce_file_format=True)
    if syntax and not syntax.startswith("1.2.840."):  # a made-up syntax pydicom will not even write
        data = path.read_bytes()
        old = str(ExplicitVRLittleEndian).encode() + b"\0"
        assert len(syntax) + 1 == len(old) and data.count(old) == 1
        path.write_bytes(data.replace(old, syntax.encode() + b"\0"))
    return path


def dicom_rows_as_text(path: Path) -> Path:
    """A DICOM whose ``Rows`` element is ``LO 'abc'`` (int() of it was a ValueError traceback)."""
    import pydicom
    from pydicom.dataelem import DataElement

    ds = pydicom.dcmread(dicom(path))
    ds[0x00280010] = DataElement(0x00280010, "LO", "abc")
    ds.save_as(path)
    return path


def short_stream_png(path: Path) -> Path:
    """A PNG whose complete zlib stream holds 5 of the header's 48 rows (Pillow reads the rest as black)."""
    rows = b"".join(b"\0" + row.tobytes() for row in gradient()[:5])
    ihdr = struct.pack(">IIBBBBB", 64, 48, 8, 0, 0, 0, 0)
    chunks = png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)
    return path


def exif_rotated_jpeg(path: Path, orientation: int = 6) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation  # 6: the viewer must rotate 90 degrees clockwise
    Image.fromarray(gradient()).save(path, "JPEG", quality=95, exif=exif.tobytes())
    return path


def truncated(path: Path, fmt: str) -> Path:
    buf = io.BytesIO()
    Image.fromarray(gradient()).save(buf, fmt)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def good_odd_files(folder: Path) -> dict[str, Path]:
    """Unusual files that must read fine."""
    folder.mkdir(parents=True, exist_ok=True)
    g = gradient()
    jpeg_as_png = folder / "jpeg_named.png"
    Image.fromarray(g).save(jpeg_as_png, "JPEG", quality=95)
    Image.fromarray(g).convert("CMYK").save(folder / "cmyk.jpg", "JPEG", quality=95)
    Image.fromarray(np.dstack([g, g, g, np.full_like(g, 255)]), "RGBA").save(folder / "rgba.png")
    Image.fromarray(g).convert("P").save(folder / "palette.png")
    Image.fromarray(g.astype(np.uint16) * 257).save(folder / "sixteen_bit.png")
    exif_rotated_jpeg(folder / "exif_rotated.jpg")
    names = ("jpeg_named.png", "cmyk.jpg", "rgba.png", "palette.png", "sixteen_bit.png", "exif_rotated.jpg")
    return {name: folder / name for name in names}


def bad_files(folder: Path) -> dict[str, str]:
    """Files that must be refused: name -> a word of the expected reason."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero_bytes.png").write_bytes(b"")
    truncated(folder / "truncated.jpg", "JPEG")
    truncated(folder / "truncated.png", "PNG")
    (folder / "text.png").write_text("this is a text file, not an image\n")
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(folder / "one_pixel.png")
    bomb_png(folder / "bomb.png")
    dicom(folder / "no_pixels.dcm", pixels=False)
    dicom(folder / "jpeg_ls.dcm", syntax="1.2.840.10008.1.2.4.80")
    dicom(folder / "made_up_syntax.dcm", syntax="1.2.999.99999.1.2.1")
    dicom_rows_as_text(folder / "rows_as_text.dcm")
    short_stream_png(folder / "short_stream.png")
    os.symlink("link_loop.png", folder / "link_loop.png")  # a file symlink pointing at itself
    with open(os.path.join(os.fsencode(folder), NON_UTF8), "wb") as fh:  # undecodable name, text inside
        fh.write(b"not an image either")
    return {
        "zero_bytes.png": "empty file",
        "truncated.jpg": "truncated",
        "truncated.png": "truncated",
        "text.png": "not an image",
        "one_pixel.png": "below the",
        "bomb.png": "decompression bomb",
        "no_pixels.dcm": "no pixel data",
        "jpeg_ls.dcm": "JPEG-LS",
        "made_up_syntax.dcm": "1.2.999.99999.1.2.1",
        "rows_as_text.dcm": "DICOM header Rows is 'abc'",
        "short_stream.png": "pixel data end after 5 of 48 rows",
        "link_loop.png": "symbolic links",
        os.fsdecode(NON_UTF8): "not an image",
    }


# ------------------------------------------------------------------------------ read_image, one case each


def test_odd_but_valid_files_read(tmp_path):
    files = good_odd_files(tmp_path)
    reference = gradient().astype(np.float32) / 255
    for name in ("jpeg_named.png", "cmyk.jpg", "rgba.png", "palette.png", "sixteen_bit.png"):
        arr = read_image(files[name])
        assert arr.shape == reference.shape and arr.dtype == np.float32, name
        assert np.abs(arr - reference).mean() < 0.03, name


def test_exif_rotation_is_applied(tmp_path):
    arr = read_image(exif_rotated_jpeg(tmp_path / "r.jpg"))
    expected = np.rot90(gradient(), k=-1).astype(np.float32) / 255  # orientation 6: 90 degrees clockwise
    assert arr.shape == expected.shape == (64, 48)
    assert np.abs(arr - expected).mean() < 0.03


def test_bad_files_raise_image_read_error_with_reason(tmp_path):
    expected = bad_files(tmp_path)
    for name, reason in expected.items():
        path = Path(tmp_path) / name
        with pytest.raises(ImageReadError) as info:
            read_image(path)
        assert reason in info.value.reason, (name, info.value.reason)
        str(info.value).encode("utf-8")  # the message is printable even for undecodable names


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    start = time.perf_counter()
    for side in (100_000, 9_000):  # above Pillow's own limit, and between ours and Pillow's
        with pytest.raises(ImageReadError, match="decompression bomb"):
            read_image(bomb_png(tmp_path / f"b{side}.png", side))
    assert time.perf_counter() - start < 2.0


def test_symlink_loops_and_undecodable_names_are_walked(tmp_path):
    root = tmp_path / "data" / "NORMAL"
    root.mkdir(parents=True)
    Image.fromarray(gradient()).save(root / "a.png")
    os.symlink(".", root / "self_loop")
    os.symlink("..", root / "parent_loop")
    os.symlink("link_loop.png", root / "link_loop.png")
    with open(os.path.join(os.fsencode(root), NON_UTF8), "wb") as fh:
        Image.fromarray(gradient()).save(fh, "PNG")
    files = walk_images(root)
    assert sorted(p.name for p in files) == sorted(["a.png", "link_loop.png", os.fsdecode(NON_UTF8)])
    assert read_image(root / os.fsdecode(NON_UTF8)).shape == (48, 64)  # an undecodable name reads fine


def test_scan_lists_every_bad_file_and_csv_is_written(tmp_path):
    expected = bad_files(tmp_path / "bad")
    good = good_odd_files(tmp_path / "good")
    paths = [str(p) for p in walk_images(tmp_path / "bad")] + [str(p) for p in good.values()]
    table = scan_files(pd.DataFrame({"path": paths}), verify=True)
    report = tmp_path / "run" / "bad_files.csv"
    kept = handle_bad_files(table, "skip", report)
    assert sorted(Path(p).name for p in kept["path"]) == sorted(good)
    listed = pd.read_csv(report)
    assert sorted(Path(p).name for p in listed["path"]) == sorted(printable(n) for n in expected)
    for name, reason in expected.items():
        row = listed[listed["path"].str.endswith("/" + printable(name))]
        assert len(row) == 1 and reason in row["error"].iloc[0], name
    with pytest.raises(DataError) as info:
        handle_bad_files(table, "error", None)
    message = str(info.value)
    assert f"{len(expected)} unusable" in message and "data.on_bad_file=skip" in message
    assert "\\xff\\xfe.png" in message  # shown escaped, never as lone surrogates


# --------------------------------------------------------------- all of them among real images, end to end


def _unique_images(folder: Path, n: int) -> list[Path]:
    seen, out = set(), []
    for path in sorted(folder.glob("*.jpg")):
        digest = hashlib.sha1(path.read_bytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            out.append(path)
        if len(out) == n:
            break
    return out


@pytest.fixture
def mixed_folder(tmp_path) -> tuple[Path, dict[str, str], dict[str, Path]]:
    """DarkCovidNet layout: 10 real images per class, plus every bad and every odd file among them."""
    real = shared("darkcovidnet")
    root = tmp_path / "darkcovidnet"
    for cls in ("Covid-19", "No_findings", "Pneumonia"):
        (root / cls).mkdir(parents=True)
        for path in _unique_images(real / cls, 10):
            shutil.copy(path, root / cls / path.name)
    expected = bad_files(root / "Pneumonia")
    good = good_odd_files(root / "No_findings")
    os.symlink("..", root / "Covid-19" / "loop")  # a folder symlink loop inside a class folder
    return root, expected, good


def _train_cmd(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "train.py"),
        "data=darkcovidnet",
        f"data.root={root}",
        "data.test_fraction=0.2",
        "data.num_workers=0",
        "data.persistent_workers=false",
        "model=simple_cnn",
        "data.image_size=32",
        "data.batch_size=16",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "log_figures_every=100",
        "trainer.precision=32-true",
        "bootstrap.resamples=50",  # the validation summary's intervals: not what this test checks
        f"hydra.run.dir={out}",
        *extra,
    ]


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1"}


def test_train_and_evaluate_skip_every_bad_file_or_stop_on_error(mixed_folder, tmp_path):
    """Both policies over the same folder; the two train.py runs go in parallel to save time."""
    root, expected, good = mixed_folder
    run, stopped = tmp_path / "run", tmp_path / "stopped"
    strict = subprocess.Popen(
        _train_cmd(root, stopped, "data.on_bad_file=error"),
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc = subprocess.run(_train_cmd(root, run), cwd=tmp_path, capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Logging error" not in proc.stderr
    listed = pd.read_csv(run / "bad_files.csv")
    assert len(listed) == len(expected)
    assert not set(good) & {Path(p).name for p in listed["path"]}  # odd but valid files were used
    used = pd.concat(pd.read_csv(run / "splits" / f"{s}.csv") for s in ("train", "val", "test"))
    assert len(used) == 30 + len(good)  # the folder loop added no image twice
    evaluate = [sys.executable, str(ROOT / "evaluate.py"), f"ckpt={run / 'checkpoints' / 'best.ckpt'}", "split=test"]
    proc = subprocess.run(
        [*evaluate, "audit=false", "explain.n=0", "bootstrap.resamples=50", f"hydra.run.dir={tmp_path / 'eval'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(pd.read_csv(tmp_path / "eval" / "predictions.csv")) == len(pd.read_csv(run / "splits" / "test.csv"))

    out, err = strict.communicate(timeout=600)
    assert strict.returncode == 2
    assert "Traceback" not in err and "Logging error" not in err
    assert f"{len(expected)} unusable image file(s)" in out + err and "data.on_bad_file=skip" in out + err
    assert len(pd.read_csv(stopped / "bad_files.csv")) == len(expected)  # the full list, for the user to fix
    assert not (stopped / "checkpoints").exists() and not (stopped / "splits").exists()
