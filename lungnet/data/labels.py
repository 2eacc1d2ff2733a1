"""Canonical, ordered label lists for every dataset lungnet knows, and folder-name aliases.

The order of a list is the order of the model's outputs: it is stored in every checkpoint, so
changing it breaks old checkpoints. Aliases map the many spellings found in public folder layouts
(``TURBERCULOSIS``, ``COVID19``, ``Corona Virus Disease``...) onto one canonical name.
"""

from __future__ import annotations

import re

import numpy as np

# The decision threshold of a finding (multi-label) or class that has no fitted one: its one home
# (`lungnet.artifacts.decision`, `lungnet.serve.export`, `lungnet.evaluation`, `lungnet.explain` read it from here).
DEFAULT_THRESHOLD = 0.5
NO_FINDING = "No Finding"  # a multi-label image with no finding: its one spelling in lungnet's outputs

PNEUMONIA = ["NORMAL", "PNEUMONIA"]
LUNG5 = ["Bacterial Pneumonia", "Corona Virus Disease", "Normal", "Tuberculosis", "Viral Pneumonia"]
CXR4 = ["Normal", "COVID-19", "Pneumonia", "Tuberculosis"]
DARKCOVIDNET = ["Covid-19", "No_findings", "Pneumonia"]
SYNTHETIC = ["Normal", "Consolidation", "Cavity", "Haze"]
NIH14 = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
]
NIH6 = ["No Finding", "Atelectasis", "Effusion", "Infiltration", "Pneumonia", "Edema"]

# Normalised alias -> canonical name. Keys are compared after `normalise()`.
_ALIASES = {
    "normal": "Normal",
    "nofinding": "No Finding",
    "nofindings": "No_findings",
    "pneumonia": "Pneumonia",
    "covid": "COVID-19",
    "covid19": "COVID-19",
    "coronavirusdisease": "COVID-19",
    "tuberculosis": "Tuberculosis",
    "turberculosis": "Tuberculosis",
    "tb": "Tuberculosis",
    "bacterialpneumonia": "Bacterial Pneumonia",
    "viralpneumonia": "Viral Pneumonia",
}


def normalise(name: str) -> str:
    """Lower-cases a folder or label name and drops everything but letters and digits."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def match_label(folder: str, labels: list[str]) -> str | None:
    """Maps a folder name onto one of ``labels``.

    Tries an exact match, a case/punctuation-insensitive match, then the alias table.

    Args:
        folder: a class-folder name as found on disk.
        labels: the dataset's canonical labels.

    Returns:
        The canonical label, or None when the folder matches no label.
    """
    if folder in labels:
        return folder
    key = normalise(folder)
    by_norm = {normalise(label): label for label in labels}
    if key in by_norm:
        return by_norm[key]
    alias = _ALIASES.get(key)
    if alias is not None and normalise(alias) in by_norm:
        return by_norm[normalise(alias)]
    return None


# Labels that mean "no disease" across the data sets: the other class of a two-class set is its positive class.
NORMAL_LABELS = ("NORMAL", "Normal", "No Finding", "No_findings")


def default_positive(labels: list[str]) -> str | None:
    """The positive class of a two-class label list: the one that is not a normal label (None otherwise).

    Args:
        labels: a data set's ordered labels.

    Returns:
        The non-normal label of a two-class list with exactly one normal label; the second label of any other
        two-class list; None for three or more classes (their decision is the arg-max).
    """
    if len(labels) != 2:
        return None
    abnormal = [lab for lab in labels if lab not in NORMAL_LABELS]
    return abnormal[0] if len(abnormal) == 1 else labels[1]


def join_flags(flags, labels: list[str], empty: str = "") -> list[str]:
    """Per row of ``flags`` (N, C; true where a label applies), its labels joined by ``|`` in ``labels``' order, or
    ``empty`` where none applies. One join per distinct row (a few hundred among NIH's 112k images): O(N log N)."""
    on = np.asarray(flags, dtype=bool)
    if len(on) == 0:
        return []
    if on.shape[1] < 63:  # each row as one integer: np.unique on int64, several times faster than on rows
        codes, inverse = np.unique(on @ (1 << np.arange(on.shape[1], dtype=np.int64)), return_inverse=True)
        rows = (codes[:, None] >> np.arange(on.shape[1])) & 1
    else:
        rows, inverse = np.unique(on, axis=0, return_inverse=True)
    names = ["|".join(lab for lab, x in zip(labels, row, strict=True) if x) or empty for row in rows]
    return [names[i] for i in inverse.reshape(-1)]
