"""Data checks at setup: every class trainable before and after splitting, every file's fault a row, one label
per image."""

from __future__ import annotations

import builtins
import hashlib
import io
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lungnet.data import checks
from lungnet.data.checks import (
    bad_rows,
    check_class_sizes,
    check_training_classes,
    drop_repeated_rows,
    mark_label_conflicts,
    scan_files,
)
from lungnet.data.images import ImageReadError
from lungnet.data.sources import DataError
from tests.conftest import write_png


def _table(rows: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["label", "split"])


def test_a_class_without_training_images_after_splitting_stops():
    labels = ["A", "B"]
    table = _table([("A", "train"), ("A", "val"), ("B", "val"), ("B", "val"), ("B", "test")])
    with pytest.raises(DataError, match=r"no training image of \['B'\] after splitting .*'val': 2.*Add images"):
        check_training_classes(table, labels, "x", multilabel=False)
    check_training_classes(_table([("A", "train"), ("B", "train"), ("B", "val")]), labels, "x", multilabel=False)


def test_class_sizes_count_every_class_the_model_is_told_about():
    table = _table([("A", ""), ("A", ""), ("B", "")])
    with pytest.raises(DataError, match=r"'B' has 1, 'C' has 0 usable image\(s\) \(3 unreadable"):
        check_class_sizes(table, ["A", "B", "C"], "x", left_out=3)
    check_class_sizes(table.iloc[:2], ["A"], "x")


def test_multilabel_findings_without_positives_only_warn(caplog):
    table = pd.DataFrame({"split": ["train", "train", "val"], "Effusion": [1.0, 0.0, 1.0], "Hernia": [0.0, 0.0, 1.0]})
    with caplog.at_level(logging.WARNING):
        check_training_classes(table, ["Effusion", "Hernia"], "nih14", multilabel=True)
    assert "['Hernia']" in caplog.text and "Effusion" not in caplog.text.split("image of")[1]


@pytest.mark.parametrize(
    "exc",
    [ValueError("invalid literal for int() with base 10: 'abc'"), RuntimeError("boom"), ZeroDivisionError("x")],
)
def test_whatever_reading_one_file_raises_becomes_its_row(tmp_path, monkeypatch, caplog, exc):
    """An exception read_image does not name yet is that file's bad_files.csv row (type and message), logged with
    its traceback; the other files are read as usual."""
    good, bad = write_png(tmp_path / "good.png", 1), write_png(tmp_path / "bad.png", 2)
    real = checks.read_image

    def read(path, **kw):
        if str(path) == str(bad):
            raise exc
        return real(path, **kw)

    monkeypatch.setattr(checks, "read_image", read)
    with caplog.at_level(logging.WARNING):
        table = scan_files(pd.DataFrame({"path": [str(good), str(bad)]}), workers=1)
    assert table["error"].tolist() == ["", f"unreadable ({type(exc).__name__}: {exc})"]
    assert table["sha1"].str.len().tolist() == [40, 40] and table["dhash"].iloc[0] != ""
    assert f"Unexpected {type(exc).__name__} reading {bad}" in caplog.text and "Traceback" in caplog.text
    monkeypatch.setattr(checks, "read_image", lambda p, **kw: (_ for _ in ()).throw(ImageReadError(p, "known reason")))
    assert scan_files(pd.DataFrame({"path": [str(good)]}))["error"].tolist() == ["known reason"]


@pytest.mark.parametrize("decode", [True, False])
def test_a_scan_opens_each_file_once(tmp_path, monkeypatch, decode):
    """Hashing and decoding share one read of the file (issue #27): one open per file, by any opener (pathlib,
    Pillow, pydicom), and the same hashes, dHashes and sizes as before."""
    files = [str(write_png(tmp_path / f"{i}.png", i)) for i in range(3)]
    files.append(str(tmp_path / "torn.png"))
    Path(files[-1]).write_bytes(Path(files[0]).read_bytes()[:60])
    hashes = [hashlib.sha1(Path(f).read_bytes()).hexdigest() for f in files]
    opened, real = [], io.open

    def counting(file, *args, **kw):
        if isinstance(file, str | os.PathLike) and os.fspath(file) in files:
            opened.append(os.fspath(file))
        return real(file, *args, **kw)

    monkeypatch.setattr(io, "open", counting)
    monkeypatch.setattr(builtins, "open", counting)
    table = scan_files(pd.DataFrame({"path": files}), verify=decode, workers=1)
    assert sorted(opened) == sorted(files)
    assert table["sha1"].tolist() == hashes
    assert (table["dhash"].str.len() == 64).tolist() == [decode] * 3 + [False]
    assert (table["error"] != "").tolist() == [False] * 3 + [decode]


def _rows(*rows: tuple[str, str, str]) -> pd.DataFrame:
    """(path, label, sha1) rows of a scanned table, all readable."""
    return pd.DataFrame([{"path": p, "label": lab, "sha1": h, "error": ""} for p, lab, h in rows])


@pytest.mark.parametrize(
    ("rows", "bad"),
    [
        ([("a", "N", "1"), ("b", "P", "1"), ("c", "N", "2")], ["a", "b"]),  # a byte copy in another class folder
        ([("a", "N", "1"), ("a", "P", "1")], ["a", "a"]),  # two CSV rows for one file, two labels
        ([("a", "N", "1"), ("b", "N", "1")], []),  # a copy under the same label: a duplicate, not a contradiction
        ([("a", "A|B", "1"), ("b", "B|A", "1")], []),  # the same findings in another order
        ([("a", "A|B", "1"), ("b", "A", "1")], ["a", "b"]),  # multi-label: another set of findings
        ([("a", "N", "1"), ("b", "P", "1"), ("c", "N", "1")], ["a", "b", "c"]),  # three copies, two labels
        ([("a", "N", ""), ("b", "P", "")], []),  # unread files (no hash) are not compared
    ],
)
def test_an_image_under_two_labels_marks_every_row_of_it(rows, bad):
    table = mark_label_conflicts(_rows(*rows))
    marked = table[table["error"] != ""]
    assert marked["path"].tolist() == bad
    for _, row in marked.iterrows():
        others = table[(table["sha1"] == row["sha1"]) & (table["label"] != row["label"])]
        other = others.index[0]
        assert f"label {row['label']!r} contradicts label {table.at[other, 'label']!r}" in row["error"]
        assert row["error"].endswith(f"at {table.at[other, 'path']}")


def test_a_row_already_bad_keeps_its_reason_and_origins_are_named():
    table = _rows(("a", "N", "1"), ("a", "P", "1"), ("b", "P", "1"))
    table["error"] = ["", "", "blank 'Patient ID' in x.csv line 4"]
    table["origin"] = ["x.csv line 2", "x.csv line 3", "x.csv line 4"]
    errors = mark_label_conflicts(table)["error"].tolist()
    assert errors[0] == (
        "label 'N' (x.csv line 2) contradicts label 'P' of the same image (identical bytes) at a (x.csv line 3)"
    )
    assert errors[1].startswith("label 'P' (x.csv line 3) contradicts label 'N'") and errors[2].startswith("blank")


def test_repeated_rows_count_once(caplog):
    table = pd.DataFrame({"path": ["a", "a", "b", "a", "b"], "label": ["N", "N", "A|B", "P", "B|A"]})
    with caplog.at_level(logging.WARNING):
        kept = drop_repeated_rows(table)
    assert kept[["path", "label"]].values.tolist() == [["a", "N"], ["b", "A|B"], ["a", "P"]]
    assert "2 row(s) repeat a file with the same label" in caplog.text
    assert drop_repeated_rows(kept) is kept


def test_bad_rows_and_the_no_conflict_path_keep_dtypes_and_copies():
    """`bad_rows`: the path and error of the bad rows, numbered from 0, as a loc of them would give; a table with no
    repeated image comes back from `mark_label_conflicts` as a copy (changing it leaves the input alone)."""
    table = pd.DataFrame(
        {"path": ["a", "b", "c"], "label": ["x", "y", "x"], "sha1": ["1", "2", ""], "error": ["", "bad", ""]},
        index=[5, 6, 7],
    )
    good = table["error"].to_numpy() == ""
    expected = table.loc[~good, ["path", "error"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(bad_rows(table, good), expected)
    pd.testing.assert_frame_equal(bad_rows(table, np.ones(3, bool)), expected.iloc[:0])
    marked = mark_label_conflicts(table)
    pd.testing.assert_frame_equal(marked, table)
    marked.loc[5, "error"] = "changed"
    assert table.loc[5, "error"] == ""
    assert drop_repeated_rows(table) is table  # no path twice: nothing to drop


class _Pool:
    """A stand-in for the scan's process pool: records the size asked for and runs the chunks in this process."""

    def __init__(self, sizes: list[int], max_workers: int, mp_context=None) -> None:
        sizes.append(max_workers)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def map(self, fn, *iterables):
        return map(fn, *iterables)


@pytest.fixture
def pool_sizes(monkeypatch):
    """The ``max_workers`` of every pool `check_paths` starts (none started: the files are scanned in-process)."""
    sizes: list[int] = []
    monkeypatch.setattr(checks, "ProcessPoolExecutor", lambda **kw: _Pool(sizes, **kw))
    return sizes


def _missing(tmp_path, n: int) -> list[str]:
    """``n`` paths of files that are not there: each is scanned (a 'cannot read file' row) without any decoding."""
    return [str(tmp_path / f"{i}.png") for i in range(n)]


@pytest.mark.parametrize(
    ("cores", "workers", "pool"),
    [(3, None, [3]), (1, None, []), (3, 5, [5]), (3, 1, []), (3, 40, [13])],  # 200 files: 13 chunks of 16
)
def test_the_scan_pool_has_every_available_core_unless_told(tmp_path, monkeypatch, pool_sizes, cores, workers, pool):
    """``data.scan_workers`` (default null, stated in the schema) is the pool's size; null: `available_cores`; one
    process (either way): no pool. A pool never has more processes than chunks to hand out."""
    from lungnet.schema import with_data_defaults

    assert with_data_defaults({"source": "pneumonia"})["scan_workers"] is None
    monkeypatch.setattr(checks, "available_cores", lambda: cores)
    paths = _missing(tmp_path, 200)
    results = checks.check_paths(paths, False, workers)
    assert pool_sizes == pool
    assert len(results) == 200 and all(r[0] == "" and r[1].startswith("cannot read file") for r in results)


class _Bar:
    """A stand-in for tqdm: what each bar was opened with and counted."""

    def __init__(self, bars: list, total: int, desc: str, **kw) -> None:
        self.total, self.desc, self.n, self.closed = total, desc, 0, False
        bars.append(self)

    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def bars(monkeypatch):
    """The progress bars `check_paths` opens."""
    made: list[_Bar] = []
    monkeypatch.setattr(checks, "tqdm", lambda **kw: _Bar(made, **kw))
    return made


@pytest.mark.parametrize(("n", "workers"), [(5, 1), (200, 2)])
def test_the_scan_counts_every_file_on_one_progress_bar(tmp_path, pool_sizes, bars, n, workers):
    """In this process and in a pool: one bar, its total the files to scan, advanced to it, closed."""
    checks.check_paths(_missing(tmp_path, n), False, workers, desc="Hashing images")
    assert pool_sizes == ([] if n < checks.POOL_FROM else [workers])
    assert [(b.desc, b.total, b.n, b.closed) for b in bars] == [("Hashing images", n, n, True)]


def test_the_scan_progress_bar_is_drawn_on_stderr(tmp_path, capfd):
    """The real bar, not only its calls: drawn on stderr with the number of files (also when it is no terminal,
    as under CI or a batch job: nothing turns it off there)."""
    files = [str(write_png(tmp_path / f"{i}.png", i)) for i in range(3)]
    checks.check_paths(files, True, 1, desc="Scanning images")
    err = capfd.readouterr().err
    assert "Scanning images" in err and "0/3" in err
