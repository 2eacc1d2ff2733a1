"""Export a checkpoint to ONNX or TorchScript, with its preprocessing recorded; and open such exports.

``python -m lungnet.export ckpt=<best.ckpt> format=onnx|torchscript [out=<file>] [opset=17]``

Writes the model file and a JSON sidecar ``<file>.json`` (labels, multilabel, input size, mean/std,
in_chans, resize, thresholds, model name). The same record is embedded in the file itself (ONNX
``metadata_props`` key ``lungnet`` plus one key per field; a ``lungnet.json`` extra file in the
TorchScript archive), so `lungnet.inference.Predictor` and ``predict.py ckpt=model.onnx`` can use an
export alone, with ONNX Runtime and no torch model. The export is checked against PyTorch on a
random batch before it is reported as written.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from lungnet.checkpoint import CheckpointError, load_model
from lungnet.inference import Preprocessing

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
SIDECAR_SUFFIX = ".json"
TORCHSCRIPT_META = "lungnet.json"  # extra file inside exported TorchScript archives
PARITY_TOL = 1e-4
DEFAULTS = {"ckpt": None, "format": "onnx", "out": None, "opset": 17, "verify": True}


def sidecar_path(model_path: str | os.PathLike) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    path = Path(model_path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _record(prep: Preprocessing, fmt: str, source: Path) -> dict:
    return {**prep.to_dict(), "format": fmt, "input_name": "image", "output_name": "logits", "source": str(source)}


def _example(prep: Preprocessing, batch: int = 2) -> torch.Tensor:
    return torch.randn(
        batch, prep.in_chans, prep.input_size, prep.input_size, generator=torch.Generator().manual_seed(0)
    )


def export_onnx(model: torch.nn.Module, prep: Preprocessing, out: Path, record: dict, opset: int = 17) -> Path:
    """Writes ``model`` as ONNX (dynamic batch axis) with ``record`` in its metadata_props."""
    import onnx

    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # the TorchScript-based exporter: no onnxscript dependency, same graph
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (_example(prep),),
            str(out),
            dynamo=False,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
        )
    proto = onnx.load(str(out))
    del proto.metadata_props[:]
    fields = {"lungnet": json.dumps(record)}
    fields.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in record.items()})
    for key, value in fields.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))
    return out


def export_torchscript(model: torch.nn.Module, prep: Preprocessing, out: Path, record: dict) -> Path:
    """Writes ``model`` traced and frozen as TorchScript, with ``record`` as an extra file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        traced = torch.jit.trace(model, _example(prep), check_trace=False)  # `export` verifies instead
        frozen = torch.jit.freeze(traced)
    torch.jit.save(frozen, str(out), _extra_files={TORCHSCRIPT_META: json.dumps(record)})
    return out


def export(
    ckpt: str | os.PathLike,
    fmt: str = "onnx",
    out: str | os.PathLike | None = None,
    opset: int = 17,
    verify: bool = True,
) -> Path:
    """Exports a lungnet checkpoint.

    Args:
        ckpt: the ``.ckpt`` file.
        fmt: ``onnx`` or ``torchscript``.
        out: output file (default: beside the checkpoint, ``best.onnx`` / ``best.pt``).
        opset: ONNX opset.
        verify: run the export on a random batch and compare with PyTorch.

    Returns:
        The model file (its sidecar is ``<file>.json``).

    Raises:
        CheckpointError: unknown format, unusable checkpoint, or an export that disagrees with PyTorch.
    """
    if fmt not in FORMATS:
        raise CheckpointError(f"Unknown export format '{fmt}': choose {' or '.join(FORMATS)}")
    loaded = load_model(ckpt)
    model = loaded.model.cpu().eval()
    prep = Preprocessing.from_loaded(loaded)
    out = Path(out) if out else loaded.path.with_suffix(FORMATS[fmt])
    record = _record(prep, fmt, loaded.path)
    if fmt == "onnx":
        export_onnx(model, prep, out, record, opset)
    else:
        export_torchscript(model, prep, out, record)
    sidecar_path(out).write_text(json.dumps(record, indent=2), encoding="utf-8")
    if verify:
        diff = parity(model, out, _example(prep, 3))
        if diff > PARITY_TOL:
            raise CheckpointError(f"Exported {out} disagrees with PyTorch: max |logit diff| {diff:.2e} > {PARITY_TOL}")
        log.info("Export matches PyTorch (max |logit diff| %.1e on a random batch)", diff)
    log.info("Wrote %s and %s", out, sidecar_path(out).name)
    return out


def parity(model: torch.nn.Module, exported: str | os.PathLike, batch: torch.Tensor) -> float:
    """Max absolute logit difference between ``model`` and an exported file on ``batch``."""
    with torch.inference_mode():
        ref = model.eval()(batch).numpy()
    runner = open_export(Path(exported))
    return float(np.abs(runner.logits(batch) - ref).max())


class OnnxRunner:
    """An exported ONNX model under ONNX Runtime (CPU), with its `Preprocessing`.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (None: ONNX Runtime's default).
    """

    kind = "onnx"

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


class TorchScriptRunner:
    """An exported TorchScript model, with its `Preprocessing`.

    Args:
        path: the TorchScript file.
        device: torch device.
    """

    kind = "torchscript"

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


def open_export(path: Path, device: str = "cpu", threads: int | None = None) -> OnnxRunner | TorchScriptRunner:
    """Opens an ``.onnx`` file with ONNX Runtime, anything else as TorchScript."""
    path = Path(path)
    return OnnxRunner(path, threads) if path.suffix.lower() == ".onnx" else TorchScriptRunner(path, device)


def main(argv: list[str] | None = None) -> Path:
    """Command line: ``key=value`` arguments as in the Hydra entry points (ckpt, format, out, opset, verify)."""
    from lungnet.cli import run_safely

    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    cli = OmegaConf.from_dotlist(list(sys.argv[1:] if argv is None else argv))
    unknown = set(cli) - set(DEFAULTS)
    if unknown or cli.get("ckpt") is None:
        log.error(
            "usage: python -m lungnet.export ckpt=<file.ckpt> format=onnx|torchscript [out=<file>] [opset=17]%s",
            f" (unknown keys: {', '.join(sorted(unknown))})" if unknown else "",
        )
        sys.exit(2)
    cfg = OmegaConf.merge(DEFAULTS, cli)
    return run_safely(export, cfg.ckpt, str(cfg.format), cfg.out, int(cfg.opset), bool(cfg.verify))


if __name__ == "__main__":
    main()
