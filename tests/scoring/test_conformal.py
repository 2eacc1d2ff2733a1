"""`lungnet.scoring.conformal` gives crepes' non-smoothed p-values and prediction sets, ties and NaN included."""

from __future__ import annotations

import numpy as np
import pytest
from crepes import ConformalClassifier

from lungnet.scoring.conformal import in_set, p_values


def scores(rng: np.random.Generator, shape) -> np.ndarray:
    """Scores on a coarse grid, so that test scores tie calibration scores often."""
    return np.round(rng.random(shape), 2)


@pytest.mark.parametrize("shape", [(300,), (300, 4)])
def test_p_values_equal_crepes_with_ties_and_nan(shape):
    rng = np.random.default_rng(0)
    cal, test = scores(rng, 200), scores(rng, shape)
    cal[:3] = np.nan
    test.flat[:5] = np.nan
    test.flat[5:8] = [0.0, 1.0, cal[10]]
    ours = p_values(cal, test)
    theirs = ConformalClassifier().fit(cal).predict_p(test, smoothing=False)
    np.testing.assert_array_equal(ours, theirs)
    assert ours.shape == test.shape


@pytest.mark.parametrize("alpha", [0.1, 0.05, 0.2])
def test_prediction_sets_equal_crepes_at_the_edge_of_the_level(alpha):
    rng = np.random.default_rng(1)
    cal, test = scores(rng, 99), scores(rng, (500, 3))  # q + 1 = 100: p-values land on alpha itself
    confidence = 1.0 - alpha
    theirs = ConformalClassifier().fit(cal).predict_set(test, confidence=confidence, smoothing=False)
    np.testing.assert_array_equal(in_set(cal, test, confidence), theirs.astype(bool))


def test_an_empty_calibration_set_puts_every_label_in():
    assert p_values(np.zeros(0), np.array([0.3, 0.9])).tolist() == [1.0, 1.0]
