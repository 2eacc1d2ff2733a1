"""Where ``evaluate.py`` keeps the decision file it fits, and the check, before any work, that it can write there.

The decision file goes beside the checkpoint (``<ckpt stem>.decision.json``, `lungnet.artifacts.paths.decision_path`),
or where ``decision.out=<file>`` says (for a checkpoint in a read-only folder); the copy of the model card the app
shows goes beside the decision file (`lungnet.artifacts.paths.card_path`). ``predict.py`` and the app read a
decision file kept elsewhere with ``decision=<file>``; it is pinned to its checkpoint by SHA-256 wherever it lies.

`check_target` runs before the model sees an image: when this evaluation will fit and write a decision file, a
folder that cannot be written is one line naming it and offering ``decision.out=``, not an error after the work.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from lungnet.artifacts.decision import DecisionRecord, read_decision
from lungnet.artifacts.paths import decision_path
from lungnet.errors import CheckpointError, WriteError
from lungnet.io import check_writable, printable

log = logging.getLogger(__name__)


def target(cfg: DictConfig, model_file: str | Path) -> Path:
    """The decision file of ``model_file``: ``decision.out`` when set, else ``<stem>.decision.json`` beside it."""
    out = cfg.decision.get("out")
    return Path(str(out)).expanduser() if out else decision_path(model_file)


def read_existing(path: Path, model_file: str | Path, labels: list[str], warn: bool) -> DecisionRecord | None:
    """The decision file at ``path`` when it exists and fits ``model_file`` (its hash, its labels), else None (with a
    warning when ``warn``: a file of another checkpoint is replaced when this evaluation fits on val)."""
    if not path.is_file() or not Path(model_file).is_file():  # an ensemble's manifest is written after its outputs
        return None
    try:
        return read_decision(path, model_file, labels)
    except CheckpointError as exc:
        if warn:
            log.warning("%s; it will be replaced when this evaluation fits on val", exc)
        return None


def reuses(existing: DecisionRecord | None, cfg: DictConfig, split: str, fit_name: str) -> bool:
    """True when the decisions come from ``existing`` (fitted on a split, and no refit asked: ``split=val`` with the
    fit on val, or ``decision.refit=true``), False when they are fitted anew on ``fit_name``."""
    refit = split == "val" == fit_name or bool(cfg.decision.get("refit"))
    return existing is not None and existing.split is not None and not refit


def check_target(cfg: DictConfig, model_file: str | Path, labels: list[str], split: str, fit_name: str) -> None:
    """Checks, before any work, that the decision file this evaluation will write (fitted on val, ``decision.write``)
    can be written: its folder is created when missing and a probe file written there (`lungnet.io.check_writable`).

    Raises:
        WriteError: the folder cannot be written; one line naming it and offering ``decision.out=<file>``.
    """
    if fit_name != "val" or not bool(cfg.decision.write):
        return
    path = target(cfg, model_file)
    if reuses(read_existing(path, model_file, labels, warn=False), cfg, split, fit_name):
        return
    try:
        check_writable(path.parent)
    except OSError as exc:
        where = "decision.out" if cfg.decision.get("out") else "the checkpoint's folder"
        raise WriteError(
            exc.errno,
            f"Cannot write {printable(path.parent)} ({where}): {exc.strerror or exc}; the decision file {path.name} "
            "fitted on val (and the model card the app shows) would go there: write them elsewhere with "
            "decision.out=<writable folder>/<name>.decision.json, or none with decision.write=false",
        ) from exc
