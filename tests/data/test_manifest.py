"""The data set manifest (issue #27 §1): a data set is scanned once, then only its changed files."""

import hashlib
import json
import logging
import os
import subprocess
import sys

import pandas as pd
import pytest

import lungnet.data.checks as checks
import lungnet.data.manifest_rows as manifest_rows
from lungnet.data.datamodule import LungDataModule
from lungnet.data.manifest import (
    FIELDS,
    MANIFEST_VERSION,
    manifest_dir,
    manifest_path,
    read_manifest,
    scan_table,
    write_manifest,
)
from lungnet.data.prepare import prepare
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
        json.dumps({"version": 2, "fields": ["path"], "files": []}),
        json.dumps({"version": "2", "files": []}),
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
    assert "(decoded is 'yes'; accepted: true or false): rebuilding it" in caplog.text


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
    """python -m lungnet.prepare data=pneumonia: the Hydra command scans into the manifest without importing torch or
    Lightning (seconds of start-up, for a command that often finds nothing to do); training's load then decodes
    nothing."""
    cache = tmp_path / "cache"
    args = ["data=pneumonia", f"data.root={tiny_folder}", f"paths.cache_dir={cache}", "data.scan_workers=1"]
    code = (
        "import atexit, runpy, sys; atexit.register(lambda: print('HEAVY', sorted(m for m in ('torch', "
        "'pytorch_lightning') if m in sys.modules))); sys.argv = ['lungnet-prepare', *sys.argv[1:]]; "
        "runpy.run_module('lungnet.prepare', run_name='__main__')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "HEAVY []" in proc.stdout
    assert "manifest: 0 unchanged, 36 re-scanned" in proc.stdout + proc.stderr
    assert len(json.loads(manifest_path(cache, tiny_folder).read_text())["files"]) == 36
    assert not list(tmp_path.glob("outputs")) and not (tmp_path / ".hydra").exists()
    _load(tiny_folder, cache)
    assert decodes == []


def test_prepare_shows_a_progress_bar_of_the_files_it_scans(tiny_folder, tmp_path, capfd):
    """lungnet-prepare's scan draws a bar on stderr whose total is the files to (re)scan: all of them first, then
    the one changed file, then none (no bar at all)."""
    cfg, cache = {"source": "pneumonia", "root": str(tiny_folder)}, str(tmp_path / "cache")
    prepare(cfg, cache)
    err = capfd.readouterr().err
    assert "Scanning images" in err and "0/36 " in err
    touched = tiny_folder / "test" / "PNEUMONIA" / "img_002.png"
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    prepare(cfg, cache)
    err = capfd.readouterr().err
    assert "Scanning images" in err and "0/1 " in err and "/36" not in err
    prepare(cfg, cache)
    assert "Scanning images" not in capfd.readouterr().err


def _nih(root, cache, **kw):
    cfg = {"source": "nih14", "root": str(root), "val_fraction": 0.2, "intensity_check": False, **kw}
    return LungDataModule(cfg, SPEC, cache_dir=str(cache)).load_table()


def _manifest(cache, root) -> tuple[dict, dict[str, dict]]:
    data = json.loads(manifest_path(cache, root).read_text())
    return data, {r[0]: dict(zip(data["fields"], r, strict=True)) for r in data["files"]}


def test_the_manifest_keeps_each_files_label_and_patient(tiny_nih, tiny_folder, tmp_path):
    """Issue #27: a row per file holds its label (the split files' ``label``) and patient id (null: none)."""
    _nih(tiny_nih, tmp_path / "cache")
    data, rows = _manifest(tmp_path / "cache", tiny_nih)
    assert data["version"] == MANIFEST_VERSION == 2 and data["source"] == "nih14"
    assert data["fields"] == list(FIELDS) and list(FIELDS[-2:]) == ["label", "patient"]
    csv = pd.read_csv(tiny_nih / "Data_Entry_2017.csv", dtype=str)
    expected = {
        str(tiny_nih / "images" / name): (labels, patient)
        for name, labels, patient in zip(csv["Image Index"], csv["Finding Labels"], csv["Patient ID"], strict=True)
    }
    assert {p: (r["label"], r["patient"]) for p, r in rows.items()} == expected
    assert rows[str(tiny_nih / "images" / "00000001_002.png")]["label"] == "Atelectasis|Effusion"
    assert rows[str(tiny_nih / "images" / "00000010_002.png")]["patient"] == "10"
    _load(tiny_folder, tmp_path / "cache-folder")  # class folders: the class is the label, no patient ids
    data, rows = _manifest(tmp_path / "cache-folder", tiny_folder)
    assert data["source"] == "pneumonia" and {r["patient"] for r in rows.values()} == {None}
    assert all(r["label"] == p.split(os.sep)[-2] for p, r in rows.items())


def test_a_changed_label_with_unchanged_images_is_not_served_stale(tiny_nih, tmp_path, decodes, caplog):
    """The label file says otherwise now, the images are the same: nothing is decoded, the table and the manifest
    hold the new label and patient id, and a further load rewrites nothing."""
    _nih(tiny_nih, tmp_path / "cache")
    csv = tiny_nih / "Data_Entry_2017.csv"
    text = csv.read_text()
    assert "00000001_000.png,No Finding,0,1," in text and "00000002_000.png,Pneumonia,0,2," in text
    text = text.replace("00000001_000.png,No Finding,", "00000001_000.png,Pneumonia,")
    csv.write_text(text.replace("00000002_000.png,Pneumonia,0,2,", "00000002_000.png,Pneumonia,0,3,"))
    decodes.clear()
    with caplog.at_level(logging.INFO):
        table = _nih(tiny_nih, tmp_path / "cache")
    assert decodes == []
    assert "manifest: 30 unchanged, 0 re-scanned, 0 removed, 2 with a new label or patient id" in caplog.text
    first, second = str(tiny_nih / "images" / "00000001_000.png"), str(tiny_nih / "images" / "00000002_000.png")
    row = table.set_index("path").loc[first]
    assert row["label"] == "Pneumonia" and row["Pneumonia"] == 1.0
    assert table.set_index("path").loc[second, "patient"] == "3"
    _, rows = _manifest(tmp_path / "cache", tiny_nih)
    assert rows[first]["label"] == "Pneumonia" and rows[second]["patient"] == "3"
    before = manifest_path(tmp_path / "cache", tiny_nih).stat().st_ino
    caplog.clear()
    with caplog.at_level(logging.INFO):
        _nih(tiny_nih, tmp_path / "cache")
    assert "0 with a new label or patient id" in caplog.text
    assert manifest_path(tmp_path / "cache", tiny_nih).stat().st_ino == before  # not rewritten


def test_an_old_version_manifest_is_scanned_again(tiny_nih, tmp_path, decodes, caplog):
    """A version 1 manifest (no label, no patient id) is not misread: its files are scanned again, said in a line."""
    _nih(tiny_nih, tmp_path / "cache")
    path = manifest_path(tmp_path / "cache", tiny_nih)
    data = json.loads(path.read_text())
    path.write_text(json.dumps({"version": 1, "fields": list(FIELDS[:9]), "files": [r[:9] for r in data["files"]]}))
    decodes.clear()
    with caplog.at_level(logging.WARNING):
        _nih(tiny_nih, tmp_path / "cache")
    assert f"{path} is version 1, written by an older lungnet" in caplog.text
    assert "scanning the data set again" in caplog.text and len(decodes) == 30
    assert json.loads(path.read_text())["version"] == MANIFEST_VERSION


_ROW = ["/d/a.png", 10, 5, "a" * 40, "b" * 64, "", True, 32, 32, "Effusion", "7"]


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("size", -5, "size is -5; accepted: a whole number in [0, 2**63 - 1]"),
        ("size", True, "size is True; accepted: a whole number in [0, 2**63 - 1]"),
        ("height", 2.5, "height is 2.5; accepted: a whole number in [0, 2**63 - 1]"),
        ("mtime_ns", 2**70, "mtime_ns is 1180591620717411303424; accepted: a whole number in [-2**63 + 1, 2**63 - 1]"),
        ("sha1", "A" * 40, "accepted: '' or 40 lowercase hex digits"),
        ("dhash", "b" * 63, "accepted: '' or 64 lowercase hex digits"),
        ("path", "", "path is ''; accepted: a file path"),
        ("error", None, "error is null; accepted: a string of at most 16384 characters"),
        ("decoded", 1, "decoded is 1; accepted: true or false"),
        ("label", 5, "label is 5; accepted: a string of at most 16384 characters, or null"),
        ("patient", ["7"], "patient is ['7']; accepted: a string of at most 16384 characters, or null"),
        ("label", "x" * 20000, "accepted: a string of at most 16384 characters"),
    ],
)
def test_a_tampered_manifest_value_is_refused_by_name(tmp_path, caplog, field, value, said):
    """Every value read back is type- and range-checked: a wrong one is named (row, key, value, what is accepted)
    and the manifest is not used (its files are scanned again)."""
    path = tmp_path / "m.json"
    assert write_manifest(path, {_ROW[0]: dict(zip(FIELDS, _ROW, strict=True))}, "nih14")
    assert read_manifest(path)[0][_ROW[0]]["label"] == "Effusion"
    data = json.loads(path.read_text())
    data["files"][0][FIELDS.index(field)] = value
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        assert read_manifest(path) is None
    assert f"Manifest {path}: row 1 holds a wrong type or value ({field} is" in caplog.text and said in caplog.text
    assert caplog.text.rstrip().endswith("rebuilding it")


@pytest.mark.parametrize(
    ("header", "said"),
    [
        ({"files": [_ROW, _ROW]}, "row 2 holds a wrong type or value (path is '/d/a.png'; accepted: a path no"),
        ({"files": [_ROW[:9]]}, "row 1 holds a wrong type or value (the row is"),
        ({"source": 3}, "not a version 2 manifest (source is 3; accepted: a string, or null)"),
        ({"files": {}}, "not a version 2 manifest (files is {}; accepted: a list of rows)"),
        ({"version": 3}, "is version 3, written by a newer lungnet"),
    ],
)
def test_a_tampered_manifest_header_is_refused_by_name(tmp_path, caplog, header, said):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"version": 2, "fields": list(FIELDS), "source": None, "files": [_ROW], **header}))
    with caplog.at_level(logging.WARNING):
        assert read_manifest(path) is None
    assert said in caplog.text


def test_labels_of_another_data_set_on_the_same_root_are_not_kept(tmp_path):
    """nih6 and nih14 share a root and its manifest: the files one lists get its labels; the others' labels (another
    data set's) become null, and a data set that lists them all writes them back."""
    files = [write_png(tmp_path / f"{i}.png", i) for i in range(3)]
    nih14 = pd.DataFrame({"path": [str(f) for f in files], "label": ["A|B", "B", "No Finding"], "patient": "1"})
    manifest = tmp_path / "m.json"
    scan_table(nih14, True, manifest, workers=1, source="nih14")
    nih6 = pd.DataFrame({"path": [str(files[1])], "label": ["B"], "patient": ["1"]})
    scan_table(nih6, True, manifest, workers=1, source="nih6")
    rows, source = read_manifest(manifest)
    assert source == "nih6" and [rows[str(f)]["label"] for f in files] == [None, "B", None]
    scan_table(nih14, True, manifest, workers=1, source="nih14")
    rows, source = read_manifest(manifest)
    assert source == "nih14" and [rows[str(f)]["label"] for f in files] == ["A|B", "B", "No Finding"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("size", True), ("mtime_ns", -(2**63)), ("sha1", "é" * 40), ("dhash", "g" * 64), ("label", None), ("path", 7)],
)
def test_the_column_check_passes_no_row_the_row_check_refuses(field, value):
    """The column-by-column check (the fast path) lets nothing through that `_row` refuses: a tampered value sends
    the rows to the row-by-row check, which names it (a null label is allowed by both)."""
    good = [list(_ROW), ["/d/b.png", *_ROW[1:]]]
    assert manifest_rows._checked_columns(good) is not None and manifest_rows.rows_of(good)[1] is None
    tampered = [list(_ROW), ["/d/b.png", *_ROW[1:]]]
    tampered[1][FIELDS.index(field)] = value
    refused = manifest_rows.rows_of(tampered)[1]
    assert (manifest_rows._checked_columns(tampered) is not None) is (refused is None)
    if refused is not None:
        assert refused[0] == 2 and str(refused[1]).startswith(f"{field} is")


def test_a_good_manifest_is_checked_by_column_not_row_by_row(tmp_path, monkeypatch):
    rows = {f"/d/{i}.png": dict(zip(FIELDS, [f"/d/{i}.png", *_ROW[1:]], strict=True)) for i in range(50)}
    write_manifest(tmp_path / "m.json", rows, "nih14")
    monkeypatch.setattr(manifest_rows, "_row", lambda entry: pytest.fail("row-by-row check on a good manifest"))
    assert read_manifest(tmp_path / "m.json") == (rows, "nih14")


def test_the_rows_are_read_without_cyclic_collections_and_the_collector_comes_back(tmp_path, monkeypatch):
    import gc

    import lungnet.data.manifest as manifest

    rows = {f"/d/{i}.png": dict(zip(FIELDS, [f"/d/{i}.png", *_ROW[1:]], strict=True)) for i in range(5)}
    write_manifest(tmp_path / "m.json", rows, "nih14")
    seen = []
    checked = manifest.rows_of
    monkeypatch.setattr(manifest, "rows_of", lambda files: (seen.append(gc.isenabled()), checked(files))[1])
    assert read_manifest(tmp_path / "m.json") == (rows, "nih14") and seen == [False] and gc.isenabled()
    monkeypatch.setattr(manifest, "rows_of", lambda files: 1 / 0)  # a failure inside still turns it back on
    with pytest.raises(ZeroDivisionError):
        read_manifest(tmp_path / "m.json")
    assert gc.isenabled()
    gc.disable()  # a caller that had it off keeps it off
    try:
        with manifest.gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_file_of_another_size_with_its_old_mtime_is_rescanned(tiny_folder, tmp_path, decodes, caplog):
    """Issue #27: a size change alone (the mtime put back, as a copy tool that keeps times would) invalidates a
    row: that file only is scanned again and its new size and hash replace the old ones in the manifest."""
    _load(tiny_folder, tmp_path / "cache")
    changed = tiny_folder / "train" / "NORMAL" / "img_001.png"
    st, old = changed.stat(), changed.read_bytes()
    write_png(changed, 4242, size=40)  # another image, another size
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert changed.stat().st_mtime_ns == st.st_mtime_ns and changed.stat().st_size != st.st_size
    decodes.clear()
    with caplog.at_level(logging.INFO):
        table = _load(tiny_folder, tmp_path / "cache")
    assert decodes == [str(changed)]
    assert "manifest: 35 unchanged, 1 re-scanned, 0 removed" in caplog.text
    new = changed.read_bytes()
    row = _manifest(tmp_path / "cache", tiny_folder)[1][str(changed)]
    assert (row["size"], row["mtime_ns"]) == (len(new), st.st_mtime_ns) and (row["height"], row["width"]) == (40, 40)
    assert row["sha1"] == hashlib.sha1(new).hexdigest() != hashlib.sha1(old).hexdigest()
    assert table.set_index("path").loc[str(changed), "sha1"] == row["sha1"]
