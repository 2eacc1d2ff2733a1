"""Overlays keep the original resolution and the grayscale readable; figures are written."""

from __future__ import annotations

import numpy as np
from PIL import Image

from lungnet.explain.overlay import overlay, resize_map, save_grid, save_side_by_side


def test_overlay_has_the_original_shape_and_type():
    image = np.random.default_rng(0).random((90, 70)).astype(np.float32)
    out = overlay(image, np.random.default_rng(1).random((7, 7)))
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
    side = save_side_by_side(tmp_path / "a.png", image, heat, "true: A | pred: B | wrong", color="red")
    grid = save_grid(tmp_path / "g.png", [image] * 3, [heat] * 3, ["x"] * 3)
    for path in (side, grid):
        with Image.open(path) as img:
            assert img.size[0] > 100 and img.size[1] > 100
    assert not list(tmp_path.glob(".*tmp*"))
