"""One finding vocabulary across data sets, each source's labels mapped onto it, and the mapping between a model
and a data set it was not trained on.

Every data set names the same findings differently (``NORMAL``, ``Normal``, ``No Finding``, ``No_findings``;
``Covid-19``, ``COVID-19``, ``Corona Virus Disease``) and some split one finding into several labels (Kaggle's
``Bacterial Pneumonia`` and ``Viral Pneumonia``). `SOURCE_FINDINGS` maps each source's labels onto `FINDINGS`;
`LabelMapping.between` then aligns a checkpoint's outputs with another data set's labels, after
torchxrayvision's ``relabel_dataset`` (which aligns a data set's label columns to a model's output list, drops
the data set's other labels and fills the model's missing ones with NaN):

- a label of the data whose finding the model does not know is left out (its images are not scored, and
  counted);
- a finding the model has but the data lacks is not scored: the model's probabilities are restricted to the
  scored findings and renormalised (the probability of each given that the image shows one of them);
- several model labels with one finding (bacterial and viral pneumonia) are summed into it.

The synthetic phantoms have findings of their own (``synthetic:<label>``): they share none with patient data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lungnet.data import labels as L
from lungnet.data.sources import SOURCES
from lungnet.errors import DataError

NO_FINDING = L.NO_FINDING
PNEUMONIA = "Pneumonia"
COVID19 = "COVID-19"
TUBERCULOSIS = "Tuberculosis"
FINDINGS = [NO_FINDING, PNEUMONIA, COVID19, TUBERCULOSIS, *(f for f in L.NIH14 if f != PNEUMONIA)]

# each data set's labels -> findings, as its `lungnet.data.sources.Source` states them (nih6 inherits nih14's)
SOURCE_FINDINGS: dict[str, dict[str, str]] = {name: dict(cls.findings) for name, cls in SOURCES.items() if cls.findings}

# spellings of folders outside the known sources (split=all on one's own folder), compared after labels.normalise
_GENERIC = {
    "normal": NO_FINDING,
    "nofinding": NO_FINDING,
    "nofindings": NO_FINDING,
    "healthy": NO_FINDING,
    "pneumonia": PNEUMONIA,
    "bacterialpneumonia": PNEUMONIA,
    "viralpneumonia": PNEUMONIA,
    "covid": COVID19,
    "covid19": COVID19,
    "coronavirusdisease": COVID19,
    "tuberculosis": TUBERCULOSIS,
    "turberculosis": TUBERCULOSIS,
    "tb": TUBERCULOSIS,
    **{L.normalise(f): f for f in L.NIH14},
}


def finding_of(label: str, source: str | None = None) -> str | None:
    """The canonical finding of one data-set label (None when it has none).

    Args:
        label: a label as the data set (or checkpoint) names it.
        source: the source it comes from (``pneumonia``, ``darkcovidnet``, ``nih6``...); its table is used first,
            then the generic spellings.
    """
    table = SOURCE_FINDINGS.get(source or "")
    if table is not None and label in table:
        return table[label]
    if source == "synthetic":
        return None
    return _GENERIC.get(L.normalise(label))


def mapping_text(source: str, labels: list[str]) -> str:
    """How one data set's labels map onto the finding vocabulary, for messages and logs, e.g.
    ``pneumonia: NORMAL -> No Finding, PNEUMONIA -> Pneumonia`` or ``synthetic: Normal -> synthetic:Normal, Haze ->
    synthetic:Haze (phantom findings, shared with no patient data set)``."""
    if source == "synthetic":
        named = ", ".join(f"{lab} -> synthetic:{lab}" for lab in labels)
        return f"synthetic: {named} (phantom findings, shared with no patient data set)"
    parts, same = [], []
    for lab in labels:
        finding = finding_of(lab, source)
        if finding == lab:
            same.append(lab)
        else:
            parts.append(f"{lab} -> {finding or 'no finding (not scored)'}")
    if same:
        parts.append(f"{', '.join(same)} as named")
    return f"{source}: {', '.join(parts)}"


@dataclass(frozen=True)
class LabelMapping:
    """How a checkpoint's outputs line up with a data set's labels (see the module docstring).

    Attributes:
        model_source: the checkpoint's data source; model_labels: its output labels in order.
        data_source: the evaluated data's source; data_labels: its labels.
        scored: the findings scored, in the order of the model's outputs.
        model_findings: model label -> finding (None: none).
        data_findings: data label -> finding (None: none).
    """

    model_source: str
    model_labels: list[str]
    data_source: str
    data_labels: list[str]
    scored: list[str] = field(default_factory=list)
    model_findings: dict[str, str | None] = field(default_factory=dict)
    data_findings: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def between(cls, model_source: str, model_labels: list[str], data_source: str, data_labels: list[str]):
        """The mapping from a model (source and labels) to a data set (source and labels)."""
        model_findings = {lab: finding_of(lab, model_source) for lab in model_labels}
        data_findings = {lab: finding_of(lab, data_source) for lab in data_labels}
        in_data = set(data_findings.values()) - {None}
        scored = list(dict.fromkeys(f for f in model_findings.values() if f is not None and f in in_data))
        return cls(
            model_source, list(model_labels), data_source, list(data_labels), scored, model_findings, data_findings
        )

    def restricted(self, findings: list[str] | None) -> LabelMapping:
        """The same mapping scoring only ``findings`` (None: unchanged); the others are left out / not scored."""
        if findings is None:
            return self
        wanted = [finding_of(str(f)) for f in findings]
        unknown = [str(f) for f, w in zip(findings, wanted, strict=True) if w is None]
        if unknown:
            raise DataError(f"findings={unknown} name no known finding; the shared ones here: {', '.join(self.scored)}")
        scored = [f for f in self.scored if f in wanted]
        return LabelMapping(
            self.model_source,
            self.model_labels,
            self.data_source,
            self.data_labels,
            scored,
            self.model_findings,
            self.data_findings,
        )

    @property
    def left_out_labels(self) -> list[str]:
        """Data labels whose images are not scored (the model does not know their finding)."""
        return [lab for lab, f in self.data_findings.items() if f not in self.scored]

    @property
    def unscored_model_labels(self) -> list[str]:
        """Model labels whose finding the data lacks (not scored)."""
        return [lab for lab, f in self.model_findings.items() if f not in self.scored]

    def target(self, data_label: str) -> int | None:
        """Index into `scored` of a data label's finding, or None when it is left out."""
        finding = self.data_findings.get(data_label)
        return self.scored.index(finding) if finding in self.scored else None

    def scores(self, probs: np.ndarray) -> np.ndarray:
        """(N, len(model_labels)) probabilities -> (N, len(scored)): summed per finding, renormalised to 1."""
        probs = np.asarray(probs, dtype=np.float64)
        out = np.zeros((len(probs), len(self.scored)))
        for j, lab in enumerate(self.model_labels):
            finding = self.model_findings[lab]
            if finding in self.scored:
                out[:, self.scored.index(finding)] += probs[:, j]
        return out / np.maximum(out.sum(1, keepdims=True), 1e-12)

    def describe(self) -> str:
        """The mapping used, in one line: each side's labels onto lungnet's finding vocabulary, then what is scored.

        e.g. ``mapped through lungnet/data/findings.py: model pneumonia: NORMAL -> No Finding, PNEUMONIA -> Pneumonia;
        data
        nih6: No Finding, Pneumonia, ... as named; shared: No Finding, Pneumonia``.
        """
        shared = ", ".join(self.scored) if self.scored else "none"
        return (
            f"mapped through lungnet/data/findings.py: model {mapping_text(self.model_source, self.model_labels)}; "
            f"data {mapping_text(self.data_source, self.data_labels)}; shared: {shared}"
        )

    def rows(self) -> list[list[str]]:
        """One row per data label: data label, finding, the model label(s) it is scored against (or why not)."""
        out = []
        for lab, finding in self.data_findings.items():
            model = [m for m, f in self.model_findings.items() if f == finding and finding is not None]
            out.append(
                [lab, finding or "(none)", ", ".join(model) if model else "left out: the model does not know it"]
            )
        for lab in self.unscored_model_labels:
            out.append(["(absent)", self.model_findings[lab] or "(none)", f"{lab}: not scored, the data lack it"])
        return out
