"""Overlays keep the original resolution and the grayscale readable; figures are written."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lungnet.explain.overlay import heatmap_caption, overlay, resize_map, save_captioned, save_grid, save_side_by_side

DECIDED = {"decision": "PNEUMONIA", "decision_reason": "", "ood": False, "heatmap_class": "PNEUMONIA"}
OOD = {"decision": "abstain", "decision_reason": "unlike the training images (OOD score 2 > threshold 1)", "ood": True}
ABSTAINED = {"decision": "abstain", "decision_reason": "the 90% set holds more than one answer", "ood": False}


def test_overlay_has_the_original_shape_and_type():
    image = np.random.default_rng(0).random((90, 70)).astype(np.float32)
    out = overlay(image, np.random.default_rng(1).random((7, 7)), 0.45)
    assert out.shape == (90, 70, 3) and out.dtype == np.uint8


def test_cold_regions_stay_gray_and_ordered_hot_regions_are_coloured():
    image = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))  # dark left -> bright right
    heat = np.zeros((8, 8), np.float32)
    heat[0, 0] = 1.0
    out = overlay(image, heat, alpha=0.5).astype(int)
    cold = out[40:, :]  # far from the hot corner
    luminance = cold.mean(axis=(0, 2))
    assert np.all(np.diff(luminance[::8]) > 0), "the X-ray's gray levels must stay in order under the overlay"
    assert np.abs(cold[..., 0] - cold[..., 1]).mean() < 40, "cold regions must stay close to gray"
    hot = out[0, 0]
    assert hot[0] > hot[2] + 50, "the map's peak must be red under jet"


def test_resize_map_clips_and_sizes():
    out = resize_map(np.array([[0.0, 2.0], [np.nan, -1.0]], np.float32), (5, 6))
    assert out.shape == (5, 6) and out.min() >= 0 and out.max() <= 1 and np.isfinite(out).all()


def test_figures_are_written(tmp_path):
    image = np.random.default_rng(0).random((40, 50)).astype(np.float32)
    heat = np.random.default_rng(1).random((10, 10)).astype(np.float32)
    side = save_side_by_side(tmp_path / "a.png", image, heat, "true: A | pred: B | wrong", 0.45, color="red")
    grid = save_grid(tmp_path / "g.png", [image] * 3, [heat] * 3, ["x"] * 3, alpha=0.45)
    for path in (side, grid):
        with Image.open(path) as img:
            assert img.size[0] > 100 and img.size[1] > 100
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize(
    ("row", "mark", "second"),
    [
        (DECIDED, "", "Decision: PNEUMONIA"),
        ({**DECIDED, "decision_note": "empty 90% prediction set"}, "", "Decision: PNEUMONIA"),
        ({**OOD, "heatmap_class": "PNEUMONIA"}, "ood", "OUT OF DISTRIBUTION: unlike the training images"),
        ({**ABSTAINED, "heatmap_class": "NORMAL"}, "abstain", "ABSTAINED: refer to a person"),
        ({"predicted": "NORMAL"}, "", "Decision: NORMAL"),  # no decision file: the arg-max
    ],
)
def test_the_caption_names_file_decision_class_probability_and_marks_referrals(row, mark, second):
    row = {"p_NORMAL": 0.25, "p_PNEUMONIA": 0.75, **row}
    caption = heatmap_caption(row, "IM-0001.jpeg", "gradcam")
    lines = caption["lines"]
    assert caption["mark"] == mark and lines[0] == "IM-0001.jpeg" and lines[1].startswith(second)
    assert any(x.startswith(f"Decision: {row.get('decision', row.get('predicted'))}") for x in lines)
    explained = row.get("heatmap_class") or row["predicted"]
    assert lines[-1].startswith(f"Heatmap: gradcam of {explained}, probability {row[f'p_{explained}']:.3f}")
    assert ("Note: empty 90% prediction set" in lines) == bool(row.get("decision_note"))
    if row.get("decision_reason"):
        assert row["decision_reason"] in " ".join(lines)


def test_a_captioned_png_has_the_overlay_a_colour_bar_and_a_frame_when_marked(tmp_path):
    rgb = overlay(np.full((60, 80), 0.5, np.float32), np.zeros((4, 4), np.float32), 0.45)
    plain = save_captioned(tmp_path / "a.png", rgb, heatmap_caption({**DECIDED, "p_PNEUMONIA": 0.9}, "a.png", "x"))
    marked = save_captioned(tmp_path / "b.png", rgb, heatmap_caption({**OOD, "p_NORMAL": 0.9}, "b.png", "x"))
    red = []
    for path in (plain, marked):
        arr = np.asarray(Image.open(path).convert("RGB")).astype(int)
        assert arr.shape[1] >= 480 and arr.shape[0] > arr.shape[1] * 60 / 80  # enlarged, caption below
        red.append(int(((arr[..., 0] > 240) & (arr[..., 1] < 15) & (arr[..., 2] < 15)).sum()))
    assert red[1] > red[0] + 500  # the marked one is framed in red
