"""Run exported models: ONNX under ONNX Runtime or OpenVINO, TorchScript under torch.

`open_export` is the one way in. Every runner exposes ``prep`` (the `Preprocessing` recorded at export,
read from the ``<file>.json`` sidecar or from the copy embedded in the file) and ``logits(batch)``.

Precision is explicit (``precision=fp32|bf16``, default fp32) and recorded on every runner: OpenVINO's CPU
plugin would otherwise pick bf16 by itself on CPUs with AVX-512 BF16 or AMX, so the same file would give other
numbers on other machines. bf16 runs under OpenVINO (its inference precision hint) and for TorchScript (torch
autocast); ONNX Runtime runs what the file holds (fp32, or int8 kernels for an int8 export).

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

from lungnet.artifacts.checkpoint import TORCHSCRIPT_SUFFIXES
from lungnet.artifacts.paths import sidecar_path
from lungnet.data.preprocessing import Preprocessing
from lungnet.errors import CheckpointError
from lungnet.models.weights import first_non_finite

log = logging.getLogger(__name__)

TORCHSCRIPT_META = "lungnet.json"  # extra file inside exported TorchScript archives
RUNTIMES = ("onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16")
OPENVINO_PRECISION = {"fp32": "f32", "bf16": "bf16"}


def check_precision(precision: str) -> None:
    """Raises CheckpointError for a precision other than ``fp32`` or ``bf16``."""
    if precision not in PRECISIONS:
        raise CheckpointError(f"Unknown precision '{precision}': choose {' or '.join(PRECISIONS)}")


def warn_if_emulated_bf16(precision: str) -> None:
    """bf16 on a CPU without native bf16 runs, but emulated and slower: say so."""
    from lungnet.hardware import cpu_has_native_bf16

    if precision == "bf16" and not cpu_has_native_bf16():
        log.warning("precision=bf16 on a CPU without AVX-512 BF16 or AMX: emulated, likely slower than fp32")


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


def export_preprocessing(path: Path, record: dict) -> Preprocessing:
    """The checked `Preprocessing` of an export's record (`Preprocessing.check`); a refusal names ``path``."""
    try:
        return Preprocessing.from_dict(record)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def check_finite(path: Path, tensors: dict) -> None:
    """Refuses an export whose weights hold NaN or inf (`lungnet.models.weights.first_non_finite`), in one line."""
    bad = first_non_finite(tensors)
    if bad is not None:
        raise CheckpointError(f"Refusing to load {path}: tensor {bad} holds NaN or inf values (weights must be finite)")


def _tensors(graph):
    """Every tensor an ONNX graph holds: initializers, constants, sparse tensors' values and indices, and those of
    sub-graphs (If, Loop)."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            sparse = [*([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []), *attr.sparse_tensors]
            for tensor in sparse:
                yield from (tensor.values, tensor.indices)
            for sub in [*([attr.g] if attr.HasField("g") else []), *attr.graphs]:
                yield from _tensors(sub)


def read_onnx(path: Path):
    """Parses an ONNX file without reading external data, and refuses one that refers to external files.

    ONNX holds no Python code, but a tensor may name an external file to read its values from; lungnet's
    exports embed every tensor, so such a file is not one of them and could read any file the process can.

    Raises:
        CheckpointError: not a loadable ONNX file, or external data.
    """
    import onnx
    from onnx import numpy_helper

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError and friends for bad files
        raise CheckpointError(f"{path} is not a loadable ONNX model: {' '.join(str(exc).split())}") from exc
    external = [t.name for t in _tensors(proto.graph) if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise CheckpointError(
            f"Refusing to load {path}: its tensors {external[:3]} are read from external files, which lungnet's "
            "exports never do (re-export with python -m lungnet.export)"
        )
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)
    tensors = [t for t in _tensors(proto.graph) if t.data_type in floats]
    check_finite(path, {t.name or f"#{i}": numpy_helper.to_array(t) for i, t in enumerate(tensors)})
    return proto


def _onnx_embedded_record(proto) -> str | None:
    """The ``lungnet`` metadata_props entry of a parsed ONNX model (None when absent)."""
    return {p.key: p.value for p in proto.metadata_props}.get("lungnet")


class OnnxRunner:
    """An exported ONNX model under ONNX Runtime (CPU), with its `Preprocessing`.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (None: ONNX Runtime's default).
    """

    kind = "onnx"
    runtime = "onnxruntime"
    precision = "fp32"  # what the graph holds: fp32 maths (an int8 export runs its int8 kernels)

    def __init__(self, path: Path, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise CheckpointError("Running an .onnx model needs ONNX Runtime: pip install onnxruntime") from exc
        read_onnx(path)
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
        self.record = read_record(path, embedded)
        self.prep = export_preprocessing(path, self.record)

    def logits(self, batch: torch.Tensor) -> np.ndarray:
        """Logits (N, K) for a preprocessed batch."""
        return self.session.run(None, {self.input: batch.detach().cpu().numpy().astype(np.float32)})[0]


class OpenVinoRunner:
    """An exported ONNX model under OpenVINO (CPU plugin, latency hint), with its `Preprocessing`.

    Args:
        path: the ``.onnx`` file.
        threads: inference threads (None: OpenVINO's default, all cores).
        precision: ``fp32`` (default) or ``bf16``: OpenVINO's inference precision hint, always set (its own
            default is bf16 on CPUs with AVX-512 BF16 or AMX). ``precision`` afterwards holds what the
            compiled model reports.
    """

    kind = "onnx"
    runtime = "openvino"

    def __init__(self, path: Path, threads: int | None = None, precision: str = "fp32") -> None:
        check_precision(precision)
        try:
            import openvino as ov
        except ImportError as exc:
            raise CheckpointError("runtime=openvino needs OpenVINO: pip install openvino") from exc
        proto = read_onnx(path)
        warn_if_emulated_bf16(precision)
        config: dict = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": OPENVINO_PRECISION[precision]}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        except RuntimeError as exc:
            raise CheckpointError(f"{path} is not a model OpenVINO can load: {exc}") from exc
        hint = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.precision = "bf16" if "bf16" in hint.lower() or "bfloat16" in hint.lower() else "fp32"
        if self.precision != precision:
            log.warning("OpenVINO runs %s although precision=%s was asked (%s)", self.precision, precision, hint)
        self.request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request; the web app may call from several threads
        self.record = read_record(path, _onnx_embedded_record(proto))
        self.prep = export_preprocessing(path, self.record)

    def logits(self, batch: torch.Tensor) -> np.ndarray:
        """Logits (N, K) for a preprocessed batch."""
        data = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        with self._lock:
            return np.array(self.request.infer({0: data})[0], copy=True)


def check_torchscript_allowed(path: Path, trust_export: bool) -> None:
    """TorchScript is code: it loads only from a ``.pt``/``.ts`` name and with ``trust_export=true``.

    Raises:
        CheckpointError: one line naming the file and the opt-in.
    """
    if path.suffix.lower() not in TORCHSCRIPT_SUFFIXES:
        raise CheckpointError(
            f"Refusing to run {path} as TorchScript: TorchScript holds code and loads only from a "
            f"{' or '.join(TORCHSCRIPT_SUFFIXES)} file with trust_export=true"
        )
    if not trust_export:
        raise CheckpointError(
            f"Refusing to load {path}: TorchScript holds code that runs when the model is loaded and called; "
            "pass trust_export=true only if you made the file or trust its source (or use the .ckpt or .onnx export)"
        )


class TorchScriptRunner:
    """An exported TorchScript model, with its `Preprocessing`.

    TorchScript archives hold code (their ``forward`` may call any TorchScript operator, e.g. write files), so
    they load only from a ``.pt``/``.ts`` file and with ``trust_export=True`` (`check_torchscript_allowed`).

    Args:
        path: the TorchScript file.
        device: torch device.
        precision: ``fp32`` or ``bf16`` (torch autocast).
        trust_export: the caller's explicit opt-in to run the file's code.

    Raises:
        CheckpointError: no opt-in, a name that is not ``.pt``/``.ts``, or an unloadable file.
    """

    kind = "torchscript"
    runtime = "torch"

    def __init__(self, path: Path, device: str = "cpu", precision: str = "fp32", trust_export: bool = False) -> None:
        check_torchscript_allowed(Path(path), trust_export)
        check_precision(precision)
        warn_if_emulated_bf16(precision)
        self.precision = precision
        extra = {TORCHSCRIPT_META: ""}
        self.device = torch.device(device)
        try:
            self.model = torch.jit.load(str(path), map_location=self.device, _extra_files=extra).eval()
        except RuntimeError as exc:
            raise CheckpointError(f"{path} is not a loadable TorchScript model: {exc}") from exc
        check_finite(path, self.model.state_dict())
        raw = extra[TORCHSCRIPT_META]
        self.record = read_record(path, raw.decode() if isinstance(raw, bytes) else raw)
        self.prep = export_preprocessing(path, self.record)

    @torch.inference_mode()
    def logits(self, batch: torch.Tensor) -> np.ndarray:
        """Logits (N, K) for a preprocessed batch."""
        with autocast(self.device, self.precision):
            return self.model(batch.to(self.device)).float().cpu().numpy()


def autocast(device: torch.device, precision: str):
    """A torch autocast context for ``bf16`` (a no-op context for ``fp32``)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def check_runtime(runtime: str) -> None:
    """Raises CheckpointError for a runtime name other than ``onnxruntime`` or ``openvino``."""
    if runtime not in RUNTIMES:
        raise CheckpointError(f"Unknown runtime '{runtime}': choose {' or '.join(RUNTIMES)} (used for .onnx models)")


def open_export(
    path: str | os.PathLike,
    device: str = "cpu",
    threads: int | None = None,
    runtime: str = "onnxruntime",
    precision: str = "fp32",
    trust_export: bool = False,
) -> OnnxRunner | OpenVinoRunner | TorchScriptRunner:
    """Opens an ``.onnx`` file with ``runtime`` (onnxruntime or openvino), anything else as TorchScript.

    Args:
        trust_export: allow TorchScript (code; only from a ``.pt``/``.ts`` file). ONNX needs no opt-in.

    Raises:
        CheckpointError: unknown runtime or precision, bf16 asked of ONNX Runtime, missing runtime package,
            TorchScript without ``trust_export``, or an unloadable file.
    """
    path = Path(path)
    check_runtime(runtime)
    check_precision(precision)
    if path.suffix.lower() != ".onnx":
        return TorchScriptRunner(path, device, precision, trust_export)
    if runtime == "openvino":
        return OpenVinoRunner(path, threads, precision)
    if precision != "fp32":
        raise CheckpointError(
            f"precision={precision} needs runtime=openvino for .onnx models (ONNX Runtime runs the file as it is)"
        )
    return OnnxRunner(path, threads)
