"""The decision path in words and pictures: the report's ``## Decisions`` section, the risk-coverage figure and the
summary the app shows (`lungnet.evaluation.decisions` computes what they show)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lungnet.artifacts.decision import DecisionRecord  # noqa: E402
from lungnet.scoring.ood import ANY_MEMBER, THUMB, AnyMemberGate, ImageGate, OodGate  # noqa: E402
from lungnet.scoring.shift import SHIFT_P  # noqa: E402  (below it the report says conformal coverage is not guaranteed)


def risk_curve(confidence: np.ndarray, errors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(share kept, mean error of those kept), keeping the most confident first; images whose error is unknown
    (NaN: no annotated finding) are left out."""
    known = ~np.isnan(errors)
    order = np.argsort(-confidence[known], kind="stable")
    n = len(order)
    return np.arange(1, n + 1) / max(n, 1), np.cumsum(errors[known][order]) / np.arange(1, n + 1)


def risk_coverage_figure(
    confidence: np.ndarray, errors: np.ndarray, kept: np.ndarray, title: str, whole: np.ndarray | None = None
):
    """Error of the decisions kept against the share kept, keeping the most confident first.

    Args:
        confidence: the calibrated confidence abstention ranks images by (N,).
        errors: per image, 0 (right) or 1 (wrong); multi-label, the share of its annotated findings called wrong
            (NaN: none annotated).
        kept: the images lungnet decides (not abstained).
        title: the figure's title.
        whole: multi-label only, 1 where an image's whole set of findings is wrong: drawn beside ``errors``.
    """
    share, risk = risk_curve(confidence, errors)
    multilabel = whole is not None
    fig, ax = plt.subplots(figsize=(6.2, 4.4))
    what = "findings called wrong" if multilabel else "error"
    ax.plot(share, risk, color="tab:blue", lw=2, label=f"keep the most confident: {what}")
    top = float(risk.max()) if len(risk) else 0.0
    if multilabel:
        set_share, set_risk = risk_curve(confidence, whole)
        ax.plot(set_share, set_risk, color="tab:purple", lw=1, ls="--", label="images with any finding wrong")
        top = max(top, float(set_risk.max()) if len(set_risk) else 0.0)
    if len(risk):
        ax.axhline(risk[-1], color="gray", ls=":", label=f"no abstention: {what} {risk[-1]:.3f}")
    known = kept & ~np.isnan(errors)
    if known.any():
        rest = float(errors[known].mean())
        label = f"lungnet's abstention: {kept.mean():.0%} kept, {what} {rest:.3f}"
        ax.plot(kept.mean(), rest, "o", color="tab:red", ms=9, label=label)
    ax.set_xlabel("share of images decided (coverage)")
    ylabel = "share of finding calls wrong in the images kept" if multilabel else "error rate of the decisions kept"
    ax.set_ylabel(f"{ylabel} (risk)")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, min(1.05, max(0.05, top * 1.1)))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right" if multilabel else "upper left")
    ax.set_title(title, fontsize=10)
    return fig


def card_summary(result: dict) -> dict:
    """What the app shows at the top: model, data, split evaluated, headline numbers with CIs."""
    ci = result.get("confidence_intervals", {})
    op = result.get("operating_point", {})
    return {
        "model": result.get("model"),
        "input_size": result.get("input_size"),
        "data_name": result.get("data_name"),
        "split": result.get("split"),
        "n": result.get("n"),
        "class_counts": result.get("class_counts"),
        "accuracy": ci.get("accuracy"),
        "auroc_macro": ci.get("auroc_macro"),
        "ece_after": result.get("calibration", {}).get("ece_after"),
        "operating_point": {k: op.get("fitted", {}).get(k) for k in op.get("thresholds", {})},
        "conformal_coverage": result.get("conformal_coverage"),
        "alpha": result.get("decisions", {}).get("alpha"),
    }


def decision_section(result: dict, record: DecisionRecord, split: str, figure: str | None = None) -> str:
    """The report's ``## Decisions`` section."""
    from lungnet.evaluation.report import fmt

    block = result["decisions"]
    shift = block["shift"]
    rule = {
        "threshold": f"**{record.positive_class}** when its calibrated probability reaches "
        f"{fmt(record.thresholds.get(record.positive_class))} (target sensitivity {record.target_sensitivity}), "
        "else the most probable other class",
        "argmax": "the most probable class (arg-max of the calibrated probabilities)",
        "per_finding": "each finding whose calibrated probability reaches its threshold",
    }[record.rule]
    lines = [
        "## Decisions: operating point, abstention, conformal sets, OOD gate",
        f"Decisions {block['source']}. Rule: {rule}. A decision is `abstain` (referred to a person) when the image "
        "is unlike the training images (OOD gate), when the prediction set holds more than one answer"
        + (f", or when the calibrated confidence is below {record.abstain_below}" if record.abstain_below else "")
        + ".",
        f"- Referred to a person: **{block['referred']} of {block['n']}** ({fmt(block['referred_share'])}; "
        f"{', '.join(f'{k}: {v}' for k, v in block['referred_by'].items()) or 'none'}); accuracy of the decisions "
        f"kept: **{fmt(block['accuracy_on_rest'])}** "
        f"(without abstention: {fmt(block['accuracy_without_abstention'])})"
        + (
            f", an image right only when its whole set of findings is; per finding call: "
            f"**{fmt(block['finding_accuracy_on_rest'])}** "
            f"(without abstention: {fmt(block['finding_accuracy_without_abstention'])})."
            if block.get("finding_accuracy_on_rest") is not None
            else "."
        ),
    ]
    if record.alpha is not None:
        level = 1 - record.alpha
        lines.append(
            f"- Split conformal prediction sets at level {level:.2f} (alpha = {record.alpha}), calibrated on "
            f"{record.split} ({record.counts.get('n')} images): empirical coverage on {split} "
            f"**{fmt(result.get('conformal_coverage'))}**, "
            f"mean set size {fmt(result.get('conformal_mean_set_size'), 2)}."
        )
    if block.get("empty_sets"):
        lines.append(empty_sets_line(block))
    if block.get("ood_rate") is not None:
        lines.append(
            f"- OOD gate ({gate_how(record.ood)}): **{block['ood_flagged']} of {block['n']}** flagged "
            f"({fmt(block['ood_rate'])})."
        )
    lines.append(shift_line(shift, split, record.split))
    if figure:
        lines.append(f"![Risk-coverage]({figure})")
    return "\n\n".join(lines)


def empty_sets_line(block: dict) -> str:
    """What the empty prediction sets are and how they were decided (`lungnet.scoring.referral`)."""
    level = f"{1 - float(block['alpha']):.0%}"
    return (
        f"- Empty prediction sets: **{block['empty_sets']} of {block['n']}** (sets with more than one answer: "
        f"{block.get('ambiguous_sets', 0)}). A set is empty when the model is more confident on the validation "
        f"images than the {level} level needs: its bar for a label is then above a less confident image's "
        "probabilities. An empty set singles out no other answer, so these images are decided by the operating "
        "point and not referred (their `decision_note` says so; the coverage counts them as misses); "
        "`abstain.below` refers images below a chosen confidence."
    )


def gate_how(ood: OodGate | ImageGate | AnyMemberGate) -> str:
    """How a gate flags, in a few words for the report."""
    from lungnet.evaluation.report import fmt

    info = ood.info
    where = f"{info.get('quantile')} quantile on {info.get('threshold_split')}"
    if info.get("method") == ANY_MEMBER:
        return (
            f"an ensemble's: flagged when any member's own gate flags ({info.get('voting')} of "
            f"{info.get('members')} members have one); {fmt(info.get('rate_on_threshold_split'))} of "
            f"{info.get('threshold_split')} flagged"
        )
    if isinstance(ood, ImageGate):
        each = f"{ood.features.info.get('quantile')} quantile on {info.get('threshold_split')}"
        return (
            f"{info.get('method')}: pooled features and a {THUMB}x{THUMB} thumbnail of the model input, each "
            f"thresholded at the {each}, flagged when either flags ({where} in all); score = the larger part score "
            "over its threshold"
        )
    return f"{info.get('method')}, threshold {fmt(ood.threshold)} = {where}"


def shift_line(shift: dict, split: str, calibration_split: str | None) -> str:
    """What the coverage means here: in-sample, shifted (not guaranteed), or no evidence of shift."""
    from lungnet.evaluation.report import fmt

    tests = ", ".join(f"{k} p = {fmt(v['pvalue'], 4)}" for k, v in shift["tests"].items())
    if shift["in_sample"]:
        return (
            f"> The sets were calibrated on this split ({split}) itself: the coverage above is in-sample. "
            "On new images it holds only when they are exchangeable with these."
        )
    if shift["warning"]:
        return (
            f"> **Coverage is not guaranteed on this split.** The {split} images do not look like the "
            f"{calibration_split} images the sets were calibrated on (two-sample KS: {tests}; combined p = "
            f"{fmt(shift['pvalue'], 4)} < {SHIFT_P}), so the {split} images are not exchangeable with them."
        )
    if not shift["tests"]:
        return "> No shift test was possible (no calibration scores): coverage is not guaranteed."
    return (
        f"> No evidence that {split} differs from {calibration_split} (two-sample KS: {tests}; combined p = "
        f"{fmt(shift['pvalue'], 4)}). The coverage guarantee assumes exchangeable images; a test can miss a shift."
    )
