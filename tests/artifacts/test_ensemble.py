"""lungnet.artifacts.ensemble: members' calibrated probabilities averaged, refusals, multirun directories, manifests,
predict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lungnet.artifacts.checkpoint import CheckpointError
from lungnet.artifacts.decision import new_record
from lungnet.artifacts.ensemble import Ensemble, Member, model_files, open_ensemble
from lungnet.artifacts.paths import decision_path
from lungnet.commands import predict as predict_cmd
from lungnet.data.preprocessing import logits_to_probs
from lungnet.errors import ConfigError
from lungnet.serve.inference import Predictor
from tests.conftest import run_cli, shared
from tests.serve.test_inference import LABELS, make_checkpoint


def _fold(root: Path, name: str, fold: int, seed: int, select: str | None = None, finished: bool = True) -> Path:
    """A run directory of a k-fold multirun: checkpoints/best.ckpt (and last.ckpt), data.cv_fold recorded, and
    metrics.json when ``finished`` (training writes it last)."""
    run = root / name
    best = make_checkpoint(run / "checkpoints" / "best.ckpt", seed=seed)
    ckpt = torch.load(best, weights_only=True)
    ckpt["hyper_parameters"]["data"].update(cv_folds=3, cv_fold=fold)
    torch.save(ckpt, best)
    if select:
        shutil.copy(best, run / "checkpoints" / "last.ckpt")
    if finished:
        (run / "metrics.json").write_text(json.dumps({"selected": select or "best"}))
    return best


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    """Two different random models of the same labels and data (in separate folders: decision files go beside)."""
    root = tmp_path_factory.mktemp("pair")
    return make_checkpoint(root / "a" / "a.ckpt", seed=0), make_checkpoint(root / "b" / "b.ckpt", seed=1, size=40)


def _images(n: int = 3) -> list[Path]:
    return sorted((shared("darkcovidnet") / "Pneumonia").glob("*.jpg"))[:n]


def _probs(predictor: Predictor, files) -> np.ndarray:
    rows = predictor.predict(files)
    return np.array([[row[f"p_{lab}"] for lab in LABELS] for row in rows])


def test_combine_is_the_mean_of_temperature_scaled_probabilities(pair):
    members = [Member(f"m{i}", open_ensemble([p]).members[0].loaded, "x") for i, p in enumerate(pair)]
    members[0].temperature = 2.0
    z0, z1 = np.array([[2.0, 0.0, -2.0]]), np.array([[0.0, 3.0, 0.0]])
    got = Ensemble(members).combine([z0, z1])
    e0, e1 = np.exp(z0 / 2.0), np.exp(z1)
    expected = (e0 / e0.sum() + e1 / e1.sum()) / 2
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert got.sum() == pytest.approx(1.0)


def test_predictor_averages_its_members(pair):
    files = _images()
    pa, pb = (_probs(Predictor(p, decision="none"), files) for p in pair)
    both = Predictor([str(p) for p in pair], decision="none")
    assert both.kind == "ensemble" and both.members == ["a", "b"]
    np.testing.assert_allclose(_probs(both, files), (pa + pb) / 2, atol=1e-5)
    assert not np.allclose(pa, pb, atol=1e-3)  # the members really differ, so the mean is not one of them


def test_member_temperature_from_its_decision_file(pair, tmp_path):
    a, b = (shutil.copy(p, tmp_path / p.name) for p in pair)
    record = new_record(LABELS, False, a)
    record.temperature = 3.0
    record.write(decision_path(a))
    files = _images(2)
    za = np.log(_probs(Predictor(a, decision="none"), files))  # log-softmax: logits up to a constant
    pb = _probs(Predictor(b, decision="none"), files)
    ens = Predictor([str(a), str(b)])
    assert [m.temperature for m in ens.backend.ensemble.members] == [3.0, None]
    np.testing.assert_allclose(_probs(ens, files), (logits_to_probs(za / 3.0, False) + pb) / 2, atol=1e-5)


def test_refuses_another_label_list_naming_the_member(pair, tmp_path):
    other = make_checkpoint(tmp_path / "other.ckpt", labels=["Normal", "Pneumonia", "Covid-19"])
    with pytest.raises(CheckpointError, match=r"member other .*other\.ckpt.* has labels \['Normal'"):
        open_ensemble([str(pair[0]), str(other)])


def test_refuses_other_training_data_and_exports(pair, tmp_path):
    other = make_checkpoint(tmp_path / "nih.ckpt")
    ckpt = torch.load(other, weights_only=True)
    ckpt["hyper_parameters"]["data"]["source"] = "nih"
    torch.save(ckpt, other)
    with pytest.raises(CheckpointError, match="nih.ckpt.*trained on data source 'nih'"):
        open_ensemble([str(pair[0]), str(other)])
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="model.onnx is an export"):
        open_ensemble([str(pair[0]), str(onnx)])
    with pytest.raises(ConfigError, match="decision=x.json"):
        open_ensemble([str(pair[0]), str(pair[1])], decision="x.json")


def test_cross_validation_dir_expands_to_its_folds(tmp_path):
    root = tmp_path / "multirun"
    folds = [_fold(root, str(k), k, seed=k, select="last" if k == 1 else None) for k in (0, 1, 10)]
    files, manifest = model_files(str(root))
    assert manifest is None
    assert files == [folds[0], root / "1" / "checkpoints" / "last.ckpt", folds[2]]  # natural order, select=last
    ens = open_ensemble(str(root))
    assert ens.is_cross_validation and ens.names == ["0", "1_last", "10"]
    assert model_files(str(root / "1")) == ([root / "1" / "checkpoints" / "last.ckpt"], None)  # one run: one model
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="without any training run"):
        model_files(str(tmp_path / "empty"))


def test_an_unfinished_run_in_a_multirun_does_not_join_the_ensemble(tmp_path, caplog):
    """A sweep trial killed after its first best.ckpt (no metrics.json) is skipped and named, not averaged in."""
    root = tmp_path / "multirun"
    done = [_fold(root, str(k), k, seed=k) for k in (0, 1)]
    _fold(root, "2", 2, seed=2, finished=False)
    assert model_files(str(root)) == (done, None)
    assert open_ensemble(str(root)).names == ["0", "1"]
    assert f"unfinished training run(s) under {root}" in caplog.text and str(root / "2") in caplog.text
    with pytest.raises(CheckpointError, match=r"without any finished training run \(1 unfinished"):
        model_files(str(root / "2"))


def test_manifest_pins_members_by_hash(pair, tmp_path):
    a, b = (shutil.copy(p, tmp_path / p.name) for p in pair)
    ens = open_ensemble([str(a), str(b)])
    manifest = ens.write_manifest(tmp_path / "ensemble.json")
    assert model_files(str(manifest)) == ([a, b], manifest)
    assert open_ensemble(str(manifest)).names == ["a", "b"]
    make_checkpoint(b, seed=5)  # retrained in place
    with pytest.raises(CheckpointError, match="b.ckpt changed since"):
        open_ensemble(str(manifest))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(CheckpointError, match="not a lungnet ensemble manifest"):
        open_ensemble(str(tmp_path / "bad.json"))


def test_predict_script_with_a_list(pair, tmp_path, monkeypatch):
    data = tmp_path / "in"
    data.mkdir()
    for k, src in enumerate(_images(2)):
        (data / f"p{k}.jpg").write_bytes(src.read_bytes())
    out = tmp_path / "outputs"
    run_cli(predict_cmd.main, [f"ckpt=[{pair[0]},{pair[1]}]", f"input={data}", f"paths.log_dir={out}"], monkeypatch)
    (run,) = list((out / "predict").glob("*/*"))
    table = pd.read_csv(run / "predictions.csv", keep_default_na=False)
    assert len(table) == 2 and set(table["members"]) == {"a|b"}
    probs = table[[f"p_{lab}" for lab in LABELS]].to_numpy()
    expected = _probs(Predictor(pair[0]), sorted(data.iterdir())) + _probs(Predictor(pair[1]), sorted(data.iterdir()))
    np.testing.assert_allclose(probs, expected / 2, atol=1e-4)


def test_predict_script_refuses_mixed_labels_with_one_line(pair, tmp_path, monkeypatch, capfd):
    other = make_checkpoint(tmp_path / "other.ckpt", labels=["A", "B", "C"])
    out = tmp_path / "outputs"
    with pytest.raises(SystemExit) as exit_:
        run_cli(
            predict_cmd.main, [f"ckpt=[{pair[0]},{other}]", f"input={tmp_path}", f"paths.log_dir={out}"], monkeypatch
        )
    assert exit_.value.code == 2
    captured = capfd.readouterr()
    (line,) = [x for x in (captured.out + captured.err).splitlines() if "ERROR" in x]
    assert "Ensemble member other" in line and "other.ckpt" in line and "Traceback" not in captured.err
    assert not list(out.glob("predict/*/*"))  # no run directory left behind


def test_manifest_without_its_decision_file_keeps_the_members_gates(pair, tmp_path):
    """A cross-validation ensemble gets a manifest but no ensemble.decision.json (nothing to fit on the test split):
    its members' OOD gates still guard it, as they do when the same members are passed as a list."""
    from lungnet.artifacts.ensemble import ensemble_decision
    from lungnet.scoring.ood import AnyMemberGate, OodGate

    rng = np.random.default_rng(0)
    a, b = (shutil.copy(p, tmp_path / p.name) for p in pair)
    for ckpt in (a, b):
        record = new_record(LABELS, False, ckpt)
        record.ood = OodGate.fit(rng.normal(size=(40, 6)), rng.integers(0, 3, 40)).calibrate(rng.normal(size=(20, 6)))
        record.write(decision_path(ckpt))
    manifest = open_ensemble([str(a), str(b)]).write_manifest(tmp_path / "ensemble.json")
    assert not decision_path(manifest).exists()
    for ens in (open_ensemble([str(a), str(b)]), open_ensemble(str(manifest))):
        assert all(isinstance(m.gate, OodGate) for m in ens.members)
        record, where = ensemble_decision(ens, "auto")
        assert isinstance(record.ood, AnyMemberGate) and "OOD gates" in where
    assert all(m.gate is None for m in open_ensemble(str(manifest), decision="none").members)
