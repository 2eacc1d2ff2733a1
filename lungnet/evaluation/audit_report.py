"""The shortcut audit of an evaluation: glue (`audit_evaluation`), figures and the report section.

`audit_evaluation` runs `lungnet.evaluation.audit.run_audit` on the evaluated split of an evaluation's DataModule
(internal or external), writes ``audit.png`` (AUROC intact / lungs hidden / border only per class, and where the
Grad-CAM heat is, trained vs randomised model) and ``audit_views.png`` (what was hidden, and the mean heatmaps),
and returns the JSON result with its markdown section (``audit.md`` for ``python -m lungnet.audit``, a section of
every ``evaluate.py`` report unless ``audit=false``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from matplotlib.patches import Rectangle
from omegaconf import DictConfig, OmegaConf

from lungnet.artifacts.checkpoint import LoadedModel
from lungnet.config_checks import check_ranges
from lungnet.data.datamodule import LungDataModule
from lungnet.evaluation.audit import inner_box, run_audit
from lungnet.evaluation.bootstrap_unit import phrase
from lungnet.evaluation.report import fmt_ci, table
from lungnet.schema import AuditConfig
from lungnet.scoring import plots

log = logging.getLogger(__name__)

VIEW_NAMES = {"intact": "intact", "hidden": "lungs hidden", "border": "border only"}
WIDE = 6  # more classes than this: `audit_figure` gives each class a row
PER_ROW = 7  # classes per row of `views_figure`


def audit_options(cfg: DictConfig) -> dict | None:
    """The ``audit`` settings of an evaluate config over the schema's (`lungnet.schema.AuditConfig`); None when
    ``audit=false`` (or ``audit.enabled=false``)."""
    node = cfg.get("audit", {})
    if node is None or node is False:
        return None
    merged = OmegaConf.merge(OmegaConf.structured(AuditConfig), node)
    check_ranges(merged, AuditConfig, "audit.")
    opts = OmegaConf.to_container(merged, resolve=True, enum_to_str=True)
    return opts if opts.pop("enabled") else None


def audit_evaluation(
    loaded: LoadedModel, dm: LungDataModule, split: str, opts: dict, out_dir: Path, device: str = "cpu"
) -> dict:
    """Audits ``loaded`` on ``dm``'s ``split`` and writes the figures into ``out_dir``.

    Returns:
        The audit result (metrics.json ``audit``) with ``figures`` and ``markdown``.
    """
    ext = getattr(dm, "external", None)
    if ext is not None:
        scored = ext.mapping.scored
        score = ext.mapping.scores
        model_index = [
            next(i for i, lab in enumerate(loaded.labels) if ext.mapping.model_findings[lab] == f) for f in scored
        ]
    else:
        scored, score, model_index = list(loaded.labels), (lambda p: p), list(range(len(loaded.labels)))
    log.info("Shortcut audit on %s (%d images)", split, len(dm.datasets[split]))
    result, arrays = run_audit(loaded.model, dm.datasets[split], scored, score, model_index, opts, device)
    result["split"] = split
    result["figures"] = {
        "audit": plots.save_figure(audit_figure(result), Path(out_dir) / "audit.png").name,
        "audit_views": plots.save_figure(views_figure(result, arrays), Path(out_dir) / "audit_views.png").name,
    }
    result["markdown"] = audit_markdown(result)
    return result


class _Upright:
    """Bars standing side by side, a column per class: `audit_figure` with up to `WIDE` classes."""

    legend = {"loc": "upper center"}

    def size(self, n: int) -> tuple[float, float]:
        return (11, 4.2)

    def bars(self, ax, at: np.ndarray, values, width: float, **kw) -> None:
        ax.bar(at, values, width, **kw)

    def line(self, ax, value: float, **kw) -> None:
        """A reference value across the bars."""
        ax.axhline(value, **kw)

    def note(self, ax, at: float, text: str) -> None:
        """A word at the foot of the bar at ``at``."""
        ax.text(at, 0.02, text, rotation=90, ha="center", va="bottom", fontsize=7)

    def axis(self, ax, at: np.ndarray, names: list[str], label: str) -> None:
        """Class names along one axis, the 0-1 value scale (with room for the legend) along the other."""
        ax.set_xticks(at, names, fontsize=8)
        ax.set_ylim(0, 1.22)
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)


class _Across(_Upright):
    """A row per class, bars lying: `audit_figure` with more than `WIDE` classes (NIH's 14 findings), so each
    class's name and verdict stay readable."""

    legend = {"loc": "lower left", "bbox_to_anchor": (0, 1.04)}

    def size(self, n: int) -> tuple[float, float]:
        return (12, 1.6 + 0.55 * n)

    def bars(self, ax, at: np.ndarray, values, width: float, yerr=None, **kw) -> None:
        ax.barh(at, values, width, **({"xerr": yerr} if yerr is not None else {}), **kw)

    def line(self, ax, value: float, **kw) -> None:
        ax.axvline(value, **kw)

    def note(self, ax, at: float, text: str) -> None:
        ax.text(0.02, at, text, rotation=0, ha="left", va="center", fontsize=7)

    def axis(self, ax, at: np.ndarray, names: list[str], label: str) -> None:
        ax.set_yticks(at, names, fontsize=8)
        ax.set_ylim(len(names) - 0.5, -0.5)  # the first class on top
        ax.set_xlim(0, 1.02)
        ax.set_xticks(np.linspace(0, 1, 6))
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)


def audit_figure(result: dict):
    """Per class: AUROC intact / lungs hidden / border only (95% CI), and Grad-CAM energy outside the centre.

    Up to `WIDE` classes the bars stand side by side (`_Upright`); with more, each class is a row (`_Across`).
    """
    import matplotlib.pyplot as plt

    layout = _Across() if len(result["classes"]) > WIDE else _Upright()
    fig, (ax, bx) = plt.subplots(
        1, 2, figsize=layout.size(len(result["classes"])), gridspec_kw={"width_ratios": [3, 2]}
    )
    _auroc_panel(ax, result, layout)
    _heat_panel(bx, result, layout)
    fig.tight_layout()
    return fig


def _auroc_panel(ax, result: dict, layout: _Upright) -> None:
    """AUROC intact / lungs hidden / border only per class, with their intervals, chance and the flag."""
    classes = result["classes"]
    x = np.arange(len(classes))
    for k, (key, colour) in enumerate(zip(VIEW_NAMES, ("#4c72b0", "#dd8452", "#c44e52"), strict=True)):
        vals = np.array([c[key]["value"] for c in classes])
        err = np.nan_to_num(
            np.abs(np.array([[c[key]["value"] - c[key]["lo"], c[key]["hi"] - c[key]["value"]] for c in classes]).T)
        )
        kw = {"yerr": err, "capsize": 3, "color": colour, "label": VIEW_NAMES[key]}
        layout.bars(ax, x + (k - 1) * 0.27, np.nan_to_num(vals), 0.27, **kw)
    flag = result["settings"]["flag_auroc"]
    layout.line(ax, 0.5, color="grey", lw=1, ls="--", label="chance")
    layout.line(ax, flag, color="black", lw=1, ls=":", label=f"flag at {flag}")
    layout.axis(ax, x, [f"{c['class']}\n{c['verdict']}" for c in classes], "AUROC (one-vs-rest, 95% CI)")
    ax.set_title(f"Does the model need the lungs? (n={result['n']})")
    ax.legend(fontsize=7, ncol=5, **layout.legend)


def _heat_panel(bx, result: dict, layout: _Upright) -> None:
    """Share of Grad-CAM energy outside the centre per class, trained vs randomised model, and a flat map's."""
    with_heat = [c for c in result["classes"] if c.get("heat")]
    xs = np.arange(len(with_heat))
    for k, (key, colour, name) in enumerate((("trained", "#c44e52", "trained"), ("random", "#999999", "randomised"))):
        shares = [c["heat"][key]["outside"] for c in with_heat]
        at = xs + (k - 0.5) * 0.4
        layout.bars(bx, at, [np.nan if v is None else v for v in shares], 0.4, color=colour, label=name)
        for x_, v in zip(at, shares, strict=True):
            if v is None:
                layout.note(bx, x_, "no map")
    if with_heat:
        layout.line(bx, with_heat[0]["heat"]["flat"]["outside"], color="black", lw=1, ls=":", label="flat map")
    layout.axis(bx, xs, [c["class"] for c in with_heat], "share of Grad-CAM energy outside the centre")
    bx.set_title(f"Where the heat is ({result['settings']['cam_n']} images per class)")
    bx.legend(fontsize=7, ncol=3, **layout.legend)


def views_figure(result: dict, arrays: dict):
    """An example image intact / lungs hidden / border only, then the mean Grad-CAM per class (trained, random),
    at most `PER_ROW` classes to a row."""
    import matplotlib.pyplot as plt

    maps = list(arrays["maps"].items())
    ncols = max(3, min(len(maps), PER_ROW))
    blocks = -(-len(maps) // ncols)
    nrows = 1 + 2 * blocks
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.7 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, view, name in zip(axes[0], arrays["views"], VIEW_NAMES.values(), strict=False):
        ax.imshow(view[0, 0].numpy(), cmap="gray")
        ax.set_title(name, fontsize=9)
    settings = result["settings"]
    for j, (label, pair) in enumerate(maps):
        for i, key in enumerate(("trained", "random")):
            ax = axes[1 + 2 * (j // ncols) + i, j % ncols]
            heat = pair[key]
            ax.imshow(heat, cmap="jet", vmin=0, vmax=max(float(heat.max()), 1e-6))
            y0, y1, x0, x1 = inner_box(*heat.shape, settings["center"])
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="white", lw=1.5, ls="--"))
            ax.set_title(f"{label}: {key} model", fontsize=8)
    fig.suptitle("What the audit hides (top) and the mean Grad-CAM per class (dashed: the central box)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))  # room for the title above the top row
    return fig


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _heat_text(heat: dict | None) -> str:
    if not heat:
        return "n/a"
    t, r, f = heat["trained"], heat["random"], heat["flat"]
    return (
        f"{_pct(t['outside'])} / {_pct(r['outside'])} / {_pct(f['outside'])} (border {_pct(t['border'])} / "
        f"{_pct(r['border'])} / {_pct(f['border'])})"
    )


def grid_note(grid: list | None) -> str:
    """What the Grad-CAM layer's resolution allows."""
    if not grid:
        return ""
    text = f"The Grad-CAM layer has a {grid[0]}x{grid[1]} grid"
    if min(grid) < 4:
        return text + ": too coarse to place heat at the border, so the heat check gives no verdict here."
    return text + "."


def probe_text(src: dict) -> str:
    """The source probe's paragraph: the sources, the probe's AUROC and balanced accuracy against chance, and, when it
    tells the sources apart, the audit's statement in bold."""
    if src.get("probe_auroc") is None:
        return f"Source probe: {src.get('note') or src['how']}."
    sources = ", ".join(f"{k} {v}" for k, v in src["sources"].items())
    auroc = {"value": src["probe_auroc"], "lo": src["probe_auroc_ci"][0], "hi": src["probe_auroc_ci"][1]}
    grouped = ", patients kept in one fold" if src.get("patients_grouped") else ""
    text = (
        f"Sources by {src['how']}: {sources}. A linear probe on the model's frozen features ({src['folds']}-fold "
        f"cross-validated{grouped}) predicts the source with AUROC {fmt_ci(auroc, 2)} (chance "
        f"{src['chance']['auroc']:.2f}) and balanced accuracy {src['balanced_accuracy']:.2f} (chance "
        f"{src['chance']['balanced_accuracy']:.2f})."
    )
    if src.get("statement"):
        text += f"\n\n**Source shortcut: {src['statement']}.**"
    return text


def audit_markdown(result: dict) -> str:
    """The report section: verdict table with the numbers, the source probe, the figures."""
    s = result["settings"]
    rows = [
        [
            c["class"],
            str(c["n"]),
            fmt_ci(c["intact"]),
            fmt_ci(c["hidden"]),
            fmt_ci(c["border"]),
            _heat_text(c["heat"]),
            "n/a" if c["source_auroc"] is None else f"{c['source_auroc']:.2f}",
            f"**{c['verdict']}**" + (": " + "; ".join(c["reasons"]) if c["reasons"] else ""),
        ]
        for c in result["classes"]
    ]
    header = [
        "class",
        "n",
        "AUROC intact",
        "lungs hidden",
        "border only",
        "Grad-CAM energy outside the centre: trained / randomised / flat map",
        "source predicts class (AUROC)",
        "verdict",
    ]
    probe = probe_text(result["source"])
    return (
        f"## Shortcut audit (after DeGrave et al. 2021)\n\n"
        f"{result['n']} of the {result['n_evaluated']} evaluated images ({result['split']} split), re-scored with "
        f"the central {s['center']:.0%} of each side replaced by the mean of the rest (lungs hidden) and with only "
        f"the outer {s['border']:.0%} band kept (border only). A class is flagged when its AUROC without the lungs "
        f"reaches {s['flag_auroc']} with a 95% bootstrap interval above {s['flag_lower']}, when the image source "
        f"predicts it and the model's features separate the sources (both AUROC >= {s['source_auroc']}), or when its "
        f"Grad-CAM energy outside the centre exceeds a weight-randomised model's (where its maps are not all zero; "
        f"else a flat map's) by {s['heat_margin']:.0%} or more. Bootstrap intervals {phrase(result.get('bootstrap'))}. "
        "These are indicators, not proof: the box is not a lung mask.\n\n"
        f"{table(header, rows)}\n\n{probe} {grid_note(result.get('cam_grid'))}\n\n"
        f"![Shortcut audit]({result['figures']['audit']})\n\n"
        f"![What the audit hides]({result['figures']['audit_views']})\n"
    )


def audit_json(result: dict) -> dict:
    """The result without its markdown (for metrics.json / audit.json)."""
    return {k: v for k, v in result.items() if k != "markdown"}


def add_audit(ev) -> None:
    """Report step of `lungnet.evaluation.pipeline`: the audit of the evaluated split (``audit`` in metrics.json, its
    figures and section); nothing when ``audit=false``."""
    opts = ev.opts.get("audit")
    if opts is None:
        return
    if getattr(ev.loaded, "ensemble", None) is not None:  # the audit re-scores one network on altered images
        log.info("No shortcut audit for an ensemble: evaluate each member (ckpt=<member>) for its audit")
        ev.sections.append("## Shortcut audit\n\nNot run for an ensemble: evaluate each member for its audit.")
        return
    found = audit_evaluation(ev.loaded, ev.dm, ev.split, opts, ev.run_dir, ev.device)
    ev.result["audit"] = audit_json(found)
    ev.files += list(found["figures"].values())
    ev.sections.append(found["markdown"])
