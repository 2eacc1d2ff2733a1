"""Generalisation matrix: every trained model scored on every data set's evaluation split.

    lungnet-transfer runs=<run dirs | a multirun dir> [data=[<conf/data name>,...]]
        [split=auto|val|test] [findings='[No Finding,Pneumonia]'] [overlap=drop|refuse|allow]

(or ``python -m lungnet.evaluation.transfer``: the Hydra app `lungnet.commands.transfer.main` on ``conf/transfer.yaml``,
options `lungnet.schema.TransferConfig`).

Rows are the trained models (``runs``: run directories, checkpoints or a multirun directory, as in compare.py),
columns the data sets: each run's own data set, evaluated on that run's ``split`` (``auto``: its test split when it
has one, else its validation split), plus any ``data=[...]`` data set (a ``conf/data`` name, root from
``paths.data_root``/``LUNGNET_DATA``), evaluated on all its images. Each model is scored on each column through
the findings they share (`lungnet.data.findings.LabelMapping`; ``findings=[...]`` restricts every cell to those), on
the column's images it was not trained on: exact and near copies of its training or validation images
(`lungnet.data.overlap`) are left out and counted (``overlap=drop``), refuse the cell (``refuse``) or are kept
and counted (``allow``). The drop from internal to external is the model's AUROC on its own data set (on the
same findings) minus its AUROC on the other, with a bootstrap interval from resampling both image sets
independently (they share no images). Writes ``transfer.md``, ``transfer.json`` and ``transfer.png`` (a heat map
of AUROC with CIs, rows = trained on, columns = evaluated on).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from lungnet.artifacts.checkpoint import LoadedModel, load_model, read_checkpoint
from lungnet.data.datamodule import LungDataModule
from lungnet.data.findings import LabelMapping
from lungnet.data.multi import resolve_root
from lungnet.data.overlap import fill_dhash, find_overlap, recorded_hashes
from lungnet.data.splits import ExpectedSplits
from lungnet.errors import DataError
from lungnet.evaluation.bootstrap_unit import patient_groups, record
from lungnet.evaluation.compare import find_checkpoints
from lungnet.evaluation.external import map_rows
from lungnet.hardware import resolve_device
from lungnet.scoring import stats
from lungnet.scoring.outputs import predict_loader
from lungnet.scoring.resample import Resampler

log = logging.getLogger(__name__)


@dataclass
class Row:
    """A trained model: its display name, the checkpoint and the hashes of its training images."""

    name: str
    loaded: LoadedModel
    hashes: dict | None

    @property
    def data_name(self) -> str:
        return str(self.loaded.data.get("name") or self.loaded.data.get("source"))


@dataclass
class Column:
    """A data set's evaluation images (``path``, ``label`` in its own label names, ``sha1``, ``dhash``)."""

    name: str
    source: str
    labels: list[str]
    table: pd.DataFrame
    split: str
    owner: str | None  # the row trained on it


def load_rows(runs) -> list[Row]:
    """The models of ``runs``, named ``<data> / <model>`` (the run folder appended when that is ambiguous)."""
    rows = []
    for path in find_checkpoints(runs):
        loaded = load_model(path)
        if loaded.multilabel:
            raise DataError(f"{path} is multi-label: the generalisation matrix scores single-label models")
        name = f"{loaded.data.get('name') or loaded.data.get('source')} / {loaded.spec.name}"
        rows.append(Row(name, loaded, recorded_hashes(read_checkpoint(path))))
    names = [r.name for r in rows]
    for r in rows:
        if names.count(r.name) > 1:
            r.name = f"{r.name} ({r.loaded.path.parent.parent.name})"
    return rows


def run_split(loaded: LoadedModel, split: str) -> str:
    """``auto``: the run's test split when it recorded one, else its validation split."""
    if split != "auto":
        return split
    return "test" if "test" in (loaded.hparams.get("extra", {}).get("splits") or {}) else "val"


def own_column(row: Row, split: str, overrides: dict) -> Column:
    """The run's own data set, split as it was trained (verified against the checkpoint), the ``split`` rows."""
    cfg = resolve_root({**row.loaded.data, **overrides})
    split = run_split(row.loaded, split)
    if split == "val":
        log.warning(
            "%s: internal column on its val split (no test split), which chose the checkpoint: optimistic", row.name
        )
    expected = ExpectedSplits.of(row.loaded.hparams, row.loaded.path, "evaluate")
    dm = LungDataModule(cfg, row.loaded.spec, seed=row.loaded.seed, expected_splits=expected)
    table = dm.load_table()
    rows = table[table["split"] == split].reset_index(drop=True)
    if rows.empty:
        raise DataError(f"{row.loaded.path}: its data set has no '{split}' split")
    return Column(row.data_name, str(cfg["source"]), list(dm.labels), rows, split, row.name)


def data_column(name: str, cfg: dict, spec, overrides: dict) -> Column:
    """A ``data=[...]`` data set: all its images."""
    cfg = resolve_root({**cfg, **overrides})
    dm = LungDataModule(cfg, spec, seed=0)
    if dm.multilabel:
        raise DataError(f"data set '{name}' is multi-label: add a single-label view of it (e.g. nih6)")
    return Column(name, str(cfg["source"]), list(dm.labels), dm.load_table(all_images=True), "all", None)


def predict_rows(loaded: LoadedModel, rows: pd.DataFrame, opts: dict) -> np.ndarray:
    """The model's probabilities (its own outputs) for ``rows``, with its own preprocessing."""
    cfg = resolve_root(dict(loaded.data))
    dm = LungDataModule(cfg, loaded.spec, seed=loaded.seed)
    rows = rows.assign(target=0).reset_index(drop=True)
    if loaded.multilabel:  # a data=multi model (lungnet-loso): sigmoid outputs per finding; no target is read here
        rows = rows.assign(**{lab: np.float32(0) for lab in loaded.labels})
    dataset = dm.make_dataset(rows, train=False)
    loader = DataLoader(dataset, batch_size=int(opts["batch_size"]), num_workers=int(opts["num_workers"]))
    probs, _, _ = predict_loader(
        loaded.model, loader, loaded.multilabel, opts["device"], desc=f"Scoring {len(rows)} images"
    )
    return probs


def scored_cell(probs: np.ndarray, targets: np.ndarray, labels: list[str], opts: dict, groups=None) -> dict:
    """AUROC (macro one-vs-rest; the positive class's for two) and accuracy with bootstrap intervals (``groups``: the
    patient of each image, resampled whole; None resamples images)."""
    boot = opts["bootstrap"]
    ci = stats.bootstrap_ci(
        probs, targets, labels, False, int(boot["resamples"]), int(boot["seed"]), float(boot["level"]), groups
    )
    return {
        "auroc": ci["auroc_macro"],
        "accuracy": ci["accuracy"],
        "bootstrap": record(groups, len(targets), int(boot["resamples"])),
        "class_counts": {lab: int((targets == j).sum()) for j, lab in enumerate(labels)},
    }


def cell(row: Row, column: Column, opts: dict) -> dict:
    """Scores one model on one column; ``status`` says why a cell has no numbers."""
    mapping = LabelMapping.between(
        str(row.loaded.data.get("source")), row.loaded.labels, column.source, column.labels
    ).restricted(opts["findings"])
    out = {
        "row": row.name,
        "column": column.name,
        "split": column.split,
        "internal": column.owner == row.name,
        "scored": mapping.scored,
        "unscored_model_labels": mapping.unscored_model_labels,
    }
    if not mapping.scored:
        log.warning("%s on %s: no finding in common (%s)", row.name, column.name, mapping.describe())
        return {**out, "status": "no finding in common"}
    log.info("%s on %s: %s", row.name, column.name, mapping.describe())
    kept = map_rows(column.table, mapping)
    out["left_out"] = {
        str(k): int(v) for k, v in column.table["label"].value_counts().items() if k in mapping.left_out_labels
    }
    out["n_seen"] = 0
    if not out["internal"]:
        found = find_overlap(kept, row.hashes, opts["near_threshold"])
        out.update(n_seen=found.n_seen, hashes_recorded=found.recorded)
        if found.n_seen and opts["overlap"] == "refuse":
            return {**out, "status": f"refused: {found.n_seen} images are copies of its training images"}
        if found.n_seen and opts["overlap"] == "drop":
            kept = kept[~found.seen].reset_index(drop=True)
    if kept.empty or kept["target"].nunique() < 2:
        return {**out, "status": "fewer than two scored classes left"}
    raw = predict_rows(row.loaded, kept, opts)
    targets = kept["target"].to_numpy()
    groups = patient_groups(kept["path"].tolist(), kept)  # whole patients where the data name them
    out.update(status="ok", n=len(kept), **scored_cell(mapping.scores(raw), targets, mapping.scored, opts, groups))
    out["_arrays"] = (raw, kept["label"].tolist(), groups)  # the internal reference of the drops
    out["_scored"] = (mapping.scores(raw), targets, groups)
    return out


def restricted_arrays(row: Row, column: Column, internal: dict, findings: list[str]) -> tuple | None:
    """The internal cell's probabilities and targets on ``findings`` only (the reference for a drop)."""
    raw, labels, groups = internal["_arrays"]
    mapping = LabelMapping.between(
        str(row.loaded.data.get("source")), row.loaded.labels, column.source, column.labels
    ).restricted(findings)
    targets = np.array([mapping.target(lab) if mapping.target(lab) is not None else -1 for lab in labels])
    keep = targets >= 0
    if len(np.unique(targets[keep])) < 2:
        return None
    return mapping.scores(raw[keep]), targets[keep], None if groups is None else groups[keep]


def unpaired_drop(internal: tuple, external: tuple, boot: dict) -> dict:
    """Internal minus external macro AUROC, each image set resampled on its own (they share no images): patients
    where a set's ``(probs, targets, groups)`` name them, images where ``groups`` is None."""

    def auroc(p, t):
        return stats.headline(p, t, False)["auroc_macro"]

    (pi, ti, gi), (pe, te, ge) = internal, external
    rng = np.random.default_rng(int(boot["seed"]))
    draws = []
    draw_i, draw_e = Resampler(len(ti), gi).draw, Resampler(len(te), ge).draw
    for _ in range(int(boot["resamples"])):
        i, e = draw_i(rng), draw_e(rng)
        draws.append(auroc(pi[i], ti[i]) - auroc(pe[e], te[e]))
    lo, hi = stats.percentile_interval(draws, float(boot["level"]))
    a, b = auroc(pi, ti), auroc(pe, te)
    units = {
        "internal_unit": "image" if gi is None else "patient",
        "external_unit": "image" if ge is None else "patient",
    }
    return {
        "internal": a,
        "external": b,
        "drop": a - b,
        "lo": float(lo),
        "hi": float(hi),
        "n_internal": len(ti),
        **units,
    }


def drops(rows: list[Row], columns: list[Column], cells: list[list[dict]], boot: dict) -> list[dict]:
    """For every external cell with numbers: the drop from the model's own data set, on the same findings."""
    out = []
    for r, row in enumerate(rows):
        own = next((j for j, c in enumerate(columns) if c.owner == row.name), None)
        if own is None or cells[r][own]["status"] != "ok":
            continue
        for j, ext in enumerate(cells[r]):
            if j == own or ext["status"] != "ok":
                continue
            ref = restricted_arrays(row, columns[own], cells[r][own], ext["scored"])
            if ref is None:
                continue
            out.append(
                {
                    "row": row.name,
                    "column": columns[j].name,
                    "scored": ext["scored"],
                    **unpaired_drop(ref, ext["_scored"], boot),
                }
            )
    return out


def transfer_options(cfg: DictConfig) -> dict:
    """The transfer settings: split, findings, overlap policy, near-copy threshold, loader, bootstrap, device."""
    findings = OmegaConf.to_container(cfg.findings, resolve=True) if cfg.get("findings") is not None else None
    return {
        "split": str(cfg.split),
        "findings": findings,
        "overlap": str(cfg.overlap),
        "near_threshold": int(cfg.near_duplicate_threshold) if cfg.near_duplicates else None,
        "batch_size": int(cfg.batch_size),
        "num_workers": int(cfg.num_workers),
        "bootstrap": OmegaConf.to_container(cfg.bootstrap, resolve=True),
        "device": resolve_device(str(cfg.device)),
    }


def transfer(cfg: DictConfig, run_dir: str | Path, data_configs: dict[str, dict] | None = None) -> dict:
    """Builds the generalisation matrix of ``cfg.runs`` (and ``data_configs``) and writes it into ``run_dir``.

    Returns:
        The content of transfer.json.
    """
    from lungnet.evaluation.transfer_report import write_transfer

    opts = transfer_options(cfg)
    rows = load_rows(cfg.runs)
    loading = {"num_workers": opts["num_workers"], "batch_size": opts["batch_size"]}
    columns: list[Column] = []
    for row in rows:
        if row.data_name not in [c.name for c in columns]:
            columns.append(own_column(row, opts["split"], loading))
    for name, data_cfg in (data_configs or {}).items():
        if name not in [c.name for c in columns]:
            columns.append(data_column(name, data_cfg, rows[0].loaded.spec, loading))
    if opts["near_threshold"] is not None:
        for c in columns:
            c.table = fill_dhash(c.table)
    cells = [[cell(row, column, opts) for column in columns] for row in rows]
    for line in cells:
        for c in line:
            log.info(
                "%s on %s: %s %s",
                c["row"],
                c["column"],
                c["status"],
                f"AUROC {c['auroc']['value']:.3f}" if c["status"] == "ok" else "",
            )
    return write_transfer(Path(run_dir), rows, columns, cells, drops(rows, columns, cells, opts["bootstrap"]), opts)
