"""Exported models under each runtime: ONNX Runtime and OpenVINO agree with PyTorch on real X-rays."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lungnet.checkpoint import CheckpointError
from lungnet.export import export
from lungnet.hardware import cpu_has_native_bf16
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
        predictor = Predictor(onnx_file, runtime=runtime, threads=2, precision="fp32")  # pinned, whatever the CPU
        assert isinstance(predictor.backend, cls) and predictor.backend.runtime == runtime
        assert predictor.precision == "fp32"
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
    record = json.loads((tmp_path / "out" / "prediction.json").read_text())
    assert (record["runtime"], record["precision"]) == ("openvino", "fp32")


def test_openvino_defaults_to_fp32_even_where_the_cpu_prefers_bf16(tmp_path):
    """OpenVINO's own CPU default is bf16 on AVX-512 BF16 / AMX machines; lungnet always sets the hint."""
    need_openvino()
    onnx_file = export(make_checkpoint(tmp_path / "best.ckpt", size=32), "onnx")
    runner = OpenVinoRunner(onnx_file)
    assert runner.precision == "fp32"
    assert "float32" in str(runner.compiled.get_property("INFERENCE_PRECISION_HINT")).lower()


def test_bf16_is_explicit_recorded_and_close_to_fp32(tmp_path):
    ckpt = make_checkpoint(tmp_path / "best.ckpt", name="resnet18", size=64)
    fp32 = Predictor(ckpt)
    batch = real_batch(fp32)
    reference = fp32.backend.logits(batch)
    bf16 = Predictor(ckpt, precision="bf16")  # torch autocast: runs on any CPU (emulated where not native)
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    got = bf16.backend.logits(batch)
    assert 0 < np.abs(got - reference).max() < 0.05  # bf16 differs, but only by rounding
    onnx_file = export(ckpt, "onnx")
    with pytest.raises(CheckpointError, match="precision=bf16 needs runtime=openvino"):
        Predictor(onnx_file, precision="bf16")
    with pytest.raises(CheckpointError, match="Unknown precision 'fp16'"):
        Predictor(ckpt, precision="fp16")
    need_openvino()
    if not cpu_has_native_bf16():
        pytest.skip("OpenVINO bf16 needs a CPU with AVX-512 BF16 or AMX")
    ov_bf16 = Predictor(onnx_file, runtime="openvino", precision="bf16")
    assert ov_bf16.precision == "bf16" and ov_bf16.describe()["precision"] == "bf16"
    assert np.abs(ov_bf16.backend.logits(batch) - reference).max() < 0.05
