"""What is fitted on the fit split (validation, by default) and applied unchanged to the evaluated split: the
operating point (thresholds at a target sensitivity) and the temperature (calibration)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lungnet.artifacts.decision_file import parse_thresholds
from lungnet.data.datamodule import LungDataModule
from lungnet.data.labels import default_positive
from lungnet.data.sources import DataError
from lungnet.scoring import stats


def fit_split(opts: dict, split: str, dm: LungDataModule) -> str:
    """Where the operating point and temperature are fitted (``auto``: val when evaluating another split)."""
    fit_on = str(opts["operating_point"]["fit_on"])
    if fit_on != "auto":
        return fit_on
    return "val" if split != "val" and "val" in dm.datasets else split


def read_thresholds(path: str | Path, labels: list[str]) -> dict[str, float]:
    """Thresholds from a ``thresholds.json`` written by an earlier evaluation (or ``{label: threshold}``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"operating_point.file: no thresholds file at {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        thresholds = data.get("thresholds", data) if isinstance(data, dict) else data
        parsed = parse_thresholds(thresholds)  # None (no positives where it was fitted) is skipped
    except (OSError, ValueError) as exc:
        raise DataError(f"operating_point.file {path} cannot be read: {exc}") from exc
    unknown = set(thresholds) - set(labels)
    if unknown:
        raise DataError(f"{path} names classes {sorted(unknown)} that the checkpoint does not have ({labels})")
    return parsed


def positive_class(opts: dict, labels: list[str], multilabel: bool) -> str | None:
    """The class the operating point is fitted for: ``operating_point.positive_class``, else
    ``decision.positive_class``, else (two-class data) the non-normal class; None: every class one-vs-rest."""
    given = opts["operating_point"].get("positive_class") or opts["decision_positive_class"]
    return given or (None if multilabel else default_positive(labels))


def operating_point(
    opts: dict, labels: list[str], multilabel: bool, fit: tuple[str, np.ndarray, np.ndarray], probs, targets
) -> dict:
    """Fits (or reads) the thresholds and reports sensitivity/specificity where fitted and on the evaluated data.

    ``probs`` and ``fit`` hold the probabilities decisions are taken on (temperature-calibrated when fitted).
    """
    op_cfg = opts["operating_point"]
    name, fit_probs, fit_targets = fit
    target = float(op_cfg["target_sensitivity"])
    positive = positive_class(opts, labels, multilabel)
    if op_cfg.get("file"):
        thresholds = read_thresholds(op_cfg["file"], labels)
        source = "file"
    else:
        thresholds = stats.fit_operating_point(fit_probs, fit_targets, labels, multilabel, target, positive)
        source = "fitted"
    return {
        "target_sensitivity": target,
        "positive_class": positive,
        "source": source,
        "file": str(op_cfg.get("file")) if op_cfg.get("file") else None,
        "fit_split": name if source == "fitted" else "file",
        "thresholds": thresholds,
        "fitted": stats.apply_operating_point(fit_probs, fit_targets, labels, multilabel, thresholds),
        "applied": stats.apply_operating_point(probs, targets, labels, multilabel, thresholds),
    }


def calibration(opts: dict, multilabel: bool, fit: tuple[str, np.ndarray, np.ndarray], probs, targets) -> dict:
    """ECE and reliability bins, before and (optionally) after temperature scaling fitted on ``fit``."""
    bins = int(opts["calibration"]["bins"])
    out = {
        "bins": bins,
        "ece": stats.expected_calibration_error(probs, targets, multilabel, bins),
        "reliability": stats.reliability_bins(*stats.calibration_pairs(probs, targets, multilabel), bins),
        "temperature": None,
    }
    if opts["calibration"]["temperature_scaling"] and len(fit[1]):
        temperature = stats.fit_temperature(fit[1], fit[2], multilabel)
        scaled = stats.scale_probs(probs, temperature, multilabel)
        out.update(
            temperature=temperature,
            fit_split=fit[0],
            ece_after=stats.expected_calibration_error(scaled, targets, multilabel, bins),
            loss_after=stats.log_loss(scaled, targets, multilabel),
            reliability_after=stats.reliability_bins(*stats.calibration_pairs(scaled, targets, multilabel), bins),
        )
    return out
