"""Ensembles: several checkpoints of the same labels and training data, run as one model.

``ckpt`` names an ensemble when it is

- a list of checkpoints (``ckpt=[a.ckpt,b.ckpt]``; a list of one is that model),
- a directory holding several training runs, e.g. a cross-validation multirun (each finished run's reported
  checkpoint: ``last.ckpt`` for ``checkpoint.select=last``, else ``best.ckpt``, as `lungnet.evaluation.compare` and
  `lungnet.evaluation.folds` use; a run without ``metrics.json``, killed or still training, is skipped and
  named, `lungnet.artifacts.checkpoint.training_runs`), or
- an ensemble manifest, ``ensemble.json``, written by ``evaluate.py ckpt=[...]`` into its run directory (every
  value checked when read, `lungnet.artifacts.ensemble_manifest`).

Each member reads the same decoded image and preprocesses it itself (its own input size, channels, mean and std,
`lungnet.data.preprocessing.Preprocessing`); its probabilities are calibrated with its own temperature (from its
``<stem>.decision.json``, `lungnet.artifacts.decision`) and the ensemble's probabilities are their mean. The ensemble
hands
on ``log`` of that mean (logit for multi-label) as its logits, so everything downstream (its own decision record:
temperature, operating point, conformal sets) treats it like one model. Its OOD gate flags an image when any
member's own gate flags it (`lungnet.scoring.ood.AnyMemberGate`).

Members must share the label list, the multi-label flag and the training data (the data set name and source
their checkpoints record); anything else is refused with one line naming the member and what differs.

Where the numbers come from:

- a list or directory: each member's temperature and OOD gate from its own decision file as it is now (none:
  uncalibrated, no gate); no ensemble decision record unless one is passed with a manifest;
- a manifest: members pinned by SHA-256 (a changed file is refused) with the temperatures the ensemble was
  fitted with, and each member's OOD gate from its own decision file; the ensemble's decision record is
  ``<manifest stem>.decision.json`` beside it (``ensemble.decision.json``), holding its temperature, operating
  point, conformal scores and a copy of the member gates. Without that file (k-fold models scored on a test
  split), decisions are arg-max and the members' gates flag unfamiliar images, as for a list.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lungnet.artifacts.checkpoint import LoadedModel, checkpoints_below, load_model, model_names, no_run_message
from lungnet.artifacts.decision import DecisionRecord, find_decision, sha256_file
from lungnet.artifacts.ensemble_manifest import FORMAT, read_manifest
from lungnet.data.preprocessing import EnsembleInput, Preprocessing, logits_to_probs
from lungnet.errors import CheckpointError, ConfigError
from lungnet.io import write_json
from lungnet.scoring.ood import AnyMemberGate, ImageGate, OodGate

log = logging.getLogger(__name__)

NONE = ("none", "false", "off")


def _entries(ckpt) -> list[str]:
    if isinstance(ckpt, str | os.PathLike):
        return [str(ckpt)]
    try:
        return [str(c) for c in ckpt]  # a list, tuple or Hydra ListConfig
    except TypeError:
        return [str(ckpt)]


def model_files(ckpt) -> tuple[list[Path], Path | None]:
    """The model file(s) ``ckpt`` names, and the ensemble manifest when it is one.

    Args:
        ckpt: a model file, a list of them, a run or multirun directory, or an ``ensemble.json``.

    Returns:
        (files, manifest or None). One file and no manifest is a single model (also a missing path: its loader
        reports it).

    A directory gives the checkpoint of each finished training run in it; unfinished runs (no ``metrics.json``)
    are skipped and named in a warning (`lungnet.artifacts.checkpoint.training_runs`).

    Raises:
        CheckpointError: a directory without any finished training run, an empty list, or a bad manifest.
    """
    entries = [e.strip() for e in _entries(ckpt) if e.strip()]
    if not entries:
        raise CheckpointError(f"ckpt={ckpt!r} names no model file")
    files: list[Path] = []
    for entry in entries:
        path = Path(entry).expanduser()
        if path.is_dir():
            below, unfinished = checkpoints_below(path)
            if not below:
                raise CheckpointError(f"ckpt={no_run_message(path, unfinished)}")
            files += below
        elif path.suffix.lower() == ".json" and len(entries) == 1:
            return [pin.checkpoint for pin in read_manifest(path)], path
        else:
            files.append(path)
    return files, None


@dataclass
class Member:
    """One checkpoint of an ensemble.

    Attributes:
        name: short unique name (its run directory's name, or the file stem).
        loaded: the model and what its checkpoint says about itself.
        sha256: SHA-256 of the checkpoint file.
        temperature: its logits are divided by it before the ensemble averages (None: uncalibrated).
        decision_file: where the temperature came from (its decision file, or the manifest).
        gate: its OOD gate, or None.
    """

    name: str
    loaded: LoadedModel
    sha256: str
    temperature: float | None = None
    decision_file: str | None = None
    gate: OodGate | ImageGate | None = field(default=None, repr=False)

    @property
    def path(self) -> Path:
        return self.loaded.path

    @property
    def prep(self) -> Preprocessing:
        return Preprocessing.from_loaded(self.loaded)

    @property
    def data_name(self) -> str:
        data = self.loaded.data
        return str(data.get("name") or data.get("source") or "")

    def calibrated(self, logits: np.ndarray) -> np.ndarray:
        """Its probabilities (N, C), temperature-scaled when it has a temperature."""
        z = np.asarray(logits, dtype=np.float64)
        return logits_to_probs(z / self.temperature if self.temperature else z, self.loaded.multilabel)

    def describe(self) -> dict:
        """Plain facts for prediction.json, /health and metrics.json."""
        prep = self.prep
        return {
            "name": self.name,
            "checkpoint": str(self.path.resolve()),
            "sha256": self.sha256,
            "model": prep.model,
            "input_size": prep.input_size,
            "in_chans": prep.in_chans,
            "mean": list(prep.mean),
            "std": list(prep.std),
            "temperature": self.temperature,
            "temperature_from": self.decision_file,
            "ood_gate": self.gate is not None,
            "data": self.data_name,
            "seed": self.loaded.seed,
            "split_seed": self.loaded.split_seed,
            "cv_fold": self.cv_fold,
        }

    @property
    def cv_fold(self) -> int | None:
        """Its cross-validation fold (``data.cv_fold`` of a ``data.cv_folds`` > 1 run), else None."""
        data = self.loaded.data
        return int(data.get("cv_fold") or 0) if int(data.get("cv_folds") or 0) > 1 else None


@dataclass
class Ensemble:
    """Members whose calibrated probabilities are averaged (see the module doc)."""

    members: list[Member]
    manifest: Path | None = None

    @property
    def labels(self) -> list[str]:
        return list(self.members[0].loaded.labels)

    @property
    def multilabel(self) -> bool:
        return self.members[0].loaded.multilabel

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    @property
    def name(self) -> str:
        """``ensemble of 3: efficientnet_lite0 + 2 x resnet18``."""
        models = [m.prep.model for m in self.members]
        counted = [f"{models.count(x)} x {x}" if models.count(x) > 1 else x for x in dict.fromkeys(models)]
        return f"ensemble of {len(models)}: {' + '.join(counted)}"

    @property
    def is_cross_validation(self) -> bool:
        """True when the members are different folds of one k-fold cross-validation."""
        folds = [m.cv_fold for m in self.members]
        return all(f is not None for f in folds) and len(set(folds)) > 1

    def combine(self, member_logits: Sequence[np.ndarray]) -> np.ndarray:
        """The ensemble's probabilities (N, C): the mean of the members' calibrated probabilities."""
        return np.mean([m.calibrated(z) for m, z in zip(self.members, member_logits, strict=True)], axis=0)

    def gate(self) -> AnyMemberGate | None:
        """The members' gates as one (`AnyMemberGate`), or None when no member has a gate."""
        if not any(m.gate is not None for m in self.members):
            return None
        return AnyMemberGate(tuple(m.gate for m in self.members))

    def describe(self) -> list[dict]:
        return [m.describe() for m in self.members]

    def write_manifest(self, path: str | os.PathLike) -> Path:
        """Writes ``ensemble.json``: the members pinned by SHA-256, with the temperatures in use; sets ``manifest``."""
        data = {
            "format": FORMAT,
            "labels": self.labels,
            "multilabel": self.multilabel,
            "data": self.members[0].data_name,
            "combine": "mean of the members' temperature-calibrated probabilities",
            "ood": "flagged when any member's own gate flags (lungnet.scoring.ood.AnyMemberGate)",
            "members": [
                {k: d[k] for k in ("name", "checkpoint", "sha256", "model", "input_size", "temperature")}
                | {"temperature_from": d["temperature_from"]}
                for d in self.describe()
            ],
        }
        self.manifest = write_json(path, data)
        return self.manifest


def _differs(first: Member, other: Member) -> str | None:
    """What makes ``other`` unfit to be averaged with ``first`` (None: compatible)."""
    a, b = first.loaded, other.loaded
    if list(a.labels) != list(b.labels):
        return f"has labels {b.labels}, {first.name} has {a.labels}"
    if a.multilabel != b.multilabel:
        kind = {True: "multi-label", False: "single-label"}
        return f"is {kind[b.multilabel]}, {first.name} is {kind[a.multilabel]}"
    for key in ("name", "source"):
        if (a.data.get(key) or None) != (b.data.get(key) or None):
            return f"was trained on data {key} {b.data.get(key)!r}, {first.name} on {a.data.get(key)!r}"
    return None


def check_members(members: list[Member]) -> None:
    """Refuses members that cannot be averaged: another label list, multi-label flag or training data.

    Raises:
        CheckpointError: one line naming the member and what differs.
    """
    for member in members[1:]:
        why = _differs(members[0], member)
        if why:
            raise CheckpointError(
                f"Ensemble member {member.name} ({member.path}) {why}: an ensemble averages the same outputs of "
                "models trained on the same data; leave it out"
            )


def _member_decision(path: Path, loaded: LoadedModel) -> tuple[float | None, str | None, OodGate | ImageGate | None]:
    record, where = find_decision("auto", path, list(loaded.labels))
    if record is None:
        return None, None, None
    return record.temperature, str(where), record.ood if isinstance(record.ood, (OodGate, ImageGate)) else None


def open_ensemble(ckpt, decision: str | os.PathLike | None = "auto") -> Ensemble:
    """Loads the members ``ckpt`` names and checks that they belong together (see the module doc).

    Args:
        ckpt: a list of checkpoints, a run or multirun directory, or an ``ensemble.json``.
        decision: ``auto`` (members' temperatures and gates as described above) or ``none`` (uncalibrated
            members, no gates). Another file is refused for a list: an ensemble's own decision file belongs to its
            manifest.

    Raises:
        CheckpointError: a missing, unsafe or changed member, or members that do not belong together.
        ConfigError: ``decision=<file>`` with a list of checkpoints.
    """
    files, manifest = model_files(ckpt)
    choice = "auto" if decision is None else str(decision)
    use = choice.lower() not in NONE
    if manifest is None and use and choice.lower() != "auto":
        raise ConfigError(
            f"decision={choice}: a list of checkpoints reads each member's own <stem>.decision.json (decision=auto) "
            "or none; the ensemble's own decision file goes with its manifest: ckpt=<evaluate run>/ensemble.json"
        )
    for f in files:
        if f.suffix.lower() in (".onnx", ".pt", ".ts"):
            raise CheckpointError(f"Ensemble member {f} is an export: ensembles run lungnet checkpoints (.ckpt)")
    pinned = read_manifest(manifest) if manifest is not None else [None for _ in files]
    members = []
    for name, path, pin in zip(model_names(files), files, pinned, strict=True):
        loaded = load_model(path)
        digest = sha256_file(path)
        if pin and pin.sha256 != digest:
            raise CheckpointError(
                f"Ensemble member {path} changed since {manifest} was written (sha256 {digest[:12]}..., the manifest "
                f"pins {pin.sha256[:12]}...): evaluate the new members with evaluate.py ckpt=[...] split=val"
            )
        member = Member((pin.name if pin else None) or name, loaded, digest)
        if use and pin:  # the pinned temperature; the OOD gate from the member's own file, as for a list
            member.temperature, member.decision_file = pin.temperature, str(manifest)
            member.gate = _member_decision(path, loaded)[2]
        elif use:
            member.temperature, member.decision_file, member.gate = _member_decision(path, loaded)
        members.append(member)
    check_members(members)
    ensemble = Ensemble(members, manifest)
    log.info(
        "Ensemble of %d (%s): %s",
        len(members),
        ensemble.name,
        ", ".join(f"{m.name} (T={m.temperature if m.temperature else 'none'})" for m in members),
    )
    return ensemble


def ensemble_decision(ensemble: Ensemble, choice) -> tuple[DecisionRecord | None, str | None]:
    """The decision record an ensemble runs with: with a manifest, its ``<stem>.decision.json`` (``auto``) or the
    file ``choice`` names (fitted for that manifest); else the members' gates alone (arg-max decisions); None for
    ``none`` or when there is nothing to decide with."""
    text = "auto" if choice is None else str(choice)
    if text.lower() in NONE:
        return None, None
    if ensemble.manifest is not None:
        record, path = find_decision(text, ensemble.manifest, ensemble.labels)
        if record is not None:
            return record, str(path)
    gate = ensemble.gate()
    if gate is None:
        return None, None
    record = DecisionRecord(ensemble.labels, ensemble.multilabel, "", ensemble.name, ood=gate)
    log.info(
        "No ensemble decision file: arg-max decisions, members' OOD gates; evaluate.py ckpt=[...] split=val fits "
        "the ensemble's own (pass its ensemble.json)"
    )
    return record, "the members' decision files (OOD gates only)"


class EnsembleBackend:
    """Runs the members (PyTorch backends built by the caller) on their own inputs and averages (`Ensemble.combine`).

    Args:
        ensemble: the members.
        backends: one backend per member with ``outputs(batch) -> (logits, features)`` and ``precision``.
    """

    runtime = "torch"

    def __init__(self, ensemble: Ensemble, backends: list) -> None:
        self.ensemble = ensemble
        self.backends = backends
        self.precision = backends[0].precision
        self.prep = EnsembleInput(tuple(m.prep for m in ensemble.members), ensemble.name)

    def member_outputs(self, batch: Sequence[torch.Tensor]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each member's (logits, features) for its own input batch."""
        return [b.outputs(x) for b, x in zip(self.backends, batch, strict=True)]

    def outputs(self, batch: Sequence[torch.Tensor]) -> tuple[np.ndarray, list[np.ndarray]]:
        """(the ensemble's logits: log of the mean calibrated probabilities (logit for multi-label), the members'
        features)."""
        from lungnet.scoring.stats import to_logits

        outs = self.member_outputs(batch)
        probs = self.ensemble.combine([z for z, _ in outs])
        return to_logits(probs, self.ensemble.multilabel), [f for _, f in outs]

    def logits(self, batch: Sequence[torch.Tensor]) -> np.ndarray:
        return self.outputs(batch)[0]
