"""What the app tells its clients about the model it serves: names and SHA-256 hashes, never server paths.

`public_facts` is `lungnet.serve.inference.Predictor.describe` as ``/health``, ``/model`` and every ``/predict`` answer
give it: the model file, the decision file and an ensemble's member files by base name, each pinned by its
SHA-256 (the absolute paths `describe` holds for predict.py's local prediction.json stay on the server).
`model_card_text` is the model card ``evaluate.py split=val`` (and training) keeps beside the decision file it wrote;
`applied_thresholds` the thresholds an answer reports (those its decision uses); `summary_command` the command
that writes the validation summary the app shows, for a model whose decision file lacks one (trained before
training wrote it, or with no decision file at all).
"""

from __future__ import annotations

from pathlib import Path

from lungnet.artifacts.decision import DecisionRecord, sha256_file
from lungnet.artifacts.paths import card_path, decision_path
from lungnet.data.labels import DEFAULT_THRESHOLD
from lungnet.serve.inference import Predictor


def _name_and_hash(value: object) -> tuple[str | None, str | None]:
    """A server-side file as a client may see it: its base name and the SHA-256 of its bytes (None for no file;
    a description that is no file keeps its words and gets no hash)."""
    if value is None:
        return None, None
    path = Path(str(value))
    return path.name, sha256_file(path) if path.is_file() else None


def public_facts(predictor: Predictor) -> dict:
    """`Predictor.describe` without server paths: ``model_file`` and ``decision_file`` are base names, with
    ``model_sha256`` and ``decision_sha256`` beside them; an ensemble's members name their checkpoint and the file
    their temperature came from by base name (their ``sha256`` pins the checkpoint)."""
    facts = predictor.describe()
    facts["model_file"], facts["model_sha256"] = _name_and_hash(facts["model_file"])
    facts["decision_file"], facts["decision_sha256"] = _name_and_hash(facts["decision_file"])
    for member in facts.get("members") or []:
        member["checkpoint"] = _name_and_hash(member.get("checkpoint"))[0]
        member["temperature_from"] = _name_and_hash(member.get("temperature_from"))[0]
    return facts


def applied_thresholds(record: DecisionRecord | None, labels: list[str], multilabel: bool) -> dict[str, float] | None:
    """The answer's ``thresholds``: those the decision uses (`DecisionRecord.applied_thresholds`); without a
    decision record a multi-label model's findings are decided at `DEFAULT_THRESHOLD`; None: the arg-max."""
    if record is not None:
        return record.applied_thresholds
    return {lab: DEFAULT_THRESHOLD for lab in labels} if multilabel else None


def model_card_text(predictor: Predictor) -> str | None:
    """The model card evaluate.py keeps beside the decision file in use, else beside the model; None: none."""
    places = [Path(str(predictor.decision_file))] if predictor.decision_file is not None else []
    places += [predictor.path] if predictor.path is not None else []
    for card in (card_path(p) for p in places if p.is_file()):
        if card.is_file():
            return card.read_text(encoding="utf-8")
    return None


def summary_command(predictor: Predictor, public: bool) -> str | None:
    """The command that writes the validation summary (and the whole decision file) the app shows, or None when
    the decision record in use has one.

    Args:
        predictor: the served model.
        public: name files by base name (answers to clients), else by full path (the server's log).
    """
    if predictor.decision is not None and predictor.decision.summary:
        return None

    def name(path) -> str:
        return Path(str(path)).name if public else str(path)

    if predictor.kind == "ensemble" and predictor.path is None:
        target = "[" + ",".join(name(m.path) for m in predictor.backend.ensemble.members) + "]"
    elif predictor.kind in ("ensemble", "checkpoint"):
        target = name(predictor.path)
    else:
        return (
            f"python evaluate.py ckpt=<the checkpoint {name(predictor.path)} was exported from> split=val, "
            "then export it again"
        )
    command = f"python evaluate.py ckpt={target} split=val"
    elsewhere = predictor.decision_file is not None and predictor.kind == "checkpoint"
    if elsewhere and Path(str(predictor.decision_file)) != decision_path(predictor.path):
        command += f" decision.out={name(predictor.decision_file)}"
    return command
