"""`lungnet.scoring.shift.batch_shift`: exchangeable batches pass at about the nominal rate, a shifted one does not."""

from __future__ import annotations

import numpy as np
import pytest

from lungnet.scoring.ood import THUMB, ImageGate, OodGate, gate_from_dict
from lungnet.scoring.shift import MIN_BATCH, SHIFT_P, batch_shift

D = 8


def draw(rng, n: int, mean: float = 0.0) -> np.ndarray:
    return rng.normal(mean, 1.0, (n, D))


@pytest.fixture(scope="module")
def gate() -> OodGate:
    rng = np.random.default_rng(0)
    return OodGate.fit(draw(rng, 600), dims=4).calibrate(draw(rng, 400))


def test_exchangeable_batches_pass_at_about_the_nominal_rate(gate):
    rng = np.random.default_rng(1)
    said = [batch_shift(gate, gate.score(draw(rng, 32)))["shifted"] for _ in range(300)]
    assert np.mean(said) <= 3 * SHIFT_P


def test_a_shifted_population_is_caught_though_most_images_pass(gate):
    rng = np.random.default_rng(2)
    batch = draw(rng, 32, mean=0.7)
    scores, flags = gate.flag(batch)
    assert flags.mean() < 0.5  # image by image, most of the batch passes the gate
    out = batch_shift(gate, scores)
    assert out["shifted"] and out["pvalue"] < SHIFT_P
    assert set(out["tests"]) == {"ks_ood_score", "flag_count"}
    assert out["tests"]["flag_count"]["expected_rate"] == pytest.approx((20 + 1) / 401)


def test_image_gate_is_tested_per_part_and_survives_its_file(gate):
    rng = np.random.default_rng(3)

    def inputs(n: int, shift: float = 0.0) -> np.ndarray:
        thumbs = rng.normal(0, 1, (n, THUMB * THUMB)) + np.linspace(-2, 2, THUMB * THUMB)
        return np.concatenate([draw(rng, n), thumbs + shift * np.linspace(2, -2, THUMB * THUMB)], 1)

    image_gate = ImageGate.fit(inputs(500)).calibrate(inputs(300))
    stored = gate_from_dict(image_gate.to_dict())  # the decision file's copy, read back and checked
    same = inputs(40)
    moved = inputs(40, shift=0.5)
    for g in (image_gate, stored):
        out = batch_shift(g, g.score(moved), g.parts(moved))
        assert set(out["tests"]) == {"ks_features", "ks_image", "flag_count"}
        assert out["shifted"]
        assert out["tests"]["ks_features"]["pvalue"] > SHIFT_P  # the features did not move, the thumbnails did
    assert not batch_shift(stored, stored.score(same), stored.parts(same))["shifted"]


def test_no_reference_or_too_small_a_batch_gives_no_test(gate):
    rng = np.random.default_rng(4)
    bare = OodGate(gate.means, gate.components, gate.variances, gate.noise, gate.threshold)  # no reference scores
    assert batch_shift(bare, bare.score(draw(rng, 20))) is None
    small = batch_shift(gate, gate.score(draw(rng, MIN_BATCH - 1, mean=3.0)))
    assert small["pvalue"] is None and not small["shifted"]
    with_nan = np.r_[gate.score(draw(rng, 30, mean=1.0)), [np.nan] * 3]
    assert batch_shift(gate, with_nan)["n"] == 30
