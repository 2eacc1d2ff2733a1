"""``predict.py`` over files and folders: a `Predictor` per call, one row per input, predictions.csv and
prediction.json in the run directory, heatmap overlays on request (``explain=<method>``), each under the caption the
app shows (`lungnet.explain.overlay.heatmap_caption`: file, decision, explained class and probability, colour bar;
abstained and OOD images marked)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from lungnet.artifacts.checkpoint import CheckpointError, read_checkpoint
from lungnet.data.images import collect_inputs
from lungnet.data.overlap import RECORDED_SPLITS, exact64, recorded_hashes
from lungnet.errors import DataError
from lungnet.explain.base import ExplainError
from lungnet.explain.overlay import heatmap_caption, save_captioned
from lungnet.io import write_csv, write_json
from lungnet.scoring.shift import batch_shift
from lungnet.serve.inference import Prediction, Predictor

log = logging.getLogger(__name__)

COLUMNS = [
    "file",
    "predicted",
    "confidence",
    "decision",
    "prediction_set",
    "ood",
    "ood_score",
    "decision_reason",
    "decision_note",
]


def recorded_copies(predictor: Predictor) -> dict[str, set[int]]:
    """The 64-bit SHA-1 prefixes of the checkpoint's training and validation images per split (``.ckpt`` only;
    empty: nothing recorded)."""
    hashes = recorded_hashes(read_checkpoint(predictor.path)) if predictor.kind == "checkpoint" else None
    if hashes is None:
        return {}
    return {s: set(np.asarray((hashes.get(s) or {}).get("exact", np.zeros(0))).tolist()) for s in RECORDED_SPLITS}


def seen_split(recorded: dict[str, set[int]], pred: Prediction) -> str:
    """``train`` or ``val`` when ``pred``'s file is an exact copy of one of those images (its SHA-1 from the read
    that was decoded), else ''."""
    if not recorded or not pred.sha1:
        return ""
    value = int(exact64(pd.Series([pred.sha1]))[0])
    return next((s for s in RECORDED_SPLITS if value in recorded[s]), "")


def open_predictor(cfg) -> tuple[Predictor, str | None, dict]:
    """The `Predictor` of ``cfg.ckpt`` and the heatmap method and options (``explain`` group; None: no heatmaps),
    checked before anything is classified."""
    predictor = Predictor(
        cfg.ckpt,
        device=str(cfg.device),
        threads=cfg.get("threads"),
        runtime=str(cfg.get("runtime") or "onnxruntime"),
        precision=str(cfg.get("precision") or "fp32"),
        decision=cfg.get("decision", "auto"),
        trust_export=bool(cfg.trust_export),
    )
    exp = cfg.get("explain") or {}  # the explain config group (conf/explain/<method>.yaml), absent by default
    explain = exp.get("method")
    options = {k: v for k, v in {"cam_layer": exp.get("cam_layer"), **(exp.get("options") or {})}.items() if v}
    if explain:
        from lungnet.explain.cams import list_methods

        if explain not in list_methods():
            raise ExplainError(f"Unknown explanation method '{explain}'; choose from {', '.join(list_methods())}")
        if predictor.torch_model is None:
            raise CheckpointError(predictor.no_heatmaps())
    return predictor, explain, options


def prediction_row(predictor: Predictor, pred: Prediction, k: int, run_dir: Path, explain, alpha: float, seen) -> dict:
    """One predictions.csv row; saves the heatmap overlay of ``pred`` under ``run_dir/heatmaps/`` when asked."""
    row = dict(pred.row)
    if pred.ok and explain:
        heat_dir = run_dir / "heatmaps"
        heat_dir.mkdir(parents=True, exist_ok=True)
        out = heat_dir / f"{k:05d}_{Path(pred.file).stem[:80]}.png"  # index prefix: same stems never collide
        save_captioned(out, predictor.overlay(pred, alpha), heatmap_caption(row, Path(pred.file).name, explain))
        row["heatmap"] = str(out.relative_to(run_dir))
    if predictor.members:
        row["members"] = "|".join(predictor.members)
    row["seen_in_training"] = seen.get(str(pred.file), "")
    return row


def run_batch(cfg, run_dir: str | os.PathLike) -> Path:
    """``predict.py``: classify ``cfg.input`` with ``cfg.ckpt``; write predictions.csv (+ overlays) to ``run_dir``.

    Returns:
        The predictions.csv path.
    """
    run_dir = Path(run_dir)
    predictor, explain, options = open_predictor(cfg)
    files = collect_inputs(cfg.input)
    recorded = recorded_copies(predictor)
    preds = predictor.predict_iter(
        files, int(cfg.batch_size), explain, progress=True, explain_options=options, num_workers=cfg.num_workers
    )
    rows, failed, seen = [], 0, {}
    for k, pred in enumerate(preds):
        if split := seen_split(recorded, pred):
            seen[str(pred.file)] = split
        rows.append(prediction_row(predictor, pred, k, run_dir, explain, float(cfg.alpha), seen))
        failed += not pred.ok
    if seen:
        log.warning(
            "%d of %d inputs are copies of images the model was trained or validated on (column "
            "seen_in_training), e.g. %s",
            len(seen),
            len(files),
            next(iter(seen)),
        )
    path = write_predictions(run_dir, predictor, rows, failed, len(seen))
    if predictor.decision is None:
        log.info(
            "No decision file (decision=%s): arg-max decisions, no prediction sets, no OOD gate", cfg.get("decision")
        )
    log.info("%d images classified, %d unreadable (see the error column); wrote %s", len(rows) - failed, failed, path)
    if rows and failed == len(rows):  # the rows are written; the exit status says that nothing was classified
        raise DataError(f"None of the {len(rows)} input file(s) could be read as an image; reasons in {path}")
    return path


def write_predictions(run_dir: Path, predictor: Predictor, rows: list[dict], failed: int, seen: int) -> Path:
    """predictions.csv (the fixed columns first) and prediction.json (what ran, counts); returns the csv path."""
    columns = COLUMNS + [f"p_{lab}" for lab in predictor.labels]
    table = pd.DataFrame(rows)
    table = table[[c for c in columns if c in table] + [c for c in table if c not in columns]]
    path = write_csv(run_dir / "predictions.csv", table)
    flagged = int(sum(bool(r.get("ood")) for r in rows))
    facts = {**predictor.describe(), "images": len(rows), "unreadable": failed, "ood_flagged": flagged}
    facts["seen_in_training"] = seen
    facts["abstained"] = int(sum(r.get("decision") == "abstain" for r in rows))
    facts["empty_sets"] = int(sum(bool(r.get("decision_note")) for r in rows))  # decided, with a note
    facts["population_shift"] = population_shift(predictor, rows)
    write_json(run_dir / "prediction.json", facts)
    if predictor.decision is not None:
        log.info(
            "Decisions from %s (fitted on %s): %d abstained, %d flagged out-of-distribution, %d decided with an empty "
            "prediction set (see decision_note)",
            predictor.decision_file,
            predictor.decision.fitted_on(),
            facts["abstained"],
            flagged,
            facts["empty_sets"],
        )
    return path


def population_shift(predictor: Predictor, rows: list[dict]) -> dict | None:
    """`lungnet.scoring.shift.batch_shift` of the classified rows' OOD scores (None without a gate holding calibration
    scores); warns when the batch is not exchangeable with the images the gate was thresholded on."""
    gate = predictor.decision.ood if predictor.decision is not None else None
    scored = [r for r in rows if r.get("ood_score") is not None and not r.get("error")]
    if gate is None or not scored:
        return None
    scores = np.array([r["ood_score"] for r in scored], dtype=np.float64)
    parts = {p: [r.get(f"ood_score_{p}") for r in scored] for p in ("features", "image")}
    parts = {p: np.array(v, dtype=np.float64) for p, v in parts.items() if None not in v}
    out = batch_shift(gate, scores, parts or None)
    if out is not None and out["shifted"]:
        flagged = out["tests"].get("flag_count", {}).get("flagged")
        log.warning(
            "These %d images are not exchangeable with the images the OOD gate was thresholded on (population "
            "shift test p = %.2g < %g; %s flagged OOD one by one): decisions and prediction sets are not calibrated "
            "for them (prediction.json: population_shift)",
            out["n"],
            out["pvalue"],
            out["level"],
            flagged,
        )
    return out
