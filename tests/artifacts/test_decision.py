"""lungnet.artifacts.decision: one decision per image, rules per task, split conformal coverage, abstention, the
file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lungnet.artifacts.decision import (
    ABSTAIN,
    NO_FINDING,
    DecisionRecord,
    decision_path,
    find_decision,
    new_record,
    read_decision,
)
from lungnet.data.labels import default_positive
from lungnet.errors import CheckpointError
from lungnet.scoring.ood import OodGate


def record(labels, multilabel=False, **kw) -> DecisionRecord:
    rec = DecisionRecord(list(labels), multilabel, "0" * 64, "best.ckpt")
    rec.positive_class = None if multilabel else default_positive(list(labels))
    for k, v in kw.items():
        setattr(rec, k, v)
    return rec


def logits_of(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(probs, 1e-12, 1))


def synthetic(n: int, k: int, rng: np.random.Generator, shift: float = 0.0):
    """A k-class problem whose probabilities are the true conditional probabilities (exchangeable draws)."""
    z = rng.normal(size=(n, k)) * 2.0
    z[:, 0] += shift
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = (rng.random(n)[:, None] > np.cumsum(p, 1)).sum(1)
    return p, np.minimum(y, k - 1)


def test_default_positive_is_the_non_normal_class():
    assert default_positive(["NORMAL", "PNEUMONIA"]) == "PNEUMONIA"
    assert default_positive(["No_findings", "Pneumonia"]) == "Pneumonia"
    assert default_positive(["Pneumonia", "No Finding"]) == "Pneumonia"
    assert default_positive(["Covid-19", "No_findings", "Pneumonia"]) is None


def test_binary_gives_one_decision_per_image():
    rec = record(["NORMAL", "PNEUMONIA"], thresholds={"PNEUMONIA": 0.3}, abstain_ambiguous=False)
    probs = np.array([[0.9, 0.1], [0.65, 0.35], [0.2, 0.8], [0.71, 0.29]])
    dec = rec.decide(logits_of(probs))
    assert rec.rule == "threshold"
    assert dec.decision == ["NORMAL", "PNEUMONIA", "PNEUMONIA", "NORMAL"]  # one label each, at the threshold 0.3
    assert all("|" not in d for d in dec.decision)


def test_multiclass_argmax_unless_a_positive_class_is_set():
    labels = ["Covid-19", "No_findings", "Pneumonia"]
    probs = np.array([[0.2, 0.5, 0.3], [0.05, 0.15, 0.8]])
    assert record(labels).decide(logits_of(probs)).decision == ["No_findings", "Pneumonia"]
    rec = record(labels, positive_class="Covid-19", thresholds={"Covid-19": 0.1})
    assert rec.decide(logits_of(probs)).decision == ["Covid-19", "Pneumonia"]  # else the arg-max of the others


def test_multilabel_one_threshold_per_finding():
    rec = record(["Effusion", "Edema"], multilabel=True, thresholds={"Effusion": 0.2, "Edema": 0.7})
    probs = np.array([[0.3, 0.6], [0.1, 0.9], [0.1, 0.1]])
    z = np.log(probs / (1 - probs))
    assert rec.decide(z).decision == ["Effusion", "Edema", "No Finding"]


def test_temperature_calibrates_the_probabilities():
    rec = record(["NORMAL", "PNEUMONIA"], temperature=2.0)
    dec = rec.decide(np.array([[0.0, 2.0]]))
    assert dec.probs[0, 1] == pytest.approx(1 / (1 + np.exp(-1.0)))


@pytest.mark.parametrize("alpha", [0.1, 0.05])
def test_split_conformal_coverage_on_a_synthetic_set(alpha):
    rng = np.random.default_rng(0)
    cal_p, cal_y = synthetic(2000, 4, rng)
    test_p, test_y = synthetic(4000, 4, rng)
    rec = record(list("ABCD"), alpha=alpha, conformal_scores=1 - cal_p[np.arange(len(cal_y)), cal_y])
    dec = rec.decide(logits_of(test_p))
    covered = dec.sets[np.arange(len(test_y)), test_y].mean()
    assert abs(covered - (1 - alpha)) < 0.02, covered
    assert 1 <= dec.sets.sum(1).mean() < 4
    ambiguous = dec.sets.sum(1) != 1
    assert [d == ABSTAIN for d in dec.decision] == ambiguous.tolist()  # abstain exactly when the set is not a singleton


def test_multilabel_sets_per_finding():
    rng = np.random.default_rng(1)
    p = rng.random((3000, 2))
    y = (rng.random((3000, 2)) < p).astype(float)
    cal = {lab: np.where(y[:1500, j] == 1, 1 - p[:1500, j], p[:1500, j]) for j, lab in enumerate(["A", "B"])}
    rec = record(["A", "B"], multilabel=True, alpha=0.1, conformal_scores=cal)
    sets, ambiguous, _ = rec.prediction_sets(p[1500:])
    assert sets.shape == (1500, 2) and ambiguous.any() and not ambiguous.all()


def test_ood_abstains_with_a_readable_reason():
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(300, 8))
    gate = OodGate.fit(feats[:200], rng.integers(0, 2, 200)).calibrate(feats[200:])
    rec = record(["NORMAL", "PNEUMONIA"], ood=gate, abstain_below=0.6)
    far = np.full((1, 8), 25.0)
    dec = rec.decide(np.array([[0.0, 3.0], [0.0, 3.0], [0.0, 0.1]]), np.vstack([feats[:1], far, feats[1:2]]))
    assert dec.decision[:2] == ["PNEUMONIA", ABSTAIN] and dec.ood.tolist()[:2] == [False, True]
    assert dec.reason[1].startswith("unlike the training images")
    assert dec.decision[2] == ABSTAIN and "abstain.below" in dec.reason[2]  # confidence 0.525 < 0.6


def test_the_file_round_trips_and_belongs_to_its_checkpoint(tmp_path):
    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(b"weights")
    rng = np.random.default_rng(3)
    rec = new_record(["NORMAL", "PNEUMONIA"], False, ckpt)
    assert rec.positive_class == "PNEUMONIA"
    rec.thresholds, rec.temperature, rec.alpha = {"PNEUMONIA": 0.4}, 1.3, 0.1
    rec.conformal_scores = rng.random(50)
    rec.ood = OodGate.fit(rng.normal(size=(40, 6)), rng.integers(0, 2, 40)).calibrate(rng.normal(size=(20, 6)))
    path = rec.write(decision_path(ckpt))
    assert path.name == "best.decision.json"
    assert json.loads(path.read_text())["format"] == "lungnet-decision/1"  # data, never code
    back, found = find_decision("auto", ckpt, ["NORMAL", "PNEUMONIA"])
    assert found == path
    z, f = rng.normal(size=(30, 2)), rng.normal(size=(30, 6))
    a, b = rec.decide(z, f), back.decide(z, f)
    assert a.decision == b.decision and np.allclose(a.ood_score, b.ood_score, rtol=1e-5)
    assert find_decision("none", ckpt, ["NORMAL", "PNEUMONIA"]) == (None, None)
    ckpt.write_bytes(b"other weights")  # retrained in place: the file no longer belongs to it
    with pytest.raises(CheckpointError, match="fitted for another checkpoint") as err:
        read_decision(path, ckpt, ["NORMAL", "PNEUMONIA"])
    assert "\n" not in str(err.value)


def test_a_record_says_where_it_was_fitted(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"weights")
    rec = new_record(["NORMAL", "PNEUMONIA"], False, ckpt)
    assert rec.split is None and "OOD gate only" in rec.fitted_on()  # training's gate, before any evaluate.py
    rec.split = "val"
    assert rec.fitted_on() == "val"


def test_a_class_without_a_threshold_falls_back_and_the_file_reads_back(tmp_path):
    """A finding without positives where the record was fitted has no threshold (NaN): left out, not written as
    null; a file that holds null (written before) still reads, and that finding uses 0.5."""
    from lungnet.evaluation.decisions import finite_thresholds

    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(b"weights")
    rec = new_record(["A", "B"], True, ckpt)
    rec.split, rec.thresholds = "val", finite_thresholds({"A": float("nan"), "B": 0.3})
    assert rec.thresholds == {"B": 0.3}
    path = rec.write(decision_path(ckpt))
    back = read_decision(path, ckpt, ["A", "B"])
    data = json.loads(path.read_text())
    data["thresholds"] = {"A": None, "B": 0.3}
    path.write_text(json.dumps(data))
    old = read_decision(path, ckpt, ["A", "B"])
    assert back.thresholds == old.thresholds == {"B": 0.3}
    assert old.labels_of(np.array([[0.6, 0.4], [0.4, 0.2]])) == ["A|B", NO_FINDING]  # A at 0.5, B at 0.3
    data["thresholds"] = {"A": "high", "B": 0.3}
    path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="thresholds.A"):
        read_decision(path, ckpt, ["A", "B"])


def test_an_undecided_finding_is_named_as_such():
    rng = np.random.default_rng(4)
    p = rng.random((2000, 1))
    y = (rng.random((2000, 1)) < p).astype(float)
    cal = {"A": np.where(y[:, 0] == 1, 1 - p[:, 0], p[:, 0])}
    rec = record(["A"], multilabel=True, alpha=0.1, conformal_scores=cal, abstain_ambiguous=True)
    dec = rec.decide(np.array([[0.0]]))  # p = 0.5: both answers fit at 90 %
    assert dec.decision == [ABSTAIN] and "a finding is undecided" in dec.reason[0]


def confident_record(labels, multilabel=False) -> DecisionRecord:
    """A record calibrated on a model right with room to spare: every calibration score below 0.02, so at 90 % the
    set's bar for a label is a probability of about 0.98 and a less confident image's set is empty."""
    scores = np.linspace(0.0, 0.02, 200)
    cal = {lab: scores for lab in labels} if multilabel else scores
    return record(labels, multilabel, alpha=0.1, conformal_scores=cal, abstain_ambiguous=True)


@pytest.mark.parametrize(
    ("labels", "multilabel", "probs", "decided"),
    [
        (["NORMAL", "PNEUMONIA"], False, [0.08, 0.92], "PNEUMONIA"),
        (["A", "B", "C"], False, [0.7, 0.2, 0.1], "A"),
        (["A", "B"], True, [0.8, 0.001], "A"),  # A: neither present nor absent fits at 90 %
    ],
)
def test_an_empty_prediction_set_is_decided_with_a_note_not_referred(labels, multilabel, probs, decided):
    """An empty set singles out no other answer: the operating point decides, the note says why the set is empty."""
    rec = confident_record(labels, multilabel)
    p = np.array([probs])
    z = np.log(p / (1 - p)) if multilabel else logits_of(p)
    dec = rec.decide(z)
    assert dec.empty.tolist() == [True] and dec.ambiguous.tolist() == [False]
    assert dec.decision == [decided] and dec.reason == [""] and dec.referral == [""]
    assert "empty 90% prediction set" in dec.note[0] and "more confident" in dec.note[0]
    assert dec.columns(labels)["decision_note"] == dec.note


def test_a_set_with_two_answers_is_still_referred_and_a_full_set_has_no_note():
    rec = record(["A", "B"], alpha=0.1, conformal_scores=np.linspace(0.0, 0.6, 200), abstain_ambiguous=True)
    dec = rec.decide(logits_of(np.array([[0.5, 0.5], [0.99, 0.01]])))
    assert dec.decision[0] == ABSTAIN and dec.referral[0] == "set" and "more than one answer" in dec.reason[0]
    assert dec.decision[1] == "A" and dec.note == ["", ""] and not dec.empty.any()
