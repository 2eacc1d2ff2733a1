import os

import numpy as np
import pandas as pd
import pytest

from lungnet.data.labels import NIH14
from lungnet.data.sources import SOURCES, DataError, create_source
from tests.conftest import ROOT, make_class_folders, shared, write_png


def test_pneumonia_split_layout(tiny_folder):
    table = create_source("pneumonia", tiny_folder).scan()
    assert len(table) == 36
    assert set(table["split"]) == {"train", "val", "test"}
    assert set(table["label"]) == {"NORMAL", "PNEUMONIA"}
    assert (table.loc[table["label"] == "PNEUMONIA", "target"] == 1).all()


def test_cxr4_aliases_and_flat_layout(tmp_path):
    root = make_class_folders(tmp_path / "cxr", ["NORMAL", "COVID19", "PNEUMONIA", "TURBERCULOSIS"], 3)
    table = create_source("cxr4", root).scan()
    assert sorted(table["label"].unique()) == sorted(["Normal", "COVID-19", "Pneumonia", "Tuberculosis"])
    assert (table["split"] == "").all()


def test_lung5_labels(tmp_path):
    classes = ["Bacterial Pneumonia", "Corona Virus Disease", "Normal", "Tuberculosis", "Viral Pneumonia"]
    root = make_class_folders(tmp_path / "lung5", classes, 2, ["train", "val", "test"])
    table = create_source("lung5", root).scan()
    assert table.groupby("split")["target"].nunique().tolist() == [5, 5, 5]


def test_missing_root_names_path_dataset_and_source(tmp_path):
    with pytest.raises(DataError) as info:
        create_source("pneumonia", tmp_path / "nowhere").scan()
    msg = str(info.value)
    assert "nowhere" in msg and "pneumonia" in msg and "kaggle" in msg.lower()


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(DataError, match="nih14"):
        create_source("mnist", "/tmp")


def test_unknown_class_folder_empty_folder_and_split_mismatch(tmp_path):
    make_class_folders(tmp_path / "a", ["NORMAL", "CATS"], 1)
    with pytest.raises(DataError, match="CATS"):
        create_source("pneumonia", tmp_path / "a").scan()
    (tmp_path / "b" / "NORMAL").mkdir(parents=True)
    write_png(tmp_path / "b" / "PNEUMONIA" / "x.png", 1)
    with pytest.raises(DataError, match="empty"):
        create_source("pneumonia", tmp_path / "b").scan()
    make_class_folders(tmp_path / "c", ["NORMAL", "PNEUMONIA"], 1, ["train"])
    make_class_folders(tmp_path / "c", ["NORMAL"], 1, ["test"])
    with pytest.raises(DataError, match="differ between splits"):
        create_source("pneumonia", tmp_path / "c").scan()


def test_nih14_multilabel_targets(tiny_nih):
    table = create_source("nih14", tiny_nih).scan()
    assert len(table) == 30
    row = table[table["label"] == "Atelectasis|Effusion"].iloc[0]
    assert row["Atelectasis"] == 1 and row["Effusion"] == 1 and row["Pneumonia"] == 0
    assert table["patient"].nunique() == 10


def test_nih6_keeps_single_findings_only(tiny_nih):
    table = create_source("nih6", tiny_nih).scan()
    assert "Atelectasis|Effusion" not in set(table["label"])
    assert set(table["label"]) <= {"No Finding", "Effusion", "Pneumonia", "Infiltration"}


def test_a_file_reached_twice_counts_once_in_its_own_split(tiny_folder):
    os.symlink("../../val/NORMAL", tiny_folder / "train" / "NORMAL" / "valnormal")  # same label, other split
    os.symlink("img_000.png", tiny_folder / "train" / "PNEUMONIA" / "again.png")  # a file link in one folder
    table = create_source("pneumonia", tiny_folder).scan()
    assert len(table) == 36 and table["path"].map(os.path.realpath).is_unique
    counts = table.groupby(["split", "label"]).size()
    assert (counts == 6).all() and len(counts) == 6  # the 6 val/NORMAL images stayed in val


def test_a_file_reached_under_two_labels_stops_naming_both_paths(tiny_folder):
    os.symlink("../../val", tiny_folder / "train" / "NORMAL" / "valagain")  # val/PNEUMONIA would become NORMAL
    with pytest.raises(DataError) as exc:
        create_source("pneumonia", tiny_folder).scan()
    message = str(exc.value)
    first = str(tiny_folder / "train" / "NORMAL" / "valagain" / "PNEUMONIA" / "img_000.png")
    second = str(tiny_folder / "val" / "PNEUMONIA" / "img_000.png")
    assert first in message and second in message and "wrong class folder" in message


GARBAGE = bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8))


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"", "is empty"), (GARBAGE, "is not a readable CSV file"), (b"a,b\n1,2\n", "lacks columns")],
)
def test_an_unusable_nih_csv_is_one_clear_line(tiny_nih, content, expected):
    (tiny_nih / "Data_Entry_2017.csv").write_bytes(content)
    for source in ("nih14", "nih6"):
        with pytest.raises(DataError, match=expected) as exc:
            create_source(source, tiny_nih).scan()
        assert "\n" not in str(exc.value) and "Data_Entry_2017.csv" in str(exc.value)


# --- the real sets in ../shared/data -------------------------------------------------------------


def test_real_pneumoniamnist_counts():
    table = create_source("pneumonia", shared("pneumoniamnist")).scan()
    counts = table.groupby(["split", "label"]).size().to_dict()
    assert counts == {
        ("train", "NORMAL"): 1214,
        ("train", "PNEUMONIA"): 3494,
        ("val", "NORMAL"): 135,
        ("val", "PNEUMONIA"): 389,
    }


def test_real_darkcovidnet_counts():
    table = create_source("darkcovidnet", shared("darkcovidnet")).scan()
    assert table["label"].value_counts().to_dict() == {"No_findings": 420, "Pneumonia": 406, "Covid-19": 99}


def test_real_nih_labels_match_the_csv():
    root = shared("nih")
    table = create_source("nih14", root).scan()
    csv = pd.read_csv(root / "Data_Entry_2017.csv").set_index("Image Index")
    assert len(table) == 1496
    for _, row in table.sample(50, random_state=0).iterrows():
        name = row["path"].rsplit("/", 1)[-1]
        truth = set(csv.loc[name, "Finding Labels"].split("|"))
        decoded = {lab for lab in NIH14 if row[lab] == 1}
        assert decoded == truth - {"No Finding"}
        assert row["patient"] == str(csv.loc[name, "Patient ID"])
    for finding in NIH14:
        expected = csv["Finding Labels"].str.split("|").map(lambda f, x=finding: x in f).sum()
        assert int(table[finding].sum()) == expected


def test_nih6_match_any_keeps_images_with_one_listed_finding(tiny_nih):
    exact = create_source("nih6", tiny_nih, findings=["No Finding", "Effusion"]).scan()
    anyf = create_source("nih6", tiny_nih, findings=["No Finding", "Effusion"], match="any").scan()
    assert (exact["label"] == "Effusion").sum() == 5  # "Effusion" alone
    assert (anyf["label"] == "Effusion").sum() == 10  # also "Atelectasis|Effusion"
    assert (anyf["label"] == "No Finding").sum() == (exact["label"] == "No Finding").sum() == 10
    assert list(anyf["target"].unique()) == [0, 1]
    with pytest.raises(DataError, match="match"):
        create_source("nih6", tiny_nih, findings=["No Finding"], match="some").scan()


def test_split_folders_beside_class_folders_or_twice_are_refused(tmp_path):
    """A root with class folders and a test/ folder used to read only test/ (the rest silently ignored)."""
    root = make_class_folders(tmp_path / "dcn", ["Covid-19", "No_findings", "Pneumonia"], 2)
    make_class_folders(root / "test", ["Covid-19", "No_findings", "Pneumonia"], 1)
    with pytest.raises(DataError, match=r"holds split folders \(test\) beside class folders \(Covid-19, No_findings"):
        create_source("darkcovidnet", root).scan()
    both = make_class_folders(tmp_path / "p" / "val", ["NORMAL", "PNEUMONIA"], 1).parent
    make_class_folders(both / "validation", ["NORMAL", "PNEUMONIA"], 1)
    make_class_folders(both / "train", ["NORMAL", "PNEUMONIA"], 2)
    with pytest.raises(DataError, match="both name the val split"):
        create_source("pneumonia", both).scan()


def test_each_data_set_is_described_once_by_its_source():
    """A Source carries its labels, their findings and its report caveat; conf/data names only known sources."""
    import yaml

    from lungnet.data.findings import FINDINGS, SOURCE_FINDINGS
    from lungnet.data.multi_names import MULTI
    from lungnet.evaluation.report import DATASET_NOTES

    for name, cls in SOURCES.items():
        assert set(cls.findings) >= set(cls.labels), name  # every label has its finding
        assert all(f in FINDINGS or f.startswith("synthetic:") for f in cls.findings.values()), name
        assert SOURCE_FINDINGS[name] == cls.findings
    assert DATASET_NOTES == {n: c.note for n, c in SOURCES.items() if c.note} and "darkcovidnet" in DATASET_NOTES
    for path in sorted((ROOT / "conf" / "data").glob("*.yaml")):
        source = yaml.safe_load(path.read_text()).get("source")
        assert source in SOURCES or source == MULTI or source is None or "${" in str(source), (path.name, source)


def test_nih_rows_without_an_image_are_skipped_and_listed_splits_kept(tiny_nih):
    """The columns lungnet adds, built as lists: a CSV row naming no file is left out (its line numbers stay those
    of the CSV), a blank cell is the row's error, the official lists name the splits (test_list over trainval)."""
    csv = tiny_nih / "Data_Entry_2017.csv"
    lines = csv.read_text().splitlines()
    lines.insert(2, "99999999_000.png,Effusion,0,99,50,M,PA")  # line 3: no such image
    lines[5] = lines[5].replace(",Pneumonia,", ",,")  # line 6: a blank finding
    csv.write_text("\n".join(lines) + "\n")
    (tiny_nih / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n00000002_000.png\n")
    (tiny_nih / "test_list.txt").write_text("00000002_000.png 00000003_000.png\n")
    table = create_source("nih14", tiny_nih).scan()
    assert len(table) == 30 and "99999999_000.png" not in " ".join(table["path"])
    assert list(table.columns[:6]) == ["path", "label", "patient", "split", "error", "origin"]
    assert table["origin"].iloc[:3].tolist() == [f"Data_Entry_2017.csv line {n}" for n in (2, 4, 5)]
    split = dict(zip(table["path"].map(os.path.basename), table["split"], strict=True))
    assert split["00000001_000.png"] == split["00000001_001.png"] == "trainval"
    assert split["00000002_000.png"] == split["00000003_000.png"] == "test" and split["00000004_000.png"] == ""
    blank = table[table["error"] != ""]
    assert blank["error"].tolist() == ["blank 'Finding Labels' in Data_Entry_2017.csv line 6"]
    assert np.isnan(blank[NIH14].to_numpy()).all() and not np.isnan(table.drop(blank.index)[NIH14].to_numpy()).any()
    assert all(table[c].dtype == table["path"].dtype for c in ("label", "patient", "split", "error", "origin"))
    assert all(table[c].dtype == np.float32 for c in NIH14)
    entries = create_source("nih6", tiny_nih)._read_csv()  # nih6's reading: the same rows and added columns
    for column in ("path", "patient", "split", "error", "origin"):
        assert entries[column].tolist() == table[column].tolist(), column
