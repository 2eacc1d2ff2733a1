"""Several data sets in one run: ``python train.py data=multi 'data.sources=[nih14,pneumonia,darkcovidnet]'``.

Each name in ``data.sources`` is a ``conf/data`` config: its reader, ``options``, ``patient_pattern`` and split
settings (``val_fraction``, ``test_fraction``, ``carve_val``) apply to its own images, and its root resolves as for
one data set (below ``paths.data_root``, i.e. ``LUNGNET_DATA``), or from ``data.roots.<name>=<path>``.

The merged table (`MultiSource.scan`) keeps every image's set in a ``source`` column, and maps each set's labels
onto the finding vocabulary (`lungnet.data.findings`): the model's outputs are the union of the sets' findings (or
``data.findings``), one float column each, as torchxrayvision's ``Merge_Dataset`` and ``relabel_dataset`` do:

- a finding a set does not annotate is unknown (NaN) for its images, never negative: an image labelled
  ``PNEUMONIA`` by a two-class pneumonia set says nothing about Effusion;
- a single-label set's classes exclude each other: its image labelled ``Pneumonia`` is negative for the set's other
  classes (``No Finding``, ``COVID-19``), positive for Pneumonia; but a class that may show another finding too
  leaves that one unknown (`OVERLAPS`: a ``COVID-19`` film is unknown for Pneumonia, not negative);
- a multi-label set (NIH ChestX-ray14) gives its findings as annotated, and ``No Finding`` when none is present.

Patient ids are prefixed by their set (``pneumonia:person12``), except where two sets share an id space:
DarkCovidNet's No_findings and Pneumonia films are NIH ChestX-ray14 files named by the NIH patient id
(`PATIENT_SPACE`). Splits (`lungnet.data.multi_splits`) stay patient-grouped and stratified within each set, and
byte or near copies across sets are kept on one side.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from lungnet.data import findings as F
from lungnet.data.multi_names import MULTI, check_names, data_config_dir
from lungnet.data.sources import DataError, Source, create_source
from lungnet.data.splits import patients_from_names
from lungnet.schema import with_data_defaults

log = logging.getLogger(__name__)

# a single-label set's class that may show another finding too: its images are unknown for it, not negative (a
# COVID-19 film of DarkCovidNet or cxr4 shows a viral pneumonia; torchxrayvision marks it Pneumonia as well)
OVERLAPS = {F.COVID19: (F.PNEUMONIA,)}
# readers whose patient ids are one id space: NIH ChestX-ray14's, which DarkCovidNet's NIH films are named by
PATIENT_SPACE = {"nih14": "nih", "nih6": "nih", "darkcovidnet": "nih"}


def member_config(name: str, data_root: str, roots: dict) -> dict:
    """The data config ``conf/data/<name>.yaml`` with its root resolved against ``data_root`` (or ``roots[name]``)."""
    raw = OmegaConf.load(data_config_dir() / f"{name}.yaml")
    raw.pop("defaults", None)
    node = OmegaConf.create({"paths": {"data_root": str(data_root)}, "data": raw})
    cfg = with_data_defaults(OmegaConf.to_container(node.data, resolve=True))
    if roots.get(name):
        cfg["root"] = str(roots[name])
    cfg["root"] = str(Path(os.path.expanduser(str(cfg["root"]))).absolute())
    if cfg["source"] == MULTI:
        raise DataError(f"data.sources: {name!r} is itself a multi config: list single data sets")
    return cfg


def reader_findings(reader: Source) -> dict[str, str]:
    """A reader's labels -> findings; a multi-label reader also annotates ``No Finding`` (none of its findings)."""
    out = {lab: F.finding_of(lab, reader.name) or lab for lab in reader.labels}
    if reader.multilabel:
        out[F.NO_FINDING] = F.NO_FINDING
    return out


def union_findings(per_set: dict[str, dict[str, str]], wanted: list[str] | None) -> list[str]:
    """The model's outputs: ``wanted`` (checked), or the union of the sets' findings in `lungnet.data.findings` order.

    Raises:
        DataError: ``data.findings`` names a finding no set annotates.
    """
    annotated = {f for table in per_set.values() for f in table.values()}
    if wanted:
        missing = [f for f in wanted if f not in annotated]
        if missing:
            raise DataError(
                f"data.findings: {missing[0]!r} is annotated by none of the sets; they give {sorted(annotated)}"
            )
        return list(dict.fromkeys(str(f) for f in wanted))
    order = {f: i for i, f in enumerate(F.FINDINGS)}
    return sorted(annotated, key=lambda f: (order.get(f, len(order)), f))


def _targets(table: pd.DataFrame, reader: Source, mapping: dict[str, str], outputs: list[str]) -> pd.DataFrame:
    """One float column per output: 1/0 where the set annotates the finding, NaN elsewhere and on bad rows."""
    bad = table.get("error", pd.Series("", index=table.index)).fillna("").astype(str) != ""
    cols = {}
    if reader.multilabel:
        own = [lab for lab in reader.labels if lab in table]
        present = table[own].to_numpy(np.float32)
        for lab in own:
            cols[mapping[lab]] = table[lab].to_numpy(np.float32)
        none = np.where(np.isnan(present).any(1), np.nan, (np.nansum(present, 1) == 0).astype(np.float32))
        cols[F.NO_FINDING] = none
    else:
        finding = table["label"].map(mapping)
        for f in set(mapping.values()):
            cols[f] = (finding == f).to_numpy(np.float32)
        for cls, others in OVERLAPS.items():
            for f in (o for o in others if o in cols):
                cols[f][(finding == cls).to_numpy()] = np.nan
    out = pd.DataFrame(index=table.index)
    for f in outputs:
        out[f] = np.where(bad, np.nan, cols[f]).astype(np.float32) if f in cols else np.float32(np.nan)
    return out


class MultiSource(Source):
    """The sets of ``data.sources`` as one multi-label source (see the module docstring).

    Args:
        cfg: the ``data`` config of ``data=multi`` (``sources``, ``roots``, ``findings``, ``root``: the data root).
    """

    name = MULTI
    multilabel = True

    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg["root"])
        roots = dict(cfg.get("roots") or {})
        names = check_names(cfg.get("sources"), roots)
        self.members = {n: member_config(n, cfg["root"], roots) for n in names}
        self.readers = {
            n: create_source(c["source"], c["root"], **dict(c.get("options") or {})) for n, c in self.members.items()
        }
        self.mappings = {n: reader_findings(r) for n, r in self.readers.items()}
        self.labels = union_findings(self.mappings, list(cfg.get("findings") or []) or None)
        self.citation = "; ".join(f"{n}: {r.citation}" for n, r in self.readers.items())
        self.download = "; ".join(f"{n}: {r.download}" for n, r in self.readers.items())
        self.report: dict = {}
        for n in names:
            unknown = [f for f in self.labels if f not in self.mappings[n].values()]
            log.info(
                "Data set %s (%s): findings %s; unknown (NaN) %s",
                n,
                self.readers[n].root,
                sorted(set(self.mappings[n].values()) & set(self.labels)),
                unknown,
            )

    def check_root(self) -> None:
        """Each set's root is a folder (but for a generated one); the message names its ``data.roots`` key."""
        for name, reader in self.readers.items():
            if not reader.root.is_dir() and not (reader.name == "synthetic" and self.may_generate):
                raise DataError(
                    f"Data root for data set '{name}' (data.sources) not found: {reader.root}; pass "
                    f"data.roots.{name}=/path/to/it (or set LUNGNET_DATA to the folder that holds it). "
                    f"Get it from: {reader.download}"
                )

    def scan(self) -> pd.DataFrame:
        self.check_root()
        parts = []
        for name, reader in self.readers.items():
            reader.may_generate = self.may_generate
            table = patients_from_names(reader.scan(), self.members[name].get("patient_pattern"))
            parts.append(self._member_table(name, reader, table))
        return pd.concat(parts, ignore_index=True)

    def _member_table(self, name: str, reader: Source, table: pd.DataFrame) -> pd.DataFrame:
        """One set's rows in the merged layout: its own columns, ``source``, namespaced patients, the outputs."""
        space = PATIENT_SPACE.get(reader.name, name)
        patient = table["patient"].fillna("").astype(str).str.strip()
        patient = patient.map(lambda p: str(int(p)) if p.isdigit() else p)  # NIH's "61" is DarkCovidNet's 00000061
        keep = [c for c in ("path", "label", "split", "error", "origin") if c in table]
        out = table[keep].copy()
        out["label"] = out["label"].astype(str)
        out["patient"] = np.where(patient == "", "", space + ":" + patient)
        out["source"] = name
        out = pd.concat([out, _targets(table, reader, self.mappings[name], self.labels)], axis=1)
        for col, default in (("split", ""), ("error", ""), ("origin", "")):
            out[col] = out[col].fillna(default) if col in out else default
        log.info(
            "Data set %s: %d images, %d patients", name, len(out), out.loc[out["patient"] != "", "patient"].nunique()
        )
        return out


def source_shares(sizes: dict[str, int], balance: str) -> dict[str, float]:
    """Each set's expected share of the training draws: its size (``none``), equal, or by the square root of size."""
    if balance not in ("none", "equal", "sqrt"):
        raise DataError(f"data.source_balance={balance!r}: choose none, equal or sqrt")
    mass = {
        n: float(k) if balance == "none" else 1.0 if balance == "equal" else float(np.sqrt(k)) for n, k in sizes.items()
    }
    mass = {n: m if sizes[n] else 0.0 for n, m in mass.items()}
    total = sum(mass.values()) or 1.0
    return {n: m / total for n, m in mass.items()}


def sample_weights(table: pd.DataFrame, balance: str, class_balance: bool) -> np.ndarray:
    """Per-image draw weights of the training split: each set gets its `source_shares` share; within a set the
    images are drawn alike, or (``class_balance``, ``data.balance=sampler``) each of the set's labels alike.

    Args:
        table: the training rows (``source`` and ``label``).
        balance: ``data.source_balance``.
        class_balance: balance the labels within each set too.

    Returns:
        Weights summing to 1, one per row in order.
    """
    source = table["source"].astype(str).to_numpy()
    sizes = pd.Series(source).value_counts().to_dict()
    shares = source_shares(sizes, balance)
    if class_balance:
        key = pd.Series(source) + "\x00" + table["label"].astype(str).str.split("|").str[0].to_numpy()
        per_label = key.map(key.value_counts()).to_numpy(np.float64)
        labels_in_set = pd.Series(source).map(key.groupby(source).nunique()).to_numpy(np.float64)
        within = 1.0 / (per_label * labels_in_set)
    else:
        within = 1.0 / pd.Series(source).map(sizes).to_numpy(np.float64)
    return np.array([shares[s] for s in source]) * within


def resolve_root(data_cfg: dict) -> dict:
    """A copy of a ``data`` config whose ``root`` is absolute against the directory the user launched from."""
    data_cfg = dict(data_cfg)
    if data_cfg.get("root"):
        data_cfg["root"] = str(Path(os.path.expanduser(str(data_cfg["root"]))).absolute())
    return data_cfg


def make_source(cfg: dict) -> Source:
    """The configured source (``cfg["source"]``, ``cfg["root"]``, ``cfg["options"]``; ``data=multi``:
    a `MultiSource` over ``cfg["sources"]``)."""
    if cfg.get("source") == MULTI:
        return MultiSource(cfg)
    return create_source(cfg["source"], cfg["root"], **dict(cfg.get("options") or {}))
