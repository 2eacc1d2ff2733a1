"""Atomic writes (temp file + rename): a crash never leaves a half-written report."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd


def _clean(obj):
    """NaN/inf -> None so the JSON is standard."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, data: dict) -> Path:
    """Writes ``data`` as indented JSON atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_clean(data), indent=2, default=str))
    os.replace(tmp, path)
    return path


def write_csv(path: str | os.PathLike, frame: pd.DataFrame) -> Path:
    """Writes a DataFrame as UTF-8 CSV atomically (undecodable file-name bytes are escaped)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_csv(tmp, index=False, encoding="utf-8", errors="backslashreplace")
    os.replace(tmp, path)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes text atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
