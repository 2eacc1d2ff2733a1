"""The decision file format (``<ckpt stem>.decision.json``, `lungnet.artifacts.decision.DecisionRecord`): its one
reader.

A decision file is untrusted input: it may come from another machine, an older lungnet or a hand edit, and the
checkpoint hash it carries says nothing about its other values. `record_fields` reads every key through
`lungnet.untrusted.Fields`; what each accepts:

- ``format``: ``lungnet-decision/1``; ``labels``: a non-empty list of distinct strings; ``multilabel``: true or
  false; ``checkpoint_sha256``: a string (the three are required);
- ``temperature``: a number in (0, 100] (`TEMPERATURE_MAX`; evaluate.py fits within [0.05, 20]), or null;
- ``thresholds``: ``{label: a number in [0, 1], or null}`` over the record's labels;
- ``alpha``: a number in (0, 1), ``abstain_below`` in [0, 1], ``target_sensitivity`` in (0, 1], or null: the
  ranges of the settings they come from (``conformal.alpha``, ``abstain.below``,
  ``operating_point.target_sensitivity`` in `lungnet.schema`, read by `limits`);
- ``positive_class``: one of the labels, or null;
- ``conformal_scores``: a non-empty list of numbers in [0, 1] (multi-label: ``{label: list}`` for every label), or
  null;
- ``ood``: a stored OOD gate (`lungnet.scoring.ood.gate_from_dict`, every value checked there), or null;
- ``ood_fit_n``: how many training images the gate was fitted on (a seeded sample of at most ``ood.fit_max``): a
  whole number >= 1, or null (files written before it was recorded lack it);
- ``checkpoint``: a string; ``split``: a string or null; ``abstain_ambiguous``: true or false; ``counts``,
  ``summary``: JSON objects.

A key that is absent takes `DecisionRecord`'s default. A bad value raises `lungnet.untrusted.BadValue` naming the
key and what it accepts; `lungnet.artifacts.decision.read_decision` adds the file (one line, exit status 2).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from lungnet.schema import AbstainConfig, ConformalConfig, OperatingPointConfig
from lungnet.scoring.ood import gate_from_dict
from lungnet.untrusted import BadValue, Fields

FORMAT = "lungnet-decision/1"
TEMPERATURE_MAX = 100.0  # far beyond what evaluate.py fits ([0.05, 20]); 1e308 would make every probability 0.5


def limits(schema: type, name: str) -> dict[str, float]:
    """The range a config key accepts (its ``ge``/``gt``/``le``/``lt``, `lungnet.schema.fields.opt`): a value fitted
    with that setting and stored in a file keeps to it, so the file is checked against the same range."""
    meta = next(f.metadata for f in dataclasses.fields(schema) if f.name == name)
    return {k: meta[k] for k in ("ge", "gt", "le", "lt") if k in meta}


def read_temperature(fields: Fields, name: str = "temperature") -> float | None:
    """A temperature logits are divided by: a number in (0, `TEMPERATURE_MAX`], or null (uncalibrated)."""
    return fields.number(name, null=True, gt=0, le=TEMPERATURE_MAX)


def parse_thresholds(data: Any, key: str = "thresholds") -> dict[str, float]:
    """Thresholds on probabilities, ``{label: number in [0, 1]}``; null (no positives where fitted, in older files)
    is skipped: the default rule applies.

    Raises:
        BadValue: not an object, or a threshold that is not a number in [0, 1], named by its label."""
    fields = Fields(data, f"{key}.")
    out = {}
    for label in data:
        value = fields.number(label, null=True, ge=0, le=1)
        if value is not None:
            out[str(label)] = value
    return out


def _conformal(fields: Fields, key: str, labels: list[str], multilabel: bool):
    if fields.raw(key) is None:
        return None
    if not multilabel:
        scores = fields.numbers(key, ge=0, le=1)
        if not len(scores):
            raise BadValue(fields.key(key), [], "a non-empty list of numbers in [0, 1], or null")
        return scores
    per = fields.nested(key)
    return {lab: _conformal(per, lab, [lab], False) for lab in labels}


def _thresholds(fields: Fields, key: str, labels: list[str]) -> dict[str, float]:
    value = fields.raw(key)
    thresholds = parse_thresholds({} if value is None else value, key)
    unknown = sorted(set(thresholds) - set(labels))
    if unknown:
        raise BadValue(f"{key}.{unknown[0]}", thresholds[unknown[0]], f"a threshold of one of the labels {labels}")
    return thresholds


def _keys(labels: list[str], multilabel: bool) -> dict[str, Callable[[Fields, str], Any]]:
    """The optional keys and their readers (in words in the module doc)."""
    return {
        "checkpoint": lambda f, k: f.string(k),
        "split": lambda f, k: f.string(k, null=True),
        "counts": lambda f, k: f.nested(k).data,
        "temperature": lambda f, k: read_temperature(f, k),
        "positive_class": lambda f, k: f.string(k, choices=labels, null=True),
        "target_sensitivity": lambda f, k: f.number(k, null=True, **limits(OperatingPointConfig, "target_sensitivity")),
        "thresholds": lambda f, k: _thresholds(f, k, labels),
        "alpha": lambda f, k: f.number(k, null=True, **limits(ConformalConfig, "alpha")),
        "conformal_scores": lambda f, k: _conformal(f, k, labels, multilabel),
        "abstain_below": lambda f, k: f.number(k, null=True, **limits(AbstainConfig, "below")),
        "abstain_ambiguous": lambda f, k: f.boolean(k),
        "ood": lambda f, k: gate_from_dict(f.raw(k), k) if f.raw(k) is not None else None,
        "ood_fit_n": lambda f, k: f.integer(k, null=True, ge=1),
        "summary": lambda f, k: f.nested(k).data,
    }


def record_fields(data: Any) -> dict:
    """The `DecisionRecord` fields a decision file's parsed JSON holds, every value checked (see the module doc).

    Raises:
        ValueError: not a decision file (another ``format``).
        BadValue: a value of the wrong type or out of range, named by its key.
    """
    fields = Fields(data)
    if data.get("format") != FORMAT:
        raise ValueError(f"not a lungnet decision file (format {data.get('format')!r}, expected {FORMAT})")
    labels, multilabel = fields.strings("labels"), fields.boolean("multilabel")
    out = {"labels": labels, "multilabel": multilabel, "checkpoint_sha256": fields.string("checkpoint_sha256")}
    for key, read in _keys(labels, multilabel).items():
        if key in data:
            out[key] = read(fields, key)
    return out
