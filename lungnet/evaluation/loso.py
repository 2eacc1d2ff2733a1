"""Leave one source out: for each data set, the model trained on all the others, scored on that set's held-out
images beside the model trained on that set alone and the model trained on all of them.

    lungnet-loso runs=<run dirs | multirun dirs> [split=auto|val|test] [findings=[...]] [overlap=drop|allow|refuse]

(`lungnet.commands.loso`, ``conf/loso.yaml``, options `lungnet.schema.LosoConfig`). ``runs`` holds models already
trained, e.g. the multirun ``python train.py -m data=multi 'data.sources=[b,c],[a,c],[a,b]'``, one run per set
(``data=a``...) and one on all of them (``data=multi 'data.sources=[a,b,c]'``). What each model was trained on is
read from its checkpoint (`trained_on`: ``data.sources`` of a ``data=multi`` run, else its ``data.name``).

For each set S with a model trained on every set but S (the LOSO model) and a model trained on S alone, the column
is S's held-out images as that single-source run split them (`lungnet.evaluation.generalisation.own_column`:
``split=auto`` takes its test split when it has one, else val, which chose that model's checkpoint), less every
image that is a copy (exact, or near with ``near_duplicates``) of a training image of the other models
(``overlap=drop``: the all-sources model trained on part of S, and sets may share films); copies of their
validation images stay and are counted in each cell (``n_seen``). Every model is
scored (`lungnet.evaluation.generalisation.cell`) on the same images through the findings all of them share with
S, so the differences are paired: LOSO minus single-source and LOSO minus all-sources AUROC, with intervals from
`lungnet.scoring.stats.paired_bootstrap` resampling whole patients where the set names them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from lungnet.artifacts.checkpoint import load_model, read_checkpoint
from lungnet.data.findings import LabelMapping
from lungnet.data.overlap import fill_dhash, find_overlap, recorded_hashes
from lungnet.errors import DataError
from lungnet.evaluation.compare import find_checkpoints
from lungnet.evaluation.external import map_rows
from lungnet.evaluation.generalisation import Column, Row, cell, own_column, transfer_options
from lungnet.scoring import stats

log = logging.getLogger(__name__)

ROLES = ("loso", "single", "pooled")  # left out of training, trained on it alone, trained on all


def trained_on(ckpt: dict, path: Path) -> tuple[str, ...]:
    """The data sets (``conf/data`` names) a checkpoint was trained on, from its untrusted ``hyper_parameters``.

    Raises:
        DataError: no data config, or ``sources``/``name`` not a (list of) non-empty string(s).
    """
    hp = ckpt.get("hyper_parameters")
    data = hp.get("data") if isinstance(hp, dict) else None
    if not isinstance(data, dict):
        raise DataError(f"{path}: no hyper_parameters.data in the checkpoint; pass lungnet training runs in runs=")
    if data.get("source") == "multi":
        sources = data.get("sources")
        if not isinstance(sources, list) or not sources or not all(isinstance(s, str) and s for s in sources):
            raise DataError(f"{path}: hyper_parameters.data.sources is {sources!r}; expected a list of data set names")
        return tuple(sources)
    name = data.get("name") or data.get("source")
    if not isinstance(name, str) or not name:
        raise DataError(f"{path}: hyper_parameters.data.name is {name!r}; expected a data set name")
    return (name,)


@dataclass
class Model:
    """A trained model (`Row`) and the data sets it was trained on."""

    row: Row
    sources: tuple[str, ...]


def load_models(runs) -> list[Model]:
    """The models of ``runs``, named ``<sets joined by +> / <model>`` (the run folder appended when ambiguous)."""
    models = []
    for path in find_checkpoints(runs):
        ckpt = read_checkpoint(path)
        sources = trained_on(ckpt, path)
        loaded = load_model(path)
        if loaded.multilabel and len(sources) == 1:
            raise DataError(
                f"{path} is a multi-label model of one data set: train its single-label view (e.g. data=nih_pneumonia)"
            )
        models.append(Model(Row(f"{'+'.join(sources)} / {loaded.spec.name}", loaded, recorded_hashes(ckpt)), sources))
    names = [m.row.name for m in models]
    for m in models:
        if names.count(m.row.name) > 1:
            m.row.name = f"{m.row.name} ({m.row.loaded.path.parent.parent.name})"
    return models


def _one(models: list[Model], sources: set[str], what: str) -> Model | None:
    found = [m for m in models if set(m.sources) == sources]
    if len(found) > 1:
        names = ", ".join(m.row.name for m in found)
        raise DataError(f"runs: {len(found)} models trained on {what} ({names}); keep one")
    return found[0] if found else None


def designs(models: list[Model]) -> list[dict[str, object]]:
    """For each held-out set (in order of appearance): its LOSO, single-source and all-sources models.

    Raises:
        DataError: a held-out set without a single-source model, two models of one role, or no LOSO model at all.
    """
    everything = list(dict.fromkeys(s for m in models for s in m.sources))
    pooled = _one(models, set(everything), "all the sets")
    out = []
    for held_out in everything:
        loso = _one(models, set(everything) - {held_out}, f"every set but {held_out}")
        if loso is None:
            log.warning("No model trained on every set but %s among runs: no row for it", held_out)
            continue
        single = _one(models, {held_out}, held_out)
        if single is None:
            raise DataError(
                f"runs: no model trained on {held_out} alone (its held-out images are that run's split); "
                f"add one: python train.py data={held_out}"
            )
        out.append({"held_out": held_out, "loso": loso, "single": single, "pooled": pooled})
    if not out:
        raise DataError(
            f"runs: no model was trained on all sets but one of {everything}; train them, e.g. python train.py -m "
            "data=multi 'data.sources=[b,c],[a,c],[a,b]'"
        )
    return out


def held_out_column(design: dict, opts: dict) -> tuple[Column, int]:
    """The single-source run's evaluation split of the held-out set, less (``overlap=drop``) copies of the other
    models' training or validation images; returns the column and the number of images left out."""
    single = design["single"].row
    column = own_column(single, opts["split"], {"num_workers": opts["num_workers"], "batch_size": opts["batch_size"]})
    if opts["near_threshold"] is not None:
        column.table = fill_dhash(column.table)
    if opts["overlap"] != "drop":
        return column, 0
    seen = np.zeros(len(column.table), dtype=bool)
    for role in ("loso", "pooled"):
        model = design[role]
        if model is not None:
            found = find_overlap(column.table, model.row.hashes, opts["near_threshold"], against=("train",))
            seen |= np.asarray(found.seen, dtype=bool)
    column.table = column.table[~seen].reset_index(drop=True)
    if seen.sum() > len(column.table):
        log.warning(
            "%s: %d of its %d held-out images are copies of another model's training images and are left out; "
            "a data=multi run splits a set its own way (not as its single-source run), and sets may share films",
            design["held_out"],
            int(seen.sum()),
            len(seen),
        )
    return column, int(seen.sum())


def shared_findings(models: list[Model], column: Column, wanted: list[str] | None) -> list[str]:
    """The findings every model shares with the column (``wanted`` only, when given), in the first model's order."""
    scored = [
        LabelMapping.between(str(m.row.loaded.data.get("source")), m.row.loaded.labels, column.source, column.labels)
        .restricted(wanted)
        .scored
        for m in models
    ]
    return [f for f in scored[0] if all(f in s for s in scored[1:])]


def canonical(c: dict, findings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """A cell's probabilities and targets with the findings in ``findings`` order (each model orders its own)."""
    probs, targets = c["_scored"][0], np.asarray(c["_scored"][1])
    order = [c["scored"].index(f) for f in findings]
    return np.asarray(probs)[:, order], np.array([findings.index(c["scored"][t]) for t in targets])


def patient_groups(table: pd.DataFrame) -> np.ndarray | None:
    """The patient of each image (an image without one is its own), or None when no image names one."""
    if "patient" not in table:
        return None
    patient = table["patient"].fillna("").astype(str).to_numpy()
    if not (patient != "").any():
        return None
    return np.where(patient == "", "image:" + table["path"].astype(str).to_numpy(), "patient:" + patient)


def paired(a: dict, b: dict, findings: list[str], groups, boot: dict) -> dict | None:
    """LOSO minus reference AUROC on the same images (`stats.paired_bootstrap`), or None without both cells."""
    if a is None or b is None or a["status"] != "ok" or b["status"] != "ok":
        return None
    (pa, ta), (pb, tb) = canonical(a, findings), canonical(b, findings)
    if not np.array_equal(ta, tb):
        raise RuntimeError(f"{a['row']} and {b['row']} were scored on different images of {a['column']}")
    out = stats.paired_bootstrap(
        pa, pb, ta, False, int(boot["resamples"]), int(boot["seed"]), float(boot["level"]), groups
    )["auroc_macro"]
    return {**out, "unit": "image" if groups is None else "patient"}


def score_design(design: dict, opts: dict) -> dict:
    """One held-out set: its column, the three models' cells on the same images and the paired differences."""
    column, dropped = held_out_column(design, opts)
    models = [design[r] for r in ROLES if design[r] is not None]
    findings = shared_findings(models, column, opts["findings"])
    out = {"held_out": design["held_out"], "split": column.split, "n_column": len(column.table), "dropped": dropped}
    out["findings"] = findings
    out["models"] = {r: design[r].row.name if design[r] is not None else None for r in ROLES}
    if len(findings) < 2:
        log.warning("%s: fewer than two findings shared by all its models (%s)", design["held_out"], findings)
        return {**out, "status": "fewer than two findings shared by all its models", "cells": {}}
    # the column holds no training copy now (drop); copies of a model's validation images stay, counted (allow)
    scoring = {**opts, "findings": findings, "overlap": "allow" if opts["overlap"] == "drop" else opts["overlap"]}
    cells = {r: cell(design[r].row, column, scoring) for r in ROLES if design[r] is not None}
    single = design["single"].row.loaded
    mapping = LabelMapping.between(str(single.data.get("source")), single.labels, column.source, column.labels)
    groups = patient_groups(map_rows(column.table, mapping.restricted(findings)))  # the rows every cell scored
    out["diffs"] = {
        "loso_minus_single": paired(cells["loso"], cells["single"], findings, groups, opts["bootstrap"]),
        "loso_minus_pooled": paired(cells["loso"], cells.get("pooled"), findings, groups, opts["bootstrap"]),
    }
    return {**out, "status": "ok", "cells": cells}


def loso(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Scores the leave-one-source-out models of ``cfg.runs`` and writes loso.csv, loso.md and loso.json.

    Returns:
        The content of loso.json.
    """
    from lungnet.evaluation.loso_report import write_loso

    opts = transfer_options(cfg)
    models = load_models(cfg.runs)
    results = [score_design(d, opts) for d in designs(models)]
    return write_loso(Path(run_dir), models, results, opts)
