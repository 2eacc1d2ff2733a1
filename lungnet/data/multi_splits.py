"""Splits of a merged table (`lungnet.data.multi`): patient-grouped and stratified within each set, with byte and
near copies across sets kept on one side, and what ``data_report.json`` says about the sets.

Every image's group joins its patient (ids prefixed by set), its byte copies (``sha1``) and, with
``data.near_duplicates=group``, its near copies (``near_group``), across sets too (`lungnet.data.splits`). A group
that spans sets belongs to the first of them in ``data.sources`` order. Each set's images are first split as its
single-source run splits them (its ``conf/data`` config's ``val_fraction``, ``test_fraction``, ``carve_val``; the
run's ``split_seed`` and ``cv_folds``), then the members of a group spanning sets follow their first set.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from lungnet.data.splits import SPLITS, _groups, assign_splits

log = logging.getLogger(__name__)


def group_owners(table: pd.DataFrame, order: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(group, rank, owner): each row's split group, the position in ``order`` of its own set, and that of the first
    set its group spans."""
    groups = _groups(table.reset_index(drop=True))
    rank = table["source"].map({n: i for i, n in enumerate(order)}).to_numpy()
    owner = pd.Series(rank).groupby(groups).transform("min").to_numpy()
    return groups, rank, owner


def assign_multi_splits(table: pd.DataFrame, members: dict[str, dict], seed: int, cv: tuple[int, int]) -> pd.DataFrame:
    """Fills ``split`` set by set (see the module docstring); rows a set's settings drop (a shipped val under
    ``carve_val``) leave the table.

    Each set's own images are split exactly as its single-source run splits them (its patients, its own byte copies,
    its near copies only where its config groups them, its settings and the run's seed), so a model trained on the
    pool and one trained on that set alone hold out the same images (`lungnet-loso` compares them there). Then a
    group spanning sets (the same patient, a byte or a near copy) takes the split of its first set in
    ``data.sources`` order, so no film sits on both sides.

    Args:
        table: the merged table (``source``, ``patient``, ``split``, ``label``; ``sha1``/``near_group`` optional).
        members: each set's data config, in ``data.sources`` order.
        seed: ``data.split_seed``.
        cv: (``cv_folds``, ``cv_fold``).
    """
    table = table.reset_index(drop=True)
    order = list(members)
    groups, rank, owner = group_owners(table, order)
    split = pd.Series(np.nan, index=table.index, dtype=object)
    for i, name in enumerate(order):
        rows = np.flatnonzero(rank == i)
        if not len(rows):
            continue
        cfg = members[name]
        pool = table.iloc[rows].copy()
        if str(cfg.get("near_duplicates")) != "group":
            pool = pool.drop(columns=["near_group"], errors="ignore")  # as its own run: near copies not grouped
        pool["_row"] = rows
        done = assign_splits(
            pool, seed, cfg["val_fraction"], cfg["test_fraction"], cfg["carve_val"], int(cv[0]), int(cv[1])
        )
        split[done["_row"].to_numpy()] = done["split"].to_numpy()
    first = pd.Series(np.where(rank == owner, split.to_numpy(), None)).groupby(groups).transform("first")
    spans = pd.Series(rank).groupby(groups).transform("nunique").to_numpy() > 1
    follow = spans & first.notna().to_numpy() & split.notna().to_numpy()
    moved = int((follow & (split.to_numpy() != first.to_numpy())).sum())
    if moved:
        log.info("%d image(s) follow the split of the same film or patient in an earlier data set", moved)
    split[follow] = first[follow]
    kept = split.notna().to_numpy()
    out = table[kept].copy()
    out["split"] = split[kept].astype(str).to_numpy()
    return out.reset_index(drop=True)


def cross_source_copies(table: pd.DataFrame, order: list[str]) -> dict:
    """Byte and near copies across sets (``data_report.json`` ``sources.cross_source_copies``): images whose bytes
    (``sha1``) or near copies (``near_group``) another set holds, and the groups per pair of sets."""
    out: dict = {}
    for column, kind in (("sha1", "byte_copies"), ("near_group", "near_copies")):
        if column not in table:
            continue
        key = table[column].astype(str)
        usable = key.ne("") & key.ne("nan")
        spans = table[usable].groupby(key[usable])["source"].nunique()
        shared = set(spans[spans > 1].index)
        rows = table[usable & key.isin(shared)]
        pairs: dict[str, int] = {}
        for _, sets in rows.groupby(key[usable & key.isin(shared)])["source"]:
            names = sorted(set(sets), key=order.index)
            for a in range(len(names)):
                for b in range(a + 1, len(names)):
                    pair = f"{names[a]}/{names[b]}"
                    pairs[pair] = pairs.get(pair, 0) + 1
        out[kind] = {"images": int(len(rows)), "groups": int(len(shared)), "pairs": pairs}
    return out


def sources_report(table: pd.DataFrame, labels: list[str], members: dict[str, dict], shares: dict) -> dict:
    """The ``sources`` entry of ``data_report.json``: per set its reader, root, sizes per split, findings known and
    unknown (NaN), and the training draw share (``data.source_balance``); copies across sets."""
    per_set = {}
    for name, cfg in members.items():
        rows = table[table["source"] == name]
        known = [f for f in labels if rows[f].notna().any()] if len(rows) else []
        per_set[name] = {
            "reader": cfg["source"],
            "root": cfg["root"],
            "sizes": {s: int((rows["split"] == s).sum()) for s in SPLITS},
            "findings": known,
            "unknown": [f for f in labels if f not in known],
            "positives": {f: int((rows[f] == 1).sum()) for f in known},
            "train_share": round(float(shares.get(name, 0.0)), 6),
        }
    copies = cross_source_copies(table, list(members))
    for kind, found in copies.items():
        if found["images"]:
            log.info(
                "Copies across data sets (%s): %d images in %d groups %s, each kept in one split",
                kind,
                found["images"],
                found["groups"],
                found["pairs"],
            )
    return {"sets": per_set, "findings": list(labels), "cross_source_copies": copies}
