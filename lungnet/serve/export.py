"""Export a checkpoint to ONNX (fp32 or int8) or TorchScript, with its preprocessing recorded.

``lungnet-export ckpt=<best.ckpt> format=onnx|torchscript [out=<file>] [opset=<n>]``
``lungnet-export ckpt=<best.ckpt> int8=true calib=<folder|glob|run/splits/train.csv> [calib_n=<n>]``
(or ``python -m lungnet.export ...``; options and defaults: ``conf/export.yaml``, ``--help``)

Writes the model file and a JSON sidecar ``<file>.json`` (labels, multilabel, input size, mean/std,
in_chans, resize, model name, precision, and the checkpoint's decision record from
``<ckpt stem>.decision.json`` when present: temperature, operating point, conformal scores; not the OOD gate).
The same record is embedded in the file itself (ONNX
``metadata_props`` key ``lungnet`` plus one key per field; a ``lungnet.json`` extra file in the
TorchScript archive), so `lungnet.serve.inference.Predictor` and ``predict.py ckpt=model.onnx`` can use an
export alone (`lungnet.artifacts.runtimes`: ONNX Runtime or OpenVINO, no torch model). An fp32 export is checked
against PyTorch on a random batch (max |logit diff| < 1e-4) before it is reported as written.

``int8=true`` quantises statically with ONNX Runtime (QDQ: per-channel weights, uint8 activations)
calibrated on ``calib_n`` real images preprocessed like the checkpoint's evaluation, and checks it on as
many other images from the same source: top-1 agreement with PyTorch below ``min_agreement`` refuses the
export; the agreement and the largest probability difference are recorded in the sidecar. Calibrate on
images like the ones the model will see (e.g. the run's ``splits/train.csv``), not on random noise.
``int8_weights`` picks the weight encoding (`quantize_onnx`): ``reduced`` (default), ``full`` or ``uint8``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from lungnet.artifacts.checkpoint import TORCHSCRIPT_SUFFIXES, CheckpointError, load_model
from lungnet.artifacts.decision import export_fields
from lungnet.artifacts.runtimes import TORCHSCRIPT_META, open_export, sidecar_path
from lungnet.data.images import collect_inputs
from lungnet.data.labels import DEFAULT_THRESHOLD
from lungnet.data.preprocessing import Preprocessing, logits_to_probs

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
PARITY_TOL = 1e-4
INT8_WEIGHTS = ("reduced", "full", "uint8")


def _record(prep: Preprocessing, fmt: str, source: Path) -> dict:
    return {**prep.to_dict(), "format": fmt, "input_name": "image", "output_name": "logits", "source": str(source)}


def _example(prep: Preprocessing, batch: int = 2) -> torch.Tensor:
    return torch.randn(
        batch, prep.in_chans, prep.input_size, prep.input_size, generator=torch.Generator().manual_seed(0)
    )


def _embed(proto, record: dict) -> None:
    """Replaces an ONNX model's metadata_props with ``record`` (whole, and one key per field)."""
    del proto.metadata_props[:]
    fields = {"lungnet": json.dumps(record)}
    fields.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in record.items()})
    for key, value in fields.items():
        proto.metadata_props.add(key=key, value=value)


def export_onnx(model: torch.nn.Module, prep: Preprocessing, out: Path, record: dict, opset: int) -> Path:
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
    _embed(proto, record)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))
    return out


def _reembed(path: Path, record: dict) -> None:
    """Rewrites an ONNX file's embedded record."""
    import onnx

    proto = onnx.load(str(path))
    _embed(proto, record)
    onnx.save(proto, str(path))


def quantize_onnx(
    fp32: Path, out: Path, calib: np.ndarray, record: dict | None = None, weights: str = "reduced"
) -> Path:
    """Static int8 quantisation of an fp32 ONNX file (ONNX Runtime, QDQ format).

    Weights per output channel, activations uint8 with ranges calibrated (min/max) on ``calib``.
    BatchNormalization stays float: the pre-activation BN of DenseNet cannot be folded into a convolution.

    Args:
        fp32: the fp32 ``.onnx`` file.
        out: the int8 file to write.
        calib: preprocessed calibration images (N, C, S, S), float32.
        record: metadata to embed (default: the fp32 file's).
        weights: ``reduced`` (int8 weights in 7 bits: the fast uint8 x int8 kernels of AVX2 CPUs without
            VNNI saturate with full-range weights), ``full`` (int8, full range: for VNNI/AMX CPUs) or
            ``uint8`` (uint8 x uint8: the most accurate, but slower; OpenVINO does not accelerate it).

    Returns:
        ``out``.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"image": calib[i : i + 1].astype(np.float32)} for i in range(len(calib))])

        def get_next(self) -> dict | None:
            return next(self.items, None)

    if weights not in INT8_WEIGHTS:
        raise CheckpointError(f"int8_weights={weights!r}: choose {', '.join(INT8_WEIGHTS)}")
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre))  # shape inference + graph optimisation (BN folding where possible)
        quantize_static(
            str(pre),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QUInt8 if weights == "uint8" else QuantType.QInt8,
            reduce_range=weights == "reduced",
            op_types_to_quantize=sorted(set(QDQRegistry) - {"BatchNormalization"}),
        )
    if record is None:
        record = json.loads({p.key: p.value for p in onnx.load(str(fp32)).metadata_props}["lungnet"])
    _reembed(out, record)
    return out


def export_torchscript(model: torch.nn.Module, prep: Preprocessing, out: Path, record: dict) -> Path:
    """Writes ``model`` traced and frozen as TorchScript, with ``record`` as an extra file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        traced = torch.jit.trace(model, _example(prep), check_trace=False)  # `export` verifies instead
        frozen = torch.jit.freeze(traced)
    torch.jit.save(frozen, str(out), _extra_files={TORCHSCRIPT_META: json.dumps(record)})
    return out


def _read_batch(files: list[Path], prep: Preprocessing) -> tuple[list[torch.Tensor], list[str]]:
    """Preprocessed tensors of the readable files (unreadable ones are logged and skipped)."""
    from lungnet.data.images import ImageReadError, read_image

    pipe, tensors, used = prep.pipeline(), [], []
    for f in files:
        try:
            tensors.append(pipe(read_image(f)))
            used.append(str(f))
        except ImageReadError as exc:
            log.warning("Calibration: skipping %s (%s)", f, exc)
    return tensors, used


def calibration_sets(spec: str | os.PathLike, prep: Preprocessing, n: int = 64) -> dict:
    """Up to ``n`` calibration images and up to ``n`` other images to check the int8 model on.

    ``spec`` is a file, a folder, a glob, or a split CSV with a ``path`` column (a run's ``splits/train.csv``).
    ``2n`` files are taken evenly spaced over the list (a folder or glob is sorted; a CSV keeps its order)
    and alternate between the two sets, so the check is on images the calibration did not see (with a
    single file both sets are that file).

    Returns:
        ``{"calib": (N, C, S, S), "calib_files": [...], "check": (M, C, S, S), "check_files": [...]}``.

    Raises:
        CheckpointError: no readable image.
    """
    try:
        if str(spec).lower().endswith(".csv"):  # a run's split file, e.g. outputs/<run>/splits/train.csv
            import pandas as pd

            files = [Path(p) for p in pd.read_csv(spec)["path"]]
        else:
            files = collect_inputs(spec)
    except (FileNotFoundError, KeyError) as exc:
        raise CheckpointError(f"Calibration images {spec}: {exc}") from exc
    if n < 1:
        raise CheckpointError(f"calib_n={n}: need at least 1 calibration image")
    if len(files) > 2 * n:  # evenly spaced over the whole list (split CSVs are grouped by class)
        files = [files[i] for i in np.linspace(0, len(files) - 1, 2 * n).round().astype(int)]
    calib, calib_files = _read_batch(files[0::2], prep)
    check, check_files = _read_batch(files[1::2], prep)
    if not calib:
        raise CheckpointError(f"No readable calibration image in {spec}")
    if not check:
        log.warning("Only one calibration image: the int8 model is checked on the image it was calibrated on")
        check, check_files = calib, calib_files
    return {
        "calib": torch.stack(calib),
        "calib_files": calib_files,
        "check": torch.stack(check),
        "check_files": check_files,
    }


def agreement(prep: Preprocessing, reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """(decision agreement, max probability difference) between two logit arrays (N, K).

    Single-label: top-1 agreement. Multi-label: the lowest, over findings, of the agreement of the
    per-finding decisions (probability at or above `lungnet.data.labels.DEFAULT_THRESHOLD`); pooling all
    image-finding pairs would let mostly-negative findings hide a broken one.
    """

    p, q = logits_to_probs(reference, prep.multilabel), logits_to_probs(other, prep.multilabel)
    if prep.multilabel:
        agree = float(((p >= DEFAULT_THRESHOLD) == (q >= DEFAULT_THRESHOLD)).mean(0).min())
    else:
        agree = float((p.argmax(1) == q.argmax(1)).mean())
    return agree, float(np.abs(p - q).max())


def check_request(
    fmt: str, out: str | os.PathLike | None, int8: bool, calib: str | os.PathLike | None, int8_weights: str
) -> None:
    """Refuses an export request that cannot work, before the checkpoint is read.

    Raises:
        CheckpointError: unknown format, int8 without ONNX or calibration images, unknown weight encoding, or an
            output name that does not fit the format.
    """
    if fmt not in FORMATS:
        raise CheckpointError(f"Unknown export format '{fmt}': choose {' or '.join(FORMATS)}")
    if int8 and fmt != "onnx":
        raise CheckpointError("int8=true needs format=onnx (static quantisation with ONNX Runtime)")
    if int8 and not calib:
        raise CheckpointError("int8=true needs calibration images: calib=<folder or glob of X-rays like the inputs>")
    if int8 and int8_weights not in INT8_WEIGHTS:
        raise CheckpointError(f"int8_weights={int8_weights!r}: choose {', '.join(INT8_WEIGHTS)}")
    suffix = Path(out).suffix.lower() if out is not None else None
    if suffix is not None and suffix not in (TORCHSCRIPT_SUFFIXES if fmt == "torchscript" else (".onnx",)):
        raise CheckpointError(
            f"out={out} does not fit format={fmt}: ONNX files end in .onnx, TorchScript files in "
            f"{' or '.join(TORCHSCRIPT_SUFFIXES)} (the only names TorchScript is loaded from)"
        )


@dataclass
class Int8Check:
    """How an int8 model was calibrated and how well it agrees with PyTorch (the sidecar's ``quantization``)."""

    weights: str
    calibration: str
    calibration_images: int
    check_images: int | None = None
    agreement_with_pytorch: float | None = None
    max_probability_diff: float | None = None

    def record(self) -> dict:
        """The sidecar's ``quantization`` entry (facts not measured are left out)."""
        method = "onnxruntime static QDQ, per-channel weights, uint8 activations, min/max calibration"
        return {"method": method, **{k: v for k, v in asdict(self).items() if v is not None}}


def stage_int8(model: torch.nn.Module, prep: Preprocessing, staged: Path, record: dict, opts: dict) -> Int8Check:
    """Writes the int8 model to ``staged``, calibrated on ``opts["calib"]``, and (``verify``) checks it on as many
    other images; refuses it below ``min_agreement``. ``opts``: `export`'s calib, calib_n, opset, int8_weights,
    verify and min_agreement.

    Raises:
        CheckpointError: the int8 model agrees with PyTorch on too few held-out images.
    """
    sets = calibration_sets(opts["calib"], prep, opts["calib_n"])
    fp32 = export_onnx(model, prep, staged.with_name(f".fp32-{staged.name}"), record, opts["opset"])
    log.info("Quantising to int8, calibrated on %d images from %s", len(sets["calib_files"]), opts["calib"])
    quantize_onnx(fp32, staged, sets["calib"].numpy(), record, opts["int8_weights"])
    check = Int8Check(opts["int8_weights"], str(opts["calib"]), len(sets["calib_files"]))
    if not opts["verify"]:
        return check
    with torch.inference_mode():
        ref = model(sets["check"]).numpy()
    agree, diff = agreement(prep, ref, open_export(staged).logits(sets["check"]))
    check.check_images, check.agreement_with_pytorch, check.max_probability_diff = len(sets["check_files"]), agree, diff
    log.info("int8 vs PyTorch, %d held-out images: agreement %.3f, max |p diff| %.3f", check.check_images, agree, diff)
    if agree < opts["min_agreement"]:
        raise CheckpointError(
            f"int8 export agrees with PyTorch on only {agree:.1%} of {check.check_images} held-out images "
            f"(min_agreement={opts['min_agreement']}); try int8_weights=uint8, keep the fp32 export, "
            "or calibrate on more typical images"
        )
    return check


def check_parity(model: torch.nn.Module, prep: Preprocessing, staged: Path, out: Path) -> None:
    """Refuses an fp32 export whose logits differ from PyTorch's on a random batch by more than `PARITY_TOL`."""
    diff = parity(model, staged, _example(prep, 3))
    if diff > PARITY_TOL:
        raise CheckpointError(f"Exported {out} disagrees with PyTorch: max |logit diff| {diff:.2e} > {PARITY_TOL}")
    log.info("Export matches PyTorch (max |logit diff| %.1e on a random batch)", diff)


def install(staged: Path, out: Path, record: dict) -> Path:
    """Moves a checked export and its sidecar into place: never a new model beside the old model's sidecar."""
    sidecar_path(staged).write_text(json.dumps(record, indent=2), encoding="utf-8")
    # old sidecar first: a crash in between leaves the new model with its embedded record, never the
    # new model beside the old model's sidecar (which read_record would trust)
    sidecar_path(out).unlink(missing_ok=True)
    os.replace(staged, out)
    os.replace(sidecar_path(staged), sidecar_path(out))
    return out


def export(
    ckpt: str | os.PathLike,
    fmt: str,
    out: str | os.PathLike | None,
    *,
    opset: int,
    verify: bool,
    int8: bool,
    calib: str | os.PathLike | None,
    calib_n: int,
    min_agreement: float,
    int8_weights: str,
) -> Path:
    """Exports a lungnet checkpoint; the options are ``conf/export.yaml``'s (their defaults are stated there).

    Files are written under temporary names and moved into place only once checked, so a failed export
    never leaves a half-written or unverified model where a good one was.

    Args:
        ckpt: the ``.ckpt`` file.
        fmt: ``onnx`` or ``torchscript``.
        out: output file (default: beside the checkpoint, ``best.onnx`` / ``best.int8.onnx`` / ``best.pt``).
        opset: ONNX opset.
        verify: compare the export with PyTorch (fp32: random batch, int8: held-out images of ``calib``).
        int8: static int8 quantisation (ONNX only), calibrated on ``calib``.
        calib: file, folder, glob or split CSV of calibration X-rays (required with ``int8``).
        calib_n: at most this many calibration images, and as many other images for the check (evenly
            spaced over the sorted files).
        min_agreement: refuse an int8 export whose top-1 agreement with PyTorch on the held-out check
            images is below this.
        int8_weights: ``reduced``, ``full`` or ``uint8`` (see `quantize_onnx`).

    Returns:
        The model file (its sidecar is ``<file>.json``).

    Raises:
        CheckpointError: unknown format, unusable checkpoint, missing calibration images, or an export
            that disagrees with PyTorch.
    """
    check_request(fmt, out, int8, calib, int8_weights)
    loaded = load_model(ckpt)
    model = loaded.model.cpu().eval()
    prep = Preprocessing.from_loaded(loaded)
    out = Path(out) if out else loaded.path.with_suffix(".int8.onnx" if int8 else FORMATS[fmt])
    record = {**_record(prep, fmt, loaded.path), "precision": "int8" if int8 else "fp32"}
    record.update(export_fields(loaded.path, loaded.labels))  # <ckpt stem>.decision.json, when present
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as tmp:
        staged = Path(tmp) / out.name
        if fmt == "torchscript":
            export_torchscript(model, prep, staged, record)
        elif not int8:
            export_onnx(model, prep, staged, record, opset)
        else:
            opts = {"calib": calib, "calib_n": calib_n, "opset": opset, "int8_weights": int8_weights}
            opts.update(verify=verify, min_agreement=min_agreement)
            record["quantization"] = stage_int8(model, prep, staged, record, opts).record()
            _reembed(staged, record)  # the file carries the quantisation facts too
        if verify and not int8:
            check_parity(model, prep, staged, out)
        install(staged, out, record)
    log.info("Wrote %s and %s", out, sidecar_path(out).name)
    return out


def parity(
    model: torch.nn.Module, exported: str | os.PathLike, batch: torch.Tensor, runtime: str = "onnxruntime"
) -> float:
    """Max absolute logit difference between ``model`` and an exported file on ``batch``."""
    with torch.inference_mode():
        ref = model.eval()(batch).numpy()
    runner = open_export(Path(exported), runtime=runtime, trust_export=True)  # the file lungnet has just written
    return float(np.abs(runner.logits(batch) - ref).max())
