"""A decision file is untrusted input: with the checkpoint hash intact, every bad value of every key is one line
naming the file, the key and what it accepts (CheckpointError, exit 2), never a silently wrong decision."""

from __future__ import annotations

import copy
import json
import logging
import re

import numpy as np
import pytest

from lungnet.artifacts.decision import DecisionRecord, new_record, read_decision
from lungnet.artifacts.decision_file import parse_thresholds
from lungnet.artifacts.paths import decision_path
from lungnet.commands import predict as predict_cmd
from lungnet.commands.wrapper import run_safely
from lungnet.errors import CheckpointError
from lungnet.scoring.ood import THUMB, AnyMemberGate, ImageGate, OodGate
from lungnet.scoring.stored_array import encode_array
from lungnet.untrusted import BadValue
from tests.conftest import run_cli, shared
from tests.serve.test_inference import LABELS, make_checkpoint

BINARY = ["NORMAL", "PNEUMONIA"]
NAN, INF = float("nan"), float("inf")


def _record(tmp_path, multilabel: bool = False) -> tuple[dict, object]:
    """A complete decision file's data (every key set) for a checkpoint file, and that file."""
    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(b"weights")
    rng = np.random.default_rng(0)
    rec = new_record(BINARY, multilabel, ckpt)
    rec.split, rec.temperature, rec.alpha, rec.abstain_below = "val", 1.3, 0.1, 0.6
    rec.target_sensitivity, rec.thresholds = 0.9, {"PNEUMONIA": 0.4}
    rec.conformal_scores = {lab: rng.random(20) for lab in BINARY} if multilabel else rng.random(20)
    rec.ood = OodGate.fit(rng.normal(size=(40, 6)), rng.integers(0, 2, 40)).calibrate(rng.normal(size=(20, 6)))
    rec.counts, rec.summary, rec.ood_fit_n = {"n": 20}, {"model": "simple_cnn"}, 40
    return json.loads(json.dumps(rec.to_dict())), ckpt


def _set(data: dict, key: str, value) -> dict:
    """A copy of ``data`` with the dotted ``key`` set to ``value``."""
    out = copy.deepcopy(data)
    *path, last = key.split(".")
    node = out
    for part in path:
        node = node[part]
    node[last] = value
    return out


def _nan_means(data: dict) -> dict:
    means = np.zeros((2, 6))
    means[0, 0] = np.nan
    return encode_array(means)


def _wrong_components(data: dict) -> dict:
    return encode_array(np.zeros((6, 2)))


# (dotted key, bad value, the key the message names)
BAD = [
    ("format", "lungnet-decision/2", "format"),
    ("labels", None, "labels"),
    ("labels", [], "labels"),
    ("labels", "NORMAL", "labels"),
    ("labels", ["NORMAL", "NORMAL"], "labels"),
    ("labels", [0, 1], "labels"),
    ("multilabel", "false", "multilabel"),
    ("multilabel", 0, "multilabel"),
    ("multilabel", None, "multilabel"),
    ("checkpoint_sha256", None, "checkpoint_sha256"),
    ("checkpoint", 5, "checkpoint"),
    ("split", 3, "split"),
    ("counts", [1], "counts"),
    ("temperature", -1, "temperature"),  # flipped every decision
    ("temperature", 0, "temperature"),
    ("temperature", NAN, "temperature"),  # all-NaN probabilities
    ("temperature", INF, "temperature"),
    ("temperature", 1e308, "temperature"),  # 0.5 everywhere
    ("temperature", "abc", "temperature"),
    ("temperature", True, "temperature"),
    ("positive_class", "COVID", "positive_class"),
    ("positive_class", 1, "positive_class"),
    ("target_sensitivity", 1.5, "target_sensitivity"),
    ("thresholds", [0.5], "thresholds"),
    ("thresholds", "high", "thresholds"),
    ("thresholds.PNEUMONIA", NAN, "thresholds.PNEUMONIA"),  # never decided the positive class
    ("thresholds.PNEUMONIA", INF, "thresholds.PNEUMONIA"),
    ("thresholds.PNEUMONIA", 1.5, "thresholds.PNEUMONIA"),
    ("thresholds.PNEUMONIA", -0.1, "thresholds.PNEUMONIA"),
    ("thresholds.PNEUMONIA", "0.4", "thresholds.PNEUMONIA"),
    ("thresholds.COVID", 0.5, "thresholds.COVID"),
    ("alpha", 5, "alpha"),  # every image abstained
    ("alpha", -1, "alpha"),
    ("alpha", 0, "alpha"),
    ("alpha", 1, "alpha"),
    ("alpha", NAN, "alpha"),
    ("alpha", "x", "alpha"),
    ("conformal_scores", "x", "conformal_scores"),
    ("conformal_scores", [], "conformal_scores"),
    ("conformal_scores", [0.1, NAN], "conformal_scores[1]"),
    ("conformal_scores", [0.1, 2.0], "conformal_scores[1]"),
    ("conformal_scores", {"NORMAL": [0.1]}, "conformal_scores"),
    ("abstain_below", "x", "abstain_below"),
    ("abstain_below", 1.5, "abstain_below"),
    ("abstain_below", NAN, "abstain_below"),
    ("abstain_ambiguous", "yes", "abstain_ambiguous"),
    ("ood", [1, 2], "ood"),
    ("ood", "gate", "ood"),
    ("ood.method", "knn", "ood.method"),
    ("ood.threshold", NAN, "ood.threshold"),  # turned the gate off
    ("ood.threshold", -1, "ood.threshold"),
    ("ood.threshold", "x", "ood.threshold"),
    ("ood.noise", 0, "ood.noise"),
    ("ood.means", {"shape": [2, 6], "dtype": "float32", "base64": "AAAA"}, "ood.means"),
    ("ood.means", "x", "ood.means"),
    ("ood.means", _nan_means, "ood.means"),
    ("ood.variances.shape", [3], "ood.variances"),
    ("ood.components", _wrong_components, "ood.components"),
    ("ood.reference_scores", [1.0, NAN], "ood.reference_scores[1]"),
    ("ood_fit_n", 0, "ood_fit_n"),
    ("ood_fit_n", -5, "ood_fit_n"),
    ("ood_fit_n", 2.5, "ood_fit_n"),
    ("ood_fit_n", "40", "ood_fit_n"),
    ("ood_fit_n", True, "ood_fit_n"),
    ("summary", "x", "summary"),
]


BAD_IDS = [f"{k}={getattr(v, '__name__', v)!s}"[:40] for k, v, _ in BAD]


@pytest.mark.parametrize(("key", "value", "named"), BAD, ids=BAD_IDS)
def test_every_bad_value_is_one_line_naming_the_file_and_key(tmp_path, key, value, named):
    data, ckpt = _record(tmp_path)
    bad = _set(data, key, value(data) if callable(value) else value)
    path = decision_path(ckpt)
    path.write_text(json.dumps(bad))  # NaN and Infinity as JSON's non-standard literals
    with pytest.raises(CheckpointError) as err:
        read_decision(path, ckpt, BINARY)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and named in message, message
    if key != "format":
        assert "; accepted: " in message, message


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("conformal_scores", [0.1, 0.2], "conformal_scores"),  # one list for a multi-label record
        ("conformal_scores", {"NORMAL": [0.1]}, "conformal_scores.PNEUMONIA"),  # a finding without scores
        ("conformal_scores", {"NORMAL": [0.1], "PNEUMONIA": [NAN]}, "conformal_scores.PNEUMONIA[0]"),
    ],
)
def test_multilabel_conformal_scores_per_finding(tmp_path, key, value, named):
    data, ckpt = _record(tmp_path, multilabel=True)
    with pytest.raises(BadValue, match=f"^{re.escape(named)} is"):
        DecisionRecord.from_dict(_set(data, key, value))


def test_a_complete_record_and_absent_optional_keys_read(tmp_path):
    data, ckpt = _record(tmp_path)
    back = DecisionRecord.from_dict(data)
    assert back.temperature == 1.3 and back.thresholds == {"PNEUMONIA": 0.4} and back.alpha == 0.1
    assert back.ood_fit_n == 40 and DecisionRecord.from_dict({**data, "ood_fit_n": None}).ood_fit_n is None
    older = {k: v for k, v in data.items() if k != "ood_fit_n"}  # written before the sample size was recorded
    assert DecisionRecord.from_dict(older).ood_fit_n is None
    bare = {k: data[k] for k in ("format", "labels", "multilabel", "checkpoint_sha256")}
    assert DecisionRecord.from_dict(bare) == DecisionRecord(BINARY, False, data["checkpoint_sha256"])
    unset = DecisionRecord.from_dict({**data, "temperature": None, "alpha": None, "ood": None, "thresholds": None})
    assert unset.temperature is None and unset.alpha is None and unset.ood is None and unset.thresholds == {}
    gate = DecisionRecord.from_dict(_set(data, "ood.threshold", None)).ood  # not yet calibrated: flags nothing
    assert gate.threshold == INF


def test_an_ensemble_gate_names_the_member_gate(tmp_path):
    data, _ = _record(tmp_path)
    gates = AnyMemberGate((OodGate.from_dict(data["ood"]), None)).to_dict()
    DecisionRecord.from_dict({**data, "ood": gates})
    gates["gates"][0]["threshold"] = NAN
    with pytest.raises(BadValue, match=r"^ood\.gates\[0\]\.threshold is nan; accepted: a number > 0, or null"):
        DecisionRecord.from_dict({**data, "ood": gates})


def test_an_image_gate_names_its_part(tmp_path):
    data, _ = _record(tmp_path)
    rng = np.random.default_rng(1)
    gate = ImageGate.fit(rng.normal(size=(40, 6 + THUMB**2)), rng.integers(0, 2, 40))
    gate = gate.calibrate(rng.normal(size=(20, 6 + THUMB**2))).to_dict()
    DecisionRecord.from_dict({**data, "ood": gate})
    bad = copy.deepcopy(gate)
    bad["features"]["noise"] = -1.0
    with pytest.raises(BadValue, match=r"^ood\.features\.noise is -1\.0; accepted: a number > 0$"):
        DecisionRecord.from_dict({**data, "ood": bad})
    bad = copy.deepcopy(gate)
    bad["image"] = gate["features"]  # a part of another width: every prediction would fail
    with pytest.raises(BadValue, match=r"^ood\.image\.means is of shape \(2, 6\); accepted: 256 columns"):
        DecisionRecord.from_dict({**data, "ood": bad})


def test_thresholds_files_share_the_check():
    assert parse_thresholds({"A": 0.3, "B": None}) == {"A": 0.3}
    with pytest.raises(BadValue, match=r"^thresholds\.A is nan; accepted: a number in \[0, 1\], or null"):
        parse_thresholds({"A": NAN})


def test_run_safely_exits_2_with_one_line(tmp_path, caplog):
    data, ckpt = _record(tmp_path)
    path = decision_path(ckpt)
    path.write_text(json.dumps(_set(data, "temperature", -1)))
    with caplog.at_level(logging.ERROR, logger="lungnet"), pytest.raises(SystemExit) as exit_:
        run_safely(read_decision, path, ckpt, BINARY)
    assert exit_.value.code == 2
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert line == (
        f"CheckpointError: decision file {path} cannot be read: temperature is -1; accepted: a number in (0, 100], "
        "or null"
    )


def test_predict_refuses_a_negative_temperature_with_the_hash_intact(tmp_path, monkeypatch, capfd):
    ckpt = make_checkpoint(tmp_path / "m" / "best.ckpt")
    record = new_record(LABELS, False, ckpt)
    record.temperature = 1.0
    data = record.to_dict()
    data["temperature"] = -1  # the hash still matches: only the value is wrong
    decision_path(ckpt).write_text(json.dumps(data))
    src = sorted((shared("darkcovidnet") / "Pneumonia").glob("*.jpg"))[0]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.jpg").write_bytes(src.read_bytes())
    out = tmp_path / "outputs"
    with pytest.raises(SystemExit) as exit_:
        run_cli(predict_cmd.main, [f"ckpt={ckpt}", f"input={tmp_path / 'in'}", f"paths.log_dir={out}"], monkeypatch)
    assert exit_.value.code == 2
    captured = capfd.readouterr()
    (line,) = [x for x in (captured.out + captured.err).splitlines() if "ERROR" in x]
    assert "best.decision.json" in line and "temperature is -1; accepted: a number in (0, 100]" in line
    assert "Traceback" not in captured.err
