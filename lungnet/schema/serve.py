"""``app.yaml`` and ``export.yaml``: `AppConfig` (lungnet-app) and `ExportConfig` (lungnet-export)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lungnet.schema.evaluate import heatmap_alpha
from lungnet.schema.fields import ExportFormat, Int8Weights, LogLevel, opt  # noqa: F401 - re-exported
from lungnet.schema.loading import LoadConfig

MAX_PORT = 65535


@dataclass
class AppConfig(LoadConfig):
    """``lungnet-app``: a local web page and HTTP API around a model (`lungnet.serve.app.serve`)."""

    host: str = opt("127.0.0.1", "another address exposes the app to the network: there is no authentication")
    port: int = opt(8000, "the TCP port", ge=1, le=MAX_PORT)
    max_upload_mb: float = opt(20.0, "the largest upload (MB); larger ones are answered 413", gt=0)
    max_queue: int = opt(
        8, "requests admitted at once (one classified, the rest waiting in memory); more get 503", ge=1
    )
    alpha: float = heatmap_alpha()
    overlay_max_side: int = opt(1024, "overlays are downscaled to this side (px) for transfer", ge=1)
    log_level: LogLevel = opt(LogLevel.info, "uvicorn's log level")
    explain: dict[str, Any] | None = opt(None, help="heatmaps (conf/explain/; ~explain: off)")


@dataclass
class ExportConfig:
    """``lungnet-export``: a checkpoint as ONNX (fp32 or int8) or TorchScript (`lungnet.serve.export.export`)."""

    ckpt: Any = opt(help="the checkpoint (.ckpt) to export (one model: export an ensemble's members one by one)")
    format: ExportFormat = opt(ExportFormat.onnx, "the file format")
    out: str | None = opt(None, "the output file; null: beside the checkpoint (best.onnx, best.int8.onnx, best.pt)")
    opset: int = opt(17, "the ONNX opset", ge=7)
    verify: bool = opt(
        True, "compare with PyTorch (fp32: a random batch, max |logit diff| < 1e-4; int8: held-out images)"
    )
    int8: bool = opt(False, "static int8 quantisation (ONNX Runtime QDQ), calibrated on calib")
    calib: str | None = opt(
        None, "int8: a folder, glob or split CSV (e.g. <run>/splits/train.csv) of X-rays like the inputs"
    )
    calib_n: int = opt(64, "int8: calibration images, and as many other images for the check", ge=1)
    int8_weights: Int8Weights = opt(
        Int8Weights.reduced,
        "int8: the weight encoding: reduced (7 bits, for AVX2 CPUs without VNNI), full (VNNI/AMX CPUs), uint8 "
        "(the most accurate, slower)",
    )
    min_agreement: float = opt(
        0.9, "int8: refuse an export agreeing with PyTorch on fewer held-out images than this share", ge=0, le=1
    )
