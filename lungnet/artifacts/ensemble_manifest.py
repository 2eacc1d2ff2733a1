"""The ensemble manifest format (``ensemble.json``, written by `lungnet.artifacts.ensemble.Ensemble.write_manifest`):
its one
reader. A manifest is untrusted input: every value the ensemble uses is type- and range-checked here, and a bad one
is one line naming the file, the key and what it accepts (`lungnet.untrusted`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from lungnet.artifacts.decision_file import read_temperature
from lungnet.errors import CheckpointError
from lungnet.untrusted import BadValue, Fields

FORMAT = "lungnet-ensemble/1"


@dataclass(frozen=True)
class Pin:
    """A member as its manifest pins it (`read_manifest`)."""

    checkpoint: Path
    sha256: str
    name: str | None
    temperature: float | None


def _pin(fields: Fields) -> Pin:
    checkpoint = fields.string("checkpoint")
    if not Path(checkpoint).is_absolute():
        raise BadValue(fields.key("checkpoint"), checkpoint, "an absolute path of a .ckpt file (as evaluate.py writes)")
    digest = fields.string("sha256")
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise BadValue(fields.key("sha256"), digest, "a SHA-256: 64 lowercase hex digits")
    name = fields.string("name", null=True, default=None)
    temperature = read_temperature(fields) if "temperature" in fields.data else None
    return Pin(Path(checkpoint), digest, name, temperature)


def read_manifest(path: Path) -> list[Pin]:
    """The members an ``ensemble.json`` pins, every value checked (a manifest is untrusted input).

    ``format`` is ``lungnet-ensemble/1``; ``members`` a non-empty list of objects, each with ``checkpoint`` (an
    absolute path), ``sha256`` (64 hex digits), ``name`` (a string or null) and ``temperature`` (in (0, 100] or
    null, `lungnet.artifacts.decision_file.read_temperature`); ``labels`` (distinct strings) and ``multilabel`` (true or
    false) where present.

    Raises:
        CheckpointError: unreadable, not a manifest, or a bad value: one line naming the file, key and range.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        fields = Fields(data)
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
        if "labels" in data:
            fields.strings("labels")
        if "multilabel" in data:
            fields.boolean("multilabel")
        return [_pin(Fields(m, f"members[{i}].")) for i, m in enumerate(fields.items("members"))]
    except BadValue as exc:
        raise CheckpointError(f"ensemble manifest {path} cannot be read: {exc}") from exc
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a lungnet ensemble manifest ({exc})") from exc
