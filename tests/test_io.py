"""lungnet.io.check_writable: the probe a command runs before work that ends by writing into a folder."""

from __future__ import annotations

import errno
import os

import pytest

from lungnet import io as lungnet_io
from lungnet.io import check_writable


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
