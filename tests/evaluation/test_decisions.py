"""evaluate.py split=val -> <ckpt stem>.decision.json -> predict.py decisions; shift warning; model card."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from lungnet.artifacts.decision import DecisionRecord
from lungnet.artifacts.paths import decision_path
from lungnet.evaluation.decision_report import decision_section, risk_coverage_figure, risk_curve
from lungnet.evaluation.decisions import decision_errors, shift_test, summarise
from lungnet.evaluation.model_card import SECTIONS
from lungnet.evaluation.pipeline import evaluate
from lungnet.evaluation.report import decision_rows, rest_accuracy
from tests.conftest import ROOT
from tests.evaluation.conftest import FAST_EVAL, compose_cfg


@pytest.fixture(scope="module")
def own_ckpt(tiny_run, tmp_path_factory):
    """A copy of the tiny run's checkpoint and the decision file training wrote (OOD gate only)."""
    src = tiny_run / "checkpoints"
    assert json.loads((src / "best.decision.json").read_text())["ood"]["threshold_split"] == "val"
    dst = tmp_path_factory.mktemp("own") / "checkpoints"
    dst.mkdir()
    shutil.copy(src / "best.ckpt", dst / "best.ckpt")
    record = DecisionRecord.from_dict(json.loads((src / "best.decision.json").read_text()))
    record.write(dst / "best.decision.json")  # the hash is the same: it is the same file
    return dst / "best.ckpt"


def test_evaluate_val_then_predict_writes_decision_columns(own_ckpt, tiny_run, tmp_path):
    cfg = compose_cfg("evaluate", [f"ckpt={own_ckpt}", "split=val", "explain.n=0", *FAST_EVAL])
    result = evaluate(cfg, tmp_path / "val")
    record = DecisionRecord.from_dict(json.loads(decision_path(own_ckpt).read_text()))
    assert record.split == "val" and record.temperature > 0 and record.alpha == 0.1 and record.ood is not None
    assert len(record.conformal_scores) == result["n"] and record.summary["split"] == "val"
    assert 0 <= result["conformal_coverage"] <= 1 and result["conformal_mean_set_size"] >= 0
    assert result["decisions"]["shift"]["in_sample"] and result["conformal_shift_warning"] is False
    assert result["decisions"]["population_shift"]["shifted"] is False  # val against its own calibration scores
    card = (tmp_path / "val" / "model_card.md").read_text()
    assert all(f"## {s}" in card for s in SECTIONS) and "Research use only" in card
    assert own_ckpt.with_name("best.model_card.md").is_file()
    out = tmp_path / "pred"
    images = tiny_run.parent / "syn"
    cmd = [sys.executable, "predict.py", f"ckpt={own_ckpt}", f"input={images}", f"hydra.run.dir={out}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = pd.read_csv(out / "predictions.csv")
    assert {"decision", "prediction_set", "ood", "ood_score"} <= set(table.columns)
    assert set(table["decision"]) <= {*record.labels, "abstain"}
    assert table["ood_score"].notna().all()
    facts = json.loads((out / "prediction.json").read_text())
    assert facts["decision_file"] == str(decision_path(own_ckpt)) and facts["decision"]["split"] == "val"
    shift = facts["population_shift"]  # the batch tested against the gate's calibration scores, per part
    assert shift["n"] == len(table) and 0 <= shift["pvalue"] <= 1 and {"ks_features", "ks_image"} <= set(shift["tests"])


def test_evaluating_test_reads_the_val_fitted_file_and_keeps_it(tiny_run, tmp_path):
    ckpt = tmp_path / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir()
    shutil.copy(tiny_run / "checkpoints" / "best.ckpt", ckpt)
    val = ["split=val", "conformal.alpha=0.05", "explain.n=0", *FAST_EVAL]
    evaluate(compose_cfg("evaluate", [f"ckpt={ckpt}", *val]), tmp_path / "val")
    written = decision_path(ckpt).read_text()
    assert json.loads(written)["alpha"] == 0.05
    test = evaluate(compose_cfg("evaluate", [f"ckpt={ckpt}", "split=test", "explain.n=0", *FAST_EVAL]), tmp_path / "t")
    assert decision_path(ckpt).read_text() == written  # not refitted with this command's alpha = 0.1
    assert test["decisions"]["alpha"] == 0.05 and test["decisions"]["source"].startswith("read from")
    assert "alpha = 0.05" in (tmp_path / "t" / "report.md").read_text()
    refit = ["split=test", "decision.refit=true", "explain.n=0", *FAST_EVAL]
    again = evaluate(compose_cfg("evaluate", [f"ckpt={ckpt}", *refit]), tmp_path / "r")
    assert again["decisions"]["alpha"] == 0.1 and json.loads(decision_path(ckpt).read_text())["alpha"] == 0.1


def test_another_checkpoints_decision_file_is_refused_with_one_line(own_ckpt, tmp_path):
    other = tmp_path / "other.decision.json"
    data = json.loads(decision_path(own_ckpt).read_text())
    other.write_text(json.dumps({**data, "checkpoint_sha256": "f" * 64}))
    cmd = [sys.executable, "predict.py", f"ckpt={own_ckpt}", f"input={tmp_path}", f"decision={other}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        cmd + [f"hydra.run.dir={tmp_path / 'p'}"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 2
    said = proc.stdout + proc.stderr
    assert "fitted for another checkpoint" in said and "Traceback" not in said


def test_a_ks_p_value_scipy_cannot_compute_exactly_is_the_asymptotic_one_without_a_console_warning(monkeypatch):
    """scipy warns (RuntimeWarning) and switches to the asymptotic p-value when the exact one fails; the shift
    test says so in pvalue_method instead, and other warnings still come through."""
    import warnings

    from scipy.stats import _stats_py

    def exact_fails(n1, n2, g, d, alternative):
        warnings.warn("another warning", UserWarning, stacklevel=2)  # not scipy's fallback: it must come through
        return False, d, np.nan

    monkeypatch.setattr(_stats_py, "_attempt_exact_2kssamp", exact_fails)
    rng = np.random.default_rng(0)
    rec = DecisionRecord(["A", "B"], False, "0" * 64, split="val", alpha=0.1, conformal_scores=rng.random(300) * 0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = shift_test(rec, rng.random(200) * 0.5, None, in_sample=False)
    assert [str(w.message) for w in caught] == ["another warning"]
    (test,) = result["tests"].values()
    assert test["pvalue_method"].startswith("asymptotic") and 0.0 <= test["pvalue"] <= 1.0


def test_a_shifted_split_gets_the_warning_and_no_coverage_claim():
    rng = np.random.default_rng(0)
    rec = DecisionRecord(["A", "B"], False, "0" * 64, split="val", alpha=0.1, conformal_scores=rng.random(300) * 0.5)
    same = shift_test(rec, rng.random(300) * 0.5, None, in_sample=False)
    assert not same["warning"] and same["pvalue"] > 0.01
    shifted = shift_test(rec, 0.3 + rng.random(300) * 0.5, None, in_sample=False)
    assert shifted["warning"] and shifted["pvalue"] < 0.01
    block = {
        "source": "x",
        "n": 300,
        "referred": 1,
        "referred_share": 0.0,
        "referred_by": {},
        "accuracy_on_rest": 0.9,
        "accuracy_without_abstention": 0.9,
        "shift": shifted,
        "alpha": 0.1,
    }
    text = decision_section({"decisions": block, "conformal_coverage": 0.8}, rec, "test")
    assert "**Coverage is not guaranteed on this split.**" in text


def test_a_failed_evaluation_leaves_the_decision_file_as_it_was(tiny_run, tmp_path, monkeypatch):
    """The decision file beside the checkpoint is what predict.py and the app trust: it is replaced only once the
    evaluation's own files are written, never by an evaluation that fails after fitting it."""
    from lungnet.evaluation import pipeline as run

    ckpt = tmp_path / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir()
    shutil.copy(tiny_run / "checkpoints" / "best.ckpt", ckpt)
    shutil.copy(tiny_run / "checkpoints" / "best.decision.json", decision_path(ckpt))
    before = decision_path(ckpt).read_bytes()

    def broken(ev) -> None:
        raise RuntimeError("a later report step fails")

    monkeypatch.setattr(run, "REPORT_STEPS", [*run.REPORT_STEPS, broken])
    with pytest.raises(RuntimeError, match="a later report step fails"):
        evaluate(compose_cfg("evaluate", [f"ckpt={ckpt}", "split=val", "explain.n=0", *FAST_EVAL]), tmp_path / "e")
    assert decision_path(ckpt).read_bytes() == before
    monkeypatch.undo()
    evaluate(compose_cfg("evaluate", [f"ckpt={ckpt}", "split=val", "explain.n=0", *FAST_EVAL]), tmp_path / "ok")
    assert json.loads(decision_path(ckpt).read_text())["split"] == "val"  # a finished evaluation writes it


def test_the_report_counts_empty_sets_apart_from_referrals():
    """A model right on every image with room to spare: its less confident images get empty 90 % sets. They are
    decided (not "7 of 69 referred" for a model with accuracy 1.000), and the report says how many and why."""
    labels = ["NORMAL", "PNEUMONIA"]
    record = DecisionRecord(labels, False, "0" * 64, split="val", alpha=0.1, conformal_scores=np.linspace(0, 0.02, 200))
    top = np.array([0.999] * 62 + [0.9] * 7)
    probs = np.stack([1 - top, top], axis=1)
    dec = record.decide(np.log(probs))
    loaded = SimpleNamespace(labels=labels, multilabel=False)
    ev = SimpleNamespace(loaded=loaded, data=SimpleNamespace(targets=[1] * 69))
    block = summarise(record, dec, ev, "fitted on val")
    assert block["referred"] == 0 and block["empty_sets"] == 7 and block["ambiguous_sets"] == 0
    assert block["accuracy_on_rest"] == 1.0
    block["shift"] = {"tests": {}, "in_sample": True, "pvalue": None, "warning": False}
    result = {"decisions": block, "conformal_coverage": 62 / 69, "conformal_mean_set_size": 62 / 69}
    text = decision_section(result, record, "test")
    assert "Referred to a person: **0 of 69**" in text
    assert "Empty prediction sets: **7 of 69**" in text and "more confident on the validation images" in text
    rows = dict(decision_rows(result))
    assert rows["Empty prediction sets (decided, not referred)"].startswith("7 of 69")


def test_only_a_gate_just_thresholded_on_the_evaluated_images_reuses_their_scores(tiny_run, tmp_path, monkeypatch):
    """evaluate.py split=val keeps the decision file's OOD gate (no ood.refit): val is scored through it; with
    ood.refit=true the gate is fitted and thresholded on val, and its scores of val are the ones the columns show."""
    from lungnet.scoring.ood import ImageGate

    ckpt = tmp_path / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir()
    shutil.copy(tiny_run / "checkpoints" / "best.ckpt", ckpt)
    shutil.copy(tiny_run / "checkpoints" / "best.decision.json", decision_path(ckpt))
    calls, reference_parts = [], ImageGate.reference_parts
    monkeypatch.setattr(ImageGate, "reference_parts", lambda self: calls.append(1) or reference_parts(self))
    base = [f"ckpt={ckpt}", "split=val", "explain.n=0", *FAST_EVAL]
    evaluate(compose_cfg("evaluate", base), tmp_path / "kept")
    assert calls == []  # the file's gate was thresholded on the val of its own run, not on these outputs
    evaluate(compose_cfg("evaluate", [*base, "ood.refit=true"]), tmp_path / "fresh")
    assert calls == [1]
    reference = json.loads(decision_path(ckpt).read_text())["ood"]["reference_scores"]
    shown = pd.read_csv(tmp_path / "fresh" / "predictions.csv")["ood_score"]
    np.testing.assert_allclose(shown, reference, rtol=1e-12)


def test_the_gates_squares_and_axes_are_computed_on_a_cuda_device_and_on_the_host_otherwise(monkeypatch):
    from lungnet.evaluation import decisions
    from lungnet.scoring import ood, scatter
    from lungnet.scoring.gate_inputs import THUMB

    seen = []
    squares, axes = scatter.squares_about, scatter.leading_axes
    # the spies record where each step would run and compute on the host (this machine may have no GPU)
    monkeypatch.setattr(scatter, "squares_about", lambda *a: seen.append(a[3]) or squares(*a[:3]))
    monkeypatch.setattr(ood, "leading_axes", lambda s, k, d=None: seen.append(d) or axes(s, k))
    rng = np.random.default_rng(0)
    train = SimpleNamespace(features=rng.normal(size=(60, 12 + THUMB * THUMB)), targets=rng.integers(0, 2, 60))
    val = SimpleNamespace(features=rng.normal(size=(30, 12 + THUMB * THUMB)), name="val")
    for device, expected in [("cuda:0", torch.device("cuda:0")), ("cpu", None)]:
        seen.clear()
        gate = decisions.fit_gate(decisions.sample_scatters(train, False, device), val, 4, device=device)
        assert seen == [expected] * 4  # squares of both parts, then the axes of both
        assert gate.features.info["fit_n"] == 60


def test_decision_errors_multilabel_are_per_finding_and_skip_unknown_findings():
    """Multi-label risk is the share of annotated findings called wrong (one threshold per finding), not the whole
    set's: a weak model with one wrong call of three is 1/3 wrong, where the exact set would call it all wrong."""
    record = DecisionRecord(["A", "B", "C"], True, "0" * 64, split="val", thresholds={"A": 0.5, "B": 0.2, "C": 0.5})
    probs = np.array([[0.9, 0.3, 0.1], [0.9, 0.1, 0.6], [0.1, 0.1, 0.1], [0.7, 0.7, 0.7]])
    targets = np.array([[1, 1, 0], [1, 0, np.nan], [np.nan] * 3, [0, 0, 0]], dtype=float)
    errors, whole, truth = decision_errors(record, probs, targets)
    np.testing.assert_allclose(errors[[0, 1, 3]], [0.0, 0.0, 1.0])  # B at 0.3 passes its 0.2 threshold
    assert np.isnan(errors[2])  # nothing annotated: unknown, not right
    np.testing.assert_array_equal(whole, [0.0, 1.0, 0.0, 1.0])  # row 1: C called, its NaN read as absent
    assert truth == ["A|B", "A", "No Finding", "No Finding"]


def test_risk_curve_orders_by_confidence_and_leaves_out_unknown_errors():
    share, risk = risk_curve(np.array([0.9, 0.5, 0.99, 0.7]), np.array([1.0, 0.0, 0.0, np.nan]))
    np.testing.assert_allclose(share, [1 / 3, 2 / 3, 1.0])
    np.testing.assert_allclose(risk, [0.0, 0.5, 1 / 3])  # 0.99 right, then 0.9 wrong, then 0.5 right


def test_risk_coverage_figure_multilabel_draws_the_per_finding_and_whole_set_curves():
    rng = np.random.default_rng(0)
    conf, errors = rng.random(50), rng.random(50) * 0.3
    fig = risk_coverage_figure(conf, errors, conf > 0.2, "t", whole=(errors > 0.1).astype(float))
    ax = fig.axes[0]
    assert "finding calls wrong" in ax.get_ylabel()
    assert [line.get_label() for line in ax.lines][:2] == [
        "keep the most confident: findings called wrong",
        "images with any finding wrong",
    ]
    assert ax.get_ylim()[1] <= 1.05
    single = risk_coverage_figure(conf, (errors > 0.1).astype(float), conf > 0.2, "t").axes[0]
    assert single.get_ylabel() == "error rate of the decisions kept (risk)"
    assert len([line for line in single.lines if line.get_label() == "images with any finding wrong"]) == 0


def test_a_multilabel_summary_gives_the_share_of_finding_calls_right_beside_the_exact_set():
    labels = ["A", "B", "C"]
    record = DecisionRecord(labels, True, "0" * 64, split="val", thresholds={lab: 0.5 for lab in labels})
    probs = np.array([[0.9, 0.1, 0.1], [0.9, 0.9, 0.1], [0.1, 0.1, 0.1]])
    targets = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1]], dtype=float)  # right, one call wrong, one call wrong
    dec = record.decide(np.log(probs / (1 - probs)))
    ev = SimpleNamespace(loaded=SimpleNamespace(labels=labels, multilabel=True), data=SimpleNamespace(targets=targets))
    block = summarise(record, dec, ev, "fitted on val")
    assert block["accuracy_without_abstention"] == pytest.approx(1 / 3)
    assert block["finding_accuracy_without_abstention"] == pytest.approx(7 / 9)
    assert block["finding_accuracy_on_rest"] == pytest.approx(7 / 9)  # nothing abstained
    row = rest_accuracy(block)
    assert row.startswith("accuracy of the rest 0.333") and "per finding 0.778" in row
    assert rest_accuracy({"accuracy_on_rest": 0.5}) == "accuracy of the rest 0.500"
    block["shift"] = {"tests": {}, "in_sample": True, "pvalue": None, "warning": False}
    text = decision_section({"decisions": block}, record, "test")
    assert "whole set of findings is; per finding call: **0.778** (without abstention: 0.778)" in text
