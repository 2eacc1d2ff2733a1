"""ONNX / TorchScript export: parity with PyTorch on real X-rays, the recorded preprocessing, predict on an export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lungnet.artifacts.checkpoint import CheckpointError, load_model
from lungnet.commands.export import main as export_command
from lungnet.schema import ExportConfig
from lungnet.serve.export import calibration_sets, sidecar_path
from lungnet.serve.export import export as export_checkpoint
from lungnet.serve.inference import Predictor
from lungnet.serve.predict_batch import run_batch
from tests.conftest import CONF, run_cli, shared
from tests.serve.test_inference import LABELS, make_checkpoint, xray

EXPORT_DEFAULTS = OmegaConf.to_container(OmegaConf.structured(ExportConfig), enum_to_str=True)  # lungnet-export's
OPTIONS = ("opset", "verify", "int8", "calib", "calib_n", "min_agreement", "int8_weights")


def export(ckpt, fmt: str = EXPORT_DEFAULTS["format"], out=None, **changes) -> Path:
    """`lungnet.serve.export.export` with the default options (`lungnet.schema.ExportConfig`), and ``changes``."""
    return export_checkpoint(ckpt, fmt, out, **{**{k: EXPORT_DEFAULTS[k] for k in OPTIONS}, **changes})


def real_batch(predictor: Predictor, n: int = 3) -> torch.Tensor:
    root = shared("darkcovidnet")
    files = [sorted((root / cls).glob("*.jpg"))[0] for cls in ("Covid-19", "No_findings", "Pneumonia")][:n]
    return torch.stack([predictor.load(f)[1] for f in files])


@pytest.mark.parametrize(
    ("arch", "size", "resize"),
    [("simple_cnn", 64, "squash"), ("resnet18", 64, "pad"), ("mobilenetv2", 64, "squash")],
)
def test_onnx_and_torchscript_match_pytorch_on_real_images(tmp_path, arch, size, resize):
    ckpt = make_checkpoint(tmp_path / "best.ckpt", name=arch, size=size, resize=resize)
    torch_pred = Predictor(ckpt)
    batch = real_batch(torch_pred)
    with torch.inference_mode():
        reference = torch_pred.torch_model(batch).numpy()
    for fmt in ("onnx", "torchscript"):
        # verified here instead, on real images
        out = export(ckpt, fmt, tmp_path / ("model.onnx" if fmt == "onnx" else "model.pt"), verify=False)
        exported = Predictor(out, trust_export=fmt == "torchscript")  # TorchScript is code: an explicit opt-in
        assert exported.kind == fmt and exported.torch_model is None
        assert exported.prep == torch_pred.prep  # labels, size, mean/std, in_chans, resize
        np.testing.assert_allclose(exported.backend.logits(batch), reference, atol=1e-4, rtol=0)
        assert np.abs(exported.backend.logits(batch) - reference).max() < 1e-4


def test_sidecar_and_onnx_metadata_record_the_preprocessing(tmp_path):
    ckpt = make_checkpoint(tmp_path / "best.ckpt", size=48, resize="pad")
    out = export(ckpt, "onnx")
    assert out == tmp_path / "best.onnx"  # default: beside the checkpoint
    loaded = load_model(ckpt)
    side = json.loads(sidecar_path(out).read_text())
    expected = {
        "labels": LABELS,
        "input_size": 48,
        "in_chans": 1,
        "mean": list(loaded.spec.mean),
        "std": list(loaded.spec.std),
        "resize": "pad",
        "multilabel": False,
        "format": "onnx",
    }
    assert {k: side[k] for k in expected} == expected
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["lungnet"]) == side
    assert json.loads(meta["labels"]) == LABELS and meta["resize"] == "pad" and json.loads(meta["input_size"]) == 48
    sidecar_path(out).unlink()  # the embedded copy is enough on its own
    assert Predictor(out).prep == Predictor(ckpt).prep


def test_predict_script_runs_on_onnx_without_the_checkpoint(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ck" / "best.ckpt", size=32)
    onnx_file = export(ckpt, "onnx", tmp_path / "deploy" / "model.onnx")
    expected = Predictor(ckpt).predict([shared("dicom") / "RG1_UNCR.dcm"])[0]
    ckpt.unlink()
    overrides = [f"ckpt={onnx_file}", f"input={shared('dicom') / 'RG1_UNCR.dcm'}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="predict", overrides=overrides)
    csv = run_batch(cfg, tmp_path / "out")  # what predict.py runs, in-process
    row = pd.read_csv(csv).iloc[0]
    for lab in LABELS:
        assert row[f"p_{lab}"] == pytest.approx(expected[f"p_{lab}"], abs=1e-5)
    assert row["predicted"] == expected["predicted"]


def test_heatmaps_need_the_checkpoint_and_bad_format_is_refused(tmp_path, monkeypatch):
    ckpt = make_checkpoint(tmp_path / "best.ckpt", size=32)
    exported = Predictor(export(ckpt, "torchscript"), trust_export=True)
    with pytest.raises(CheckpointError, match="Heatmaps need the PyTorch checkpoint"):
        exported.heatmaps(torch.zeros(1, 1, 32, 32))
    with pytest.raises(CheckpointError, match="Unknown export format 'tflite'"):
        export(ckpt, "tflite")
    with pytest.raises(SystemExit) as exc:
        run_cli(export_command, [f"ckpt={tmp_path / 'missing.ckpt'}"], monkeypatch)
    assert exc.value.code == 2


def test_int8_export_is_calibrated_on_real_images_and_checked(tmp_path):
    ckpt = make_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt", name="resnet18", size=64)
    fp32 = export(ckpt, "onnx")
    calib = shared("darkcovidnet")
    q = export(ckpt, "onnx", int8=True, calib=calib, calib_n=12)
    assert q.name == "best.int8.onnx" and q.stat().st_size < 0.5 * fp32.stat().st_size  # int8 weights
    record = json.loads(sidecar_path(q).read_text())
    quant = record["quantization"]
    assert record["precision"] == "int8" and quant["weights"] == "reduced"
    assert quant["calibration_images"] == 12 and quant["check_images"] == 12  # checked on 12 other images
    assert quant["agreement_with_pytorch"] >= 0.9
    node_types = {n.op_type for n in onnx.load(str(q)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= node_types
    meta = {p.key: p.value for p in onnx.load(str(q)).metadata_props}
    assert json.loads(meta["lungnet"])["labels"] == LABELS
    assert json.loads(meta["lungnet"])["quantization"] == quant  # the file alone says how it was made
    torch_pred, int8_pred = Predictor(ckpt), Predictor(q)
    batch = real_batch(torch_pred)
    with torch.inference_mode():
        ref = torch.softmax(torch_pred.torch_model(batch), 1).numpy()
    got = int8_pred.probabilities(batch)
    assert 0 < np.abs(got - ref).max() < 0.1  # quantised (not bit-equal), yet close


def test_int8_export_refusals_leave_nothing_behind(tmp_path):
    ckpt = make_checkpoint(tmp_path / "best.ckpt", size=32)
    with pytest.raises(CheckpointError, match="needs calibration images"):
        export(ckpt, "onnx", int8=True)
    with pytest.raises(CheckpointError, match="needs format=onnx"):
        export(ckpt, "torchscript", int8=True, calib=shared("darkcovidnet"))
    with pytest.raises(CheckpointError, match="Calibration images"):
        export(ckpt, "onnx", int8=True, calib=tmp_path / "nowhere")
    good = export(ckpt, "onnx", tmp_path / "model.onnx")
    before = good.read_bytes()
    with pytest.raises(CheckpointError, match="agrees with PyTorch on only"):  # impossible bar: refused
        export(ckpt, "onnx", good, int8=True, calib=shared("darkcovidnet"), calib_n=4, min_agreement=1.01)
    assert good.read_bytes() == before  # the earlier export is untouched
    assert json.loads(sidecar_path(good).read_text())["precision"] == "fp32"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "model.onnx", "model.onnx.json"]


def test_int8_calibration_from_a_split_csv(tmp_path):
    ckpt = make_checkpoint(tmp_path / "best.ckpt", size=32)
    files = sorted(shared("darkcovidnet").glob("*/*.jpg"))[:5]
    split = tmp_path / "train.csv"
    pd.DataFrame({"path": [str(f) for f in files], "label": "x"}).to_csv(split, index=False)
    q = export(ckpt, "onnx", tmp_path / "q.onnx", int8=True, calib=split, int8_weights="uint8")
    quant = json.loads(sidecar_path(q).read_text())["quantization"]
    assert (quant["calibration_images"], quant["check_images"], quant["weights"]) == (3, 2, "uint8")
    weights = {i.data_type for i in onnx.load(str(q)).graph.initializer if i.name.endswith("_quantized")}
    assert onnx.TensorProto.UINT8 in weights and onnx.TensorProto.INT8 not in weights  # (biases: int32)
    with pytest.raises(CheckpointError, match="int8_weights='int4'"):
        export(ckpt, "onnx", tmp_path / "q4.onnx", int8=True, calib=split, int8_weights="int4")


def test_calibration_and_check_images_are_disjoint_and_span_the_source(tmp_path):
    prep = Predictor(make_checkpoint(tmp_path / "best.ckpt", size=32)).prep
    sets = calibration_sets(shared("darkcovidnet"), prep, 8)
    assert len(sets["calib_files"]) == len(sets["check_files"]) == 8
    assert set(sets["calib_files"]).isdisjoint(sets["check_files"])
    for files in (sets["calib_files"], sets["check_files"]):  # evenly spaced: every class folder appears
        assert {Path(f).parent.name for f in files} == set(LABELS)
    assert sets["calib"].shape == (8, 1, 32, 32)
    with pytest.raises(CheckpointError, match="calib_n=0"):
        calibration_sets(shared("darkcovidnet"), prep, 0)


def test_export_refuses_a_file_name_that_does_not_fit_the_format(tmp_path):
    ckpt = make_checkpoint(tmp_path / "best.ckpt", size=32)
    with pytest.raises(CheckpointError, match="does not fit format=onnx"):
        export(ckpt, "onnx", tmp_path / "model.bin")
    with pytest.raises(CheckpointError, match="does not fit format=torchscript"):
        export(ckpt, "torchscript", tmp_path / "model.onnx")
    with pytest.raises(CheckpointError, match="TorchScript files in .pt or .ts"):  # never a .ckpt-like name
        export(ckpt, "torchscript", tmp_path / "model.ckpt")
    assert not list(tmp_path.glob("model.*"))


def test_export_carries_the_decision_file(tmp_path):
    """The checkpoint's <stem>.decision.json travels in the sidecar: same decisions and sets (no OOD gate)."""
    from lungnet.artifacts.decision import new_record
    from lungnet.artifacts.paths import decision_path

    ckpt = make_checkpoint(tmp_path / "best.ckpt", size=32)
    record = new_record(LABELS, False, ckpt)
    record.split, record.temperature, record.alpha = "val", 0.5, 0.2
    record.positive_class, record.thresholds = "Covid-19", {"Covid-19": 0.3}
    record.conformal_scores = np.linspace(0.3, 0.9, 40)
    record.write(decision_path(ckpt))
    out = export(ckpt, "onnx")
    side = json.loads(sidecar_path(out).read_text())
    assert side["decision"]["thresholds"] == {"Covid-19": 0.3} and side["decision"]["ood"] is None
    assert side["decision_file"] == str(decision_path(ckpt)) and len(side["source_sha256"]) == 64
    files = [xray(k=k) for k in range(4)]
    from_ckpt, from_onnx = Predictor(ckpt).predict(files), Predictor(out).predict(files)
    for a, b in zip(from_ckpt, from_onnx, strict=True):
        assert a["decision"] == b["decision"] and a["prediction_set"] == b["prediction_set"]
        assert a["p_Covid-19"] == pytest.approx(b["p_Covid-19"], abs=1e-4)
    assert Predictor(out).describe()["decision"]["split"] == "val"
    assert "prediction_set" not in Predictor(out, decision="none").predict(files)[0]
    alone = tmp_path / "alone" / out.name  # the model file without its sidecar: the embedded record decides
    alone.parent.mkdir()
    alone.write_bytes(out.read_bytes())
    predictor = Predictor(alone)
    assert predictor.describe()["decision"]["temperature"] == 0.5 and str(alone) in predictor.decision_file
    assert [r["decision"] for r in predictor.predict(files)] == [r["decision"] for r in from_onnx]
