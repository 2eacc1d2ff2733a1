"""Atomic writes (temp file + fsync + rename): a crash or ``kill -9`` never leaves a half-written report.

Also `printable`, which makes text holding undecodable file-name bytes safe to log and print.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from lungnet.errors import WriteError

if TYPE_CHECKING:  # pandas loads only where a table is written: the commands' refusals and --help stay fast
    import pandas as pd


def printable(text: object) -> str:
    """``str(text)`` with undecodable file-name bytes (surrogate escapes) shown as ``\\xff``.

    Linux file names are bytes; Python maps bytes that are not UTF-8 to lone surrogates, which
    cannot be encoded and make log handlers and CSV writers fail. Valid non-ASCII text is kept.
    """
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


INLINE_MIN = 17  # number lists at least this long are written on one line (scores of every calibration image)


def _clean(obj, inline: list[str], token: str):
    """NaN/inf -> None and undecodable strings escaped, so the JSON is standard UTF-8; a long list of plain numbers
    becomes a placeholder (``token`` and its index) for its compact JSON, appended to ``inline``."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, str):
        return printable(obj)
    if isinstance(obj, dict):
        return {printable(k): _clean(v, inline, token) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        if len(obj) >= INLINE_MIN and all(type(v) is float or type(v) is int for v in obj):
            inline.append(json.dumps([v if math.isfinite(v) else None for v in obj]))  # the C encoder: ~10x faster
            return f"{token}{len(inline) - 1}"
        return [_clean(v, inline, token) for v in obj]
    return obj


def dumps(data: dict) -> str:
    """``data`` as indented JSON, NaN and inf as null, long lists of numbers on one line each.

    Linear in the size of ``data``: the indenting encoder is pure Python and slow per value, so the numbers of long
    lists (a decision file's calibration scores, about 200k at NIH size) go through the C encoder instead.
    """
    inline: list[str] = []
    token = f"@inline-{secrets.token_hex(8)}-"
    text = json.dumps(_clean(data, inline, token), indent=2, default=str)
    if not inline:
        return text
    return re.sub(f'"{re.escape(token)}(\\d+)"', lambda m: inline[int(m.group(1))], text)


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], mode: str = "w", **open_kwargs) -> Path:
    """Calls ``write(file)`` on a temporary file beside ``path``, syncs it and renames it over ``path``.

    Args:
        path: the final file.
        write: writes the content into the open file it is given.
        mode: ``w`` (text) or ``wb`` (bytes).
        **open_kwargs: passed to `open` (encoding, errors, newline).

    Returns:
        The path.

    Raises:
        WriteError: the file could not be written (its previous version, if any, is left as it was).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, mode, **open_kwargs) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # disk full, read-only: one clear error naming the file
        raise WriteError.of(path, exc, "an earlier version of it, if any, is kept") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: str | os.PathLike, data: dict) -> Path:
    """Writes ``data`` as indented JSON atomically; returns the path."""
    text = dumps(data)
    return atomic_write(path, lambda fh: fh.write(text), encoding="utf-8")


def write_csv(path: str | os.PathLike, frame: pd.DataFrame, errors: str = "backslashreplace") -> Path:
    """Writes a DataFrame as CSV atomically.

    Args:
        path: the CSV file.
        frame: the table (no index column is written).
        errors: how undecodable file-name bytes are written: ``backslashreplace`` (valid UTF-8,
            ``\\xff``) or ``surrogateescape`` (the original bytes, so paths read back exactly).
    """
    import pandas as pd

    if errors == "backslashreplace":  # undecodable bytes as \xff, as in the logs (`printable`)
        text_columns = [c for c in frame.columns if frame[c].dtype == object or pd.api.types.is_string_dtype(frame[c])]
        frame = frame.assign(**{c: frame[c].map(printable, na_action="ignore") for c in text_columns})
    return atomic_write(path, lambda fh: frame.to_csv(fh, index=False), encoding="utf-8", errors=errors, newline="")


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes text atomically."""
    return atomic_write(path, lambda fh: fh.write(text), encoding="utf-8", errors="backslashreplace")


def check_writable(folder: str | os.PathLike) -> None:
    """Creates ``folder`` when missing, then writes and removes a 64 KiB probe file in it.

    The truest test of a place before work that would end by writing there: `os.access` says yes to root on a
    folder without write bits and to an NFS root-squash, and a full disk often still creates folders and empty
    files. The folders it created stay (the caller removes them if it gives up).

    Raises:
        OSError: the folder cannot be written (read-only, no permission, not a folder, full disk or quota).
    """
    folder = Path(folder)
    probe = folder / f".lungnet-write-check-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as fh:
            fh.write(b"\0" * 65536)
    finally:
        if folder.is_dir():
            probe.unlink(missing_ok=True)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Deletes ``*.tmp`` files a killed run left in ``folder`` and its sub-folders; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.rglob("*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
