"""lungnet.scoring.resample: bootstrap draws of images or of whole patients."""

from __future__ import annotations

import numpy as np
import pytest

from lungnet.scoring.resample import Resampler
from lungnet.scoring.stats import bootstrap_ci


def test_a_patient_is_drawn_with_all_its_images():
    groups = np.array(["a", "a", "b", "c", "c", "c"])
    resampler = Resampler(6, groups)
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = resampler.draw(rng)
        drawn = groups[idx]
        for g in set(drawn):  # every drawn patient comes whole, as often as it was drawn
            assert (drawn == g).sum() % (groups == g).sum() == 0
        assert len(set(drawn)) <= 3
    assert resampler.describe() == "patients (3 for 6 images)"
    with pytest.raises(ValueError, match="groups has 2 entries for 6 images"):
        Resampler(6, groups[:2])


def test_without_groups_the_draws_are_the_plain_image_bootstrap():
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    assert (Resampler(40).draw(a) == b.integers(0, 40, 40)).all()  # earlier results stay reproducible
    assert Resampler(40).describe() == "images"


def test_copies_of_a_patient_widen_the_interval_only_when_grouped():
    """40 patients with 5 films each (the same prediction five times): the image bootstrap treats 200 films as 200
    independent cases, the patient bootstrap as 40."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 40)
    p1 = y * 0.3 + rng.random(40) * 0.6  # right about 3 times in 4
    probs = np.repeat(np.stack([1 - p1, p1], 1), 5, axis=0)
    targets, groups = np.repeat(y, 5), np.repeat(np.arange(40), 5)
    plain = bootstrap_ci(probs, targets, ["N", "P"], False, resamples=300)["accuracy"]
    grouped = bootstrap_ci(probs, targets, ["N", "P"], False, resamples=300, groups=groups)["accuracy"]
    assert plain["value"] == grouped["value"]
    assert grouped["hi"] - grouped["lo"] > 1.5 * (plain["hi"] - plain["lo"])
