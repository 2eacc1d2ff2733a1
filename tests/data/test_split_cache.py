import json
import logging

import numpy as np
import pandas as pd
import pytest

from lungnet.data import split_cache, splits
from lungnet.data.split_cache import KEEP, cached_assign_splits
from lungnet.data.splits import assign_splits

PARAMS = dict(seed=1, val_fraction=0.2, test_fraction=0.2, carve_val=False, cv_folds=0, cv_fold=0)


def _table(n=120):
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "path": [f"/x/{i}.png" for i in range(n)],
            "label": rng.choice(["A", "B", "C"], size=n, p=[0.6, 0.3, 0.1]),
            "patient": [str(i // 3) for i in range(n)],
            "split": "",
            "sha1": [f"{i:040x}" for i in range(n)],
        }
    )


def _no_sklearn(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the splitter ran")

    monkeypatch.setattr(splits, "StratifiedGroupKFold", fail)
    monkeypatch.setattr(splits, "StratifiedKFold", fail)


def _cache_file(folder):
    (path,) = folder.glob("splits-*.json")
    return path


@pytest.mark.parametrize("shipped_val", [False, True])
def test_second_call_reads_the_same_split_without_the_splitter(tmp_path, monkeypatch, shipped_val):
    t = _table()
    params = dict(PARAMS)
    if shipped_val:  # carve_val drops the shipped val rows: the cached table drops them too
        t.loc[:9, "split"] = "val"
        params["carve_val"] = True
    computed = assign_splits(t, **params)
    first = cached_assign_splits(tmp_path, t, **params)
    pd.testing.assert_frame_equal(first, computed)
    _no_sklearn(monkeypatch)
    second = cached_assign_splits(tmp_path, t, **params)
    pd.testing.assert_frame_equal(second, computed)
    assert len(second) == len(t) - (10 if shipped_val else 0)


@pytest.mark.parametrize(
    "change",
    [
        lambda t, p: (t.assign(label=t["label"].where(t.index != 5, "C" if t.loc[5, "label"] != "C" else "A")), p),
        lambda t, p: (t.assign(patient=t["patient"].where(t.index != 7, "new")), p),
        lambda t, p: (t.assign(near_group=np.arange(len(t)) // 2), p),
        lambda t, p: (t, {**p, "seed": 2}),
        lambda t, p: (t, {**p, "val_fraction": 0.25}),
        lambda t, p: (t, {**p, "cv_folds": 3, "cv_fold": 1}),
    ],
    ids=["label", "patient", "near_group", "split_seed", "val_fraction", "cv_fold"],
)
def test_a_changed_input_recomputes(tmp_path, monkeypatch, change):
    t = _table()
    cached_assign_splits(tmp_path, t, **PARAMS)
    t2, p2 = change(t, PARAMS)
    calls = []
    monkeypatch.setattr(split_cache, "assign_splits", lambda *a: calls.append(a) or assign_splits(*a))
    out = cached_assign_splits(tmp_path, t2, **p2)
    assert len(calls) == 1
    pd.testing.assert_frame_equal(out, assign_splits(t2, **p2))
    assert len(list(tmp_path.glob("splits-*.json"))) == 2


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda d: "not json",
        lambda d: json.dumps({**d, "split": d["split"][:-1]}),
        lambda d: json.dumps({**d, "split": "q" + d["split"][1:]}),
        lambda d: json.dumps({**d, "split": "v" * len(d["split"]), "digest": "0" * 64}),
        lambda d: json.dumps([d]),
    ],
    ids=["not-json", "short", "unknown-letter", "other-digest", "not-a-dict"],
)
def test_a_corrupt_cache_is_ignored(tmp_path, caplog, corrupt):
    t = _table()
    expected = cached_assign_splits(tmp_path, t, **PARAMS)
    path = _cache_file(tmp_path)
    path.write_text(corrupt(json.loads(path.read_text())))
    with caplog.at_level(logging.INFO, logger="lungnet.data.split_cache"):
        out = cached_assign_splits(tmp_path, t, **PARAMS)
    pd.testing.assert_frame_equal(out, expected)
    assert "ignored" in caplog.text
    letters = expected["split"].map({"train": "t", "val": "v", "test": "e"})
    assert json.loads(path.read_text())["split"] == "".join(letters)  # rewritten with the computed split


def test_an_unwritable_folder_is_skipped_and_old_entries_pruned(tmp_path):
    t = _table()
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the folder should be: nothing can be written below it
    pd.testing.assert_frame_equal(cached_assign_splits(blocked / "cache", t, **PARAMS), assign_splits(t, **PARAMS))
    for seed in range(KEEP + 2):
        cached_assign_splits(tmp_path / "cache", t, **{**PARAMS, "seed": seed})
    assert len(list((tmp_path / "cache").glob("splits-*.json"))) == KEEP
