"""From a model's outputs to a decision that says how sure it is and when not to trust it.

A `DecisionRecord` is what ``evaluate.py ckpt=<ckpt> split=val`` (and training, with the same code:
`lungnet.evaluation.after_training`) fits and writes beside the checkpoint as ``<ckpt stem>.decision.json``: plain
JSON data, never code, tied to the checkpoint by its SHA-256, and every value type- and range-checked when read
(`lungnet.artifacts.decision_file`). It holds

- a **temperature** (calibrated probabilities: the ``p_<label>`` columns);
- the **operating point**: one threshold for the positive class of a two-class model (the non-normal class by
  default), none (arg-max) or one class's threshold (``decision.positive_class``) for multi-class models, one
  threshold per finding for multi-label models;
- **split conformal** calibration scores (1 - calibrated probability of the true label on the validation split,
  per finding for multi-label models): prediction sets at level 1 - alpha (`lungnet.scoring.conformal`: crepes'
  p-values);
- the **OOD gate** (`lungnet.scoring.ood.OodGate`) on the penultimate features;
- the abstention rule and a summary of the model card (shown by the app).

`DecisionRecord.decide` turns logits (and features) into `Decisions`: the label (or ``abstain`` with a reason), the
prediction set, the OOD flag and score, and a note when the set is empty (decided by the operating point, not
referred: the reasons, the note and why, `lungnet.scoring.referral`). `predict.py`, the app, the API, exports and
`evaluate.py` all use it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lungnet.artifacts.decision_file import FORMAT, record_fields
from lungnet.artifacts.paths import decision_path
from lungnet.data.labels import DEFAULT_THRESHOLD, NO_FINDING, default_positive, join_flags
from lungnet.data.preprocessing import logits_to_probs
from lungnet.errors import CheckpointError
from lungnet.io import write_json
from lungnet.scoring.conformal import in_set
from lungnet.scoring.ood import AnyMemberGate, ImageGate, OodGate, flag_parts
from lungnet.scoring.referral import (
    AMBIGUOUS,
    CONFIDENCE,
    OOD,
    ambiguous_reason,
    confidence_reason,
    empty_set_note,
    ood_reason,
)

log = logging.getLogger(__name__)

ABSTAIN = "abstain"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Decisions:
    """Decisions for a batch of N images.

    Attributes:
        probs: (N, C) probabilities, temperature-calibrated when the record has a temperature.
        decision: N labels (multi-label: findings joined by ``|`` or ``No Finding``) or ``abstain``.
        reason: N readable reasons (empty when the decision stands).
        note: N notes on decisions that stand (an empty prediction set, `lungnet.scoring.referral`), or empty strings.
        referral: N referral kinds (``ood``, ``set``, ``confidence``; empty when the decision stands).
        sets: (N, C) bool prediction-set membership (multi-label: the finding cannot be ruled out), or None.
        ambiguous: (N,) bool, the set holds more than one answer (multi-label: a finding has both), or None.
        empty: (N,) bool, the set holds no label (multi-label: a finding has neither answer), or None.
        ood: (N,) bool OOD flags, or None without a gate or features.
        ood_score: (N,) scores, or None.
        ood_parts: ``{part: (N,) score / its threshold}`` of a gate with an image part (`lungnet.scoring.ood.ImageGate`:
            ``features``, ``image``), or None.
    """

    probs: np.ndarray
    decision: list[str]
    reason: list[str]
    note: list[str] = field(default_factory=list)
    referral: list[str] = field(default_factory=list)
    sets: np.ndarray | None = None
    ambiguous: np.ndarray | None = None
    empty: np.ndarray | None = None
    ood: np.ndarray | None = None
    ood_score: np.ndarray | None = None
    ood_parts: dict[str, np.ndarray] | None = None

    @property
    def kept(self) -> np.ndarray:
        """(N,) bool: the decision stands (not ``abstain``: referred to a person)."""
        return np.array([d != ABSTAIN for d in self.decision], dtype=bool)

    def set_labels(self, labels: list[str]) -> list[str]:
        """The prediction sets as ``A|B`` strings (empty strings without conformal calibration)."""
        if self.sets is None:
            return [""] * len(self.decision)
        return join_flags(self.sets, labels)

    def columns(self, labels: list[str]) -> dict[str, list]:
        """Table columns: decision, decision_reason, decision_note, prediction_set, ood, ood_score, p_<label>."""
        n = len(self.decision)
        cols = {
            "decision": list(self.decision),
            "decision_reason": list(self.reason),
            "decision_note": list(self.note) if self.note else [""] * n,
            "prediction_set": self.set_labels(labels),
            "ood": [bool(x) for x in self.ood] if self.ood is not None else [None] * n,
            "ood_score": [float(x) for x in self.ood_score] if self.ood_score is not None else [None] * n,
        }
        for part, values in (self.ood_parts or {}).items():
            cols[f"ood_score_{part}"] = [float(x) for x in values]
        cols.update({f"p_{lab}": self.probs[:, j].tolist() for j, lab in enumerate(labels)})
        return cols


@dataclass
class DecisionRecord:
    """Everything that turns a checkpoint's outputs into decisions (see the module doc).

    Attributes:
        labels: the checkpoint's labels, in output order.
        multilabel: sigmoid outputs.
        checkpoint_sha256: SHA-256 of the checkpoint it was fitted for.
        checkpoint: the checkpoint's file name (informative).
        split: where temperature, thresholds and conformal scores were fitted (None: not yet).
        counts: images and class counts of that split.
        temperature: logits are divided by it (None: uncalibrated).
        positive_class: the class whose threshold decides (two-class and ``decision.positive_class``).
        target_sensitivity: the sensitivity the thresholds were fitted for.
        thresholds: ``{label: threshold}`` on the calibrated probabilities.
        alpha: conformal miscoverage level (None: no prediction sets).
        conformal_scores: calibration nonconformity scores (multi-label: ``{finding: scores}``).
        abstain_below: abstain when the calibrated confidence is below this (None: off).
        abstain_ambiguous: abstain when the prediction set holds more than one answer (an empty set does not refer).
        ood: the OOD gate (an ensemble's: `AnyMemberGate`), or None.
        ood_fit_n: the training images the gate was fitted on (a seeded sample of at most ``ood.fit_max``), or None.
        summary: model-card summary (model, training data, validation metrics) for the app.
    """

    labels: list[str]
    multilabel: bool
    checkpoint_sha256: str
    checkpoint: str = ""
    split: str | None = None
    counts: dict = field(default_factory=dict)
    temperature: float | None = None
    positive_class: str | None = None
    target_sensitivity: float | None = None
    thresholds: dict[str, float] = field(default_factory=dict)
    alpha: float | None = None
    conformal_scores: np.ndarray | dict[str, np.ndarray] | None = None
    abstain_below: float | None = None
    abstain_ambiguous: bool = True
    ood: OodGate | ImageGate | AnyMemberGate | None = None
    ood_fit_n: int | None = None
    summary: dict = field(default_factory=dict)

    @property
    def rule(self) -> str:
        """``per_finding`` (multi-label), ``threshold`` (a positive class with its threshold) or ``argmax``."""
        if self.multilabel:
            return "per_finding"
        return "threshold" if self.positive_class and self.positive_class in self.thresholds else "argmax"

    @property
    def applied_thresholds(self) -> dict[str, float] | None:
        """The thresholds the decision uses: multi-label, every finding's (fitted, else `DEFAULT_THRESHOLD`); a
        positive class with its threshold, the record's thresholds; None for the arg-max."""
        if self.multilabel:
            return {lab: float(self.thresholds.get(lab, DEFAULT_THRESHOLD)) for lab in self.labels}
        return dict(self.thresholds) if self.rule == "threshold" else None

    def calibrated(self, logits: np.ndarray) -> np.ndarray:
        """Probabilities (N, C) from logits, divided by the temperature when there is one."""
        z = np.asarray(logits, dtype=np.float64)
        return logits_to_probs(z / self.temperature if self.temperature else z, self.multilabel)

    def labels_of(self, probs: np.ndarray) -> list[str]:
        """The operating-point decision per image, before abstention."""
        if self.multilabel:
            thr = np.array([self.thresholds.get(lab, DEFAULT_THRESHOLD) for lab in self.labels])
            on = probs >= thr
            return join_flags(on, self.labels, NO_FINDING)
        top = probs.argmax(1)
        if self.rule != "threshold":
            return [self.labels[i] for i in top]
        j = self.labels.index(self.positive_class)
        others = probs.copy()
        others[:, j] = -np.inf
        fallback = others.argmax(1)
        hit = probs[:, j] >= self.thresholds[self.positive_class]
        return [self.positive_class if h else self.labels[i] for h, i in zip(hit, fallback, strict=True)]

    def prediction_sets(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(sets (N, C) bool, ambiguous (N,) bool, empty (N,) bool) at level 1 - alpha (`Decisions`), or None without
        conformal scores."""
        if self.alpha is None or self.conformal_scores is None:
            return None
        confidence = 1.0 - float(self.alpha)
        if not self.multilabel:
            sets = in_set(self.conformal_scores, 1.0 - probs, confidence)
            return sets, sets.sum(1) > 1, sets.sum(1) == 0
        sets = np.zeros(probs.shape, dtype=bool)
        ambiguous = np.zeros(len(probs), dtype=bool)
        empty = np.zeros(len(probs), dtype=bool)
        for j, lab in enumerate(self.labels):  # one binary conformal classifier per finding (present, absent)
            both = np.stack([1.0 - probs[:, j], probs[:, j]], axis=1)
            states = in_set(self.conformal_scores[lab], both, confidence)
            sets[:, j] = states[:, 0]
            ambiguous |= states.sum(1) > 1
            empty |= states.sum(1) == 0
        return sets, ambiguous, empty & ~ambiguous

    def decide(
        self, logits: np.ndarray, features: np.ndarray | None = None, ood_parts: dict[str, np.ndarray] | None = None
    ) -> Decisions:
        """Decisions for logits (N, C) and, for the OOD gate, penultimate features (N, D).

        Args:
            logits: the model's logits.
            features: the gate inputs (`lungnet.scoring.gate_inputs.gate_inputs`), or None (no OOD flags).
            ood_parts: an `ImageGate`'s part scores of these images if known (its `reference_parts` when they are the
                images it was just thresholded on), used instead of scoring ``features`` again.

        Raises:
            ValueError: ``ood_parts`` of another number of images.
        """
        probs = self.calibrated(logits)
        n = len(probs)
        out = Decisions(probs, self.labels_of(probs), [""] * n, [""] * n, [""] * n)
        conformal = self.prediction_sets(probs)
        if conformal is not None:
            out.sets, out.ambiguous, out.empty = conformal
        if self.ood is not None and features is not None:
            out.ood_parts, out.ood_score, out.ood = flag_parts(self.ood, features, ood_parts)
        confidence = np.maximum(probs, 1 - probs).min(1) if self.multilabel else probs.max(1)
        for i in range(n):
            kind, reason = self._abstain_reason(out, i, float(confidence[i]))
            if reason:
                out.decision[i], out.reason[i], out.referral[i] = ABSTAIN, reason, kind
            if out.empty is not None and out.empty[i]:
                out.note[i] = empty_set_note(f"{1 - float(self.alpha):.0%}", self.multilabel)
        return out

    def _abstain_reason(self, out: Decisions, i: int, confidence: float) -> tuple[str, str]:
        """(referral kind, reason) for image ``i``; ("", "") when its decision stands (an empty set included)."""
        if out.ood is not None and out.ood[i]:
            parts = {k: float(v[i]) for k, v in out.ood_parts.items()} if out.ood_parts is not None else None
            return OOD, ood_reason(float(out.ood_score[i]), float(self.ood.threshold), parts)
        if self.abstain_ambiguous and out.ambiguous is not None and out.ambiguous[i]:
            return AMBIGUOUS, ambiguous_reason(f"{1 - float(self.alpha):.0%}", self.multilabel)
        if self.abstain_below is not None and confidence < self.abstain_below:
            return CONFIDENCE, confidence_reason(confidence, self.abstain_below)
        return "", ""

    # ------------------------------------------------------------------ file
    def to_dict(self) -> dict:
        """JSON-ready data."""
        data = asdict(self)
        data["ood"] = self.ood.to_dict() if self.ood is not None else None
        scores = self.conformal_scores
        if isinstance(scores, dict):
            data["conformal_scores"] = {k: np.asarray(v, dtype=float).tolist() for k, v in scores.items()}
        elif scores is not None:
            data["conformal_scores"] = np.asarray(scores, dtype=float).tolist()
        return {"format": FORMAT, "rule": self.rule, **data}

    @classmethod
    def from_dict(cls, data: dict) -> DecisionRecord:
        """Inverse of `to_dict`, every value type- and range-checked (`lungnet.artifacts.decision_file`).

        Raises:
            ValueError: not a decision record, or a value of the wrong type or out of range (named by its key).
        """
        return cls(**record_fields(data))

    def write(self, path: str | os.PathLike) -> Path:
        """Writes the record as JSON (atomically)."""
        return write_json(path, self.to_dict())

    def fitted_on(self) -> str:
        """Where the record was fitted, in words for logs: a split, or training's OOD gate alone."""
        if self.split is None:
            return "an older training: the OOD gate only; evaluate.py split=val fits the operating point and sets"
        return str(self.split)

    def describe(self) -> dict:
        """Short facts for run records and answers (no arrays)."""
        ood = self.ood.info if self.ood is not None else None
        return {
            "split": self.split,
            "rule": self.rule,
            "positive_class": self.positive_class,
            "thresholds": self.thresholds,
            "temperature": self.temperature,
            "alpha": self.alpha,
            "abstain_below": self.abstain_below,
            "ood_gate": {**ood, "threshold": self.ood.threshold} if ood is not None else None,
        }


def new_record(labels: list[str], multilabel: bool, checkpoint: str | os.PathLike) -> DecisionRecord:
    """An empty record for ``checkpoint`` (its hash computed now); the positive class of a two-class model set."""
    path = Path(checkpoint)
    positive = None if multilabel else default_positive(labels)
    return DecisionRecord(list(labels), multilabel, sha256_file(path), path.name, positive_class=positive)


def read_decision(path: str | os.PathLike, checkpoint: str | os.PathLike | None, labels: list[str]) -> DecisionRecord:
    """Reads a decision file and checks that it belongs to ``checkpoint`` (by hash) and its labels.

    Args:
        path: the ``.decision.json`` file.
        checkpoint: the model file it must belong to (None: exports, whose record was checked when exported).
        labels: the model's labels.

    Raises:
        CheckpointError: missing, malformed, a value of the wrong type or out of range (named by its key, with what
            it accepts), or fitted for another checkpoint or label list (one line).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"decision={path}: no such decision file (decision=none to run without one)")
    try:
        record = DecisionRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"decision file {path} cannot be read: {exc}") from exc
    if checkpoint is not None and record.checkpoint_sha256 != sha256_file(checkpoint):
        raise CheckpointError(
            f"decision file {path} was fitted for another checkpoint ({record.checkpoint}, sha256 "
            f"{record.checkpoint_sha256[:12]}...), not {checkpoint}: rerun evaluate.py ckpt={checkpoint} split=val, "
            "or pass decision=none"
        )
    if list(record.labels) != list(labels):
        raise CheckpointError(f"decision file {path} is for labels {record.labels}, the model has {labels}")
    return record


def find_decision(
    choice: str | os.PathLike | None, model_file: str | os.PathLike, labels: list[str], verify: bool = True
) -> tuple[DecisionRecord | None, Path | None]:
    """The decision record a model runs with: ``choice`` is ``auto`` (``<stem>.decision.json`` when present),
    ``none``, or a path.

    Returns:
        (record or None, its file or None).
    """
    text = "auto" if choice is None else str(choice)
    if text.lower() in ("none", "false", "off"):
        return None, None
    path = decision_path(model_file) if text.lower() == "auto" else Path(text).expanduser()
    if text.lower() == "auto" and not path.is_file():
        log.info("No decision file %s: arg-max decisions, no prediction sets, no OOD gate", path.name)
        return None, None
    return read_decision(path, model_file if verify else None, labels), path


def export_fields(checkpoint: str | os.PathLike, labels: list[str]) -> dict:
    """What `lungnet.serve.export` records about decisions: the checkpoint's hash and its decision record (without the
    OOD gate, which needs the penultimate features an export does not output)."""
    path = Path(checkpoint)
    record, where = find_decision("auto", path, labels)
    fields_ = {"source_sha256": sha256_file(path), "decision": None, "decision_file": None}
    if record is not None:
        record.ood = None
        fields_.update(decision=record.to_dict(), decision_file=str(where))
    return fields_


def export_decision(
    choice: str | os.PathLike | None, sidecar: dict, labels: list[str], where: Path
) -> tuple[DecisionRecord | None, str | None]:
    """An export's decision record: ``auto`` the one its sidecar carries (`export_fields`), ``none`` none, a path
    that file (it must have been fitted for the checkpoint the export was made from).

    Raises:
        CheckpointError: a decision file of another checkpoint, or malformed.
    """
    text = "auto" if choice is None else str(choice)
    if text.lower() in ("none", "false", "off"):
        return None, None
    if text.lower() != "auto":
        chosen = read_decision(text, None, labels)
        if sidecar.get("source_sha256") and chosen.checkpoint_sha256 != sidecar["source_sha256"]:
            raise CheckpointError(
                f"decision file {text} was fitted for another checkpoint than the one {where.name} was exported from"
            )
        return chosen, text
    if not sidecar.get("decision"):
        return None, None
    try:
        return DecisionRecord.from_dict(sidecar["decision"]), f"{where} (copied from {sidecar.get('decision_file')})"
    except ValueError as exc:
        raise CheckpointError(f"the decision record in {where} cannot be read: {exc}") from exc
