"""One class per dataset: finds the files and their labels and returns them as a table.

A source turns a data root into a `pandas.DataFrame` with one row per image:

- ``path``: absolute file path;
- ``label``: the canonical label (single-label) or the raw finding string (multi-label);
- ``target``: the class index (single-label only);
- one float column per label for multi-label sources (1, 0 or NaN for unknown);
- ``patient``: a patient id when the dataset has one (splits never cut a patient in two);
- ``split``: ``train``/``val``/``test``/``trainval`` when the dataset ships a split, else empty;
- optional ``error``: why a row the label file gives is unusable ('' when usable), and ``origin``: where the label
  file names the image (``Data_Entry_2017.csv line 7``), for messages.

A new dataset is one class here plus one YAML file in ``conf/data/``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from lungnet.data import labels as L
from lungnet.data.formats import image_names, walk_images
from lungnet.data.tables import blank_cells, finding_cells, one_row_per_file, read_label_csv, split_folders
from lungnet.errors import DataError  # noqa: F401 - re-exported: lungnet.data.sources.DataError

log = logging.getLogger(__name__)


class Source:
    """Base class: a dataset on disk.

    A data set is described here once: subclasses set `labels` (its ordered label list, `lungnet.data.labels`),
    `findings` (each label's finding in lungnet's vocabulary, `lungnet.data.findings.FINDINGS`), `note` (the caveat
    every report and model card of a model trained on it carries), `multilabel`, `citation` and `download`, and
    implement `scan`; its options are ``conf/data/<name>.yaml``.
    """

    name: ClassVar[str] = ""
    labels: ClassVar[list[str]] = []
    findings: ClassVar[dict[str, str]] = {}
    note: ClassVar[str] = ""
    multilabel: ClassVar[bool] = False
    citation: ClassVar[str] = ""
    download: ClassVar[str] = ""

    def __init__(self, root: str | os.PathLike, **options) -> None:
        self.root = Path(root).expanduser().resolve()
        self.options = options
        # a generated source (synthetic) writes its images under root only when training set this: every reader
        # (evaluation, explanations, transfer) uses a set already there, never writes at a path a checkpoint names
        self.may_generate = False

    def check_root(self) -> None:
        """Raises `DataError` naming the path, the dataset and where to get it when the root is missing."""
        if not self.root.is_dir():
            raise DataError(
                f"Data root for dataset '{self.name}' not found: {self.root}\n"
                f"  Get it from: {self.download}\n"
                f"  Then pass data.root=/path/to/it (or set LUNGNET_DATA to the folder that holds it)."
            )

    def scan(self) -> pd.DataFrame:
        """Returns the image table (see the module docstring)."""
        raise NotImplementedError


class FolderSource(Source):
    """Class-folder datasets: ``<root>/{train,val,test}/<class>/*`` or flat ``<root>/<class>/*``.

    Folder names are matched to the canonical labels case- and punctuation-insensitively and
    through `lungnet.data.labels` aliases. Folders that match no label are an error (they usually mean
    the wrong dataset or a typo), as are empty class folders and classes missing from a split.
    """

    def _class_folders(self, folder: Path) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            label = L.match_label(sub.name, self.labels)
            if label is None:
                raise DataError(
                    f"Folder {sub} does not match any label of dataset '{self.name}' "
                    f"(labels: {', '.join(self.labels)}). Rename it, or pick the right data=... config."
                )
            if label in out:
                raise DataError(f"Folders {out[label]} and {sub} both map to label '{label}' in {folder}")
            out[label] = sub
        return out

    def scan(self) -> pd.DataFrame:
        self.check_root()
        split_dirs = split_folders(self.root, lambda name: L.match_label(name, self.labels) is not None)
        layout = split_dirs if split_dirs else {"": self.root}
        rows = []
        classes_per_split = {}
        for split, folder in sorted(layout.items()):
            classes = self._class_folders(folder)
            if not classes:
                raise DataError(
                    f"No class folders found in {folder} for dataset '{self.name}' "
                    f"(expected folders named like: {', '.join(self.labels)})"
                )
            classes_per_split[split or "all"] = set(classes)
            for label, class_dir in classes.items():
                files = walk_images(class_dir)
                if not files:
                    raise DataError(f"Class folder {class_dir} is empty (no image files): remove it or add images")
                rows += [{"path": str(f), "label": label, "split": split} for f in files]
        sets = list(classes_per_split.values())
        if any(s != sets[0] for s in sets):
            detail = "; ".join(f"{k}: {sorted(v)}" for k, v in classes_per_split.items())
            raise DataError(f"Classes differ between splits of {self.root} ({detail}): every split needs every class")
        table = one_row_per_file(pd.DataFrame(rows), layout)  # symlinks: a file counts once, in its own split
        table["target"] = table["label"].map({lab: i for i, lab in enumerate(self.labels)}).astype(int)
        table["patient"] = ""
        return table


class LabelledFolderSource(FolderSource):
    """Any ``<root>/<class>/*`` folder for a given label list (e.g. an external test set for a checkpoint)."""

    name = "folder"

    def __init__(self, root: str | os.PathLike, labels: list[str], **options) -> None:
        super().__init__(root, **options)
        self.labels = list(labels)
        self.download = "your own folder with one sub-folder per class"


class PneumoniaSource(FolderSource):
    """Kaggle "Chest X-Ray Images (Pneumonia)" (Kermany et al., pediatric CXR, Guangzhou).

    Labels: NORMAL, PNEUMONIA. Layout ``{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg``; the official
    val split has 16 images, so a stratified validation split is usually carved from train
    (``data.carve_val=true``). PneumoniaMNIST (MedMNIST v2, 28 px) in the same layout works too.

    Citation: Kermany D.S. et al., "Identifying Medical Diagnoses and Treatable Diseases by
    Image-Based Deep Learning", Cell 172(5), 2018. PneumoniaMNIST: Yang J. et al., "MedMNIST v2",
    Scientific Data 10, 2023.
    """

    name = "pneumonia"
    labels = L.PNEUMONIA
    findings = {"NORMAL": "No Finding", "PNEUMONIA": "Pneumonia"}
    citation = "Kermany et al., Cell 2018"
    download = "https://www.kaggle.com/datasets/paultimothymooney/chest-xray-pneumonia (PneumoniaMNIST: https://zenodo.org/records/10519652)"


class Lung5Source(FolderSource):
    """Kaggle "Lung Disease Dataset (4 types)", five folders.

    Labels: Bacterial Pneumonia, Corona Virus Disease, Normal, Tuberculosis, Viral Pneumonia.
    Layout ``{train,val,test}/<class>/*``.

    Citation: Kaggle dataset "omkarmanohardalvi/lungs-disease-dataset-4-types" (2023).
    """

    name = "lung5"
    labels = L.LUNG5
    findings = {
        "Bacterial Pneumonia": "Pneumonia",
        "Corona Virus Disease": "COVID-19",
        "Normal": "No Finding",
        "Tuberculosis": "Tuberculosis",
        "Viral Pneumonia": "Pneumonia",
    }
    citation = "Kaggle: Lung Disease Dataset (4 types)"
    download = "https://www.kaggle.com/datasets/omkarmanohardalvi/lungs-disease-dataset-4-types"


class Cxr4Source(FolderSource):
    """Four-class curated chest X-ray folders: Normal, COVID-19, Pneumonia, Tuberculosis.

    Folder names vary between curations (``COVID19``, ``TURBERCULOSIS``, ``NORMAL``...): aliases
    map them onto the canonical labels. Without split folders an 80/20 stratified split is made.

    Citation: Kaggle dataset "jtiptj/chest-xray-pneumoniacovid19tuberculosis" (curated from the
    Kermany, COVID-19 Radiography and Shenzhen/Montgomery TB collections).
    """

    name = "cxr4"
    labels = L.CXR4
    findings = {"Normal": "No Finding", **{f: f for f in ("COVID-19", "Pneumonia", "Tuberculosis")}}
    citation = "Kaggle: Chest X-ray (Pneumonia, Covid-19, Tuberculosis)"
    download = "https://www.kaggle.com/datasets/jtiptj/chest-xray-pneumoniacovid19tuberculosis"


class DarkCovidNetSource(FolderSource):
    """The three-class set of DarkCovidNet: Covid-19, No_findings, Pneumonia (flat class folders).

    COVID-19 images come from the ieee8023 covid-chestxray-dataset, the others from NIH
    ChestX-ray14: a model can learn the source rather than the disease; report that with results.

    Citation: Ozturk T. et al., "Automated detection of COVID-19 cases using deep neural networks
    with X-ray images", Computers in Biology and Medicine 121, 2020.
    """

    name = "darkcovidnet"
    labels = L.DARKCOVIDNET
    findings = {"Covid-19": "COVID-19", "No_findings": "No Finding", "Pneumonia": "Pneumonia"}
    note = (
        "The COVID-19 images of DarkCovidNet come from other hospitals and publications than the No_findings and "
        "Pneumonia images (NIH ChestX-ray14), so a model can learn the image source rather than the disease: treat "
        "its accuracy with caution."
    )
    citation = "Ozturk et al., Comput Biol Med 2020"
    download = "https://github.com/muhammedtalo/COVID-19 (X-Ray Image DataSet folder)"


class SyntheticSource(FolderSource):
    """SYNTHETIC phantoms generated by `lungnet.data.synthetic` (the offline default; not patients).

    Labels: Normal, Consolidation, Cavity, Haze. The folder is generated on first use under the
    data root (``images/<class>/`` with lesion masks in ``masks/<class>/``).
    """

    name = "synthetic"
    labels = L.SYNTHETIC
    findings = {lab: f"synthetic:{lab}" for lab in L.SYNTHETIC}
    note = "Synthetic phantom radiographs, not patient data."
    citation = "lungnet synthetic phantoms (generated, no citation)"
    download = "generated automatically by lungnet"

    def scan(self) -> pd.DataFrame:
        from lungnet.data.synthetic import generate

        gen = {k: self.options[k] for k in ("n_per_class", "size", "seed") if k in self.options}
        if self.root.is_dir() and any(self.root.iterdir()) and not (self.root / "manifest.json").exists():
            raise DataError(
                f"{self.root} is not a lungnet synthetic data folder (no manifest.json), and lungnet "
                "will not generate phantoms into a folder that holds other files: choose another "
                "data.root, or split=all with a <root>/<class>/ folder"
            )
        generate(self.root, **gen, write=self.may_generate)
        log.warning(
            "Data set 'synthetic': SYNTHETIC phantom radiographs generated by lungnet (%s), NOT patient "
            "data; use it to try the pipeline, not to judge a model",
            self.root,
        )
        root = self.root
        self.root = root / "images"
        try:
            return super().scan()
        finally:
            self.root = root


class NIHSource(Source):
    """NIH ChestX-ray14 (Wang et al., CVPR 2017): 14 findings from ``Data_Entry_2017.csv``.

    Layout: ``<root>/Data_Entry_2017.csv`` and the PNGs anywhere below ``<root>`` (``images/``,
    ``images_001/images/``...). ``train_val_list.txt``/``test_list.txt``, when present, give the
    official patient-wise split. Patient ids come from the ``Patient ID`` column.

    Multi-label (``nih14``): one float target per finding in `lungnet.data.labels.NIH14` order.
    Single-label (``nih6``, option ``findings``): images whose only finding (or "No Finding") is
    one of the configured findings.

    Citation: Wang X. et al., "ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks on
    Weakly-Supervised Classification and Localization of Common Thorax Diseases", CVPR 2017.
    """

    name = "nih14"
    labels = L.NIH14
    findings = {"No Finding": "No Finding", **{f: f for f in L.NIH14}}
    multilabel = True
    citation = "Wang et al., CVPR 2017"
    download = "https://nihcc.app.box.com/v/ChestXray-NIHCC"

    def _read_csv(self) -> pd.DataFrame:
        """The label CSV's rows whose image is found under the root, with ``error``, ``origin``, ``path``,
        ``patient`` and ``split`` columns."""
        entries, added = self._rows()
        return entries.assign(
            error=added["error"],
            origin=added["origin"],
            path=added["path"],
            patient=entries["Patient ID"],
            split=added["split"],
        )

    def _rows(self) -> tuple[pd.DataFrame, dict[str, list]]:
        """The label CSV's rows whose image is found under the root, and the columns lungnet adds to them (``path``,
        ``error``, ``origin``, ``split``) as lists: `scan` builds its table in one go (a pandas column inserted at a
        time costs ~0.2 ms each, a fixed cost of every command's setup)."""
        self.check_root()
        csv = self.root / self.options.get("csv", "Data_Entry_2017.csv")
        if not csv.is_file():
            raise DataError(f"NIH label file not found: {csv} (dataset '{self.name}'; get it from {self.download})")
        entries = read_label_csv(csv, ("Image Index", "Finding Labels", "Patient ID"))
        blank = blank_cells(entries, ("Finding Labels", "Patient ID"), csv.name)
        odd = finding_cells(entries["Finding Labels"], L.NIH14, csv.name)
        name = csv.name  # once: a Path's name is worked out at each call
        files = image_names(self.root)
        images = entries["Image Index"].tolist()
        paths = [files.get(image) for image in images]
        added = {
            "path": paths,
            "error": [b or o for b, o in zip(blank, odd, strict=True)],
            "origin": [f"{name} line {line}" for line in range(2, len(entries) + 2)],  # 1: the header
        }
        n_missing = paths.count(None)
        if n_missing:
            log.warning("%d of %d rows in %s have no image under %s: skipped", n_missing, len(entries), csv, self.root)
            found = [p is not None for p in paths]
            entries = entries[np.array(found, dtype=bool)].reset_index(drop=True)
            added = {k: [v for v, hit in zip(column, found, strict=True) if hit] for k, column in added.items()}
            images = [image for image, hit in zip(images, found, strict=True) if hit]
        if entries.empty:
            raise DataError(f"None of the images listed in {csv} were found under {self.root}")
        split = [""] * len(entries)
        for fname, part in (("train_val_list.txt", "trainval"), ("test_list.txt", "test")):
            lst = self.root / fname
            if lst.is_file():
                listed = set(lst.read_text().split())
                split = [part if image in listed else s for image, s in zip(images, split, strict=True)]
        added["split"] = split
        return entries, added

    def scan(self) -> pd.DataFrame:
        entries, added = self._rows()
        codes, cells = pd.factorize(entries["Finding Labels"])  # each distinct cell split once, not each row
        found = np.array([[lab in cell.split("|") for lab in self.labels] for cell in cells], dtype=np.float32)
        found = found.reshape(len(cells), len(self.labels))[codes]
        found[np.array([e != "" for e in added["error"]], dtype=bool)] = np.nan
        columns = {
            "path": added["path"],
            "label": entries["Finding Labels"],
            "patient": entries["Patient ID"],
            "split": added["split"],
            "error": added["error"],  # a row the CSV leaves blank: reported and skipped like a bad file
            "origin": added["origin"],  # the CSV line, named when two rows contradict
        }
        columns.update(zip(self.labels, found.T, strict=True))  # one frame, the finding columns one float block
        return pd.DataFrame(columns)


class NIH6Source(NIHSource):
    """NIH ChestX-ray14 single-label subset over a configurable list of findings (default six).

    Keeps the images whose ``Finding Labels`` is exactly one of ``findings`` (``No Finding``
    included when listed); with option ``match: any``, those carrying exactly one of ``findings``
    among their labels (``Infiltration|Pneumonia`` is Pneumonia when Infiltration is not listed).
    Labels: the ``findings`` option in its order (default `lungnet.data.labels.NIH6`). Split by patient.
    Citation: Wang et al., CVPR 2017.
    """

    name = "nih6"
    multilabel = False

    def __init__(self, root: str | os.PathLike, findings: list[str] | None = None, **options) -> None:
        super().__init__(root, **options)
        self.labels = list(findings or L.NIH6)
        unknown = [f for f in self.labels if f not in L.NIH14 + ["No Finding"]]
        if unknown:
            raise DataError(f"Unknown NIH findings {unknown}; valid: {L.NIH14 + ['No Finding']}")

    def scan(self) -> pd.DataFrame:
        entries = self._read_csv()
        match = self.options.get("match", "exact")  # any: other, unlisted findings may come along
        if match not in ("exact", "any"):
            raise DataError(f"data.options.match={match!r}: choose exact or any")
        hits = (
            entries["Finding Labels"].fillna("").str.split("|").map(lambda f: [lab for lab in self.labels if lab in f])
        )
        keep = entries["Finding Labels"].isin(self.labels) if match == "exact" else hits.str.len() == 1
        log.info("nih6: %d of %d images carry one of %s (%s)", int(keep.sum()), len(entries), self.labels, match)
        wanted = keep | (entries["error"] != "")  # bad rows go on to be reported
        entries, label = entries[wanted].reset_index(drop=True), hits[wanted].str[0].reset_index(drop=True)
        label = label.where(entries["error"] == "", entries["Finding Labels"])
        return pd.DataFrame(
            {
                "path": entries["path"],
                "label": label,
                "target": label.map({lab: i for i, lab in enumerate(self.labels)}).fillna(-1),
                "patient": entries["patient"],
                "split": entries["split"],
                "error": entries["error"],
                "origin": entries["origin"],
            }
        ).astype({"target": int})


SOURCES: dict[str, type[Source]] = {
    cls.name: cls
    for cls in (PneumoniaSource, Lung5Source, Cxr4Source, DarkCovidNetSource, SyntheticSource, NIHSource, NIH6Source)
}


def create_source(name: str, root: str | os.PathLike, **options) -> Source:
    """Builds the source registered under ``name``; unknown names list the valid ones."""
    if name not in SOURCES:
        raise DataError(f"Unknown dataset source '{name}'. Valid: {', '.join(sorted(SOURCES))}")
    return SOURCES[name](root, **options)
