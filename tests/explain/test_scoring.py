"""Pointing game, energy share, box masks, chance levels and the randomisation check on known cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lungnet.explain import explain
from lungnet.explain.scoring import (
    box_mask,
    chance_levels,
    energy_share,
    pointing_hit,
    randomized_copy,
    rank_correlation,
    tolerance_px,
    wilson_interval,
)
from lungnet.models.registry import create_model


def _square_mask(size: int = 64) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[10:20, 10:20] = True
    return mask


def _peak(size: int, y: int, x: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 20.0).astype(np.float32)


def test_pointing_game_inside_outside_and_tolerance():
    mask = _square_mask()
    assert pointing_hit(_peak(64, 15, 15), mask)
    assert not pointing_hit(_peak(64, 50, 50), mask)
    # 3 px right of the lesion: a hit with the default tolerance (15 * 64 / 224 = 4.3 px), a miss without
    assert tolerance_px((64, 64)) == pytest.approx(15 * 64 / 224)
    assert pointing_hit(_peak(64, 15, 22), mask)
    assert not pointing_hit(_peak(64, 15, 22), mask, tolerance=0)


def test_pointing_game_resizes_the_map_to_the_mask():
    mask = np.zeros((128, 128), bool)
    mask[96:, 96:] = True
    small = np.zeros((16, 16), np.float32)
    small[14, 14] = 1.0  # bottom-right at 1/8 scale
    assert pointing_hit(small, mask)
    assert not pointing_hit(small[::-1, ::-1].copy(), mask)


def test_constant_map_is_a_miss_and_empty_mask_is_refused():
    assert not pointing_hit(np.ones((64, 64), np.float32), _square_mask())
    with pytest.raises(ValueError):
        pointing_hit(_peak(64, 5, 5), np.zeros((64, 64), bool))


def test_energy_share_known_values():
    mask = _square_mask()
    assert energy_share(mask.astype(np.float32), mask) == pytest.approx(1.0)
    assert energy_share(np.ones((64, 64), np.float32), mask) == pytest.approx(100 / 64**2)
    assert energy_share((~mask).astype(np.float32), mask) == pytest.approx(0.0)
    assert np.isnan(energy_share(np.zeros((64, 64), np.float32), mask))


def test_chance_levels_match_a_flat_map():
    mask = _square_mask()
    hit, energy = chance_levels(mask, tolerance=0)
    assert hit == pytest.approx(100 / 64**2) and energy == pytest.approx(100 / 64**2)
    assert chance_levels(mask)[0] > hit  # the tolerance widens the target


def test_box_mask_scales_from_1024_space():
    mask = box_mask((64, 64), [(512.0, 256.0, 256.0, 128.0)], scale=64 / 1024)
    rows, cols = np.nonzero(mask)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (16, 23, 32, 47)
    two = box_mask((64, 32), [(0, 0, 1024, 1024)], scale=(32 / 1024, 64 / 1024))
    assert two.all()


def test_wilson_interval_brackets_the_rate():
    lo, hi = wilson_interval(7, 10)
    assert lo < 0.7 < hi and 0 <= lo and hi <= 1


def test_randomised_model_gives_different_maps():
    torch.manual_seed(0)
    model = create_model("simple_cnn", 3, in_chans=1, image_size=32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    random = randomized_copy(model, seed=1)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"randomized_copy changed the original's {k}"
    convs = [k for k in before if k.endswith("weight") and before[k].ndim == 4]
    assert all(not torch.equal(random.state_dict()[k], before[k]) for k in convs)
    x = torch.randn(2, 1, 32, 32)
    trained, randomised = explain(model, x, "gradcam", targets=[1, 1]), explain(random, x, "gradcam", targets=[1, 1])
    for a, b in zip(trained, randomised, strict=True):
        assert rank_correlation(a, a) == pytest.approx(1.0)
        assert rank_correlation(a, b) < rank_correlation(a, a)
    assert np.isnan(rank_correlation(np.ones((4, 4)), trained[0]))
