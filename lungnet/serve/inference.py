"""Use a trained model: ``Predictor(ckpt).predict(paths) -> rows``, shared by predict.py, the web app and the API.

A `Predictor` opens a lungnet checkpoint (``.ckpt``), an exported ONNX file (fp32 or int8, run with ONNX
Runtime or OpenVINO, no torch model), an exported TorchScript file, or an ensemble of checkpoints (a list, a
multirun directory or an ``ensemble.json``: `lungnet.artifacts.ensemble`); exports carry their preprocessing
in a JSON sidecar (written by `lungnet.serve.export`, opened by `lungnet.artifacts.runtimes`). Images are preprocessed
exactly as the checkpoint's evaluation pipeline (an ensemble's members each their own, from the same decode):
`read_image` -> resize (``squash``/``pad``) to the trained input size -> the model's mean/std.
A file that cannot be read becomes an error row; the others go on.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lungnet.artifacts.checkpoint import TORCHSCRIPT_SUFFIXES, CheckpointError, is_torchscript, load_model
from lungnet.artifacts.decision import DecisionRecord, Decisions, export_decision, find_decision
from lungnet.artifacts.ensemble import EnsembleBackend, ensemble_decision, model_files, open_ensemble
from lungnet.data.images import read_image
from lungnet.data.inputs import InputFiles, InputItem, collate_inputs, decode_workers
from lungnet.data.preprocessing import Preprocessing, logits_to_probs, stack
from lungnet.hardware import resolve_device
from lungnet.scoring.gate_inputs import gate_inputs
from lungnet.scoring.outputs import predictions_table

log = logging.getLogger(__name__)


def started(loader: DataLoader) -> Iterator:
    """``iter(loader)``, its worker processes forked while this process's objects are frozen (`gc.freeze`, as the
    Python documentation advises before a fork): a collection in a worker then does not touch, and so copy, every
    page of this process's heap. Unfrozen once they are started."""
    if not loader.num_workers:
        return iter(loader)
    gc.freeze()
    try:
        return iter(loader)
    finally:
        gc.unfreeze()


@dataclass
class Prediction:
    """One image's result: the CSV row, plus the arrays needed for a heatmap overlay.

    Attributes:
        file: the file as given.
        row: plain values (file, predicted, confidence, decision, p_<label>..., error).
        probs: class probabilities, None on error.
        image: the decoded grayscale image, reduced to ``image_max_side`` when given (kept only when a heatmap
            was asked for).
        heatmap: heatmap in [0, 1] cropped to the image content (model-input resolution), or None.
        sha1: hex SHA-1 of the file's bytes, from the read that was decoded ('' when they could not be read).
    """

    file: str
    row: dict
    probs: np.ndarray | None = None
    image: np.ndarray | None = field(default=None, repr=False)
    heatmap: np.ndarray | None = field(default=None, repr=False)
    sha1: str = ""

    @property
    def ok(self) -> bool:
        """True when the image was read and classified."""
        return self.probs is not None


class _TorchBackend:
    """A lungnet checkpoint run with PyTorch (the only kind that can give heatmaps); bf16 through autocast."""

    runtime = "torch"

    def __init__(self, path: Path, device: str, precision: str = "fp32", loaded=None) -> None:
        from lungnet.artifacts.runtimes import check_precision, warn_if_emulated_bf16

        check_precision(precision)
        warn_if_emulated_bf16(precision)
        self.precision = precision
        self.loaded = loaded if loaded is not None else load_model(path)
        self.device = torch.device(device)
        self.model = self.loaded.model.to(self.device).eval()
        self.prep = Preprocessing.from_loaded(self.loaded)

    @torch.inference_mode()
    def logits(self, batch: torch.Tensor) -> np.ndarray:
        return self.outputs(batch)[0]

    @torch.inference_mode()
    def outputs(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(logits, OOD gate inputs): `lungnet.scoring.gate_inputs.gate_inputs`, penultimate features and an input
        thumbnail."""
        from lungnet.artifacts.runtimes import autocast

        with autocast(self.device, self.precision):
            features = self.model.backbone(batch.to(self.device))
            logits = self.model.head(features)
        return logits.float().cpu().numpy(), gate_inputs(features, batch)


class Predictor:
    """Classifies image files with a checkpoint or an exported model.

    Args:
        ckpt: a lungnet ``.ckpt``, an ``.onnx`` file or a TorchScript ``.pt``/``.ts`` file (exports need their
            sidecar or embedded record, as written by `lungnet.serve.export`). The name decides the loader: ``.onnx``
            runs under ``runtime``; TorchScript content in a ``.pt``/``.ts`` file runs only with
            ``trust_export``; everything else goes through the ``weights_only`` checkpoint loader. Several
            checkpoints (a list, a multirun directory or an ``ensemble.json``) run as one ensemble
            (`lungnet.artifacts.ensemble`; ``kind`` is then ``ensemble`` and ``path`` its manifest or None).
        device: ``cpu``, ``cuda`` or ``auto`` (PyTorch models only; ONNX runs on the CPU).
        threads: ONNX Runtime / OpenVINO threads (None: the runtime's default).
        runtime: for ``.onnx`` files, ``onnxruntime`` or ``openvino`` (`lungnet.artifacts.runtimes`).
        precision: ``fp32`` (default) or ``bf16`` (checkpoints and TorchScript: torch autocast; ``.onnx``:
            OpenVINO only). Always explicit, never left to a runtime's own per-CPU default.
        decision: ``auto`` (the checkpoint's ``<stem>.decision.json`` when present; an export's own record),
            ``none``, or a decision file (`lungnet.artifacts.decision`): operating point, temperature, prediction sets
            and
            the OOD gate (checkpoints only: it needs the penultimate features).
        trust_export: run TorchScript (code) from a ``.pt``/``.ts`` file; without it such a file is refused.

    Raises:
        CheckpointError: the model file is missing, unsafe or unusable.
    """

    def __init__(
        self,
        ckpt: str | os.PathLike,
        device: str = "cpu",
        threads: int | None = None,
        runtime: str = "onnxruntime",
        precision: str = "fp32",
        decision: str | os.PathLike | None = "auto",
        trust_export: bool = False,
    ) -> None:
        from lungnet.artifacts.runtimes import check_runtime, open_export

        check_runtime(runtime)  # also for checkpoints: a misspelt runtime is an error, not ignored
        files, manifest = model_files(ckpt)
        device = resolve_device(device)
        if manifest is not None or len(files) > 1:
            ensemble = open_ensemble(ckpt, decision)
            backends = [_TorchBackend(m.path, device, precision, m.loaded) for m in ensemble.members]
            self.backend, self.kind, self.path = EnsembleBackend(ensemble, backends), "ensemble", manifest
            self._finish(decision)
            return
        path = files[0].expanduser()
        if not path.is_file():
            raise CheckpointError(f"Model file not found: {path}")
        self.path = path
        suffix = path.suffix.lower()
        if suffix == ".onnx" or (suffix in TORCHSCRIPT_SUFFIXES and is_torchscript(path)):
            self.backend = open_export(path, device, threads, runtime, precision, trust_export)
            self.kind = self.backend.kind
        else:
            self.backend = _TorchBackend(path, device, precision)
            self.kind = "checkpoint"
        self._finish(decision)

    def _finish(self, decision) -> None:
        self.precision: str = self.backend.precision  # what actually runs, read back from the runtime
        self.prep: Preprocessing = self.backend.prep  # an ensemble: `lungnet.data.preprocessing.EnsembleInput`
        self.labels = list(self.prep.labels)
        self._pipeline = self.prep.pipeline()
        self.decision, self.decision_file = self._decision(decision)
        log.info(
            "Loaded %s (%s, %s, %s): %d classes, %s px, resize=%s",
            self.path or self.prep.model,
            self.kind,
            self.backend.runtime,
            self.precision,
            len(self.labels),
            self.prep.input_size,
            self.prep.resize,
        )

    def _decision(self, choice) -> tuple[DecisionRecord | None, str | None]:
        """The decision record (see ``decision``) and where it came from."""
        if self.kind == "ensemble":
            record, where = ensemble_decision(self.backend.ensemble, choice)
        elif self.kind == "checkpoint":
            record, path = find_decision(choice, self.path, self.labels)
            where = str(path) if path else None
        else:
            from lungnet.artifacts.paths import sidecar_path

            side = sidecar_path(self.path)  # the record `read_record` took: the sidecar, else the one embedded
            where = side if side.is_file() else self.path
            record, where = export_decision(choice, self.backend.record, self.labels, where)
        if record is not None:
            log.info("Decisions from %s (fitted on %s, rule %s)", where, record.fitted_on(), record.rule)
        return record, where

    def describe(self) -> dict:
        """What runs: model file, kind, runtime and precision, the input contract and the decision file."""
        facts = {
            "model_file": str(self.path) if self.path is not None else None,
            "kind": self.kind,
            "runtime": self.backend.runtime,
            "precision": self.precision,
            "model": self.prep.model,
            "labels": self.labels,
            "input_size": self.prep.input_size,
            "decision_file": self.decision_file,
            "decision": self.decision.describe() if self.decision is not None else None,
        }
        if self.kind == "ensemble":
            facts["members"] = self.backend.ensemble.describe()
        return facts

    @property
    def members(self) -> list[str]:
        """The ensemble's member names (empty for one model)."""
        return self.backend.ensemble.names if self.kind == "ensemble" else []

    def outputs(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """(logits, penultimate features or None) for a preprocessed batch (features: checkpoints only; an ensemble
        gives its logits (`lungnet.artifacts.ensemble.EnsembleBackend`) and one feature array per member)."""
        if self.kind in ("checkpoint", "ensemble"):
            return self.backend.outputs(batch)
        return self.backend.logits(batch), None

    @property
    def torch_model(self) -> torch.nn.Module | None:
        """The PyTorch model (checkpoints only; needed for heatmaps)."""
        return self.backend.model if self.kind == "checkpoint" else None

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """Grayscale (H, W) in [0, 1] -> the model's input tensor (C, S, S), as in evaluation (an ensemble: one
        tensor per member, batched with `lungnet.data.preprocessing.stack`)."""
        return self._pipeline(image)

    def load(self, path: str | os.PathLike) -> tuple[np.ndarray, torch.Tensor]:
        """Reads and preprocesses one file.

        Returns:
            (the decoded grayscale image (H, W), the preprocessed tensor (C, S, S)).

        Raises:
            ImageReadError: the file is not a readable image.
        """
        image = read_image(path)
        return image, self.preprocess(image)

    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        """Class probabilities (N, C) for a preprocessed batch (N, C, S, S), calibrated when the decision record
        has a temperature."""
        logits = self.backend.logits(batch)
        if self.decision is not None:
            return self.decision.calibrated(logits)
        return logits_to_probs(logits, self.prep.multilabel)

    def heatmaps(
        self, batch: torch.Tensor, method: str = "gradcam", targets: list[int] | None = None, **options
    ) -> np.ndarray:
        """Class-activation heatmaps (N, S, S) in [0, 1], each for its ``targets`` class (None: the arg-max).

        Args:
            batch: preprocessed images (N, C, S, S).
            method: a `lungnet.explain` method name.
            targets: the class index each heatmap explains (`heatmap_targets`: the decided class).
            **options: ``cam_layer`` and method options for `lungnet.explain.cams.explain`.

        Raises:
            CheckpointError: the model is an export (heatmaps need the PyTorch checkpoint).
        """
        model = self.torch_model
        if model is None:
            raise CheckpointError(self.no_heatmaps())
        from lungnet.explain.cams import explain

        with torch.enable_grad():
            maps = explain(model, batch, method=method, targets=targets, **options)
        return np.asarray(maps, dtype=np.float32)

    def heatmap_targets(self, probs: np.ndarray) -> list[int]:
        """The class each heatmap explains: the decided class at the operating point (multi-label: the most probable
        decided finding), else the most probable class, so the heatmap shows the decision it sits beside."""
        decided = self.decision.labels_of(probs) if self.decision is not None else [""] * len(probs)
        out = []
        for row, label in zip(probs, decided, strict=True):
            picks = [self.labels.index(x) for x in label.split("|") if x in self.labels]
            out.append(max(picks, key=lambda j: row[j]) if picks else int(np.argmax(row)))
        return out

    def no_heatmaps(self) -> str:
        """Why this model gives no heatmaps (exports and ensembles)."""
        if self.kind == "ensemble":
            return (
                "Heatmaps are per model and an ensemble has none: run predict.py (or the app) on one member, "
                f"e.g. ckpt={self.backend.ensemble.members[0].path}, for its heatmaps"
            )
        return f"Heatmaps need the PyTorch checkpoint (.ckpt); {self.path.name} is a {self.kind} export"

    def rows(self, files: Sequence[str], probs: np.ndarray, decisions: Decisions | None = None) -> list[dict]:
        """CSV rows (file, predicted, confidence, decision, p_<label>..., error) for classified files; with
        ``decisions`` also decision_reason, prediction_set, ood and ood_score."""
        table = predictions_table(list(files), probs, None, self.labels, self.prep.multilabel)
        table = table.rename(columns={"path": "file"})
        if decisions is not None:
            for key, values in decisions.columns(self.labels).items():
                table[key] = values
        table["error"] = ""
        return table.to_dict("records")

    def error_row(self, file: str, message: str) -> dict:
        """A row for a file that could not be classified."""
        return {"file": file, "predicted": "", "error": message}

    def predict_iter(
        self,
        paths: Iterable[str | os.PathLike],
        batch_size: int = 16,
        explain: str | None = None,
        progress: bool = False,
        explain_options: dict | None = None,
        image_max_side: int | None = None,
        num_workers: int | None = 0,
    ) -> Iterator[Prediction]:
        """Classifies files in batches; yields one `Prediction` per file, in order.

        Each file is read once (`lungnet.data.inputs.InputFiles`): its SHA-1 (`Prediction.sha1`) and its decode
        come from the same bytes; reading, decoding and preprocessing run in DataLoader workers.

        Args:
            paths: image files (PNG/JPEG/TIFF/BMP, 8/16-bit, DICOM).
            batch_size: images per forward pass.
            explain: a CAM method name (e.g. ``gradcam``) to compute heatmaps, or None.
            progress: show a tqdm progress bar.
            explain_options: ``cam_layer`` and method options passed to the explainer.
            image_max_side: with ``explain``, the image kept for the overlay is reduced to this long side right
                after the model input is made from the full decode (None: kept at full size). The model input
                is the same either way.
            num_workers: processes that read, decode and preprocess (0: this process; None: min(4, cores)); never
                more than there are batches.
        """
        paths = [str(p) for p in paths]
        bar = tqdm(total=len(paths), desc="Predicting", unit="img", disable=not progress)
        options = explain_options or {}
        batch_size = max(1, int(batch_size))
        workers = decode_workers(num_workers, -(-len(paths) // batch_size))
        dataset = InputFiles(paths, self.prep, keep_image=bool(explain), image_max_side=image_max_side)
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_inputs)
        try:
            for items in started(loader):
                yield from self._predict_batch(items, explain, options)
                bar.update(len(items))
        finally:
            bar.close()

    def predict(self, paths: Iterable[str | os.PathLike], batch_size: int = 16, progress: bool = False) -> list[dict]:
        """CSV-ready rows, one per file (error rows for unreadable files)."""
        return [p.row for p in self.predict_iter(paths, batch_size, progress=progress)]

    def _predict_batch(self, items: list[InputItem], explain: str | None, options: dict) -> list[Prediction]:
        files = [item.file for item in items]
        results: list[Prediction | None] = [None] * len(files)
        for i, item in enumerate(items):
            if item.error:
                log.warning("Skipping %s: %s", item.file, item.error)
                results[i] = Prediction(item.file, self.error_row(item.file, item.error), sha1=item.sha1)
        index = [i for i, item in enumerate(items) if not item.error]
        images = [items[i].image for i in index]
        tensors = [items[i].tensor for i in index]
        if tensors:
            batch = stack(tensors)
            logits, features = self.outputs(batch)
            self.check_finite(logits, [files[i] for i in index])
            decided = self.decision.decide(logits, features) if self.decision is not None else None
            probs = decided.probs if decided is not None else logits_to_probs(logits, self.prep.multilabel)
            targets = self.heatmap_targets(probs) if explain else None
            maps = self.heatmaps(batch, explain, targets, **options) if explain else None
            rows = self.rows([files[i] for i in index], probs, decided)
            for k, i in enumerate(index):
                heat = self.unpad(maps[k], images[k].shape) if maps is not None else None
                if targets is not None:
                    rows[k]["heatmap_class"] = self.labels[targets[k]]
                results[i] = Prediction(files[i], rows[k], probs[k], images[k], heat, items[i].sha1)
        return [r for r in results if r is not None]

    def check_finite(self, logits: np.ndarray, files: list[str]) -> None:
        """Raises CheckpointError for NaN/inf output (empty probabilities, an arg-max that is no decision)."""
        bad = ~np.isfinite(logits).reshape(len(files), -1).all(axis=1)
        if bad.any():
            raise CheckpointError(
                f"{self.path or self.kind}: the model's output is not finite (NaN or inf) for {int(bad.sum())} of "
                f"{len(files)} images (e.g. {files[int(np.argmax(bad))]}); its weights are unusable (did its training "
                "diverge?): retrain it, e.g. with a lower optimizer.lr"
            )

    def unpad(self, heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """The heatmap laid over the image's content (`lungnet.data.preprocessing.Preprocessing.on_image`)."""
        return self.prep.on_image(heatmap, shape)

    def overlay(self, prediction: Prediction, alpha: float) -> np.ndarray:
        """RGB uint8 overlay of ``prediction``'s heatmap on its image, at the size of its kept image, with opacity
        ``alpha`` (the command's ``alpha``: conf/app.yaml, or `lungnet.schema` ``PredictConfig``)."""
        from lungnet.explain.overlay import overlay

        if prediction.image is None or prediction.heatmap is None:
            raise ValueError(f"{prediction.file}: no heatmap was computed (pass explain=...)")
        return overlay(prediction.image, prediction.heatmap, alpha=alpha)
