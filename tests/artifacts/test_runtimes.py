"""Exported models under each runtime: ONNX Runtime and OpenVINO agree with PyTorch on real X-rays."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lungnet.artifacts.checkpoint import CheckpointError
from lungnet.artifacts.runtimes import OnnxRunner, OpenVinoRunner, TorchScriptRunner, open_export, sidecar_path
from lungnet.hardware import cpu_has_native_bf16
from lungnet.serve.inference import Predictor
from tests.conftest import ROOT, offline_env, run_script, shared
from tests.serve.test_export import export, real_batch
from tests.serve.test_inference import make_checkpoint


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
    ckpt = make_checkpoint(tmp_path / "best.ckpt", size=32)
    onnx_file = export(ckpt, "onnx")
    expected = Predictor(onnx_file).prep
    sidecar_path(onnx_file).unlink()
    assert Predictor(onnx_file, runtime="openvino").prep == expected


def test_runtime_errors_are_clear(tmp_path):
    ckpt = make_checkpoint(tmp_path / "best.ckpt", size=32)
    onnx_file = export(ckpt, "onnx")
    with pytest.raises(CheckpointError, match="Unknown runtime 'tensorrt'.*onnxruntime or openvino"):
        open_export(onnx_file, runtime="tensorrt")
    ts = export(ckpt, "torchscript")
    assert isinstance(open_export(ts, runtime="openvino", trust_export=True), TorchScriptRunner)
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

    from lungnet.serve.predict_batch import run_batch
    from tests.conftest import compose_cfg

    ckpt = make_checkpoint(tmp_path / "best.ckpt", size=32)
    onnx_file = export(ckpt, "onnx")
    image = shared("dicom") / "RG1_UNCR.dcm"
    expected = Predictor(ckpt).predict([image])[0]
    cfg = compose_cfg("predict", [f"ckpt={onnx_file}", f"input={image}", "runtime=openvino"])
    row = pd.read_csv(run_batch(cfg, tmp_path / "out")).iloc[0]
    assert row["predicted"] == expected["predicted"]  # no decision file: the arg-max
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


class Evil(torch.nn.Module):
    """A TorchScript model whose code writes files: ``<marker>.load`` when loaded, ``<marker>`` when called."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.marker = state[0]
        written = torch.from_file(self.marker + ".load", shared=True, size=1, dtype=torch.uint8).fill_(76)
        self.training = state[1] and bool(written[0] == 76)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        written = torch.from_file(self.marker, shared=True, size=4, dtype=torch.uint8).fill_(65)
        return x.mean(dim=[2, 3]).repeat(1, 3) + written[0].float() * 0.0


def evil_torchscript(path: Path, marker: Path) -> Path:
    """A TorchScript archive with a valid lungnet record, whose code writes ``marker`` files (see `Evil`)."""
    prep = Predictor(make_checkpoint(path.parent / "prep.ckpt", size=32)).prep
    torch.jit.save(
        torch.jit.script(Evil(str(marker))), str(path), _extra_files={"lungnet.json": json.dumps(prep.to_dict())}
    )
    return path


def _predict_script(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return run_script("predict.py", args, cwd, timeout=300)


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "[ERROR]" in line or "Error" in line]


def test_torchscript_runs_only_from_a_pt_file_with_trust_export(tmp_path):
    """A TorchScript archive is code: named .ckpt it never reaches torch.jit.load; .pt needs trust_export."""
    marker = tmp_path / "marker"
    image = shared("darkcovidnet") / "Pneumonia"
    image = sorted(image.glob("*.jpg"))[0]
    models = [evil_torchscript(tmp_path / name, marker) for name in ("evil.ckpt", "evil.pt")]
    procs = [  # both scripts at once: most of their time is starting Python
        subprocess.Popen(
            [sys.executable, str(ROOT / "predict.py"), f"ckpt={model}", f"input={image}", f"paths.log_dir={out}"],
            cwd=tmp_path,
            env=offline_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for model, out in zip(models, (tmp_path / "out", tmp_path / "out2"), strict=True)
    ]
    for model, proc in zip(models, procs, strict=True):
        with pytest.raises(CheckpointError, match="TorchScript") as exc:
            Predictor(model)
        assert "\n" not in str(exc.value) and "trust_export" in str(exc.value)
        output = "".join(proc.communicate(timeout=300))
        assert proc.returncode == 2, output[-3000:]
        assert "Traceback" not in output and len(_error_lines(output)) == 1 and "trust_export=true" in output
        assert not list(tmp_path.glob("marker*")), "the archive's code ran"
    with pytest.raises(CheckpointError, match="trust_export=true"):  # even with the opt-in, never from .ckpt
        Predictor(tmp_path / "evil.ckpt", trust_export=True)
    with pytest.raises(CheckpointError, match="loads only from a .pt or .ts file"):
        TorchScriptRunner(tmp_path / "evil.ckpt", trust_export=True)
    assert not list(tmp_path.glob("marker*"))
    trusted = Predictor(tmp_path / "evil.pt", trust_export=True)  # the opt-in is the only thing in the way
    assert trusted.kind == "torchscript" and (tmp_path / "marker.load").exists()
    assert trusted.predict([image])[0]["error"] == "" and marker.read_bytes() == b"AAAA"


def test_app_serves_torchscript_only_when_started_with_trust_export(tmp_path, monkeypatch):
    import uvicorn

    from lungnet.commands import app as app_cmd
    from tests.conftest import run_cli

    marker = tmp_path / "marker"
    model = evil_torchscript(tmp_path / "model.pt", marker)
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    with pytest.raises(SystemExit) as exc:
        run_cli(app_cmd.main, [f"ckpt={model}"], monkeypatch)
    assert exc.value.code == 2 and not seen and not list(tmp_path.glob("marker*"))
    run_cli(app_cmd.main, [f"ckpt={model}", "trust_export=true"], monkeypatch)
    assert "app" in seen and (tmp_path / "marker.load").exists()


def test_onnx_with_external_data_is_refused(tmp_path):
    """ONNX runs no Python code and needs no opt-in, but a tensor read from an external file is refused."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.zeros(4, np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "secret.bin"), ("offset", "0"), ("length", "16")):
        weight.external_data.add(key=key, value=value)
    (tmp_path / "secret.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    io_info = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", io_info[:1], io_info[1:], [weight])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(CheckpointError, match="external files"):
        open_export(path)
    need_openvino()
    with pytest.raises(CheckpointError, match="external files"):
        open_export(path, runtime="openvino")


def test_onnx_sparse_tensor_with_external_indices_is_refused(tmp_path):
    """Sparse tensors hold two tensors (values, indices), in initializers and Constant attributes: each is checked."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from lungnet.artifacts.runtimes import read_onnx

    def external(name: str, array: np.ndarray):
        tensor = numpy_helper.from_array(array, name)
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value="secret.bin")
        return tensor

    values = numpy_helper.from_array(np.ones(2, np.float32), "v")
    sparse = helper.make_sparse_tensor(values, external("i", np.array([0, 3], np.int64)), [4])
    io_info = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])]
    node = helper.make_node("Constant", [], ["y"], sparse_value=sparse)
    path = tmp_path / "sparse.onnx"
    onnx.save(helper.make_model(helper.make_graph([node], "g", [], io_info)), str(path))
    with pytest.raises(CheckpointError, match="external files"):
        read_onnx(path)


def test_exports_with_non_finite_weights_are_refused_in_one_line(tmp_path):
    """ONNX (either runtime reads it through read_onnx) and TorchScript: a NaN or inf weight is refused on load."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from lungnet.artifacts.runtimes import read_onnx

    weight = numpy_helper.from_array(np.array([0.0, np.nan, 1.0, 2.0], np.float32), "w")
    io_info = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", io_info[:1], io_info[1:], [weight])
    path = tmp_path / "nan.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(CheckpointError, match=r"nan.onnx: tensor w holds NaN or inf values") as exc:
        read_onnx(path)
    assert "\n" not in str(exc.value)
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    with torch.no_grad():
        scripted.weight[0, 0] = float("inf")
    scripted.save(str(tmp_path / "inf.pt"))
    with pytest.raises(CheckpointError, match=r"inf.pt: tensor weight holds NaN or inf values"):
        TorchScriptRunner(tmp_path / "inf.pt", trust_export=True)


def test_an_export_record_asking_for_a_huge_image_is_refused(tmp_path):
    from lungnet.artifacts.runtimes import export_preprocessing
    from lungnet.data.preprocessing import Preprocessing

    good = Preprocessing(("a", "b"), False, 32, 1, (0.5,), (0.25,)).to_dict()
    assert export_preprocessing(tmp_path / "m.onnx", good).input_size == 32
    for key, value, says in [
        ("input_size", 60000, "input_size=60000 must be an integer in [8, 4096]"),
        ("downsample_to", 60000, "downsample_to=60000 must be an integer in [8, 4096]"),
        ("in_chans", 2, "in_chans=2 must be 1 or 3"),
        ("std", [0.0], "must be finite numbers, std > 0"),
        ("resize", "stretch", "resize='stretch' must be one of: squash, pad, crop"),
    ]:
        with pytest.raises(CheckpointError, match="m.onnx: Preprocessing record: ") as exc:
            export_preprocessing(tmp_path / "m.onnx", {**good, key: value})
        assert says in str(exc.value)
