"""A repeated split assignment on unchanged input is read back, not recomputed.

`lungnet.data.splits.assign_splits` (sklearn's patient-grouped stratified k-fold, a Python loop over groups) is most
of a second command's setup once the manifest spares the image scan. `cached_assign_splits` keeps its result beside
the manifest (`lungnet.data.manifest.manifest_dir`), one small JSON file per input, named by a digest of exactly what
determines the split: the table's ``path``, ``label``, ``patient``, ``split``, ``sha1`` and ``near_group`` columns in
row order, every split parameter, sklearn's version and `SPLIT_CACHE_VERSION`. The file holds one letter per input
row (`_CODES`; ``x``: a row the assignment dropped). Only the `KEEP` most recently used files are kept.

The file is untrusted on read: a wrong digest, length or letter is ignored (the split is computed, an info line says
so). A folder that cannot be written is skipped with a debug line; the split is the same either way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import __version__ as sklearn_version

from lungnet.data.splits import assign_splits
from lungnet.errors import WriteError
from lungnet.io import atomic_write

log = logging.getLogger(__name__)

SPLIT_CACHE_VERSION = 1  # bump when assign_splits (or a helper it calls) can give another split for the same input
KEEP = 8
COLUMNS = ("path", "label", "patient", "split", "sha1", "near_group")
_CODES = {"train": "t", "val": "v", "test": "e"}
_NAMES = {code: name for name, code in _CODES.items()}
_DROPPED = "x"
_ROW = "__lungnet_row__"  # carries each input row's position through assign_splits


def split_digest(table: pd.DataFrame, params: list) -> str:
    """SHA-256 over the columns `assign_splits` reads (as it reads them) and its parameters."""
    h = hashlib.sha256(json.dumps([SPLIT_CACHE_VERSION, sklearn_version, params]).encode())
    for column in COLUMNS:
        if column not in table:
            values: list = []
        elif column == "near_group":  # splits.py uses its factorized codes
            values = pd.factorize(table[column])[0].tolist()
        elif column == "split":
            values = table[column].fillna("").astype(str).tolist()
        else:
            values = table[column].astype(str).tolist()
        h.update(json.dumps([column, column in table, values]).encode())
    return h.hexdigest()


def _read(path: Path, digest: str, n: int) -> str | None:
    """The cached letters for ``digest`` (``n`` of them, each known), else None (an info line when a file was there)."""
    try:
        if path.stat().st_size > 2 * n + 1024:
            raise ValueError("larger than its split could be")
        data = json.loads(path.read_text(encoding="utf-8"))
        codes = data.get("split") if isinstance(data, dict) else None
        if data.get("version") != SPLIT_CACHE_VERSION or data.get("digest") != digest or not isinstance(codes, str):
            raise ValueError("not this input's split")
        if len(codes) != n or not set(codes) <= {*_NAMES, _DROPPED}:
            raise ValueError(f"{len(codes)} letters for {n} rows or an unknown letter")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError) as exc:
        log.info("Split cache %s ignored (%s): computing the split", path, exc)
        return None
    try:
        os.utime(path)  # most recently used: kept by _prune
    except OSError as exc:
        log.debug("Split cache %s not touched: %s", path, exc)
    return codes


def _write(path: Path, digest: str, codes: str) -> None:
    """Writes the cache file and keeps the `KEEP` newest; a folder that cannot be written is skipped."""
    text = json.dumps({"version": SPLIT_CACHE_VERSION, "digest": digest, "split": codes})
    try:
        atomic_write(path, lambda fh: fh.write(text), encoding="utf-8")
        files = sorted(path.parent.glob("splits-*.json"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
        for old in files[KEEP:]:
            old.unlink(missing_ok=True)
    except (OSError, WriteError) as exc:
        log.debug("Split cache not written to %s: %s", path.parent, exc)


def cached_assign_splits(
    folder: str | os.PathLike | None,
    table: pd.DataFrame,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    carve_val: bool,
    cv_folds: int,
    cv_fold: int,
) -> pd.DataFrame:
    """`assign_splits` with its result kept in ``folder`` (None: not kept); the same table either way.

    Args:
        folder: the cache folder (the manifest's, `lungnet.data.manifest.manifest_dir`).
        table: the source table.
        seed, val_fraction, test_fraction, carve_val, cv_folds, cv_fold: as `assign_splits` takes them.

    Returns:
        A copy of the table with ``split`` in {train, val, test}.
    """
    params = [int(seed), float(val_fraction), float(test_fraction), bool(carve_val), int(cv_folds), int(cv_fold)]
    table = table.reset_index(drop=True)
    digest = split_digest(table, params) if folder is not None else ""
    path = Path(folder) / f"splits-{digest[:32]}.json" if folder is not None else None
    codes = _read(path, digest, len(table)) if path is not None else None
    if codes is not None:
        letters = np.frombuffer(codes.encode("ascii"), dtype="S1").astype(str)
        kept = letters != _DROPPED
        if not kept.all():
            log.info("Dropping the shipped val split (%d images): carving val from train instead", (~kept).sum())
        out = table[kept].reset_index(drop=True)
        out["split"] = pd.Series(letters[kept]).map(_NAMES).to_numpy(dtype=object)
        log.debug("Splits read from %s", path)
        return out
    out = assign_splits(table.assign(**{_ROW: np.arange(len(table))}), *params)
    rows = out.pop(_ROW).to_numpy()
    known = out["split"].map(_CODES)
    if path is not None and known.notna().all():
        letters = np.full(len(table), _DROPPED, dtype=object)
        letters[rows] = known.to_numpy()
        _write(path, digest, "".join(letters))
    return out
