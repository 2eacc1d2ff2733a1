"""The data set manifest (issue #27 §1): a data set is scanned once, then only its changed files."""

import json
import logging
import os
import subprocess
import sys

import pytest

import lungnet.data.checks as checks
from lungnet.data.datamodule import LungDataModule
from lungnet.data.manifest import manifest_dir, manifest_path
from lungnet.data.splits import ExpectedSplits, split_fingerprint
from lungnet.models.specs import ModelSpec
from tests.conftest import write_png

SPEC = ModelSpec(name="t", arch="t", input_size=32, in_chans=1, mean=(0.5,), std=(0.25,))


@pytest.fixture
def decodes(monkeypatch):
    """The paths `read_image` decodes, in order."""
    seen = []
    real = checks.read_image

    def counting(path, **kw):
        seen.append(str(path))
        return real(path, **kw)

    monkeypatch.setattr(checks, "read_image", counting)
    return seen


def _load(root, cache, **kw):
    dm = LungDataModule({"source": "pneumonia", "root": str(root), **kw}, SPEC, cache_dir=str(cache))
    return dm.load_table()


def test_second_load_reads_no_image(tiny_folder, tmp_path, decodes, caplog):
    first = _load(tiny_folder, tmp_path / "cache")
    assert len(decodes) == 36 and manifest_path(tmp_path / "cache", tiny_folder).is_file()
    decodes.clear()
    with caplog.at_level(logging.INFO):
        second = _load(tiny_folder, tmp_path / "cache")
    assert decodes == []
    assert "manifest: 36 unchanged, 0 re-scanned" in caplog.text
    cols = ["path", "sha1", "error", "split"]
    assert second[cols].equals(first[cols])


def test_a_touched_file_is_the_only_one_rescanned(tiny_folder, tmp_path, decodes, caplog):
    _load(tiny_folder, tmp_path / "cache")
    decodes.clear()
    touched = tiny_folder / "train" / "NORMAL" / "img_000.png"
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    write_png(tiny_folder / "train" / "NORMAL" / "new.png", 999)
    (tiny_folder / "val" / "NORMAL" / "img_000.png").unlink()
    with caplog.at_level(logging.INFO):
        table = _load(tiny_folder, tmp_path / "cache")
    assert sorted(decodes) == sorted([str(touched), str(tiny_folder / "train" / "NORMAL" / "new.png")])
    assert "manifest: 34 unchanged, 2 re-scanned, 1 removed" in caplog.text
    assert len(table) == 36
    rows = json.loads(manifest_path(tmp_path / "cache", tiny_folder).read_text())["files"]
    assert len(rows) == 36 and not any(r[0].endswith("val/NORMAL/img_000.png") for r in rows)


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        json.dumps({"version": 1, "fields": ["path"], "files": []}),
        "[1, 2]",
    ],
)
def test_a_corrupt_manifest_is_rebuilt(tiny_folder, tmp_path, decodes, caplog, content):
    path = manifest_path(tmp_path / "cache", tiny_folder)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with caplog.at_level(logging.WARNING):
        _load(tiny_folder, tmp_path / "cache")
    assert "rebuilding it" in caplog.text and len(decodes) == 36
    assert len(json.loads(path.read_text())["files"]) == 36


def test_a_manifest_row_of_wrong_type_or_range_is_not_trusted(tiny_folder, tmp_path, decodes, caplog):
    _load(tiny_folder, tmp_path / "cache")
    path = manifest_path(tmp_path / "cache", tiny_folder)
    for field, value in ((1, -5), (3, "not-a-hash"), (6, "yes")):
        data = json.loads(path.read_text())
        data["files"][0][field] = value
        path.write_text(json.dumps(data))
        decodes.clear()
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            _load(tiny_folder, tmp_path / "cache")
        assert "row 1 holds a wrong type or value" in caplog.text and len(decodes) == 36


def test_a_read_only_data_root_keeps_its_manifest_in_the_user_cache(tiny_folder, tmp_path, monkeypatch, decodes):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert manifest_dir(None, tiny_folder) == tiny_folder / ".lungnet"  # writable: beside the data
    mode = tiny_folder.stat().st_mode
    tiny_folder.chmod(0o555)
    try:
        assert manifest_dir(None, tiny_folder) == tmp_path / "xdg" / "lungnet" / "manifests"
        _load(tiny_folder, "")
        decodes.clear()
        _load(tiny_folder, "")
    finally:
        tiny_folder.chmod(mode)
    assert decodes == [] and not list((tiny_folder / ".lungnet").glob("manifest-*"))
    assert len(list((tmp_path / "xdg" / "lungnet" / "manifests").glob("manifest-*.json"))) == 1


def test_evaluating_one_split_decodes_only_its_images(tiny_folder, tmp_path, decodes, caplog):
    """evaluate.py split=test on a machine without the manifest decodes the test images only; a training image
    left out as unreadable at training changes the splits, so then every image is decoded."""
    trained = _load(tiny_folder, tmp_path / "train-cache")
    recorded = ExpectedSplits(split_fingerprint(trained), "best.ckpt", "evaluate")
    decodes.clear()
    dm = LungDataModule({"source": "pneumonia", "root": str(tiny_folder)}, SPEC, expected_splits=recorded)
    dm.cache_dir, dm.scored_split = str(tmp_path / "eval-cache"), "test"
    table = dm.load_table()
    test = sorted(trained.loc[trained["split"] == "test", "path"])
    assert sorted(decodes) == test and sorted(table.loc[table["split"] == "test", "path"]) == test
    # a broken training image: skipped at training, so presuming it readable would change the train split
    (tiny_folder / "train" / "NORMAL" / "broken.png").write_bytes(b"not a png")
    trained = _load(tiny_folder, tmp_path / "train-cache")
    recorded = ExpectedSplits(split_fingerprint(trained), "best.ckpt", "evaluate")
    decodes.clear()
    dm = LungDataModule({"source": "pneumonia", "root": str(tiny_folder)}, SPEC, expected_splits=recorded)
    dm.cache_dir, dm.scored_split = str(tmp_path / "eval-cache-2"), "test"
    with caplog.at_level(logging.INFO):
        table = dm.load_table()
    assert "decoding every image" in caplog.text and len(decodes) == 37
    assert "broken.png" in dm.bad_files["path"].iloc[0]
    assert sorted(table.loc[table["split"] == "test", "path"]) == test


def test_prepare_writes_the_manifest_the_next_command_reads(tiny_folder, tmp_path, decodes):
    """python -m lungnet.prepare data=pneumonia: the Hydra command scans into the manifest; training's load then
    decodes nothing."""
    cache = tmp_path / "cache"
    args = ["data=pneumonia", f"data.root={tiny_folder}", f"paths.cache_dir={cache}", "data.scan_workers=1"]
    proc = subprocess.run(
        [sys.executable, "-m", "lungnet.prepare", *args], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "manifest: 0 unchanged, 36 re-scanned" in proc.stdout + proc.stderr
    assert len(json.loads(manifest_path(cache, tiny_folder).read_text())["files"]) == 36
    assert not list(tmp_path.glob("outputs")) and not (tmp_path / ".hydra").exists()
    _load(tiny_folder, cache)
    assert decodes == []
