"""Ground-truth cases: synthetic lesion masks and NIH boxes (hand-made CSV and the real box list)."""

from __future__ import annotations

import pytest

from lungnet.data.labels import NIH14, SYNTHETIC
from lungnet.explain.groundtruth import nih_box_cases, synthetic_cases
from tests.conftest import shared, write_png


def test_synthetic_cases_have_masks_and_skip_normal(synthetic_root):
    paths = sorted((synthetic_root / "images").glob("*/*.png"))
    cases = synthetic_cases(paths, SYNTHETIC)
    assert len(cases) == 9  # 3 lesion classes x 3 phantoms; Normal has no lesion
    assert {c.class_name for c in cases} == {"Consolidation", "Cavity", "Haze"}
    for case in cases:
        assert case.mask.dtype == bool and case.mask.shape == (48, 48) and case.mask.any()
        assert SYNTHETIC[case.class_index] == case.class_name


def test_nih_boxes_scaled_aliased_and_filtered(tmp_path):
    write_png(tmp_path / "images" / "00000001_000.png", 0, size=64)
    write_png(tmp_path / "images" / "00000002_000.png", 1, size=256)
    (tmp_path / "BBox_List_2017.csv").write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        "00000001_000.png,Infiltrate,0,0,512,512\n"
        "00000001_000.png,Infiltrate,512,512,512,512\n"
        "00000002_000.png,Pneumonia,256,256,128,128\n"
        "00000002_000.png,Unknown thing,0,0,10,10\n"
        "00000009_000.png,Pneumonia,0,0,10,10\n"
    )
    cases = {c.class_name: c for c in nih_box_cases(tmp_path, NIH14)}
    assert set(cases) == {"Infiltration", "Pneumonia"}
    infiltration = cases["Infiltration"].mask
    assert infiltration.shape == (64, 64) and infiltration[:32, :32].all() and infiltration[32:, 32:].all()
    assert not infiltration[:32, 32:].any()
    pneumonia = cases["Pneumonia"].mask
    assert pneumonia.shape == (256, 256) and pneumonia.sum() == 32 * 32 and pneumonia[64:96, 64:96].all()


def test_real_nih_box_list():
    root = shared("nih")
    cases = nih_box_cases(root, NIH14)
    names = [c.class_name for c in cases]
    assert len(cases) == 44 and names.count("Pneumonia") == 36
    for case in cases:
        side = case.mask.shape[0]
        assert side in (64, 256) and 0 < case.mask.mean() < 0.8


def test_missing_box_list_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="BBox_List_2017.csv"):
        nih_box_cases(tmp_path, NIH14)
