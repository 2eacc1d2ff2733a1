"""Human-readable evaluation report: ``report.md`` (and ``report.html`` with the images embedded).

The report is rendered from the evaluation's ``metrics.json`` content alone, so it can be rebuilt
later. It opens with a summary table a reader understands without the code, then the figures and
tables. Other modules (e.g. ``lungnet.explain``) add their own sections either by passing
``extra_sections`` to `write_report` or, after the fact, with `add_report_sections`, which inserts
them at the `EXTRA_MARKER` line and re-renders the HTML.
"""

from __future__ import annotations

import base64
import html
import logging
import math
import os
import re
from pathlib import Path

import markdown

from lungnet.data.sources import SOURCES
from lungnet.evaluation.bootstrap_unit import phrase
from lungnet.io import write_text

log = logging.getLogger(__name__)

EXTRA_MARKER = "<!-- lungnet:extra-sections (explanations are inserted above this line) -->"

# the caveat of each data set, as its `lungnet.data.sources.Source` states it
DATASET_NOTES = {name: cls.note for name, cls in SOURCES.items() if cls.note}

FIGURE_TITLES = {
    "confusion_matrix": "Confusion matrix",
    "roc": "ROC curves",
    "pr": "Precision-recall curves",
    "reliability": "Calibration: reliability diagram",
}


def fmt(value, digits: int = 3) -> str:
    """A number for a table (``n/a`` for missing or NaN)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def fmt_ci(ci: dict | None, digits: int = 3) -> str:
    """``0.812 [0.760, 0.861]`` from a bootstrap entry ``{"value", "lo", "hi"}``."""
    if not ci or fmt(ci.get("value")) == "n/a":
        return "n/a"
    return f"{fmt(ci.get('value'), digits)} [{fmt(ci.get('lo'), digits)}, {fmt(ci.get('hi'), digits)}]"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table (``|`` inside cells escaped)."""
    clean = [[str(c).replace("|", "\\|") for c in row] for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in clean])


def _range(values: list[float]) -> str:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return "n/a"
    lo, hi = min(finite), max(finite)
    return fmt(lo) if len(finite) == 1 or lo == hi else f"{fmt(lo)}-{fmt(hi)}"


def operating_point_summary(op: dict, split: str) -> str:
    """One line: target, classes, where it was fitted and what it gives on the evaluated split."""
    if not op or not op.get("thresholds"):
        return "n/a"
    fitted, applied = op["fit_split"], op.get("applied", {})
    target = fmt(op["target_sensitivity"], 2)
    if len(op["thresholds"]) == 1:
        (lab, thr), res = next(iter(op["thresholds"].items())), next(iter(applied.values()), {})
        text = (
            f"{lab} vs rest at target sensitivity {target}: threshold {fmt(thr)} (fitted on {fitted}) gives "
            f"sensitivity {fmt(res.get('sensitivity'))}, specificity {fmt(res.get('specificity'))} on {split}"
        )
    else:
        sens = _range([r.get("sensitivity") for r in applied.values()])
        spec = _range([r.get("specificity") for r in applied.values()])
        text = (
            f"target sensitivity {target} per class (one-vs-rest), thresholds fitted on {fitted}: "
            f"{split} sensitivity {sens}, specificity {spec} (see Operating point)"
        )
    if op.get("source") == "file":
        text += f"; thresholds read from {op.get('file')}"
    elif fitted == split:
        text += "; fitted on the evaluated split itself (no separate validation data), so optimistic"
    return text


def summary_rows(result: dict) -> list[list[str]]:
    """The opening summary table: model, data, split, n, headline metrics with CIs, ECE, operating point."""
    ci = result.get("confidence_intervals", {})
    cal = result.get("calibration", {})
    split = result["split"]
    counts = result.get("class_counts") or {}
    n_text = str(result["n"]) + (" (" + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")" if counts else "")
    boot = result.get("bootstrap", {})
    rows = [
        ["Model", f"{result['model']} ({result.get('input_size', '?')} px input)"],
        ["Checkpoint", f"`{result['checkpoint']}`"],
        ["Data", f"{result.get('data_name') or 'n/a'} at `{result['data_root']}`"],
        ["Split evaluated", split],
        ["Images (n)", n_text],
    ]
    if not result.get("multilabel"):
        rows.append(["Accuracy [95% CI]", fmt_ci(ci.get("accuracy"))])
    rows += [
        ["Macro F1 [95% CI]" + (" (threshold 0.5)" if result.get("multilabel") else ""), fmt_ci(ci.get("f1_macro"))],
        ["Macro AUROC [95% CI]", fmt_ci(ci.get("auroc_macro"))],
        [
            "Loss (binary cross-entropy)" if result.get("multilabel") else "Loss (cross-entropy)",
            fmt(result.get("loss")),
        ],
    ]
    ece = f"{fmt(cal.get('ece'))} ({cal.get('bins', '?')} bins)"
    if cal.get("temperature") is not None:
        ece += (
            f"; after temperature scaling (T = {fmt(cal['temperature'], 2)}, fitted on {cal['fit_split']}): "
            f"{fmt(cal.get('ece_after'))}"
        )
    rows += [
        ["Expected calibration error", ece],
        ["Operating point", operating_point_summary(result.get("operating_point", {}), split)],
    ]
    rows += decision_rows(result)
    rows.append(
        [
            "Confidence intervals",
            f"{int(boot.get('level', 0.95) * 100)}% percentile bootstrap {phrase(boot)}, "
            f"{boot.get('resamples', '?')} resamples, seed {boot.get('seed', '?')}",
        ]
    )
    return rows


def rest_accuracy(block: dict) -> str:
    """``accuracy of the rest X`` of a ``decisions`` block; for a multi-label model also the share of finding calls
    right (``finding_accuracy_on_rest``), since its accuracy asks for the whole set of findings."""
    text = f"accuracy of the rest {fmt(block.get('accuracy_on_rest'))}"
    if block.get("finding_accuracy_on_rest") is None:
        return text
    return f"{text} (whole set of findings; per finding {fmt(block['finding_accuracy_on_rest'])})"


def decision_rows(result: dict) -> list[list[str]]:
    """Summary rows of the decision path: referrals, accuracy of the rest, conformal coverage (with its caveat)."""
    block = result.get("decisions")
    if not block:
        return []
    rows = [
        [
            "Referred to a person (abstain)",
            f"{block['referred']} of {block['n']}; {rest_accuracy(block)}",
        ]
    ]
    if result.get("conformal_coverage") is not None:
        level = 1 - float(block["alpha"])
        caveat = (
            "**not guaranteed here: this split differs from the calibration split**"
            if result.get("conformal_shift_warning")
            else "in-sample"
            if block["shift"]["in_sample"]
            else f"shift test p = {fmt(result.get('conformal_shift_pvalue'), 4)}"
        )
        rows.append(
            [
                f"Conformal coverage (target {level:.2f})",
                f"{fmt(result['conformal_coverage'])}, mean set size "
                f"{fmt(result.get('conformal_mean_set_size'), 2)} ({caveat})",
            ]
        )
    if block.get("empty_sets"):
        rows.append(
            [
                "Empty prediction sets (decided, not referred)",
                f"{block['empty_sets']} of {block['n']}: the model is more confident than the set level needs",
            ]
        )
    if block.get("ood_rate") is not None:
        rows.append(["Flagged out-of-distribution", f"{block['ood_flagged']} of {block['n']}"])
    return rows


def per_class_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    """Per-class table (single-label) or per-finding table (multi-label, AUROC with its CI)."""
    ci = result.get("confidence_intervals", {})
    per = result["per_class"]
    header = ["class", "support", "precision", "recall = sensitivity", "specificity", "F1", "AUROC"]
    rows = []
    for lab, m in per.items():
        auroc = fmt_ci(ci[f"auroc/{lab}"]) if f"auroc/{lab}" in ci else fmt(m.get("auroc"))
        support = m.get("support", m.get("positives"))
        rows.append(
            [
                lab,
                fmt(support),
                fmt(m.get("precision")),
                fmt(m.get("recall")),
                fmt(m.get("specificity")),
                fmt(m.get("f1")),
                auroc,
            ]
        )
    if result.get("multilabel"):
        header[1], header[-1] = "positives", "AUROC [95% CI]"
    return header, rows


def operating_point_section(op: dict, split: str, calibrated: bool = False) -> str:
    """Table of thresholds with sensitivity/specificity where fitted and on the evaluated split."""
    if not op or not op.get("thresholds"):
        return ""
    probs = "temperature-calibrated" if calibrated else "uncalibrated"
    fitted = op["fit_split"]
    header = ["class (vs rest)", "threshold", f"{fitted} sensitivity", f"{fitted} specificity"]
    same = fitted == split and op.get("source") != "file"
    if not same:
        header += [f"{split} sensitivity", f"{split} specificity"]
    rows = []
    for lab, thr in op["thresholds"].items():
        fit = op.get("fitted", {}).get(lab, {})
        row = [lab, fmt(thr), fmt(fit.get("sensitivity")), fmt(fit.get("specificity"))]
        if not same:
            res = op.get("applied", {}).get(lab, {})
            row += [fmt(res.get("sensitivity")), fmt(res.get("specificity"))]
        rows.append(row)
    where = (
        f"read from `{op.get('file')}`"
        if op.get("source") == "file"
        else f"fitted on the **{fitted}** split" + (" (the evaluated split itself: optimistic)" if same else "")
    )
    text = (
        f"A class is called positive when its probability is at least the threshold. Each threshold is the "
        f"highest that reaches sensitivity {fmt(op['target_sensitivity'], 2)} for that class, {where}, "
        f"then applied unchanged to the {split} split. Thresholds are on the {probs} probabilities. "
        f"They are also in `thresholds.json` and as `op_<class>` columns of `predictions.csv`."
    )
    return f"## Operating point\n\n{text}\n\n{table(header, rows)}\n"


def ci_section(result: dict) -> str:
    """Every bootstrap interval as a table."""
    ci = result.get("confidence_intervals", {})
    if not ci:
        return ""
    rows = [[k, fmt(v["value"]), fmt(v["lo"]), fmt(v["hi"]), str(v["resamples"])] for k, v in ci.items()]
    head = f"## Confidence intervals\n\nPercentile bootstrap {phrase(result.get('bootstrap'))}.\n\n"
    return head + table(["metric", "value", "CI low", "CI high", "valid resamples"], rows)


def render_report(
    result: dict,
    extra_sections: list[str] | None = None,
    files: list[str] | None = None,
    lead_sections: list[str] | None = None,
) -> str:
    """The report as markdown (figure paths relative to the run directory).

    The evaluation's own figures (`FIGURE_TITLES`) get a section each; other figures are shown by the sections
    that made them (``extra_sections``) and listed under Files, with ``files``. ``lead_sections`` come first,
    before the summary (e.g. "external evaluation: trained on A, evaluated on B" and its label mapping).
    """
    split, figures = result["split"], result.get("figures", {})
    calibrated = result.get("calibration", {}).get("temperature") is not None
    title = f"# Evaluation: {result['model']} on {result.get('data_name') or 'data'} ({split} split)"
    parts = [
        title,
        "lungnet is a research tool, not a medical device.",
        *[sec.strip() for sec in lead_sections or []],
        "## Summary\n\n" + table(["", ""], summary_rows(result)),
    ]
    note = DATASET_NOTES.get(str(result.get("data_name")))
    if note:
        parts.append(f"> **Data caveat.** {note}")
    header, rows = per_class_rows(result)
    what = "finding" if result.get("multilabel") else "class"
    decision = "probability >= 0.5" if result.get("multilabel") else "the arg-max class"
    parts.append(
        f"## Per-{what} metrics\n\nPrecision, recall, specificity and F1 of the decision ({decision}), "
        f"one-vs-rest; AUROC from the probabilities.\n\n{table(header, rows)}"
    )
    for key, fig in figures.items():
        if key not in FIGURE_TITLES:
            continue
        parts.append(f"## {FIGURE_TITLES[key]}\n\n![{FIGURE_TITLES[key]}]({fig})")
        if key == "roc":
            parts.append(operating_point_section(result.get("operating_point", {}), split, calibrated))
    if "roc" not in figures:
        parts.append(operating_point_section(result.get("operating_point", {}), split, calibrated))
    parts.append(ci_section(result))
    parts += [s.strip() for s in extra_sections or []]
    parts.append(EXTRA_MARKER)
    files = ["metrics.json", "predictions.csv", "per_class.csv", "thresholds.json", *figures.values(), *(files or [])]
    parts.append("## Files\n\n" + "\n".join(f"- `{f}`" for f in files))
    return "\n\n".join(p for p in parts if p) + "\n"


def _embed_images(html_text: str, base_dir: Path) -> str:
    """Replaces ``<img src="relative.png">`` with base64 data URIs so the HTML is one portable file."""

    def repl(match: re.Match) -> str:
        src = match.group(2)
        path = Path(src) if Path(src).is_absolute() else base_dir / src
        if src.startswith("data:") or not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        mime = "image/png" if path.suffix.lower() == ".png" else f"image/{path.suffix.lower().lstrip('.')}"
        return f'{match.group(1)}"data:{mime};base64,{data}"'

    return re.sub(r'(<img[^>]*?src=)"([^"]+)"', repl, html_text)


def markdown_to_html(md_text: str, base_dir: str | os.PathLike, title: str = "lungnet report") -> str:
    """A standalone HTML page from the report markdown, images embedded."""
    body = markdown.markdown(md_text, extensions=["tables", "fenced_code"])
    body = _embed_images(body, Path(base_dir))
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.4}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
        "th{background:#f3f3f3}img{max-width:100%}blockquote{border-left:4px solid #e0a000;margin:0;padding:0 1em}"
    )
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>\n{body}\n</body></html>\n"
    )


def write_report(
    run_dir: str | os.PathLike,
    result: dict,
    extra_sections: list[str] | None = None,
    html_report: bool = True,
    files: list[str] | None = None,
    lead_sections: list[str] | None = None,
) -> Path:
    """Writes ``report.md`` (and ``report.html``) into ``run_dir``.

    Args:
        run_dir: the evaluation directory (figure paths in ``result["figures"]`` are relative to it).
        result: the evaluation result (the content of its metrics.json).
        extra_sections: markdown sections appended after the evaluation sections, e.g. explanation
            results from ``lungnet.explain`` (image paths relative to ``run_dir``).
        html_report: also write the self-contained ``report.html``.
        files: more files of the run directory to list under Files (besides metrics, predictions and figures).
        lead_sections: markdown sections before the summary (what was evaluated against what).

    Returns:
        The path of report.md.
    """
    run_dir = Path(run_dir)
    text = render_report(result, extra_sections, files, lead_sections)
    path = write_text(run_dir / "report.md", text)
    if html_report:
        write_text(run_dir / "report.html", markdown_to_html(text, run_dir, title=text.splitlines()[0].lstrip("# ")))
    log.info("Wrote %s", path)
    return path


def add_report_sections(run_dir: str | os.PathLike, sections: list[str], html_report: bool = True) -> Path:
    """Inserts markdown ``sections`` into an existing ``report.md`` (at `EXTRA_MARKER`) and re-renders the HTML.

    Args:
        run_dir: the evaluation directory holding report.md.
        sections: markdown sections (start each with a ``## `` heading; image paths relative to ``run_dir``).
        html_report: re-write report.html.

    Raises:
        FileNotFoundError: no report.md in ``run_dir``.
    """
    path = Path(run_dir) / "report.md"
    text = path.read_text(encoding="utf-8")
    block = "\n\n".join(s.strip() for s in sections) + "\n\n"
    text = text.replace(EXTRA_MARKER, block + EXTRA_MARKER) if EXTRA_MARKER in text else text + "\n" + block
    write_text(path, text)
    if html_report:
        html_path = Path(run_dir) / "report.html"
        write_text(html_path, markdown_to_html(text, run_dir, title=text.splitlines()[0].lstrip("# ")))
    return path
