"""``evaluate.py ckpt=[a.ckpt,b.ckpt,...]``: an ensemble (`lungnet.artifacts.ensemble`) scored like one model, and
against each
of its members on the same images.

Every member builds its own data module from its checkpoint (its own input size, mean and std), runs on the
evaluated split, and the outputs are matched image by image: the members must hold exactly the same images in that
split (same data and ``data.split_seed``, or ``split=all`` on one folder), else the evaluation is refused with a line
naming the members: before any member runs when their checkpoints' split fingerprints differ (`check_same_images`),
else once their outputs are matched. The ensemble's probabilities are the mean of the members' calibrated
probabilities; metrics, calibration, operating point, conformal sets and the report then follow as for one checkpoint
(`lungnet.evaluation.pipeline`).

Splits:

- an ensemble of cross-validation folds (members with ``data.cv_folds`` > 1 and different ``data.cv_fold``) is
  refused on ``split=val`` and ``split=train``: each fold model trained on the other folds' validation images, so no
  such image is unseen by every member. Score it on ``split=test`` (the held-out split the folds share) or
  ``split=all data.root=<external folder>``; out-of-fold numbers are ``lungnet-crossval``'s. Its operating point and
  temperature are then fitted on the evaluated split itself (the report says so: optimistic), and no ensemble
  decision file is written;
- other ensembles fit theirs on val, as one model does, and write ``ensemble.json`` (the members pinned by SHA-256)
  and ``ensemble.decision.json`` into the run directory: ``predict.py ckpt=<run>/ensemble.json`` and the app use them.

The report step `add_member_comparison` adds a section, ``ensemble_vs_members.png`` and ``metrics.json["ensemble"]``:
each member's accuracy and macro AUROC on the same images and the paired bootstrap difference ensemble - member
(`lungnet.scoring.stats.paired_bootstrap`), members scored on the probabilities the ensemble averages.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lungnet.artifacts.ensemble import Ensemble  # noqa: E402
from lungnet.artifacts.paths import MANIFEST  # noqa: E402
from lungnet.data.splits import write_splits  # noqa: E402
from lungnet.errors import ConfigError, DataError  # noqa: E402
from lungnet.evaluation.bootstrap_unit import groups_for, phrase, record  # noqa: E402
from lungnet.evaluation.same_split import SplitFacts, check_same_split  # noqa: E402
from lungnet.io import write_json  # noqa: E402
from lungnet.scoring import plots, stats  # noqa: E402
from lungnet.scoring.outputs import Outputs, model_outputs  # noqa: E402

log = logging.getLogger(__name__)

COMPARED = (("accuracy", "accuracy"), ("auroc_macro", "macro AUROC"))


@dataclass
class EnsembleSpec:
    """What the report and model card read from a model's spec."""

    name: str
    arch: str
    input_size: int | list[int]
    mean: tuple = ()
    std: tuple = ()


@dataclass
class EnsembleModel:
    """Stands where an `Evaluation` holds its `LoadedModel`: labels, data config, spec, and ``path`` (the manifest).

    Attributes:
        ensemble: the members.
        member_probs: per split, each member's calibrated probabilities, in the ensemble's image order.
    """

    ensemble: Ensemble
    member_probs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    model = None  # no single torch model: OOD gate fitting and explanations are per member
    thresholds = None

    @property
    def labels(self) -> list[str]:
        return self.ensemble.labels

    @property
    def multilabel(self) -> bool:
        return self.ensemble.multilabel

    @property
    def path(self) -> Path:
        return Path(self.ensemble.manifest) if self.ensemble.manifest else Path(MANIFEST)

    @property
    def data(self) -> dict:
        return dict(self.ensemble.members[0].loaded.data)

    @property
    def hparams(self) -> dict:
        return dict(self.ensemble.members[0].loaded.hparams)

    @property
    def seed(self) -> int:
        return self.ensemble.members[0].loaded.seed

    @property
    def spec(self) -> EnsembleSpec:
        sizes = [m.prep.input_size for m in self.ensemble.members]
        size = sizes[0] if len(set(sizes)) == 1 else sizes
        return EnsembleSpec(self.ensemble.name, "mean of the members' calibrated probabilities", size)


def check_split(ensemble: Ensemble, split: str, fit_on: str) -> None:
    """Refuses val and train (evaluated, or an explicit ``operating_point.fit_on``) for cross-validation folds.

    Raises:
        ConfigError: one line saying why, and what to evaluate instead.
    """
    if not ensemble.is_cross_validation:
        return
    folds = sorted(m.cv_fold for m in ensemble.members)
    for name, what in ((split, "split"), (fit_on, "operating_point.fit_on")):
        if name in ("val", "train"):
            raise ConfigError(
                f"{what}={name} of an ensemble of cross-validation folds {folds} is not meaningful: each fold model "
                f"trained on the other folds' validation images, so no {name} image is unseen by every member. "
                "Use split=test (the held-out split the folds share) or split=all data.root=<external folder>; "
                "out-of-fold metrics: lungnet-crossval runs=<multirun dir>"
            )


def check_same_images(ensemble: Ensemble, split: str, fit_on: str) -> None:
    """Refuses, before any member runs, members whose recorded splits differ in the evaluated split or the one the
    operating point is fitted on (``auto``: val; cross-validation folds: the evaluated split), `check_same_split`.

    Raises:
        DataError: one line naming two members, the split and why (e.g. ``split_seed 1 vs 2``).
    """
    fit = split if ensemble.is_cross_validation else "val" if fit_on == "auto" else fit_on
    facts = [SplitFacts.of(m.name, m.loaded.hparams) for m in ensemble.members]
    remedy = (
        "an ensemble is scored on images every member held out; train the members with the same data.split_seed "
        "and split settings, or use split=all data.root=<a folder none of them trained on>"
    )
    check_same_split(facts, [split, fit], "Ensemble members", remedy)


def fit_split(ensemble: Ensemble, fit_name: str, split: str) -> str:
    """The split the ensemble's operating point and temperature are fitted on: ``fit_name`` (as for one model),
    except for cross-validation folds, which share no validation split: the evaluated split itself."""
    if not ensemble.is_cross_validation or fit_name == split:
        return fit_name
    log.warning(
        "Cross-validation folds share no validation split: the ensemble's temperature and operating point are "
        "fitted on the evaluated split (%s) itself (optimistic), and no ensemble decision file is written",
        split,
    )
    return split


def ensemble_outputs(model: EnsembleModel, dms: list, split: str, device: str) -> Outputs:
    """The members' outputs on ``split``, matched image by image, and the ensemble's mean probabilities.

    ``features`` holds one array per member (for the ensemble's OOD gate); ``model.member_probs[split]`` the members'
    calibrated probabilities.

    Raises:
        DataError: a member whose ``split`` holds other images than the first member's (named, with counts).
    """
    ens = model.ensemble
    outs = [
        model_outputs(m.loaded.model, dm.loader(split), ens.multilabel, device, f"{m.name}: {split}", True, split)
        for m, dm in zip(ens.members, dms, strict=True)
    ]
    ref = outs[0]
    for member, out in zip(ens.members[1:], outs[1:], strict=True):
        if set(out.paths) != set(ref.paths):
            raise DataError(
                f"Ensemble member {member.name} holds other {split} images than {ens.members[0].name} "
                f"({len(set(out.paths) - set(ref.paths))} not in it, {len(set(ref.paths) - set(out.paths))} missing; "
                "another data root, data.split_seed or fraction?): an ensemble is scored on images every member held "
                "out; use split=test or split=all data.root=<external folder> with images none of them trained on"
            )
    order = [{p: i for i, p in enumerate(out.paths)} for out in outs]
    idx = [np.array([o[p] for p in ref.paths]) for o in order]
    logits = [out.logits[i] for out, i in zip(outs, idx, strict=True)]
    model.member_probs[split] = [m.calibrated(z) for m, z in zip(ens.members, logits, strict=True)]
    warn_if_identical(ens.names, model.member_probs[split], split)
    probs = np.mean(model.member_probs[split], axis=0)
    features = [out.features[i] for out, i in zip(outs, idx, strict=True)]
    return Outputs(split, probs, ref.targets, list(ref.paths), stats.to_logits(probs, ens.multilabel), features)


def warn_if_identical(names: list[str], probs: list[np.ndarray], split: str) -> None:
    """Warns when two members give the same probabilities on every image (e.g. two copies of one early epoch)."""
    for i in range(len(probs)):
        for j in range(i + 1, len(probs)):
            if np.allclose(probs[i], probs[j], atol=1e-6):
                log.warning(
                    "Ensemble members %s and %s give the same probabilities on every %s image: the same model twice "
                    "adds nothing to an ensemble",
                    names[i],
                    names[j],
                    split,
                )


def write_run_files(model: EnsembleModel, dm, run_dir: Path) -> None:
    """Writes the manifest (a list or directory of members: ``<run_dir>/ensemble.json``) and the split files."""
    if model.ensemble.manifest is None:
        path = model.ensemble.write_manifest(run_dir / MANIFEST)
        log.info("Wrote %s: pass ckpt=%s to predict.py or the app to use this ensemble as evaluated", path, path)
    if dm.table is not None:
        write_splits(dm.table, run_dir)
    if dm.report:
        write_json(run_dir / "data_report.json", dm.report)


def compare_members(ev) -> dict:
    """``metrics.json["ensemble"]``: the members, and the paired bootstrap difference ensemble - member."""
    model, boot = ev.loaded, ev.opts["bootstrap"]
    members = model.ensemble.describe()
    resamples = int(boot["resamples"]) or 200  # paired intervals even when the CIs were turned off
    groups = groups_for(ev)  # whole patients where the scored split names them
    unit = record(groups, len(ev.data.targets), resamples)
    seed, level = int(boot["seed"]), float(boot["level"])
    for facts, probs in zip(members, model.member_probs[ev.split], strict=True):
        paired = stats.paired_bootstrap(
            ev.data.probs, probs, ev.data.targets, model.multilabel, resamples, seed, level, groups=groups
        )
        facts["vs_ensemble"] = {k: paired[k] for k, _ in COMPARED if k in paired}
    return {
        "name": model.ensemble.name,
        "manifest": str(model.path),
        "combine": "mean of the members' temperature-calibrated probabilities",
        "cross_validation": model.ensemble.is_cross_validation,
        "members": members,
        "comparison": f"paired bootstrap {phrase(unit)}, ensemble - member (a = ensemble, b = member)",
        "bootstrap": unit,
    }


def comparison_figure(block: dict, title: str):
    """Paired differences ensemble - member with their intervals, one panel per metric (first member on top)."""
    members = block["members"]
    fig, axes = plt.subplots(1, len(COMPARED), figsize=(5.6 * len(COMPARED), 1.5 + 0.6 * len(members)))
    for ax, (key, label) in zip(np.atleast_1d(axes), COMPARED, strict=True):
        reach = 0.01
        for y, m in enumerate(members):
            d = m["vs_ensemble"].get(key)
            if d is None:
                continue
            color = "tab:green" if d["lo"] > 0 else "tab:red" if d["hi"] < 0 else "tab:gray"
            ax.errorbar(d["diff"], y, xerr=[[d["diff"] - d["lo"]], [d["hi"] - d["diff"]]], fmt="o", color=color, ms=7)
            text = f"member {d['b']:.3f} -> ensemble {d['a']:.3f}"
            ax.annotate(text, (d["diff"], y), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
            reach = max(reach, abs(d["lo"]), abs(d["hi"]))
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlim(-1.15 * reach, 1.15 * reach)
        ax.set_yticks(range(len(members)), [m["name"] for m in members])
        ax.set_ylim(len(members) - 0.4, -0.6)
        ax.set_xlabel(f"{label}: ensemble - member (95% paired bootstrap)")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(
        f"{title}\ngreen: ensemble better (interval above 0), red: worse, grey: no clear difference", fontsize=10
    )
    fig.tight_layout()
    return fig


def section(block: dict, split: str, figure: str | None) -> str:
    """The report's ``## Ensemble vs its members`` section."""
    from lungnet.evaluation.report import fmt, table

    rows = []
    for m in block["members"]:
        cells = [m["name"], m["model"], str(m["input_size"]), fmt(m["temperature"], 2)]
        for key, _ in COMPARED:
            d = m["vs_ensemble"].get(key)
            cells += [fmt(d["b"]), f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"] if d else ["n/a", "n/a"]
        rows.append(cells)
    head = ["member", "model", "input px", "T"]
    for _, label in COMPARED:
        head += [f"member {label}", f"{label}: ensemble - member [95% CI]"]
    text = [
        "## Ensemble vs its members",
        f"{block['name']}: the mean of the members' temperature-calibrated probabilities (T: each member's "
        f"temperature, from its decision file; n/a: uncalibrated). Every member scored on the same {split} images; "
        f"differences with 95% paired bootstrap intervals {phrase(block.get('bootstrap'))} (the same "
        "draws for both).",
        table(head, rows),
    ]
    if figure:
        text.append(f"![Ensemble vs members]({figure})")
    return "\n\n".join(text)


def add_member_comparison(ev) -> None:
    """Report step (`lungnet.evaluation.pipeline.REPORT_STEPS`): the ensemble against each member (nothing for one
    model)."""
    if not isinstance(ev.loaded, EnsembleModel):
        return
    block = compare_members(ev)
    ev.result["ensemble"] = block
    figure = None
    if ev.opts["report"]["figures"]:
        title = f"{block['name']} vs its members on {ev.split} (n={len(ev.data.targets)})"
        figure = plots.save_figure(comparison_figure(block, title), ev.run_dir / "ensemble_vs_members.png").name
        ev.figures["ensemble_vs_members"] = figure
    ev.sections.append(section(block, ev.split, figure))
    for m in block["members"]:
        diffs = [
            f"{label} {d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"
            for key, label in COMPARED
            if (d := m["vs_ensemble"].get(key))
        ]
        log.info("Ensemble - %s: %s", m["name"], ", ".join(diffs))
