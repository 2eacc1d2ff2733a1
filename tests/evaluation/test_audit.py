"""The pieces of the shortcut audit: masking, regions, image sources, the source probe and the verdict rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lungnet.evaluation.audit import fill_box, inner_box, regions, source_groups, source_probe, subsample, verdict
from tests.conftest import shared, write_png

OPTS = {"flag_auroc": 0.7, "flag_lower": 0.6, "source_auroc": 0.8, "heat_margin": 0.15}


def test_fill_box_uses_only_what_stays_visible():
    x = torch.zeros(2, 1, 10, 10)
    x[:, :, 2:8, 2:8] = 5.0  # bright content inside the box
    x[1] += 1.0
    out = fill_box(x, inner_box(10, 10, 0.6))
    assert inner_box(10, 10, 0.6) == (2, 8, 2, 8)
    assert torch.all(out[0, :, 2:8, 2:8] == 0.0) and torch.all(out[1, :, 2:8, 2:8] == 1.0)
    assert torch.equal(out[..., 0, :], x[..., 0, :])  # the border is untouched


def test_regions_cover_outside_the_centre_and_the_border_band():
    outside, band = regions(100, 100, 0.7, 0.1)
    assert outside.mean() == pytest.approx(1 - 0.7**2)
    assert band.mean() == pytest.approx(1 - 0.8**2)
    assert not outside[50, 50] and band[0, 50] and not band[50, 50]


def test_subsample_keeps_class_shares_and_is_seeded():
    targets = np.array([0] * 80 + [1] * 20)
    idx = subsample(targets, 50, seed=3)
    assert len(idx) == 50 and (targets[idx] == 1).sum() == 10
    assert np.array_equal(idx, subsample(targets, 50, seed=3))
    assert np.array_equal(subsample(targets, 500, seed=3), np.arange(100))


def test_source_groups_by_native_size_and_by_folder(tmp_path):
    small = [write_png(tmp_path / "a" / "NORMAL" / f"s{i}.png", i, size=16) for i in range(4)]
    large = [write_png(tmp_path / "a" / "NORMAL" / f"l{i}.png", 10 + i, size=32) for i in range(4)]
    groups, how = source_groups([str(p) for p in small + large], "auto")
    assert list(groups) == ["16x16 px"] * 4 + ["32x32 px"] * 4 and "size" in how
    assert source_groups([str(p) for p in small], "auto")[0] is None
    hosp = [
        write_png(tmp_path / "b" / cls / h / f"{i}.png", i, 16)
        for cls in ("A", "B")
        for h in ("h1", "h2")
        for i in range(2)
    ]
    labels = [p.parent.parent.name for p in hosp]
    groups, how = source_groups([str(p) for p in hosp], "folder", labels)
    assert set(groups) == {"h1", "h2"} and "folder" in how
    flat = [write_png(tmp_path / "c" / cls / f"{i}.png", i, 16) for cls in ("A", "B") for i in range(2)]
    assert source_groups([str(p) for p in flat], "folder", ["A", "A", "B", "B"])[0] is None  # class folders
    assert source_groups([str(p) for p in hosp], "none", labels)[0] is None


def test_source_probe_separates_sources_and_scores_the_confound():
    rng = np.random.default_rng(0)
    groups = np.array(["x"] * 30 + ["y"] * 30)
    features = rng.normal(size=(60, 8)) + (groups == "y")[:, None] * 3.0
    targets = np.array([0] * 30 + [1] * 25 + [0] * 5)  # class 1 only in source y
    probe = source_probe(features, groups, np.eye(2)[targets], seed=0)
    assert probe["probe_auroc"] > 0.95
    assert probe["class_by_source_auroc"][1] > 0.8 and probe["sources"] == {"x": 30, "y": 30}


def row(hidden=0.5, lo=0.4, border=0.5, source=None, probe=None, heat=None):
    ci = {"value": hidden, "lo": lo, "hi": 1.0}
    return {
        "hidden": ci,
        "border": {"value": border, "lo": border - 0.1, "hi": 1.0},
        "source_auroc": source,
        "probe_auroc": probe,
        "heat": heat,
    }


def test_verdict_needs_a_high_auroc_with_an_interval_above_the_floor():
    assert verdict(row(), OPTS)[0] == "no shortcut signal found"
    assert verdict(row(hidden=0.9, lo=0.55), OPTS)[0] == "no shortcut signal found"  # interval reaches 0.55
    label, reasons = verdict(row(hidden=0.9, lo=0.8), OPTS)
    assert label == "shortcut likely" and reasons == ["AUROC 0.90 [0.80, 1.00] with the lungs hidden"]
    assert verdict(row(source=0.95, probe=0.9), OPTS)[0] == "shortcut likely"
    assert verdict(row(source=0.95, probe=0.6), OPTS)[0] == "no shortcut signal found"


def test_verdict_on_heat_falls_back_to_a_flat_map_when_the_random_maps_are_empty():
    heat = {"trained": {"outside": 0.8}, "random": {"outside": None}, "flat": {"outside": 0.51}}
    label, reasons = verdict(row(heat=heat), OPTS)
    assert label == "shortcut likely" and "for a flat map" in reasons[0]
    heat["random"]["outside"] = 0.7
    assert verdict(row(heat=heat), OPTS)[0] == "no shortcut signal found"


def test_native_sizes_of_dicom_and_png_files(tmp_path):
    """The source probe's acquisition proxy reads a DICOM's size from its header (PIL cannot open it)."""
    from lungnet.evaluation.audit import native_size

    dcm = shared("dicom") / "RG1_UNCR.dcm"
    png = tmp_path / "a.png"
    Image.fromarray(np.zeros((20, 30), dtype=np.uint8)).save(png)
    assert native_size(dcm) == "1841x1955 px" and native_size(png) == "30x20 px"


def test_a_thresholds_file_with_an_unfitted_class_reads_back(tmp_path):
    from lungnet.evaluation.fitting import read_thresholds

    path = tmp_path / "thresholds.json"
    path.write_text('{"thresholds": {"A": null, "B": 0.3}}')
    assert read_thresholds(path, ["A", "B"]) == {"B": 0.3}
