from lungnet.data.labels import CXR4, LUNG5, match_label


def test_aliases_map_to_canonical_labels():
    assert match_label("TURBERCULOSIS", CXR4) == "Tuberculosis"
    assert match_label("COVID19", CXR4) == "COVID-19"
    assert match_label("NORMAL", CXR4) == "Normal"
    assert match_label("Corona Virus Disease", LUNG5) == "Corona Virus Disease"
    assert match_label("viral_pneumonia", LUNG5) == "Viral Pneumonia"


def test_unknown_folder_is_none():
    assert match_label("cats", CXR4) is None
