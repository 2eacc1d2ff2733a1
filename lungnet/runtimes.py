"""Run exported models: ONNX under ONNX Runtime or OpenVINO, TorchScript under torch.

`open_export` is the one way in. Every runner exposes ``prep`` (the `Preprocessing` recorded at export,
read from the ``<file>.json`` sidecar or from the copy embedded in the file) and ``logits(batch)``.

The same ``.onnx`` file (fp32, or int8 written by ``python -m lungnet.export ... int8=true``) runs
under either runtime. OpenVINO reads int8 QDQ graphs as real int8 kernels and is the fastest CPU path
measured for densenet121 (docs/benchmarks.md); ONNX Runtime is the default because it is the smaller,
more common dependency.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import numpy as np
import torch

from lungnet.checkpoint import CheckpointError
from lungnet.inference import Preprocessing

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".json"
TORCHSCRIPT_META = "lungnet.json"  # extra file inside exported TorchScript archives
RUNTIMES = ("onnxruntime", "openvino")


def sidecar_path(model_path: str | os.PathLike) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    path = Path(model_path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def read_record(path: Path, embedded: str | None = None) -> dict:
    """The preprocessing record of an export: its sidecar, else the copy embedded in the file.

    Raises:
        CheckpointError: neither is present or readable.
    """
    side = sidecar_path(path)
    try:
        if side.is_file():
            return json.loads(side.read_text(encoding="utf-8"))
        if embedded:
            return json.loads(embedded)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"Cannot read the preprocessing record of {path}: {exc}") from exc
    raise CheckpointError(
        f"{path} carries no preprocessing record: expected {side.name} beside it (python -m lungnet.export writes it)"
    )


def _onnx_embedded_record(path: Path) -> str | None:
    """The ``lungnet`` metadata_props entry of an ONNX file (None when absent or onnx is missing)."""
    try:
        import onnx
    except ImportError:
        return None
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError and friends for bad files
        raise CheckpointError(f"{path} is not a loadable ONNX model: {exc}") from exc
    return {p.key: p.value for p in proto.metadata_props}.get("lungnet")


class OnnxRunner:
    """An exported ONNX model under ONNX Runtime (CPU), with its `Preprocessing`.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (None: ONNX Runtime's default).
    """

    kind = "onnx"
    runtime = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise CheckpointError("Running an .onnx model needs ONNX Runtime: pip install onnxruntime") from exc
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types for bad files
            raise CheckpointError(f"{path} is not a loadable ONNX model: {exc}") from exc
        self.input = self.session.get_inputs()[0].name
        embedded = self.session.get_modelmeta().custom_metadata_map.get("lungnet")
        self.prep = Preprocessing.from_dict(read_record(path, embedded))

    def logits(self, batch: torch.Tensor) -> np.ndarray:
        """Logits (N, K) for a preprocessed batch."""
        return self.session.run(None, {self.input: batch.detach().cpu().numpy().astype(np.float32)})[0]


class OpenVinoRunner:
    """An exported ONNX model under OpenVINO (CPU plugin, latency hint), with its `Preprocessing`.

    Args:
        path: the ``.onnx`` file.
        threads: inference threads (None: OpenVINO's default, all cores).
    """

    kind = "onnx"
    runtime = "openvino"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise CheckpointError("runtime=openvino needs OpenVINO: pip install openvino") from exc
        config: dict = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        except RuntimeError as exc:
            raise CheckpointError(f"{path} is not a model OpenVINO can load: {exc}") from exc
        self.request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request; the web app may call from several threads
        self.prep = Preprocessing.from_dict(read_record(path, _onnx_embedded_record(path)))

    def logits(self, batch: torch.Tensor) -> np.ndarray:
        """Logits (N, K) for a preprocessed batch."""
        data = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        with self._lock:
            return np.array(self.request.infer({0: data})[0], copy=True)


class TorchScriptRunner:
    """An exported TorchScript model, with its `Preprocessing`.

    Args:
        path: the TorchScript file.
        device: torch device.
    """

    kind = "torchscript"
    runtime = "torch"

    def __init__(self, path: Path, device: str = "cpu") -> None:
        extra = {TORCHSCRIPT_META: ""}
        self.device = torch.device(device)
        try:
            self.model = torch.jit.load(str(path), map_location=self.device, _extra_files=extra).eval()
        except RuntimeError as exc:
            raise CheckpointError(f"{path} is not a loadable TorchScript model: {exc}") from exc
        raw = extra[TORCHSCRIPT_META]
        self.prep = Preprocessing.from_dict(read_record(path, raw.decode() if isinstance(raw, bytes) else raw))

    @torch.inference_mode()
    def logits(self, batch: torch.Tensor) -> np.ndarray:
        """Logits (N, K) for a preprocessed batch."""
        return self.model(batch.to(self.device)).float().cpu().numpy()


def check_runtime(runtime: str) -> None:
    """Raises CheckpointError for a runtime name other than ``onnxruntime`` or ``openvino``."""
    if runtime not in RUNTIMES:
        raise CheckpointError(f"Unknown runtime '{runtime}': choose {' or '.join(RUNTIMES)} (used for .onnx models)")


def open_export(
    path: str | os.PathLike, device: str = "cpu", threads: int | None = None, runtime: str = "onnxruntime"
) -> OnnxRunner | OpenVinoRunner | TorchScriptRunner:
    """Opens an ``.onnx`` file with ``runtime`` (onnxruntime or openvino), anything else as TorchScript.

    Raises:
        CheckpointError: unknown runtime, missing runtime package, or an unloadable file.
    """
    path = Path(path)
    check_runtime(runtime)
    if path.suffix.lower() != ".onnx":
        return TorchScriptRunner(path, device)
    return OpenVinoRunner(path, threads) if runtime == "openvino" else OnnxRunner(path, threads)
