"""Metrics per patient subgroup (after Seyyed-Kalantari et al., Nature Medicine 2021), where the data say who.

For data sets with patient metadata (NIH ChestX-ray14: ``Patient Age`` in bands 0-17 / 18-39 / 40-59 / 60+, ``Patient
Gender``, ``View Position``), and for a model trained on several data sets (``data=multi``: the ``source`` of each
image, when the evaluated images come from two or more), each group gets, per scored class with an operating-point
threshold (the normal class left out): n and positives, AUROC (one-vs-rest), sensitivity and false-negative rate at the
operating point, and ECE, each with a percentile bootstrap interval over the group's patients (each drawn with every
image; images where the split names no patient); per attribute, the largest gap between groups of at least ``min_n``
images (the groups with the highest and the lowest estimate, the interval from resampling each group independently).
Smaller groups are shown and marked too small.
Written to ``subgroups.csv``, ``subgroups.png`` and a report section.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from lungnet.config_checks import check_ranges
from lungnet.data.findings import NO_FINDING, finding_of
from lungnet.evaluation.bootstrap_unit import PATIENT, patient_groups
from lungnet.evaluation.by_source import source_column
from lungnet.evaluation.report import fmt, table
from lungnet.io import write_csv
from lungnet.schema import SubgroupsConfig
from lungnet.scoring import plots, stats
from lungnet.scoring.resample import Resampler

log = logging.getLogger(__name__)

AGE_BANDS = ((0, 17, "0-17"), (18, 39, "18-39"), (40, 59, "40-59"), (60, 200, "60+"))
ATTRIBUTES = ("age", "sex", "view", "source")
METRICS = ("auroc", "sensitivity", "ece")


def age_band(ages: pd.Series) -> pd.Series:
    """Ages (numbers, or NIH's older ``058Y`` strings) -> bands; unknown ages -> NaN."""
    years = pd.to_numeric(ages.astype(str).str.extract(r"(\d+)")[0], errors="coerce")
    out = pd.Series(np.nan, index=ages.index, dtype=object)
    for lo, hi, name in AGE_BANDS:
        out[(years >= lo) & (years <= hi)] = name
    return out


def nih_metadata(root: str | Path, paths: list[str], csv_name: str = "Data_Entry_2017.csv") -> pd.DataFrame | None:
    """Age band, sex and view per image from the NIH label file (joined on the file name); None without it."""
    csv = Path(root) / csv_name
    if not csv.is_file():
        return None
    wanted = {"Image Index", "Patient Age", "Patient Gender", "View Position"}
    entries = pd.read_csv(csv, usecols=lambda c: c in wanted)
    if set(entries.columns) != wanted:
        log.warning("%s lacks %s: no subgroup metrics", csv, sorted(wanted - set(entries.columns)))
        return None
    meta = entries.drop_duplicates("Image Index").set_index("Image Index").reindex([Path(p).name for p in paths])
    return pd.DataFrame(
        {
            "age": age_band(meta["Patient Age"]).to_numpy(),
            "sex": meta["Patient Gender"].to_numpy(),
            "view": meta["View Position"].to_numpy(),
        }
    )


def subgroup_metadata(dm, paths: list[str]) -> pd.DataFrame | None:
    """The grouping columns of the evaluated images: NIH's age band, sex and view (`nih_metadata`), and ``source``
    when they come from two or more data sets (``data=multi``); None when there is nothing to group by."""
    source = getattr(dm, "source", None)
    meta = None
    if getattr(source, "name", "") in ("nih14", "nih6"):
        meta = nih_metadata(source.root, paths, source.options.get("csv", "Data_Entry_2017.csv"))
    sets = source_column(getattr(dm, "table", None), paths)
    if sets is None or len(set(sets) - {""}) < 2:
        return meta
    column = pd.Series(sets, dtype=object).replace("", np.nan)
    return pd.DataFrame({"source": column}) if meta is None else meta.assign(source=column.to_numpy())


def group_metrics(
    probs, truth, known, c: int, threshold: float, bins: int, multilabel: bool, targets, with_ece=True
) -> dict:
    """AUROC, sensitivity and (``with_ece``) ECE of class ``c`` on one group (arrays already restricted to it).

    The ECE is the finding's own (its probability against its presence) for a multi-label model; a single-label
    model's is its top label's over all classes (`ECE_OF`), the same in every class's row.
    """
    y, score = truth[known[:, c], c], probs[known[:, c], c]
    out = {"auroc": stats.binary_auroc(y, score), "sensitivity": stats.sens_spec(y, score, threshold)["sensitivity"]}
    if with_ece:
        ece_of = (probs[:, [c]], targets[:, [c]]) if multilabel else (probs, targets)
        out["ece"] = stats.expected_calibration_error(*ece_of, multilabel, bins) if len(probs) else float("nan")
    return out


def bootstrap_group(
    probs, targets, multilabel, c, threshold, bins, resamples, seed, groups=None, ece=None
) -> tuple[dict, dict]:
    """Point metrics of one group and their bootstrap draws (``{metric: array of resamples}``).

    Args:
        groups: the patient of each image (`lungnet.scoring.resample.Resampler`), None to resample images.
        ece: a single-label model's ECE of this group as another class's call returned it (point, draws): the same
            numbers (the top label's over all classes, the same seeded resamples), taken instead of computed again.
    """
    truth = stats.one_vs_rest(targets, probs.shape[1], multilabel)
    known = ~np.isnan(truth)
    point = group_metrics(probs, truth, known, c, threshold, bins, multilabel, targets, ece is None)
    rng = np.random.default_rng(seed)
    draws = {k: np.full(resamples, np.nan) for k in point}
    draw = Resampler(len(probs), groups).draw
    for r in range(resamples if len(probs) else 0):
        i = draw(rng)
        values = group_metrics(probs[i], truth[i], known[i], c, threshold, bins, multilabel, targets[i], ece is None)
        for k, value in values.items():
            draws[k][r] = value
    if ece is not None:
        point["ece"], draws["ece"] = ece
    return point, draws


def audited_classes(labels: list[str], thresholds: dict[str, float], source: str | None) -> list[str]:
    """The thresholded classes, without the normal class (unless nothing else is thresholded)."""
    chosen = [lab for lab in labels if lab in thresholds]
    abnormal = [lab for lab in chosen if (finding_of(lab, source) or lab) != NO_FINDING]
    return abnormal or chosen


def subgroup_table(meta: pd.DataFrame, probs, targets, labels, multilabel, thresholds, opts: dict, groups=None):
    """One row per attribute x group x class, and the largest gap per attribute, class and metric (``groups``: the
    patient of each image, resampled whole; None resamples images)."""
    rows, gaps = [], []
    boot = opts["bootstrap"]
    resamples, seed, level = int(boot["resamples"]), int(boot["seed"]), float(boot["level"])
    bins = int(opts["bins"])
    shared_ece = {}  # single-label: (attribute, group) -> the ECE's point and draws, the same for every class
    for lab in audited_classes(labels, thresholds, opts.get("source")):
        c = labels.index(lab)
        for attribute in [a for a in ATTRIBUTES if a in meta]:
            draws_by_group = {}
            for group in sorted(meta[attribute].dropna().unique(), key=str):
                mask = (meta[attribute] == group).to_numpy()
                if np.isnan(stats.one_vs_rest(targets[mask], len(labels), multilabel)[:, c]).all():
                    continue  # a data set that does not annotate the finding (data=multi): nothing to score
                patients = None if groups is None else groups[mask]
                key = (attribute, str(group))
                point, draws = bootstrap_group(
                    probs[mask],
                    targets[mask],
                    multilabel,
                    c,
                    thresholds[lab],
                    bins,
                    resamples,
                    seed,
                    patients,
                    shared_ece.get(key),
                )
                if not multilabel:
                    shared_ece.setdefault(key, (point["ece"], draws["ece"]))
                row = {
                    "attribute": attribute,
                    "group": str(group),
                    "class": lab,
                    "n": int(mask.sum()),
                    "positives": int(np.nansum(stats.one_vs_rest(targets[mask], len(labels), multilabel)[:, c])),
                    "too_small": bool(mask.sum() < int(opts["min_n"])),
                    "threshold": float(thresholds[lab]),
                }
                for k in METRICS:
                    row[k], (row[f"{k}_lo"], row[f"{k}_hi"]) = point[k], stats.percentile_interval(draws[k], level)
                row["fnr"], row["fnr_lo"], row["fnr_hi"] = (
                    1 - row["sensitivity"],
                    1 - row["sensitivity_hi"],
                    1 - row["sensitivity_lo"],
                )
                rows.append(row)
                if not row["too_small"]:
                    draws_by_group[str(group)] = (point, draws)
            gaps += largest_gaps(attribute, lab, draws_by_group, level)
    return pd.DataFrame(rows), gaps


def largest_gaps(attribute: str, lab: str, groups: dict, level: float) -> list[dict]:
    """Per metric: highest minus lowest group estimate, with the interval of that difference over resamples."""
    out = []
    for k in METRICS:
        finite = {g: pd_[0][k] for g, pd_ in groups.items() if np.isfinite(pd_[0][k])}
        if len(finite) < 2:
            continue
        high, low = max(finite, key=finite.get), min(finite, key=finite.get)
        lo, hi = stats.percentile_interval(groups[high][1][k] - groups[low][1][k], level)
        out.append(
            {
                "attribute": attribute,
                "class": lab,
                "metric": k,
                "high": high,
                "low": low,
                "gap": finite[high] - finite[low],
                "lo": lo,
                "hi": hi,
            }
        )
    return out


ATTRIBUTE_NAMES = {"age": "Patient Age", "sex": "Patient Gender", "view": "View Position", "source": "Data set"}
METRIC_NAMES = {"auroc": "AUROC", "sensitivity": "sensitivity at the operating point", "ece": "ECE"}
ECE_OF = {True: "ECE", False: "ECE (top label, all classes)"}  # keyed by multilabel: what the ECE column is


ATTRIBUTE_SHORT = {"age": "Age", "sex": "Sex", "view": "View", "source": "Data set"}
ROW_INCHES = 0.26  # one group's line: room for an 8-point label (with its n) and its interval
IN_SAMPLE = "IN-SAMPLE: thresholds fitted on these same images"


def group_label(attribute: str, group: str, n: int, width: int = 28) -> str:
    """``"Age 40-59 (n=196)"``; a long group name is shortened to ``width`` characters."""
    name = group if len(group) <= width else group[: width - 1] + "…"
    return f"{ATTRIBUTE_SHORT.get(attribute, attribute)} {name} (n={n})"


def subgroup_figure(frame: pd.DataFrame, min_n: int, in_sample: bool = False, multilabel: bool = True):
    """Forest plot: one row of panels per class (AUROC, sensitivity, ECE), one line per group with its 95% CI.

    The figure grows with the groups (`ROW_INCHES` a line), so no label overlaps another. With ``in_sample`` (the
    thresholds were fitted on the evaluated images) the sensitivity panels are titled IN-SAMPLE and shaded; the ECE
    panels say what their ECE is (`ECE_OF`, by ``multilabel``).
    """
    import matplotlib.pyplot as plt

    classes = list(dict.fromkeys(frame["class"]))
    sizes = [int((frame["class"] == lab).sum()) for lab in classes]
    height = sum(ROW_INCHES * n + 0.9 for n in sizes) + 0.8
    fig, axes = plt.subplots(
        len(classes), 3, figsize=(13, height), squeeze=False, gridspec_kw={"height_ratios": [n + 3 for n in sizes]}
    )
    for r, lab in enumerate(classes):
        part = frame[frame["class"] == lab].reset_index(drop=True)
        y = np.arange(len(part))[::-1]
        names = [group_label(a, str(g), n) for a, g, n in zip(part["attribute"], part["group"], part["n"], strict=True)]
        for k, (metric, ax) in enumerate(zip(METRICS, axes[r], strict=True)):
            _forest(ax, part, metric, y)
            ax.set_yticks(y, names if k == 0 else [""] * len(y), fontsize=8)
            ax.set_ylim(-0.7, len(part) - 0.3)
            name = ECE_OF[multilabel] if metric == "ece" else METRIC_NAMES[metric]
            ax.set_title(f"{lab}: {name}", fontsize=9)
            if metric == "sensitivity" and in_sample:
                ax.set_title(f"{lab}: {METRIC_NAMES[metric]}\n{IN_SAMPLE}", fontsize=9, color="tab:red")
                ax.set_facecolor("#fdecea")
            ax.set_xlim(-0.02, 1.02 if metric != "ece" else max(0.3, float(np.nanmax(part["ece_hi"])) + 0.02))
            ax.grid(axis="x", alpha=0.3)
            for edge in np.flatnonzero(part["attribute"].to_numpy()[1:] != part["attribute"].to_numpy()[:-1]):
                ax.axhline(y[edge] - 0.5, color="0.75", lw=0.8)  # between attributes
            if metric == "auroc":
                ax.axvline(0.5, color="grey", ls="--", lw=1)
    title = f"Subgroups (95% bootstrap CI; hollow grey: fewer than {min_n} images, too small to judge)"
    fig.suptitle(title, fontsize=10, y=1 - 0.15 / height, va="top")  # 0.15 in from the top, whatever the height
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / height))  # the panels below it
    return fig


def _forest(ax, part: pd.DataFrame, metric: str, y: np.ndarray) -> None:
    """One point and interval per group, coloured by attribute (grey and hollow: too small)."""
    for yi, (_, row) in zip(y, part.iterrows(), strict=True):
        small = row["too_small"]
        colour = "#aaaaaa" if small else plots.colours(len(ATTRIBUTES))[ATTRIBUTES.index(row["attribute"])]
        ax.errorbar(
            row[metric],
            yi,
            xerr=[[max(0, row[metric] - row[f"{metric}_lo"])], [max(0, row[f"{metric}_hi"] - row[metric])]],
            fmt="o",
            mfc="white" if small else colour,
            color=colour,
            capsize=3,
        )


def subgroup_markdown(
    frame: pd.DataFrame,
    gaps: list[dict],
    min_n: int,
    figure: str | None,
    in_sample: bool = False,
    by_patient: bool = False,
    multilabel: bool = True,
) -> str:
    """The report section: one table per class, then the largest gap per attribute and metric (``by_patient``: the
    intervals resample the group's patients, each with every image; ``multilabel``: what the ECE column is)."""
    unit = "patients (a drawn patient brings every image)" if by_patient else "images"
    parts = [
        "## Subgroups\n\nPer patient group (NIH metadata) and per data set (a model trained on several): AUROC "
        "one-vs-rest, sensitivity and false-negative rate at the operating point, ECE; 95% bootstrap intervals over "
        f"the group's {unit}. Groups under "
        f"{min_n} images are shown but too small to judge."
    ]
    if in_sample:
        parts.append(
            f"> **{IN_SAMPLE}** (no separate split to fit them on): sensitivity and FNR are optimistic, and show "
            "little of how the groups differ. AUROC and ECE do not depend on the thresholds."
        )
    mark = " (IN-SAMPLE)" if in_sample else ""
    for lab, part in frame.groupby("class", sort=False):
        rows = [
            [
                ATTRIBUTE_NAMES[r.attribute],
                r.group,
                f"{r.n} ({r.positives})",
                f"{fmt(r.auroc)} [{fmt(r.auroc_lo)}, {fmt(r.auroc_hi)}]",
                f"{fmt(r.sensitivity)} [{fmt(r.sensitivity_lo)}, {fmt(r.sensitivity_hi)}]",
                fmt(r.fnr),
                f"{fmt(r.ece)} [{fmt(r.ece_lo)}, {fmt(r.ece_hi)}]",
                "too small" if r.too_small else "",
            ]
            for r in part.itertuples()
        ]
        ece = ECE_OF[multilabel]
        header = ["attribute", "group", f"n ({lab})", "AUROC", f"sensitivity{mark}", f"FNR{mark}", ece, ""]
        parts.append(f"### {lab} (threshold {part['threshold'].iloc[0]:.3f})\n\n" + table(header, rows))
    if gaps:
        rows = [
            [
                g["class"],
                ATTRIBUTE_NAMES[g["attribute"]],
                METRIC_NAMES[g["metric"]] + (mark if g["metric"] == "sensitivity" else ""),
                f"{g['high']} - {g['low']}",
                f"{fmt(g['gap'])} [{fmt(g['lo'])}, {fmt(g['hi'])}]",
            ]
            for g in gaps
        ]
        parts.append(
            "### Largest gap between groups (groups of at least "
            f"{min_n} images)\n\n" + table(["class", "attribute", "metric", "groups", "gap [95% CI]"], rows)
        )
    if figure:
        parts.append(f"![Subgroups]({figure})")
    return "\n\n".join(parts) + "\n"


def subgroup_evaluation(dm, result: dict, probs, targets, paths: list[str], opts: dict, run_dir: Path) -> dict | None:
    """Subgroup metrics of an evaluation when its data carry patient metadata; None otherwise.

    Writes ``subgroups.csv`` and ``subgroups.png`` into ``run_dir``; returns ``{"rows", "gaps", "markdown"}``.
    """
    meta = subgroup_metadata(dm, paths)
    thresholds = result["operating_point"]["thresholds"]
    if meta is None or not thresholds:
        return None
    groups = patient_groups(list(paths), getattr(dm, "table", None))  # None: resample images
    frame, gaps = subgroup_table(
        meta, np.asarray(probs), np.asarray(targets), result["labels"], result["multilabel"], thresholds, opts, groups
    )
    if frame.empty:
        return None
    write_csv(Path(run_dir) / "subgroups.csv", frame)
    in_sample, multilabel = thresholds_in_sample(result), bool(result["multilabel"])
    figure = None
    if opts.get("figures", True):
        fig = subgroup_figure(frame, int(opts["min_n"]), in_sample, multilabel)
        figure = plots.save_figure(fig, Path(run_dir) / "subgroups.png").name
    log.info("Subgroup metrics for %d groups written to subgroups.csv", len(frame))
    return {
        "rows": frame.to_dict("records"),
        "gaps": gaps,
        "markdown": subgroup_markdown(
            frame, gaps, int(opts["min_n"]), figure, in_sample, groups is not None, multilabel
        ),
        "figure": figure,
        "unit": "image" if groups is None else PATIENT,
    }


def thresholds_in_sample(result: dict) -> bool:
    """The operating point was fitted on the evaluated split itself (not read from a file, not fitted elsewhere)."""
    op = result.get("operating_point") or {}
    return op.get("source") != "file" and op.get("fit_split") == result.get("split")


def subgroup_options(cfg: DictConfig) -> dict | None:
    """The ``subgroups`` settings over `lungnet.schema.SubgroupsConfig`; None when ``subgroups=false`` (or
    ``subgroups.enabled=false``)."""
    node = cfg.get("subgroups", {})
    if node is None or node is False:
        return None
    merged = OmegaConf.merge(OmegaConf.structured(SubgroupsConfig), node)
    check_ranges(merged, SubgroupsConfig, "subgroups.")
    own = OmegaConf.to_container(merged, resolve=True)
    return own if own.pop("enabled") else None


def add_subgroups(ev) -> None:
    """Report step of `lungnet.evaluation.pipeline`: subgroup metrics where the data carry patient metadata
    (``subgroups`` in metrics.json, subgroups.csv/.png, a section); nothing when ``subgroups=false``."""
    if ev.opts.get("subgroups") is None:
        return
    extra = {"bins": ev.opts["calibration"]["bins"], "figures": ev.opts["report"]["figures"]}
    opts = {**ev.opts["subgroups"], **extra, "bootstrap": ev.opts["bootstrap"], "source": ev.loaded.data.get("source")}
    temperature = ev.result["calibration"]["temperature"] or 1.0  # the probabilities the thresholds were fitted on
    probs = stats.scale_probs(ev.data.probs, temperature, ev.loaded.multilabel)
    found = subgroup_evaluation(ev.dm, ev.result, probs, ev.data.targets, ev.data.paths, opts, ev.run_dir)
    if found is None:
        return
    ev.result["subgroups"] = {"rows": found["rows"], "gaps": found["gaps"], "bootstrap_unit": found["unit"]}
    ev.files += ["subgroups.csv", *([found["figure"]] if found.get("figure") else [])]
    ev.sections.append(found["markdown"])
