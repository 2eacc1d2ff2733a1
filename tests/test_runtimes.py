"""Exported models under each runtime: ONNX Runtime and OpenVINO agree with PyTorch on real X-rays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lungnet.checkpoint import CheckpointError
from lungnet.export import export
from lungnet.inference import Predictor
from lungnet.runtimes import OnnxRunner, OpenVinoRunner, TorchScriptRunner, open_export, sidecar_path
from tests.test_export import real_batch
from tests.test_inference import make_checkpoint


def need_openvino() -> None:
    pytest.importorskip("openvino", reason="openvino not installed (.ci/extra installs it)")


@pytest.mark.parametrize(("arch", "size"), [("simple_cnn", 64), ("resnet18", 64), ("densenet121", 64)])
def test_openvino_and_onnxruntime_match_pytorch_on_real_images(tmp_path, arch, size):
    need_openvino()
    ckpt = make_checkpoint(tmp_path / "best.ckpt", name=arch, size=size)
    torch_pred = Predictor(ckpt)
    batch = real_batch(torch_pred)
    with torch.inference_mode():
        reference = torch_pred.torch_model(batch).numpy()
    onnx_file = export(ckpt, "onnx")
    for runtime, cls in (("onnxruntime", OnnxRunner), ("openvino", OpenVinoRunner)):
        predictor = Predictor(onnx_file, runtime=runtime, threads=2)
        assert isinstance(predictor.backend, cls) and predictor.backend.runtime == runtime
        assert predictor.prep == torch_pred.prep
        assert np.abs(predictor.backend.logits(batch) - reference).max() < 1e-4


def test_openvino_reads_the_embedded_record_without_the_sidecar(tmp_path):
    need_openvino()
    ckpt = make_checkpoint(tmp_path / "best.ckpt", size=32, thresholds=[0.2, 0.5, 0.3])
    onnx_file = export(ckpt, "onnx")
    expected = Predictor(onnx_file).prep
    sidecar_path(onnx_file).unlink()
    assert Predictor(onnx_file, runtime="openvino").prep == expected


def test_runtime_errors_are_clear(tmp_path):
    ckpt = make_checkpoint(tmp_path / "best.ckpt", size=32)
    onnx_file = export(ckpt, "onnx")
    with pytest.raises(CheckpointError, match="Unknown runtime 'tensorrt'.*onnxruntime or openvino"):
        open_export(onnx_file, runtime="tensorrt")
    assert isinstance(open_export(export(ckpt, "torchscript"), runtime="openvino"), TorchScriptRunner)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="Unknown runtime 'openvnio'"):  # checked for checkpoints too
        Predictor(ckpt, runtime="openvnio")
    with pytest.raises(CheckpointError, match="broken.onnx"):
        open_export(broken, runtime="onnxruntime")
    need_openvino()
    with pytest.raises(CheckpointError, match="broken.onnx"):
        open_export(broken, runtime="openvino")


def test_predict_script_runs_on_openvino(tmp_path):
    need_openvino()
    import pandas as pd

    from lungnet.inference import run_batch
    from tests.conftest import compose_cfg, shared

    ckpt = make_checkpoint(tmp_path / "best.ckpt", size=32, thresholds=[0.2, 0.5, 0.3])
    onnx_file = export(ckpt, "onnx")
    image = shared("dicom") / "RG1_UNCR.dcm"
    expected = Predictor(ckpt).predict([image])[0]
    cfg = compose_cfg("predict", [f"ckpt={onnx_file}", f"input={image}", "runtime=openvino"])
    row = pd.read_csv(run_batch(cfg, tmp_path / "out")).iloc[0]
    assert row["decision"] == expected["decision"]
    assert row["p_Pneumonia"] == pytest.approx(expected["p_Pneumonia"], abs=1e-5)
