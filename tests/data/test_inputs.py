"""Files to classify (`lungnet.data.inputs`): one read, the loaders' uint8 decode, the missing-rows check of a PNG."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lungnet.data.inputs as inputs
from lungnet.data.images import read_image
from lungnet.data.inputs import InputFiles
from lungnet.data.png import plain_png, short_pixel_data
from lungnet.data.preprocessing import Preprocessing
from tests.data.test_bad_inputs import png_chunk
from tests.data.test_png import png, scanlines

PREP = Preprocessing(("a", "b"), False, 16, 1, (0.5,), (0.25,))


@pytest.fixture
def checked(monkeypatch):
    """The files whose pixel data `short_pixel_data` inflated again."""
    seen = []

    def counting(stream):
        seen.append(stream)
        return short_pixel_data(stream)

    monkeypatch.setattr(inputs, "short_pixel_data", counting)
    return seen


def _pixels(height: int, width: int = 40, last_row: int = 7) -> np.ndarray:
    pixels = (np.arange(height * width) % 251).astype(np.uint8).reshape(height, width)
    pixels[-1] = last_row
    return pixels


def test_a_short_png_is_an_error_row(tmp_path, checked):
    path = tmp_path / "short.png"
    path.write_bytes(png(40, 200, scanlines(_pixels(200)[:50])))
    item = InputFiles([path], PREP)[0]
    assert item.tensor is None and "pixel data end after 50 of 200 rows" in item.error and len(checked) == 1


@pytest.mark.parametrize(("last_row", "second_inflate"), [(7, 0), (0, 1)])
def test_a_whole_png_is_inflated_again_only_when_its_last_row_is_black(tmp_path, checked, last_row, second_inflate):
    """Its tensor is the loaders' (`read_image` keeping uint8, resized before any float work)."""
    path = tmp_path / "whole.png"
    path.write_bytes(png(40, 30, scanlines(_pixels(30, last_row=last_row))))
    item = InputFiles([path], PREP, keep_image=True)[0]
    assert item.error == "" and len(checked) == second_inflate
    assert torch.equal(item.tensor, PREP.pipeline()(read_image(path, keep_uint8=True)))
    assert item.image.dtype == np.float32 and np.allclose(item.image, read_image(path))


def test_pngs_whose_rows_may_be_turned_or_interlaced_are_always_checked(tmp_path):
    raw = scanlines(_pixels(30))
    plain = png(40, 30, raw)
    assert plain_png(plain)
    assert not plain_png(png(40, 30, scanlines(_pixels(30), interlace=1), interlace=1))
    exif = plain[:-12] + png_chunk(b"eXIf", b"MM\0*") + plain[-12:]  # after the pixel data, before IEND
    xmp = plain[:33] + png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0<x/>") + plain[33:]
    assert not plain_png(exif) and not plain_png(xmp)
    assert plain_png(plain[:33] + png_chunk(b"tEXt", b"Comment\0hello") + plain[33:])


def test_a_batch_shares_one_stacked_tensor_and_keeps_its_error_rows(tmp_path):
    from lungnet.data.inputs import InputItem, collate_inputs

    items = [InputItem(0, "a", tensor=torch.ones(1, 4, 4)), InputItem(1, "b", error="bad"), InputItem(2, "c")]
    items[2].tensor = torch.zeros(1, 4, 4)
    batch = collate_inputs(items)
    assert batch is items and batch[1].tensor is None and batch[1].error == "bad"
    assert batch[0].tensor.untyped_storage().data_ptr() == batch[2].tensor.untyped_storage().data_ptr()
    assert torch.equal(batch[0].tensor, torch.ones(1, 4, 4)) and torch.equal(batch[2].tensor, torch.zeros(1, 4, 4))
    members = [InputItem(0, "a", tensor=(torch.ones(1, 2, 2), torch.ones(3, 4, 4)))]
    assert [t.shape for t in collate_inputs(members)[0].tensor] == [(1, 2, 2), (3, 4, 4)]
