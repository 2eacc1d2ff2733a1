"""A trained model's files and their names, in one place (a model bundle in the MONAI sense).

Beside a checkpoint ``run/checkpoints/best.ckpt`` (or an export ``best.onnx``) lie:

- ``best.decision.json``: the decision record (`decision_path`; `lungnet.artifacts.decision_file` reads it);
- ``best.model_card.md``: the model card the app shows, beside its decision file (`card_path`);
- ``best.onnx.json``: an export's preprocessing sidecar (`sidecar_path`; also embedded in the file);
- ``ensemble.json``: several checkpoints as one model (`MANIFEST`; `lungnet.artifacts.ensemble_manifest`).

Every module that opens or writes one of them takes its name from here.
"""

from __future__ import annotations

import os
from pathlib import Path

DECISION_SUFFIX = ".decision.json"
CARD_SUFFIX = ".model_card.md"
SIDECAR_SUFFIX = ".json"
MANIFEST = "ensemble.json"


def decision_path(model_file: str | os.PathLike) -> Path:
    """``run/checkpoints/best.ckpt`` -> ``run/checkpoints/best.decision.json``."""
    path = Path(model_file)
    return path.with_name(f"{path.stem}{DECISION_SUFFIX}")


def card_path(decision_file: str | os.PathLike) -> Path:
    """The model card kept beside a decision file: ``best.decision.json`` -> ``best.model_card.md``."""
    path = Path(decision_file)
    stem = path.name[: -len(DECISION_SUFFIX)] if path.name.endswith(DECISION_SUFFIX) else path.stem
    return path.with_name(f"{stem}{CARD_SUFFIX}")


def sidecar_path(model_path: str | os.PathLike) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    path = Path(model_path)
    return path.with_name(path.name + SIDECAR_SUFFIX)
