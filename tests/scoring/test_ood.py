"""lungnet.scoring.ood: the PPCA-Mahalanobis gate agrees with pytorch-ood's Mahalanobis and flags what is far."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lungnet.artifacts.decision import DecisionRecord
from lungnet.data.synthetic import render_phantom
from lungnet.scoring import ood
from lungnet.scoring.gate_inputs import THUMB, gate_inputs
from lungnet.scoring.ood import ImageGate, OodGate, gate_from_dict
from lungnet.scoring.referral import CLEARLY_PAST


def test_equals_pytorch_ood_mahalanobis_when_one_direction_is_dropped():
    detector_cls = pytest.importorskip("pytorch_ood.detector").Mahalanobis
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 5))
    y = rng.integers(0, 3, 400)
    x[y == 1] += 2.0
    gate = OodGate.fit(x, y, dims=64)  # keeps 4 axes; the 5th direction's variance is the noise: the exact inverse
    ref = detector_cls(None).fit_features(torch.tensor(x, dtype=torch.float32), torch.tensor(y))
    test = rng.normal(size=(50, 5)) * 3
    theirs = ref.predict_features(torch.tensor(test, dtype=torch.float32)).numpy()
    # pytorch-ood: 0.5 * d' S^-1 d with S the unnormalised within-class scatter (+1e-6 I); here d' C^-1 d / D
    ours = gate.score(test) * 5 / (len(x) - 3) * 0.5
    np.testing.assert_allclose(ours, theirs, rtol=2e-3)


@pytest.mark.parametrize("n", [40, 300])  # fewer images than features (a singular scatter), and more
def test_the_leading_axes_alone_give_the_gate_every_axis_gives(n):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, 6)) @ rng.normal(size=(6, 96)) + 0.05 * rng.normal(size=(n, 96))
    gate = OodGate.fit(x, dims=16)
    centred = x - x.mean(0)
    eigval, eigvec = np.linalg.eigh(centred.T @ centred / (n - 1))  # every axis, as the gate once computed them
    eigval, eigvec = np.clip(eigval[::-1], 0.0, None), eigvec[:, ::-1]
    noise = max(eigval[16:].mean(), eigval.mean() * 1e-6)
    # the gate fits in float32, the precision it is stored in; this spectrum spans 1e5 (noise 1e-5 of the top axis),
    # where float32 resolves the small variances to about 0.2 % (a float64 fit gave 1e-9)
    np.testing.assert_allclose(gate.noise, noise, rtol=5e-3)
    np.testing.assert_allclose(gate.variances, np.maximum(eigval[:16], noise), rtol=1e-2)
    np.testing.assert_allclose(np.abs((gate.components * eigvec[:, :16]).sum(0)), 1.0, atol=2e-3)  # same axes
    test = rng.normal(size=(20, 96))
    d = test - x.mean(0)
    proj = d @ eigvec[:, :16]
    expected = (proj**2 / np.maximum(eigval[:16], noise)).sum(1) + ((d * d).sum(1) - (proj**2).sum(1)) / noise
    np.testing.assert_allclose(gate.score(test), expected / 96, rtol=5e-3)


def test_flags_far_points_and_passes_exchangeable_ones():
    rng = np.random.default_rng(1)
    basis = rng.normal(size=(16, 64))
    draw = lambda n: rng.normal(size=(n, 16)) @ basis + 0.1 * rng.normal(size=(n, 64))  # noqa: E731
    gate = OodGate.fit(draw(1000), dims=16).calibrate(draw(500), quantile=0.95)
    _, flags = gate.flag(draw(2000))
    assert 0.02 < flags.mean() < 0.09  # about 5 % of exchangeable images, by construction
    off_subspace = draw(50) + rng.normal(size=(50, 64))  # same scale, but leaves the training subspace
    assert gate.flag(off_subspace)[1].all()


def films(n: int, seed: int, turn=lambda im: im) -> torch.Tensor:
    """Upright synthetic frontal films (`lungnet.data.synthetic`, 32 px), each through ``turn``: (n, 1, 32, 32)."""
    rng = np.random.default_rng(seed)
    images = [turn(render_phantom("Normal", 32, rng)[0].astype(np.float32) / 255.0) for _ in range(n)]
    return torch.tensor(np.stack(images)[:, None].copy())


def turned_blind_features(batch: torch.Tensor) -> torch.Tensor:
    """Stand-in for a fine-tuned model's pooled features: intensity quantiles, identical for a turned film."""
    return torch.quantile(batch.flatten(1), torch.linspace(0.05, 0.95, 12), dim=1).T


def inputs(batch: torch.Tensor) -> np.ndarray:
    return gate_inputs(turned_blind_features(batch), batch)


TURNS = {"rotated 90": np.rot90, "rotated 180": lambda im: np.rot90(im, 2), "upside down": lambda im: im[::-1]}


def test_image_part_flags_turned_films_and_passes_held_out_upright_ones():
    train, val, held = inputs(films(400, 0)), inputs(films(300, 1)), inputs(films(400, 2))
    assert train.shape[1] == 12 + THUMB * THUMB
    gate = ImageGate.fit(train, dims=8).calibrate(val, quantile=0.95)
    features_only = OodGate.fit(train[:, :12], dims=8).calibrate(val[:, :12], quantile=0.95)
    assert gate.flag(held)[1].mean() < 0.12  # about 5 % of exchangeable films
    assert 0.03 < gate.info["rate_on_threshold_split"] <= 0.07
    np.testing.assert_array_equal(gate.reference, gate.score(val))  # the parts' own scores, not recomputed
    decided = DecisionRecord(["NORMAL", "PNEUMONIA"], False, "0" * 64, split="val", ood=gate).decide(
        np.zeros((300, 2)), val
    )
    np.testing.assert_array_equal(decided.ood_score, gate.score(val))
    np.testing.assert_array_equal(decided.ood, gate.flag(val)[1])
    for part, scores in gate.parts(val).items():  # the images it was thresholded on: their part scores are kept
        np.testing.assert_array_equal(gate.reference_parts()[part], scores)
    record = DecisionRecord(["NORMAL", "PNEUMONIA"], False, "0" * 64, split="val", ood=gate)
    reused = record.decide(np.zeros((300, 2)), val, ood_parts=gate.reference_parts())
    assert reused.reason == decided.reason and (reused.ood == decided.ood).all()
    for name, turn in TURNS.items():
        turned = inputs(films(100, 3, turn))
        assert features_only.flag(turned)[1].mean() < 0.2, name  # the features alone do not see the turn
        assert gate.flag(turned)[1].mean() > 0.9, name
        parts = gate.parts(turned)
        np.testing.assert_allclose(np.maximum(parts["features"], parts["image"]), gate.score(turned))
    blank = torch.stack([torch.full((1, 32, 32), v) for v in (0.0, 0.5, 1.0)])
    assert (gate.parts(inputs(blank))["image"] > 1).all()  # a flat image has no film layout, whatever its grey
    record = DecisionRecord(["NORMAL", "PNEUMONIA"], False, "0" * 64, split="val", ood=gate)
    reasons = record.decide(np.zeros((100, 2)), inputs(films(100, 3, np.rot90))).reason
    assert sum("image layout" in r for r in reasons) > 90  # the reason says which part flagged it


def test_gate_with_image_part_round_trips_and_records_both_scores():
    train, val = inputs(films(200, 0)), inputs(films(100, 1))
    gate = ImageGate.fit(train, dims=8, fit_split="train").calibrate(val)
    back = gate_from_dict(json.loads(json.dumps(gate.to_dict())))
    assert isinstance(back, ImageGate) and back.info["fit_split"] == "train"
    np.testing.assert_allclose(back.score(val), gate.score(val), rtol=1e-5)
    record = DecisionRecord(["NORMAL", "PNEUMONIA"], False, "0" * 64, split="val", ood=back)
    cols = record.decide(np.zeros((len(val), 2)), val).columns(record.labels)
    assert {"ood_score_features", "ood_score_image"} <= set(cols)
    assert max(cols["ood_score_features"][0], cols["ood_score_image"][0]) == pytest.approx(cols["ood_score"][0])


def test_inputs_of_another_width_are_refused_by_scoring_and_thresholding_alike():
    train = inputs(films(60, 0))
    gate = ImageGate.fit(train, dims=4)
    narrow = train[:, 1:]  # another model's features: one column fewer
    for step in (gate.score, gate.calibrate):
        with pytest.raises(ValueError, match=r"expected \(N, 12 features \+ 256 thumbnail\)"):
            step(narrow)
    features, thumbnails = gate.split(train)
    assert features.shape == (60, 12) and thumbnails.shape == (60, THUMB * THUMB)
    np.testing.assert_allclose(thumbnails.mean(1), 0, atol=1e-5)  # standardised per image


def test_an_old_gate_without_the_image_part_still_loads_and_scores_the_features():
    train, val = inputs(films(200, 0)), inputs(films(100, 1))
    old = OodGate.fit(train[:, :12], dims=8, fit_split="train").calibrate(val[:, :12])
    written = DecisionRecord(["NORMAL", "PNEUMONIA"], False, "0" * 64, split="val", ood=old).to_dict()
    record = DecisionRecord.from_dict(json.loads(json.dumps(written)))  # a decision file from before the image part
    assert isinstance(record.ood, OodGate)
    decided = record.decide(np.zeros((len(val), 2)), val)  # today's gate inputs carry a thumbnail after the features
    np.testing.assert_allclose(decided.ood_score, old.score(val[:, :12]), rtol=1e-4)  # stored as float32
    assert decided.ood_parts is None and "ood_score_image" not in decided.columns(record.labels)


def test_a_film_just_past_a_threshold_is_unlike_the_training_images_without_a_guessed_cause():
    """Held-out upright films the gate flags sit just past a part's threshold, where two encodings of one film land
    on either side: their reason names no part (it named one for every flagged film)."""
    train, val, held = inputs(films(400, 0)), inputs(films(300, 1)), inputs(films(400, 2))
    gate = ImageGate.fit(train, dims=8).calibrate(val, quantile=0.95)
    top = np.maximum(*gate.parts(held).values())
    barely = np.flatnonzero((top > 1) & (top < CLEARLY_PAST))
    assert len(barely) >= 3
    record = DecisionRecord(["NORMAL", "PNEUMONIA"], False, "0" * 64, split="val", ood=gate)
    reasons = record.decide(np.zeros((len(held), 2)), held).reason
    for i in barely:
        assert reasons[i].startswith("unlike the training images (OOD score"), reasons[i]
        assert "layout" not in reasons[i] and "features" not in reasons[i], reasons[i]


def test_scores_in_chunks_equal_scores_in_one_block(monkeypatch):
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(size=(300, 24)), rng.normal(size=(300, THUMB**2))], 1).astype(np.float32)
    gate = ImageGate.fit(x[:200], rng.integers(0, 3, 200), dims=8).calibrate(x[200:250])
    monkeypatch.setattr(ood, "CHUNK", 10**9)
    whole = gate.parts(x[250:])
    monkeypatch.setattr(ood, "CHUNK", 7)  # 50 rows: 7 full chunks and a last one of 1
    chunked = gate.parts(x[250:])
    for part in ("features", "image"):
        np.testing.assert_allclose(chunked[part], whole[part], rtol=1e-12)
