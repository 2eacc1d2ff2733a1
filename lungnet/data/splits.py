"""Seeded, stratified and patient-grouped train/val/test splits, written to and read from disk.

A patient never appears in two splits. The same table and seed always give the same split.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from lungnet.data.sources import DataError
from lungnet.io import write_csv

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def _strat_key(table: pd.DataFrame) -> np.ndarray:
    """Stratification key: the label, or the first finding for multi-label strings."""
    return table["label"].astype(str).str.split("|").str[0].to_numpy()


def patients_from_names(table: pd.DataFrame, pattern: str | None) -> pd.DataFrame:
    """Fills empty ``patient`` cells from the file names: the first matching group of ``pattern`` (a regex searched
    in the file name, e.g. ``^(\\d{8})_`` for NIH's ``00000061_012.png``). Ids a source read from its labels stay.

    Raises:
        DataError: ``pattern`` is not a regular expression with a group.
    """
    if not pattern:
        return table
    try:
        found = table["path"].map(lambda p: Path(p).name).str.extract(pattern, expand=True)
    except (re.error, ValueError) as exc:
        raise DataError(f"data.patient_pattern={pattern!r} is not a regex with a (group) for the id: {exc}") from exc
    ids = found.bfill(axis=1).iloc[:, 0].fillna("")  # the first group that matched
    table = table.copy()
    empty = table["patient"].astype(str) == ""
    table.loc[empty, "patient"] = ids[empty].astype(str)
    named = (table["patient"].astype(str) != "") & empty
    log.info(
        "Patient ids from file names (%s): %d of %d images, %d patients; other images are their own group",
        pattern,
        int(named.sum()),
        len(table),
        table.loc[named, "patient"].nunique(),
    )
    return table


def _groups(table: pd.DataFrame) -> np.ndarray:
    """One group per patient (an image without a patient id is its own); groups holding copies of the same file
    (same ``sha1``) are merged, and so are groups holding near copies (the same ``near_group``, present with
    ``data.near_duplicates=group``), so a copy never lands on the other side of a split."""
    groups = _copy_groups(table)
    return _merge_near_copies(groups, table["near_group"].to_numpy()) if "near_group" in table else groups


def _merge_near_copies(groups: np.ndarray, near_group: np.ndarray) -> np.ndarray:
    """``groups`` with those sharing a ``near_group`` merged (connected components); a merged group takes the name
    of its first row's group, so without near copies every name stays."""
    codes, names = pd.factorize(groups)
    near = pd.factorize(near_group)[0]
    n, k = len(names), int(near.max()) + 1 if len(near) else 0
    graph = coo_matrix((np.ones(len(codes), dtype=np.int8), (codes, n + near)), shape=(n + k, n + k))
    _, component = connected_components(graph, directed=False)
    first = pd.Series(np.arange(n)).groupby(component[:n]).transform("min").to_numpy()
    return np.asarray(names, dtype=groups.dtype)[first[codes]]


def _copy_groups(table: pd.DataFrame) -> np.ndarray:
    """One group per patient, groups holding copies of the same file (same ``sha1``) merged."""
    patient = table["patient"].astype(str).to_numpy()
    groups = np.where(patient == "", "img:" + table.index.astype(str), "pat:" + patient)
    if "sha1" not in table:
        return groups
    parent = {g: g for g in groups}

    def root(g: str) -> str:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    sha = table["sha1"].astype(str).to_numpy()
    for digest in pd.unique(sha[(sha != "") & pd.Series(sha).duplicated(keep=False).to_numpy()]):
        first, *rest = (root(g) for g in groups[sha == digest])
        for g in rest:
            parent[g] = first
    return np.array([root(g) for g in groups])


def holdout(table: pd.DataFrame, fraction: float, seed: int, key: str = "data.val_fraction") -> np.ndarray:
    """Boolean mask of a stratified, patient-grouped held-out part of ``table``: one fold of ``round(1 / fraction)``,
    so 0.5, 0.33, 0.25, 0.2 and 0.1 are held out as asked; another fraction is rounded that way (a warning says so).

    Args:
        table: rows to split (needs ``label`` and ``patient``).
        fraction: share of rows to hold out (0 < fraction < 1).
        seed: random seed.
        key: the config key of ``fraction``, named in the warning.

    Returns:
        A boolean array, True for held-out rows.
    """
    n_splits = max(2, round(1 / fraction))
    y = _strat_key(table)
    counts = pd.Series(y).value_counts()
    # classes rarer than the fold count cannot be stratified: merge them into one bucket
    y = np.where(pd.Series(y).map(counts).to_numpy() < n_splits, "__rare__", y)
    groups = _groups(table)
    x = np.zeros(len(table))
    if len(set(groups)) == len(table):
        splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        _, held = next(splitter.split(x, y))
    else:
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        _, held = next(splitter.split(x, y, groups))
    mask = np.zeros(len(table), dtype=bool)
    mask[held] = True
    if abs(1 / n_splits - fraction) > 0.02:
        log.warning(
            "%s=%g holds out %.2f of the images (%d of %d): the held-out part is one of %d stratified, patient-grouped "
            "folds; 0.5, 0.33, 0.25, 0.2 or 0.1 give the share they name",
            key,
            fraction,
            mask.mean(),
            mask.sum(),
            len(mask),
            n_splits,
        )
    return mask


def kfold(table: pd.DataFrame, n_folds: int, fold: int, seed: int) -> np.ndarray:
    """Boolean mask of validation rows for fold ``fold`` of a stratified, patient-grouped k-fold."""
    y, groups = _strat_key(table), _groups(table)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    _, held = list(splitter.split(np.zeros(len(table)), y, groups))[fold]
    mask = np.zeros(len(table), dtype=bool)
    mask[held] = True
    return mask


def assign_splits(
    table: pd.DataFrame,
    seed: int,
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    carve_val: bool = False,
    cv_folds: int = 0,
    cv_fold: int = 0,
) -> pd.DataFrame:
    """Fills the ``split`` column with train/val/test.

    Shipped splits are kept. Rows without one are divided: ``test_fraction`` becomes test (only
    when the data set ships no test split), then ``val_fraction`` of the rest becomes val. A shipped
    ``trainval`` part is divided into train and val, and so is a shipped train when no val is shipped.
    With ``carve_val`` a validation split is carved from train even when the data set ships one (the
    shipped val is then dropped: e.g. the 16-image official val of the Kaggle pneumonia set). With
    ``cv_folds`` > 1, val is fold ``cv_fold`` of a k-fold over the non-test rows.

    Args:
        table: the source table.
        seed: random seed for every random choice.
        val_fraction: share of the non-test rows that becomes val.
        test_fraction: share of all rows that becomes test when no test split is shipped.
        carve_val: carve val from train even when a val split is shipped.
        cv_folds: number of cross-validation folds (0 or 1: off).
        cv_fold: which fold is val.

    Returns:
        A copy of the table with ``split`` in {train, val, test}.
    """
    table = table.copy().reset_index(drop=True)
    split = table["split"].fillna("").astype(str).to_numpy().copy()
    if carve_val and (split == "val").any():
        log.info("Dropping the shipped val split (%d images): carving val from train instead", (split == "val").sum())
        table = table[split != "val"].reset_index(drop=True)
        split = split[split != "val"]
    unassigned = split == ""
    if test_fraction > 0 and not (split == "test").any() and unassigned.any():
        idx = np.flatnonzero(unassigned)
        held = holdout(table.iloc[idx], test_fraction, seed, "data.test_fraction")
        split[idx[held]] = "test"
        unassigned = split == ""
    has_val = (split == "val").any()
    divide = cv_folds > 1 or (carve_val or not has_val) and val_fraction > 0  # no val shipped: carve one from train
    folded = (split == "train") & divide | (split == "val") & (cv_folds > 1)
    pool = np.flatnonzero(unassigned | (split == "trainval") | folded)
    if len(pool) and divide:
        sub = table.iloc[pool]
        held = kfold(sub, cv_folds, cv_fold, seed) if cv_folds > 1 else holdout(sub, val_fraction, seed + 1)
        split[pool] = np.where(held, "val", "train")
    split[split == ""] = "train"
    split[split == "trainval"] = "train"
    table["split"] = split
    return table


def split_overlap(values: pd.Series, split: pd.Series) -> dict[str, int]:
    """Per pair of splits (``"train/val"``, ...), how many distinct non-blank ``values`` appear in both (each split's
    set built once, not once per pair; over the columns' arrays: a pandas selection per split costs more here)."""
    values, split = values.to_numpy(), split.to_numpy()
    sets = {s: set(values[split == s]) - {""} for s in SPLITS}
    return {f"{a}/{b}": len(sets[a] & sets[b]) for i, a in enumerate(SPLITS) for b in SPLITS[i + 1 :]}


def check_patient_overlap(table: pd.DataFrame) -> dict[str, int]:
    """Counts patients that appear in more than one split, per pair of splits."""
    return split_overlap(table["patient"], table["split"])


def write_splits(table: pd.DataFrame, folder: str | Path) -> None:
    """Writes ``<folder>/splits/{train,val,test}.csv`` (path, label, patient; source with ``data=multi``) atomically."""
    folder = Path(folder) / "splits"
    columns = ["path", "label", "patient"] + (["source"] if "source" in table else [])
    for name in SPLITS:
        part = table.loc[table["split"] == name, columns]
        write_csv(folder / f"{name}.csv", part, errors="surrogateescape")  # file-name bytes kept exactly


def split_fingerprint(table: pd.DataFrame) -> dict[str, dict]:
    """Per split: its image count and a digest of its images' content hashes (``sha1``), so a checkpoint can tell
    later whether a recomputed split still holds the same images (wherever the data folder now lives)."""
    out = {}
    for name in SPLITS:
        hashes = sorted(table.loc[table["split"] == name, "sha1"].astype(str))
        if hashes:
            out[name] = {"n": len(hashes), "digest": hashlib.sha1("\n".join(hashes).encode()).hexdigest()}
    return out


def changed_splits(recorded: dict, now: dict) -> list[str]:
    """The splits whose images differ between two `split_fingerprint` results, e.g. ``val (185 then, 190 now)``."""
    return [
        f"{name} ({recorded.get(name, {}).get('n', 0)} images then, {now.get(name, {}).get('n', 0)} now)"
        for name in SPLITS
        if recorded.get(name, {}).get("digest") != now.get(name, {}).get("digest")
    ]


_REMEDIES = {
    "evaluate": "The evaluated split may hold images the model trained on. Evaluate other images with split=all on "
    "their own folder, or set data.allow_leakage=true to evaluate anyway (numbers may be optimistic).",
    "resume": "Continuing would train on other images than the run so far. Restore the data folder and the split "
    "settings, or start a new run (resume=false).",
    "explain": "Heatmaps are drawn anyway; the split may hold images the model trained on.",
}


@dataclass(frozen=True)
class ExpectedSplits:
    """The splits a checkpoint recorded, which splits recomputed from its data config and seed must reproduce.

    Attributes:
        recorded: the checkpoint's `split_fingerprint` (``hyper_parameters.extra.splits``; empty or None for
            checkpoints made before lungnet recorded one: not verified).
        checkpoint: the checkpoint's path, named in the message.
        purpose: ``evaluate``, ``resume`` or ``explain``: what the message advises.
        allow: a difference only warns (``data.allow_leakage=true`` for evaluation; always for explanations).
    """

    recorded: dict | None
    checkpoint: Path | str
    purpose: str
    allow: bool = False

    @classmethod
    def of(cls, hparams: dict, checkpoint: Path | str, purpose: str, allow: bool = False) -> ExpectedSplits:
        """The splits recorded in a checkpoint's ``hyper_parameters`` (``hparams``)."""
        return cls(hparams.get("extra", {}).get("splits"), checkpoint, purpose, allow)

    def verify(self, table: pd.DataFrame, root: Path | str) -> None:
        """Checks the splits of ``table`` (images under ``root``) against the recorded ones.

        Raises:
            DataError: they differ and differences are not allowed; the message names the splits.
        """
        if not self.recorded:
            log.info(
                "%s records no split fingerprint (made before lungnet kept one): splits not verified", self.checkpoint
            )
            return
        changed = changed_splits(self.recorded, split_fingerprint(table))
        if not changed:
            return
        message = (
            f"The splits recomputed for {self.checkpoint} differ from those it was trained with: "
            f"{', '.join(changed)}. The images under {root} or lungnet's split settings changed since. "
            f"{_REMEDIES[self.purpose]}"
        )
        if not self.allow:
            raise DataError(message)
        log.warning(message)
