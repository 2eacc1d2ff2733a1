"""Report step of ``evaluate.py``: the decision path (operating point, abstention, conformal sets, OOD gate).

Fitted on the validation split (``<ckpt stem>.decision.json`` beside the checkpoint, or ``decision.out``:
`lungnet.evaluation.decision_target`; the record: `lungnet.artifacts.decision`), applied to
the evaluated split: ``decision``, ``decision_reason``, ``decision_note``, ``prediction_set``, ``ood`` and
``ood_score`` columns in predictions.csv; ``conformal_coverage``, ``conformal_mean_set_size``,
``conformal_shift_pvalue`` and ``conformal_shift_warning`` in metrics.json (and a ``decisions`` block, which counts
empty prediction sets apart: `lungnet.scoring.referral`); ``risk_coverage.png``; a report section.

Split conformal coverage holds only when the evaluated images are exchangeable with the calibration images. Two
Kolmogorov-Smirnov tests (scipy) compare the evaluated split with the calibration split: the nonconformity scores
of the true labels, and the label-free OOD scores. Their Bonferroni-combined p-value is ``conformal_shift_pvalue``;
below 0.01 the report says that the coverage is not guaranteed on this split.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np

from lungnet.artifacts.decision import (
    NO_FINDING,
    DecisionRecord,
    Decisions,
    decision_path,
    new_record,
)
from lungnet.data.cache import PreparedReader
from lungnet.data.labels import join_flags
from lungnet.evaluation import decision_target
from lungnet.evaluation.decision_report import (
    SHIFT_P,
    card_summary,
    decision_section,
    gate_how,
    risk_coverage_figure,
)
from lungnet.scoring import plots, stats
from lungnet.scoring.conformal import p_values
from lungnet.scoring.gate_inputs import GateScatters, gate_scatters
from lungnet.scoring.ood import AnyMemberGate, ImageGate, OodGate
from lungnet.scoring.outputs import Outputs, model_outputs
from lungnet.scoring.scatter import accelerator
from lungnet.scoring.shift import batch_shift, bonferroni, ks_test

log = logging.getLogger(__name__)


def true_scores(probs: np.ndarray, targets: np.ndarray, labels: list[str], multilabel: bool):
    """Nonconformity scores of the true labels: 1 - p(true label) ((N,)); multi-label: per finding, 1 - p(true
    state) of the images where it is known (``{finding: scores}``)."""
    if not multilabel:
        return 1.0 - probs[np.arange(len(probs)), np.asarray(targets, dtype=int)]
    out = {}
    for j, lab in enumerate(labels):
        t = np.asarray(targets, dtype=np.float64)[:, j]
        known = ~np.isnan(t)
        p = probs[known, j]
        out[lab] = np.where(t[known] == 1, 1.0 - p, p)
    return out


def _pooled(scores) -> np.ndarray:
    return np.concatenate(list(scores.values())) if isinstance(scores, dict) else np.asarray(scores)


def coverage(record: DecisionRecord, scores) -> float:
    """Share of true labels (multi-label: of known image-finding states) inside their 1 - alpha prediction set."""

    def covered(cal, test) -> np.ndarray:
        return p_values(cal, test) >= record.alpha

    if isinstance(scores, dict):
        hits = np.concatenate([covered(record.conformal_scores[k], v) for k, v in scores.items() if len(v)])
    else:
        hits = covered(record.conformal_scores, scores)
    return float(hits.mean()) if len(hits) else float("nan")


def training_sample(dm, fit_max: int, seed: int) -> tuple[str, int]:
    """The training images the OOD gate is fitted on: all of them, or a sample of ``fit_max`` drawn with ``seed``
    (the checkpoint's training seed: training and ``evaluate.py`` draw the same images) from the split sorted by
    file, through the evaluation pipeline (no augmentation), read from the training split's prepared store when it
    has one (after training: no file is decoded again).

    Returns:
        (the data module's key of that data set, the size of the training split).
    """
    train = dm.table[dm.table["split"] == "train"].sort_values("path", kind="stable")
    if len(train) > fit_max:
        train = train.sample(n=int(fit_max), random_state=int(seed)).sort_values("path", kind="stable")
    key = f"train:ood{len(train)}"
    if key not in dm.datasets:  # read from the training split's prepared store where it has one
        reader = getattr(dm.datasets.get("train"), "reader", None)
        prepared = reader if isinstance(reader, PreparedReader) else None
        dm.datasets[key] = dm.make_dataset(train, train=False, prepared=prepared)
    return key, int((dm.table["split"] == "train").sum())


def gate_sample(ev) -> GateScatters:
    """The statistics the gate is fitted from (`lungnet.scoring.gate_inputs.gate_scatters`) of the training sample
    (`training_sample`, at most ``ood.fit_max`` images), computed once per evaluation (``ev.gate_fit``): given (after
    a multi-process training, summed across the ranks: `lungnet.evaluation.sharded`) or from the sample's features
    (dropped once summed)."""
    if ev.gate_fit is None:
        fit_max = int((ev.cfg.get("ood") or {}).get("fit_max"))
        key, total = training_sample(ev.dm, fit_max, ev.loaded.seed)
        desc = "Features of train" if len(ev.dm.datasets[key]) == total else f"Features of a train sample (of {total})"
        out = model_outputs(ev.loaded.model, ev.dm.loader(key), ev.loaded.multilabel, ev.device, desc, True, "train")
        ev.gate_fit = sample_scatters(out, ev.loaded.multilabel, ev.device)
    return ev.gate_fit


def sample_scatters(out: Outputs, multilabel: bool, device=None) -> GateScatters:
    """The gate's statistics of scored training images (their gate inputs; single-label: per class); their squares
    on ``device`` when it is a CUDA device (`lungnet.scoring.scatter.accelerator`), else on the host."""
    return gate_scatters(out.features, None if multilabel else out.targets, accelerator(device))


def gate(ev, existing: DecisionRecord | None) -> tuple[OodGate | ImageGate | AnyMemberGate | None, int | None]:
    """The OOD gate and the training images it was fitted on: the decision file's, else fitted on a seeded sample
    of the training split's features (`gate_sample`) and thresholded on val (an ensemble: its members' own
    gates, `lungnet.scoring.ood.AnyMemberGate`, with the fit split's scores as reference)."""
    opts = ev.cfg.get("ood") or {}
    if existing is not None and existing.ood is not None and not opts.get("refit"):
        return existing.ood, existing.ood_fit_n
    ensemble = getattr(ev.loaded, "ensemble", None)
    if ensemble is not None:
        any_member = ensemble.gate()
        if any_member is None:
            log.info("No OOD gate: no ensemble member has one (evaluate.py ckpt=<member> split=val fits it)")
        return (any_member.calibrate(ev.fit.features, ev.fit.name) if any_member is not None else None), None
    if "train" not in ev.dm.datasets or ev.fit.name != "val":
        log.info("No OOD gate: it is fitted on the training split and thresholded on val, and this data has neither")
        return None, None
    train = gate_sample(ev)
    fitted = fit_gate(train, ev.fit, opts.get("dims"), opts.get("quantile"), ev.device)
    log.info("OOD gate fitted on %d training images: %s", train[0].n, gate_how(fitted))
    return fitted, train[0].n


def fit_gate(
    train: GateScatters, val, dims: int | None = None, quantile: float | None = None, device=None
) -> ImageGate:
    """Fits the OOD gate (features and input thumbnail, `lungnet.scoring.ood.ImageGate`) from the training sample's
    statistics (`gate_sample`) and sets its thresholds on ``val``'s gate inputs (None: `lungnet.scoring.ood`'s
    defaults); its leading axes on ``device`` when it is a CUDA device, else on the host."""
    extra = {"dims": int(dims)} if dims else {}
    fitted = ImageGate.from_scatters(*train, device=accelerator(device), fit_split="train", layer="backbone", **extra)
    return fitted.calibrate(val.features, split=val.name, **({"quantile": float(quantile)} if quantile else {}))


def build_record(ev) -> tuple[DecisionRecord, str, bool]:
    """The record decisions are taken with, where it came from (``fitted on val`` or the file read), and whether its
    OOD gate was fitted now (thresholded on ``ev.fit``) rather than read."""
    ckpt = ev.loaded.path
    path = decision_target.target(ev.cfg, ckpt)
    existing = decision_target.read_existing(path, ckpt, ev.loaded.labels, warn=True)
    if decision_target.reuses(existing, ev.cfg, ev.split, ev.fit.name):
        log.info("Decisions from %s (fitted on %s), not refitted (decision.refit=true does)", path, existing.split)
        return existing, f"read from `{path}` (fitted on {existing.split})", False
    record = new_record(ev.loaded.labels, ev.loaded.multilabel, ckpt)
    given = ev.opts["decision_positive_class"]
    record.positive_class = given or record.positive_class
    cal, op = ev.result["calibration"], ev.result["operating_point"]
    fit_probs = stats.scale_probs(ev.fit.probs, cal["temperature"] or 1.0, ev.loaded.multilabel)
    alpha = float(ev.cfg.conformal.alpha)
    record.split, record.temperature, record.alpha = ev.fit.name, cal["temperature"], alpha
    record.counts = {
        "n": int(len(ev.fit.targets)),
        **class_counts(ev.fit.targets, ev.loaded.labels, ev.loaded.multilabel),
    }
    record.target_sensitivity, record.thresholds = op["target_sensitivity"], finite_thresholds(op["thresholds"])
    record.conformal_scores = true_scores(fit_probs, ev.fit.targets, ev.loaded.labels, ev.loaded.multilabel)
    record.abstain_below = ev.cfg.abstain.below
    record.abstain_ambiguous = bool(ev.cfg.abstain.ambiguous)
    record.ood, record.ood_fit_n = gate(ev, existing)
    fresh = record.ood is not None and (existing is None or record.ood is not existing.ood)
    return record, f"fitted on the **{ev.fit.name}** split ({record.counts['n']} images)", fresh


def finite_thresholds(thresholds: dict) -> dict[str, float]:
    """The thresholds that could be fitted: a class with no positives in the fitting split has none (NaN), and the
    record leaves it out, so decisions fall back to the default rule for it (0.5, or the arg-max)."""
    missing = sorted(k for k, v in thresholds.items() if not np.isfinite(v))
    if missing:
        log.warning(
            "No operating point for %s: no positives in the fitting split; the decision file leaves them out "
            "(0.5 for a finding, the arg-max for a class)",
            ", ".join(missing),
        )
    return {str(k): float(v) for k, v in thresholds.items() if np.isfinite(v)}


def class_counts(targets: np.ndarray, labels: list[str], multilabel: bool) -> dict:
    """``{label: count}`` (multi-label: positives per finding)."""
    t = np.asarray(targets)
    if multilabel:
        return {lab: int(np.nansum(t[:, j] == 1)) for j, lab in enumerate(labels)}
    return {lab: int((t == j).sum()) for j, lab in enumerate(labels)}


def shift_test(record: DecisionRecord, scores, ood_scores, in_sample: bool) -> dict:
    """Two-sample KS tests of the evaluated split against the calibration split (nonconformity and OOD scores)."""
    tests = {}
    if record.conformal_scores is not None and scores is not None:
        tests["nonconformity"] = ks_test(_pooled(scores), _pooled(record.conformal_scores))
    if record.ood is not None and ood_scores is not None and len(record.ood.reference):
        tests["ood_score"] = ks_test(ood_scores, record.ood.reference)
    pvalue = bonferroni(tests)
    return {
        "test": "two-sample Kolmogorov-Smirnov against the calibration split, Bonferroni over the tests",
        "tests": tests,
        "in_sample": in_sample,
        "pvalue": pvalue,
        "warning": bool(pvalue is not None and pvalue < SHIFT_P),
    }


def truth_strings(targets: np.ndarray, labels: list[str], multilabel: bool) -> list[str]:
    """True labels in the decision's format."""
    if not multilabel:
        return [labels[int(t)] for t in targets]
    return join_flags(np.asarray(targets) == 1, labels, NO_FINDING)


class Scored(NamedTuple):
    """Per image, how wrong its operating-point decision is (before abstention), and the true labels.

    Attributes:
        errors: single label: 1 where the decided class is not the true one, else 0; multi-label: the share of the
            image's annotated findings called wrong (one threshold per finding; NaN when no finding is annotated).
        whole: 1 where the decided class, or set of findings, differs from the true one.
        truth: the true labels in the decision's format (`truth_strings`).
    """

    errors: np.ndarray
    whole: np.ndarray
    truth: list[str]


def decision_errors(record: DecisionRecord, probs: np.ndarray, targets: np.ndarray) -> Scored:
    """`Scored` of every image: how wrong its operating-point decision is, and its true labels."""
    truth = truth_strings(targets, record.labels, record.multilabel)
    whole = np.array([d != t for d, t in zip(record.labels_of(probs), truth, strict=True)], dtype=float)
    if not record.multilabel:
        return Scored(whole, whole, truth)
    thresholds = record.applied_thresholds
    calls = probs >= np.array([thresholds[lab] for lab in record.labels])
    t = np.asarray(targets, dtype=float)
    known = ~np.isnan(t)
    wrong = ((calls != (t == 1)) & known).sum(1)
    count = known.sum(1)
    return Scored(np.where(count > 0, wrong / np.maximum(count, 1), np.nan), whole, truth)


def summarise(record: DecisionRecord, dec: Decisions, ev, source: str, scored: Scored | None = None) -> dict:
    """The ``decisions`` block of metrics.json; ``scored``: the images' `decision_errors` when the caller has them
    (None: computed here)."""
    errors, whole, truth = scored if scored is not None else decision_errors(record, dec.probs, ev.data.targets)
    kept = dec.kept
    right = np.array([d == t for d, t in zip(dec.decision, truth, strict=True)])
    reasons: dict[str, int] = {}
    for kind in dec.referral:
        if kind:
            reasons[kind] = reasons.get(kind, 0) + 1
    out = {
        "source": source,
        "rule": record.rule,
        "positive_class": record.positive_class,
        "alpha": record.alpha,
        "n": len(truth),
        "referred": int((~kept).sum()),
        "referred_share": float((~kept).mean()) if len(kept) else float("nan"),
        "referred_by": reasons,
        "accuracy_on_rest": float(right[kept].mean()) if kept.any() else float("nan"),
        "accuracy_without_abstention": float(np.mean(whole == 0)),
    }
    if record.multilabel:  # the exact set says little with many findings: the share of finding calls right beside it
        known = ~np.isnan(errors)
        rest = known & kept
        out["finding_accuracy_on_rest"] = float(1 - errors[rest].mean()) if rest.any() else float("nan")
        out["finding_accuracy_without_abstention"] = float(1 - errors[known].mean()) if known.any() else float("nan")
    if dec.empty is not None:  # decided by the operating point with a note (`lungnet.scoring.referral`), not referred
        out.update(empty_sets=int(dec.empty.sum()), ambiguous_sets=int(dec.ambiguous.sum()))
    if dec.ood is not None:
        out.update(ood_flagged=int(dec.ood.sum()), ood_rate=float(dec.ood.mean()), ood_threshold=record.ood.threshold)
    return out


def add_decisions(ev) -> None:
    """Report step (`lungnet.evaluation.pipeline.REPORT_STEPS`): decisions, sets and OOD flags for the evaluated split.

    Adds the predictions.csv columns, the metrics.json keys, ``risk_coverage.png`` and a report section, and writes
    ``<ckpt stem>.decision.json`` (or ``decision.out``) when the record was fitted on val (``decision.write``).
    """
    labels, multilabel = ev.loaded.labels, ev.loaded.multilabel
    record, source, fresh = build_record(ev)
    logits = stats.to_logits(ev.data.probs, multilabel)
    # a gate just thresholded on these very images (the finish's val) has their part scores already
    known = record.ood.reference_parts() if fresh and ev.data is ev.fit and isinstance(record.ood, ImageGate) else None
    dec = record.decide(logits, ev.data.features, known)
    for key, values in dec.columns(labels).items():
        ev.table[key] = values
    scores = true_scores(dec.probs, ev.data.targets, labels, multilabel)
    in_sample = record.split == ev.split
    shift = shift_test(record, scores, dec.ood_score, in_sample)
    scored = decision_errors(record, dec.probs, ev.data.targets)
    block = summarise(record, dec, ev, source, scored)
    block["shift"] = shift
    gated = record.ood is not None and dec.ood_score is not None
    block["population_shift"] = batch_shift(record.ood, dec.ood_score, dec.ood_parts) if gated else None
    if record.alpha is not None:
        ev.result["conformal_coverage"] = coverage(record, scores)
        ev.result["conformal_mean_set_size"] = float(dec.sets.sum(1).mean())
    ev.result["conformal_shift_pvalue"] = shift["pvalue"]
    ev.result["conformal_shift_warning"] = shift["warning"]
    ev.result["decisions"] = block
    if ev.opts["report"]["figures"]:
        conf = np.maximum(dec.probs, 1 - dec.probs).min(1) if multilabel else dec.probs.max(1)
        title = f"Risk-coverage: {ev.result['model']} on {ev.split} (n={len(scored.errors)})"
        fig = risk_coverage_figure(conf, scored.errors, dec.kept, title, scored.whole if multilabel else None)
        ev.figures["risk_coverage"] = plots.save_figure(fig, ev.run_dir / "risk_coverage.png").name
    ev.sections.append(decision_section(ev.result, record, ev.split, ev.figures.get("risk_coverage")))
    if record.split == "val" and source.startswith("fitted") and bool(ev.cfg.decision.write):
        record.summary = card_summary(ev.result) if ev.split == "val" or not record.summary else record.summary
        path = decision_target.target(ev.cfg, ev.loaded.path)
        ev.result["decisions"]["file"] = str(path)
        beside = path == decision_path(ev.loaded.path)
        ev.beside_model.append(lambda: write_record(record, path, beside))


def write_record(record: DecisionRecord, path, beside: bool) -> None:
    """Writes the fitted decision record beside the checkpoint, or to ``decision.out`` (after the evaluation's own
    files); ``beside``: where ``decision=auto`` finds it, else the log says how to pass it."""
    record.write(path)
    log.info("Wrote %s (operating point, temperature, conformal scores, OOD gate; fitted on val)", path)
    if not beside:
        log.info("predict.py and the app use it with decision=%s (decision=auto looks beside the checkpoint)", path)
