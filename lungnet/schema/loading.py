"""How a command loads a model file: `LoadConfig`, the options lungnet-predict and lungnet-app share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lungnet.schema.fields import Device, Precision, Runtime, opt


@dataclass
class LoadConfig:
    """``ckpt`` and how it is loaded (`lungnet.serve.inference.Predictor`): predict.py's and the app's options."""

    ckpt: Any = opt(
        help="model.ckpt, model.onnx or model.pt; an ensemble: [a.ckpt,b.ckpt,...], a multirun dir or an ensemble.json"
    )
    device: Device = opt(Device.cpu, "cpu cuda auto (PyTorch checkpoints)")
    runtime: Runtime = opt(Runtime.onnxruntime, ".onnx models: onnxruntime or openvino")
    precision: Precision = opt(Precision.fp32, "fp32 or bf16 (checkpoints: autocast; .onnx: runtime=openvino only)")
    threads: int | None = opt(None, "ONNX Runtime / OpenVINO threads (null: the runtime's default)", ge=1)
    decision: str = opt(
        "auto",
        "auto: <ckpt stem>.decision.json when present (training and evaluate.py split=val write it; an ensemble: "
        "ensemble.decision.json beside its ensemble.json, else its members' own files) | none | <file>",
    )
    trust_export: bool = opt(
        False, "TorchScript (.pt/.ts) holds code: load (or serve) it only for a file you made or trust"
    )
