import numpy as np

from lungnet.data.labels import CXR4, LUNG5, join_flags, match_label


def test_aliases_map_to_canonical_labels():
    assert match_label("TURBERCULOSIS", CXR4) == "Tuberculosis"
    assert match_label("COVID19", CXR4) == "COVID-19"
    assert match_label("NORMAL", CXR4) == "Normal"
    assert match_label("Corona Virus Disease", LUNG5) == "Corona Virus Disease"
    assert match_label("viral_pneumonia", LUNG5) == "Viral Pneumonia"


def test_unknown_folder_is_none():
    assert match_label("cats", CXR4) is None


def test_join_flags_names_each_rows_labels_in_order_as_a_per_row_join_does():
    labels = ["Atelectasis", "Effusion", "Mass"]
    flags = np.random.default_rng(0).random((500, 3)) < 0.3
    expected = ["|".join(lab for lab, x in zip(labels, row, strict=True) if x) or "No Finding" for row in flags]
    assert join_flags(flags, labels, "No Finding") == expected
    assert join_flags(np.array([[np.nan, 1.0, 0.0]]) == 1, labels) == ["Effusion"]  # unknown (NaN) is not a label
    assert join_flags(np.zeros((0, 3), bool), labels) == []
    wide = [f"L{i}" for i in range(70)]  # more labels than an int64 has bits
    many = np.random.default_rng(1).random((50, 70)) < 0.05
    assert join_flags(many, wide) == ["|".join(lab for lab, x in zip(wide, row, strict=True) if x) for row in many]
