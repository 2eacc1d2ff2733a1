"""Checks on what a data source reads, before its table is used: label CSVs, and files reached by two paths.

`read_label_csv` refuses a label file that cannot be one in one line; `blank_cells` marks the rows a CSV leaves
blank (they become bad rows, reported and skipped like unreadable images); `one_row_per_file` counts a file
reached through symlinks once, in the split its folder belongs to, and refuses one reached under two labels.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from lungnet.errors import DataError
from lungnet.io import printable

log = logging.getLogger(__name__)


SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


def split_folders(root: Path, is_class: Callable[[str], bool]) -> dict[str, Path]:
    """``{split: folder}`` of a data root's split folders (``train``/``val``/``test`` and aliases; {}: none).

    Raises:
        DataError: two folders name one split, or split folders sit beside class folders (one would be ignored).
    """
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    found: dict[str, Path] = {}
    for folder in subdirs:
        split = SPLIT_ALIASES.get(folder.name.lower())
        if split in found:
            raise DataError(f"{found[split]} and {folder} both name the {split} split: merge them or rename one")
        if split is not None:
            found[split] = folder
    stray = [p.name for p in subdirs if p.name.lower() not in SPLIT_ALIASES and is_class(p.name)]
    if found and stray:
        raise DataError(
            f"{root} holds split folders ({', '.join(p.name for p in found.values())}) beside class folders "
            f"({', '.join(stray)}): move the class folders into a split folder (e.g. train/), or the split folders out"
        )
    return found


def read_label_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """A data set's label CSV as text (blank cells are ``""``); refuses, in one line, a file that cannot be it.

    Raises:
        DataError: empty, not text, not CSV, or lacking one of ``columns``.
    """
    expected = f"expected the data set's own CSV with columns {', '.join(columns)}"
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path} is empty: {expected}") from exc
    except (UnicodeDecodeError, pd.errors.ParserError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise DataError(f"{path} is not a readable CSV file ({type(exc).__name__}: {reason}): {expected}") from exc
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(f"{path} lacks columns {missing}: {expected}")
    return table


def blank_cells(table: pd.DataFrame, columns: tuple[str, ...], name: str) -> list[str]:
    """Per row of a CSV as read, '' or why it is unusable: which of ``columns`` are blank, on which line of ``name``."""
    blank = np.column_stack([(table[c].str.strip() == "").to_numpy(dtype=bool) for c in columns])
    reasons = [""] * len(table)
    for i in np.flatnonzero(blank.any(axis=1)):  # only the rows with a blank cell are worded
        which = [f"'{c}'" for c, flag in zip(columns, blank[i], strict=True) if flag]
        reasons[i] = f"blank {', '.join(which)} in {name} line {i + 2}"  # line 1 is the header
    return reasons


def finding_cells(cells: pd.Series, valid: list[str], name: str, none: str = "No Finding") -> list[str]:
    """Per row of an NIH-style CSV, '' or why its ``|``-joined findings cannot be read: a name not in ``valid`` (a
    misspelt finding would make a positive image a negative), or ``none`` beside a finding (contradictory)."""
    cells = cells.fillna("").astype(str).tolist()
    known = set(valid)
    verdicts: dict[str, tuple[str, str]] = {}  # the reason's words before and after its line number
    for cell in set(cells):  # each distinct cell judged once (NIH: ~800 distinct cells in 112,120 rows)
        tokens = [t for t in cell.split("|") if t.strip()]
        unknown = [t for t in tokens if t not in known and t != none]
        if unknown:
            listing = f" (valid: {none}, {', '.join(valid)})"
            verdicts[cell] = (f"unknown finding {unknown[0]!r} in {name} line ", listing)
        elif none in tokens and len(tokens) > 1:
            verdicts[cell] = (f"'{none}' beside a finding ({cell}) in {name} line ", "")
    if not verdicts:
        return [""] * len(cells)
    said = [(line, verdicts.get(c)) for line, c in enumerate(cells, start=2)]
    return [f"{v[0]}{line}{v[1]}" if v else "" for line, v in said]


def real_paths(paths: pd.Series) -> pd.Series:
    """``os.path.realpath`` of each file, resolving each folder once (a data set has many files per folder)."""
    folders: dict[str, str] = {}

    def resolve(path: str) -> str:
        folder, name = os.path.split(path)
        if folder not in folders:
            folders[folder] = os.path.realpath(folder)
        resolved = os.path.join(folders[folder], name)
        return os.path.realpath(resolved) if os.path.islink(resolved) else resolved

    return paths.map(resolve)


def _home(real: str, split_folders: dict[str, Path]) -> str | None:
    """The split whose folder holds the real file, or None."""
    for split, folder in split_folders.items():
        if real.startswith(os.path.realpath(folder).rstrip(os.sep) + os.sep):
            return split
    return None


def one_row_per_file(table: pd.DataFrame, split_folders: dict[str, Path]) -> pd.DataFrame:
    """One row per real file, for a table of (``path``, ``label``, ``split``) found by walking folders.

    A file reached by two paths (a symlinked folder or file) is counted once: in the split whose folder holds
    the real file (a link from ``train/NORMAL`` into ``val/`` leaves those images in val), else on its first
    path. A file reached under two labels stops the run: one of the paths gives it the wrong label.

    Raises:
        DataError: the same file under two labels; the message names both paths.
    """
    real = real_paths(table["path"])
    twice = real.duplicated(keep=False)
    if not twice.any():
        return table
    drop = []
    for target, rows in table[twice].groupby(real[twice], sort=False):
        if rows["label"].nunique() > 1:
            a, b = rows.drop_duplicates("label").iloc[:2].itertuples()
            raise DataError(
                f"{printable(a.path)} (label {a.label}) and {printable(b.path)} (label {b.label}) are the same file "
                f"{printable(target)}: a symlink puts it in the wrong class folder; remove the link"
            )
        home = _home(target, split_folders)
        at_home = rows.index[rows["split"] == home] if home is not None else rows.index[:0]
        keep = at_home[0] if len(at_home) else rows.index[0]
        drop += [i for i in rows.index if i != keep]
    example = table.loc[drop[0], "path"]
    log.warning(
        "%d image path(s) lead to a file already listed (symlinks, e.g. %s -> %s): each file counted once, in "
        "the split whose folder holds it",
        len(drop),
        printable(example),
        printable(real[drop[0]]),
    )
    return table.drop(index=drop).reset_index(drop=True)
