"""lungnet.io: the probe a command runs before work that ends by writing into a folder, and the JSON writer."""

from __future__ import annotations

import errno
import json
import math
import os

import pytest

from lungnet import io as lungnet_io
from lungnet.io import check_writable, write_json


def test_creates_the_folder_and_leaves_no_probe(tmp_path):
    folder = tmp_path / "a" / "b"
    check_writable(folder)
    assert folder.is_dir() and list(folder.iterdir()) == []


def test_a_folder_under_a_file_is_an_oserror(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError) as exc:
        check_writable(tmp_path / "file" / "sub")
    assert exc.value.errno in (errno.ENOTDIR, errno.EEXIST)


def test_a_full_disk_is_an_oserror_and_leaves_no_probe(tmp_path, monkeypatch):
    def full(path, *args, **kwargs):
        open(path, "wb").close()  # a full disk often still creates the empty file
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(lungnet_io, "open", full, raising=False)
    with pytest.raises(OSError, match="No space left"):
        check_writable(tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a folder without write bits")
def test_a_folder_without_write_bits_is_a_permission_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(PermissionError):
            check_writable(folder)
    finally:
        folder.chmod(0o755)


def test_json_keeps_long_number_lists_on_one_line_and_reads_back_equal(tmp_path):
    scores = [0.1 * i for i in range(40)] + [float("nan"), 3]
    data = {
        "scores": scores,
        "short": [1.5, float("inf")],
        "nested": [{"x": scores[:20]}],
        "text": "@inline-0000000000000000-0",  # a value shaped like the placeholder stays a string
        "mixed": ["a"] * 20 + [1.0],
        "bad\udcffkey": "p\udcff",
    }
    path = write_json(tmp_path / "d.json", data)
    text = path.read_text(encoding="utf-8")
    back = json.loads(text)
    assert back["scores"][:40] == scores[:40] and back["scores"][40] is None and back["scores"][41] == 3
    assert back["short"] == [1.5, None] and back["nested"][0]["x"] == scores[:20]
    assert back["text"] == data["text"] and back["mixed"] == data["mixed"] and back["bad\\xffkey"] == "p\\xff"
    lines = text.splitlines()
    assert any(line.strip().startswith('"scores": [0.0, 0.1') for line in lines)  # one line
    assert len(lines) < 60 and not any(math.isnan(v) for v in back["scores"][:40])
