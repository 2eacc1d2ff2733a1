"""External evaluation: a checkpoint trained on data set A scored on data set B through the shared findings.

``python evaluate.py ckpt=<trained on A> data=<B> data.root=<B's root> split=all`` reads B with B's own source
(its folder layout, label names and split settings) and the checkpoint's own preprocessing (input size, resize,
downsampling), maps both label lists onto `lungnet.data.findings` and scores only what they share: images of B whose
finding the model does not know are left out and counted, findings the model has but B lacks are not scored
(`lungnet.data.findings.LabelMapping`). The report opens with "External evaluation: trained on A, evaluated on B" and
the mapping used. No finding in common is a one-line error.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lungnet.artifacts.checkpoint import LoadedModel, read_checkpoint
from lungnet.artifacts.decision import read_decision
from lungnet.artifacts.paths import decision_path
from lungnet.data.datamodule import LungDataModule
from lungnet.data.findings import LabelMapping
from lungnet.data.multi import make_source, resolve_root
from lungnet.data.overlap import enforce, fill_dhash, find_overlap, overlap_markdown, recorded_hashes
from lungnet.errors import CheckpointError, DataError
from lungnet.evaluation.report import fmt, table
from lungnet.scoring.outputs import Outputs

log = logging.getLogger(__name__)

# the model's input contract: always the checkpoint's, whichever data set is evaluated
PREPROCESSING_KEYS = ("image_size", "resize", "downsample_to")


def chosen_data(overrides: dict) -> bool:
    """True when ``data=<B>`` selected a data config (it then carries ``source``), not just ``data.<key>=``."""
    return bool(overrides.get("source"))


def data_overrides(overrides: dict) -> dict:
    """The overrides of the checkpoint's data config, without a chosen data config's preprocessing keys."""
    if not chosen_data(overrides):
        return overrides
    return {k: v for k, v in overrides.items() if k not in PREPROCESSING_KEYS}


def is_external(loaded: LoadedModel, overrides: dict) -> bool:
    """Whether ``data=<B>`` names another data set than the checkpoint's (name, source or label list)."""
    if not chosen_data(overrides):
        return False
    ours = loaded.data
    if overrides.get("source") != ours.get("source") or overrides.get("name") != ours.get("name"):
        return True
    return list(make_source(external_config(loaded, overrides)).labels) != list(loaded.labels)


def external_config(loaded: LoadedModel, overrides: dict) -> dict:
    """B's data config (everything not null) with the checkpoint's preprocessing keys; root made absolute."""
    cfg = {k: v for k, v in overrides.items() if v is not None}
    cfg.update({k: loaded.data[k] for k in PREPROCESSING_KEYS if k in loaded.data})
    return resolve_root(cfg)


@dataclass
class ExternalEvaluation:
    """What an external evaluation scored: the data sets, the label mapping, and the images left out."""

    trained_on: str
    evaluated_on: str
    mapping: LabelMapping
    counts: dict[str, int] = field(default_factory=dict)  # images per data label (before leaving any out)

    @property
    def left_out(self) -> dict[str, int]:
        """Images per data label that were not scored."""
        return {lab: self.counts.get(lab, 0) for lab in self.mapping.left_out_labels if self.counts.get(lab)}

    def positive_class(self, name: str | None) -> str | None:
        """``operating_point.positive_class`` (a model label, or a finding) as the finding it is scored as."""
        if name is None or name in self.mapping.scored:
            return name
        finding = self.mapping.model_findings.get(name)
        if finding not in self.mapping.scored:
            raise DataError(
                f"operating_point.positive_class={name!r} is not scored on {self.evaluated_on} "
                f"(scored: {', '.join(self.mapping.scored)})"
            )
        return finding

    def model_label_table(self, rows: pd.DataFrame) -> pd.DataFrame:
        """``path`` and ``label`` as the model names it (None where a finding has several model labels)."""
        names = {}
        for finding in self.mapping.scored:
            labels = [m for m, f in self.mapping.model_findings.items() if f == finding]
            names[finding] = labels[0] if len(labels) == 1 else None
        return pd.DataFrame({"path": rows["path"], "label": [names[self.mapping.scored[t]] for t in rows["target"]]})

    def summary(self) -> dict:
        """JSON-friendly (metrics.json ``external``)."""
        return {
            "trained_on": self.trained_on,
            "evaluated_on": self.evaluated_on,
            "model_source": self.mapping.model_source,
            "data_source": self.mapping.data_source,
            "scored_findings": self.mapping.scored,
            "mapping": self.mapping.rows(),
            "images_per_label": self.counts,
            "left_out": self.left_out,
            "n_left_out": sum(self.left_out.values()),
            "unscored_model_labels": self.mapping.unscored_model_labels,
        }


def map_rows(rows: pd.DataFrame, mapping: LabelMapping) -> pd.DataFrame:
    """The rows whose label has a scored finding, with ``target`` re-indexed into ``mapping.scored``."""
    targets = rows["label"].map(mapping.target)
    kept = rows[targets.notna()].copy()
    kept["target"] = targets[targets.notna()].astype(int)
    return kept.reset_index(drop=True)


def check_mapping(loaded: LoadedModel, name: str, source_labels: list[str], mapping: LabelMapping) -> None:
    """Refuses a multi-label checkpoint, and a checkpoint and data set without a finding in common."""
    if loaded.multilabel:
        raise DataError(
            f"Checkpoint {loaded.path} is multi-label: external evaluation (data=<another data set>) needs a "
            "single-label checkpoint"
        )
    if len(mapping.scored) < 2:
        shared = f"only {mapping.scored[0]} in common" if mapping.scored else "no finding in common"
        raise DataError(
            f"Checkpoint {loaded.path} ({loaded.data.get('name')}) and data set '{name}' have {shared} "
            f"({mapping.describe()}): scoring needs two findings to tell apart"
        )


def build_external_data(loaded: LoadedModel, overrides: dict, split: str, run_dir: Path | None) -> LungDataModule:
    """The DataModule of data set B for ``loaded``, holding only the images of ``split`` it can score.

    Args:
        loaded: the checkpoint (trained on A).
        overrides: B's data config (``data=<B>`` plus ``data.<key>=`` overrides).
        split: ``all`` (every image of B) or a split of B made with B's settings (its ``data.split_seed`` too).
        run_dir: where B's bad-file list and split files go (None: nowhere).

    Returns:
        A DataModule whose ``labels`` are the scored findings, with ``external`` (`ExternalEvaluation`) set.

    Raises:
        DataError: multi-label checkpoint or data, no finding in common, nothing left to score.
    """
    cfg = external_config(loaded, overrides)
    dm = LungDataModule(cfg, loaded.spec, seed=loaded.seed, run_dir=run_dir)
    name = str(cfg.get("name") or cfg["source"])
    if dm.multilabel:
        raise DataError(f"Data set '{name}' is multi-label: score a single-label view of it (e.g. data=nih6)")
    mapping = LabelMapping.between(str(loaded.data.get("source")), loaded.labels, str(cfg["source"]), dm.labels)
    check_mapping(loaded, name, dm.labels, mapping)
    table = dm.load_table(all_images=split == "all")
    rows = table if split == "all" else table[table["split"] == split]
    if rows.empty:
        raise DataError(f"Data set '{name}' at {dm.source.root} has no '{split}' split: use split=all")
    kept = map_rows(rows, mapping)
    if kept.empty:
        raise DataError(f"None of the {len(rows)} images of '{name}' ({split}) has a finding the model knows")
    dm.external = ExternalEvaluation(
        str(loaded.data.get("name") or loaded.data.get("source")),
        name,
        mapping,
        {str(k): int(v) for k, v in rows["label"].value_counts().items()},
    )
    log.info(
        "External evaluation: trained on %s, evaluated on %s (%s); %s; left out %s",
        dm.external.trained_on,
        name,
        split,
        mapping.describe(),
        dm.external.left_out or "nothing",
    )
    dm.labels, dm.table = list(mapping.scored), kept
    dm.datasets = {split: dm.make_dataset(kept, train=False)}
    return dm


def scored_outputs(out: Outputs, ext: ExternalEvaluation | None) -> Outputs:
    """The model's outputs on the findings an external evaluation scores (unchanged without one).

    Probabilities are summed per finding and renormalised (`LabelMapping.scores`); logits become their logarithms
    (softmax of them gives the probabilities back).
    """
    if ext is None:
        return out
    probs = ext.mapping.scores(out.probs)
    return dataclasses.replace(out, probs=probs, logits=np.log(np.clip(probs, 1e-12, None)))


def lead_sections(result: dict) -> list[str]:
    """Report sections that belong at the top: the external-evaluation header, the label mapping, the overlap."""
    overlap = overlap_markdown(result.get("training_overlap"))
    ext = result.get("external")
    if not ext:
        return [overlap]
    left = ", ".join(f"{lab} {n}" for lab, n in ext["left_out"].items())
    unscored = ", ".join(ext["unscored_model_labels"])
    counts = ext["images_per_label"]
    rows = [[*row, str(counts.get(row[0], "")) if row[0] != "(absent)" else ""] for row in ext["mapping"]]
    lines = [
        f"> **External evaluation: trained on {ext['trained_on']}, evaluated on {ext['evaluated_on']}.** "
        f"Scored findings: {', '.join(ext['scored_findings'])}.",
        f"> Left out (findings the model does not know): {ext['n_left_out']} images"
        + (f" ({left})" if left else "")
        + ".",
    ]
    if unscored:
        lines.append(
            f"> Not scored (the data lack them): {unscored}; the model's probabilities are renormalised over the "
            "scored findings."
        )
    ood = ext.get("ood")
    if ood:
        lines.append(
            f"> The model's OOD gate (`{ood['file']}`, fitted on its training images) flags **{ood['flagged']} of "
            f"{ood['n']}** images ({fmt(ood['rate'])}) as unlike its training images (threshold "
            f"{fmt(ood['threshold'])}; column `ood` of predictions.csv)."
        )
    mapping = table(["label in the data", "finding", "scored against (model label)", "images"], rows)
    return [
        "\n".join(lines),
        "## Label mapping\n\nThrough lungnet's finding vocabulary (`lungnet/data/findings.py`).\n\n" + mapping,
        overlap,
    ]


def add_ood_flags(ev) -> None:
    """Report step of an external evaluation: the checkpoint's OOD gate (its decision file) on data set B.

    The decision file's operating point, temperature and conformal sets speak the model's own labels, not the
    findings scored here, so only its label-free OOD gate applies: ``ood`` and ``ood_score`` columns in
    predictions.csv and ``external.ood`` in metrics.json. Nothing when there is no decision file or gate.
    """
    path = decision_path(ev.loaded.path)
    if not path.is_file() or ev.data.features is None:
        return
    try:
        record = read_decision(path, ev.loaded.path, ev.loaded.labels)
    except CheckpointError as exc:
        log.warning("%s: no OOD flags", exc)
        return
    if record.ood is None:
        return
    scores, flags = record.ood.flag(ev.data.features)
    ev.table["ood"], ev.table["ood_score"] = flags, scores
    ev.result["external"]["ood"] = {
        "file": path.name,
        "n": int(len(flags)),
        "flagged": int(np.sum(flags)),
        "rate": float(np.mean(flags)) if len(flags) else float("nan"),
        "threshold": float(record.ood.threshold),
    }


def add_lead_sections(ev) -> None:
    """Report step: the sections before the summary (external evaluation and label mapping; training overlap)."""
    ev.lead += [s for s in lead_sections(ev.result) if s]


def check_training_overlap(loaded: LoadedModel, dm: LungDataModule, split: str, cfg: dict) -> dict | None:
    """Refuses (or, with ``data.allow_leakage=true``, reports) evaluated images the checkpoint was trained on.

    Applies to ``split=all`` and external evaluations (a folder the checkpoint's own split files do not describe):
    the evaluated images are compared with the checkpoint's training and validation image hashes, exactly, and
    with ``data.near_duplicates=true`` also perceptually (dHash within ``data.near_duplicate_threshold`` bits).

    Returns:
        The `lungnet.data.overlap.Overlap` summary (metrics.json ``training_overlap``), or None when not checked.

    Raises:
        DataError: copies found and ``data.allow_leakage`` is not set.
    """
    if split != "all" and getattr(dm, "external", None) is None:
        return None
    rows = dm.table if split == "all" else dm.table[dm.table["split"] == split]
    near = bool(cfg.get("near_duplicates"))
    if near:
        rows = fill_dhash(rows)
    hashes = recorded_hashes(read_checkpoint(loaded.path))
    found = find_overlap(rows, hashes, int(cfg.get("near_duplicate_threshold") or 12) if near else None)
    return enforce(found, bool(cfg.get("allow_leakage")), loaded.path).summary()
