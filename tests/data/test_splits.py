import numpy as np
import pandas as pd
import pytest

from lungnet.data.sources import DataError
from lungnet.data.splits import (
    ExpectedSplits,
    assign_splits,
    changed_splits,
    check_patient_overlap,
    patients_from_names,
    split_fingerprint,
    write_splits,
)


def _table(n=200, patients=True):
    rng = np.random.default_rng(0)
    labels = rng.choice(["A", "B", "C"], size=n, p=[0.6, 0.3, 0.1])
    return pd.DataFrame(
        {
            "path": [f"/x/{i}.png" for i in range(n)],
            "label": labels,
            "patient": [str(i // 4) for i in range(n)] if patients else [""] * n,
            "split": "",
        }
    )


def test_split_is_seeded_stratified_and_patient_grouped():
    t = _table()
    a = assign_splits(t, seed=1, val_fraction=0.2, test_fraction=0.2)
    b = assign_splits(t, seed=1, val_fraction=0.2, test_fraction=0.2)
    c = assign_splits(t, seed=2, val_fraction=0.2, test_fraction=0.2)
    assert (a["split"] == b["split"]).all()
    assert (a["split"] != c["split"]).any()
    assert check_patient_overlap(a) == {"train/val": 0, "train/test": 0, "val/test": 0}
    sizes = a["split"].value_counts(normalize=True)
    assert abs(sizes["test"] - 0.2) < 0.06 and abs(sizes["val"] - 0.16) < 0.06
    for split in ("train", "val", "test"):
        share = (a.loc[a["split"] == split, "label"] == "A").mean()
        assert abs(share - (t["label"] == "A").mean()) < 0.12


def test_shipped_splits_are_kept_and_carve_val_replaces_val():
    t = _table(patients=False)
    t["split"] = ["train"] * 150 + ["val"] * 10 + ["test"] * 40
    kept = assign_splits(t, seed=0)
    assert (kept["split"].value_counts().to_dict()) == {"train": 150, "test": 40, "val": 10}
    carved = assign_splits(t, seed=0, val_fraction=0.2, carve_val=True)
    assert len(carved) == 190 and (carved["split"] == "test").sum() == 40
    assert 25 <= (carved["split"] == "val").sum() <= 35


def test_missing_test_split_does_not_stop():
    t = _table(patients=False)
    t["split"] = ["train"] * 180 + ["val"] * 20
    out = assign_splits(t, seed=0)
    assert "test" not in set(out["split"])


def test_kfold_validation_folds_partition_the_data():
    t = _table()
    folds = [assign_splits(t, seed=0, cv_folds=5, cv_fold=k) for k in range(5)]
    val_sets = [set(f.loc[f["split"] == "val", "path"]) for f in folds]
    assert sum(len(v) for v in val_sets) == len(t)
    assert set().union(*val_sets) == set(t["path"])


def test_write_splits(tmp_path):
    out = assign_splits(_table(), seed=0, val_fraction=0.2, test_fraction=0.2)
    write_splits(out, tmp_path)
    back = pd.concat([pd.read_csv(tmp_path / "splits" / f"{s}.csv") for s in ("train", "val", "test")])
    assert sorted(back["path"]) == sorted(out["path"])


def test_split_fingerprint_follows_the_images_not_their_paths():
    t = assign_splits(_table(), seed=0, val_fraction=0.2, test_fraction=0.2)
    t["sha1"] = [f"h{i}" for i in range(len(t))]
    before = split_fingerprint(t)
    assert {k: v["n"] for k, v in before.items()} == t["split"].value_counts().to_dict()
    moved = t.assign(path=["/elsewhere" + p for p in t["path"]])
    assert changed_splits(before, split_fingerprint(moved)) == []
    swapped = t.copy()
    i, j = swapped.index[swapped["split"] == "train"][0], swapped.index[swapped["split"] == "val"][0]
    swapped.loc[[i, j], "split"] = ["val", "train"]  # same sizes, other images
    n_train, n_val = before["train"]["n"], before["val"]["n"]
    assert changed_splits(before, split_fingerprint(swapped)) == [
        f"train ({n_train} images then, {n_train} now)",
        f"val ({n_val} images then, {n_val} now)",
    ]
    expected = ExpectedSplits(before, "m.ckpt", "evaluate")
    expected.verify(moved, "/elsewhere")  # the same images: passes
    with pytest.raises(DataError, match=r"m\.ckpt differ .*train \(\d+ images then.*data\.allow_leakage=true"):
        expected.verify(swapped, "/data")
    ExpectedSplits(before, "m.ckpt", "explain", allow=True).verify(swapped, "/data")  # a warning only
    ExpectedSplits(None, "old.ckpt", "resume").verify(swapped, "/data")  # nothing recorded: not verified


def _nih_named(n_patients=60, per=3) -> pd.DataFrame:
    """NIH-style file names, <patient>_<follow-up>.jpg, no patient column (as a folder data set reads them)."""
    rows = [
        {"path": f"/d/{lab}/{p:08d}_{k:03d}.jpg", "label": lab, "patient": "", "split": ""}
        for p in range(n_patients)
        for k in range(per)
        for lab in ["A" if p % 2 else "B"]
    ]
    rows += [{"path": f"/d/C/covid-{i}.jpg", "label": "C", "patient": "", "split": ""} for i in range(20)]
    return pd.DataFrame(rows)


def test_patient_ids_from_file_names_keep_a_patient_in_one_fold():
    t = patients_from_names(_nih_named(), r"^(\d{8})_\d{3}\.")
    assert t.loc[0, "patient"] == "00000000" and (t["patient"] == "").sum() == 20  # covid-*: their own group
    vals = [assign_splits(t, seed=0, cv_folds=5, cv_fold=k) for k in range(5)]
    assert all(check_patient_overlap(v)["train/val"] == 0 for v in vals)
    ungrouped = assign_splits(_nih_named(), seed=0, cv_folds=5, cv_fold=0)  # what a name-blind split did
    assert ungrouped.assign(patient=t["patient"]).pipe(check_patient_overlap)["train/val"] > 0
    kept = patients_from_names(t.assign(patient="p1"), r"^(\d{8})_")  # ids a source read stay
    assert (kept["patient"] == "p1").all()
    with pytest.raises(DataError, match=r"data.patient_pattern='\[' is not a regex"):
        patients_from_names(t, "[")


def test_copies_of_one_file_stay_on_one_side():
    t = _table(patients=False)
    t["sha1"] = [f"{i:040x}" for i in range(len(t))]
    t.loc[[3, 150], "sha1"] = t.loc[[7, 9], "sha1"].to_numpy()  # 3 is a copy of 7, 150 of 9
    for k in range(5):
        split = assign_splits(t, seed=0, cv_folds=5, cv_fold=k)["split"]
        assert split[3] == split[7] and split[150] == split[9]


def test_a_shipped_val_split_joins_the_folds():
    t = _table(patients=False)
    t["split"] = ["val" if i < 20 else "train" for i in range(len(t))]
    vals = [assign_splits(t, seed=0, cv_folds=5, cv_fold=k)["split"] == "val" for k in range(5)]
    assert sum(v.sum() for v in vals) == len(t) and (np.sum(vals, axis=0) == 1).all()  # each row val exactly once


def test_a_shipped_train_without_val_gives_up_a_val_split():
    t = _table(patients=False)
    t["split"] = ["test" if i < 40 else "train" for i in range(len(t))]
    sizes = assign_splits(t, seed=0, val_fraction=0.1)["split"].value_counts().to_dict()
    assert sizes == {"train": 144, "val": 16, "test": 40}
    assert "val" not in assign_splits(t, seed=0, val_fraction=0.0)["split"].values  # asked for none


def test_a_fraction_that_is_not_one_fold_of_k_is_said(caplog):
    t = _table(patients=False)
    assign_splits(t, seed=0, val_fraction=0.2)
    assert "holds out" not in caplog.text
    sizes = assign_splits(t, seed=0, val_fraction=0.4)["split"].value_counts()
    assert sizes["val"] == 100 and "data.val_fraction=0.4 holds out 0.50 of the images" in caplog.text
