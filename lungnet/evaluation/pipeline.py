"""``evaluate(cfg, run_dir)``: a checkpoint alone (plus an optional data-root override) -> every evaluation artefact.

``python evaluate.py ckpt=<path> [split=test|val|train|all]`` writes into its run directory:

- ``metrics.json``: headline and per-class metrics, loss, bootstrap confidence intervals, calibration
  (ECE before/after temperature scaling) and the operating point; for a model trained on several data sets, each
  set's metrics and intervals under its name (`lungnet.evaluation.by_source`); ``per_class.csv``;
- ``predictions.csv``: one row per image, with ``op_<class>`` columns for the operating-point decisions;
- ``thresholds.json``: the fitted operating point (re-usable with ``operating_point.file=...``);
- ``confusion_matrix.png`` (single-label), ``roc.png``, ``pr.png``, ``reliability.png``;
- ``report.md`` and ``report.html``: a summary table, then every figure and table.

The operating point and the temperature are fitted on ``operating_point.fit_on`` (``auto``: the
validation split when another split is evaluated, else the evaluated split itself; the report says
which) and applied unchanged to the evaluated split.

``ckpt=[a.ckpt,b.ckpt,...]`` (or a multirun directory, or an ``ensemble.json``) evaluates an ensemble the same way,
plus the ensemble against each member (`lungnet.evaluation.ensemble`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from lungnet.artifacts.checkpoint import LoadedModel, load_model
from lungnet.artifacts.ensemble import model_files, open_ensemble
from lungnet.artifacts.paths import MANIFEST
from lungnet.data.datamodule import LungDataModule
from lungnet.errors import ConfigError
from lungnet.evaluation import decision_target, external
from lungnet.evaluation import ensemble as ensembles
from lungnet.evaluation.audit_report import add_audit, audit_options
from lungnet.evaluation.bootstrap_unit import groups_for, log_unit, phrase, record
from lungnet.evaluation.by_source import add_per_source, per_source_metrics, source_column
from lungnet.evaluation.eval_data import build_eval_data
from lungnet.evaluation.fitting import calibration, fit_split, operating_point
from lungnet.evaluation.model_card import write_model_card
from lungnet.evaluation.report import write_report
from lungnet.evaluation.subgroups import add_subgroups, subgroup_options
from lungnet.hardware import resolve_device
from lungnet.io import write_csv, write_json
from lungnet.schema import EvaluateConfig
from lungnet.scoring import plots, stats
from lungnet.scoring.gate_inputs import GateScatters
from lungnet.scoring.metrics import compute_metrics, macro
from lungnet.scoring.outputs import Outputs, model_outputs, predictions_table

log = logging.getLogger(__name__)

OPTION_KEYS = ("operating_point", "bootstrap", "calibration", "report")


def options(cfg: DictConfig) -> dict:
    """The evaluation options of ``cfg`` (operating_point, bootstrap, calibration, report) over the schema's
    defaults (`lungnet.schema.EvaluateConfig`), ``decision_positive_class`` (``decision.positive_class``), and the
    ``audit`` and ``subgroups`` settings (None when switched off; out of range: `ConfigError`)."""
    merged = OmegaConf.merge(OmegaConf.structured(EvaluateConfig), {k: cfg[k] for k in OPTION_KEYS if k in cfg})
    out = {k: OmegaConf.to_container(merged[k], resolve=True, enum_to_str=True) for k in OPTION_KEYS}
    out["decision_positive_class"] = OmegaConf.select(cfg, "decision.positive_class", default=None)
    out["audit"], out["subgroups"] = audit_options(cfg), subgroup_options(cfg)  # None: switched off
    return out


def per_class_extras(metrics: dict, probs: np.ndarray, targets: np.ndarray, labels: list[str], multilabel: bool):
    """Adds precision / recall / sensitivity / specificity at 0.5 per finding for multi-label (in place)."""
    if not multilabel:
        return
    per = stats.threshold_metrics(probs, targets, True)
    for j, lab in enumerate(labels):
        metrics["per_class"][lab].update(
            precision=float(per["precision"][j]),
            recall=float(per["recall"][j]),
            sensitivity=float(per["recall"][j]),
            specificity=float(per["specificity"][j]),
        )
    metrics["precision_macro"] = macro(per["precision"], per["support"] > 0)
    metrics["recall_macro"] = macro(per["recall"], per["support"] > 0)


def _plain(obj):
    """numpy arrays and scalars -> lists and floats (for JSON)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


@dataclass
class Evaluation:
    """Everything one evaluation computed, before anything is written (compute -> `Evaluation` -> writer).

    Report steps (`REPORT_STEPS`) take it, add their numbers to ``result`` (metrics.json), their columns to
    ``table`` (predictions.csv), their figures and files, and their markdown to ``sections``; `write_evaluation`
    then writes everything.

    Attributes:
        cfg: the composed config; ``opts``: its evaluation options (`options`).
        run_dir: the output directory.
        loaded: the checkpoint; ``dm``: the data.
        data: outputs on the evaluated split; ``fit``: on the split the operating point and temperature are fitted
            on (the same object when that is the evaluated split).
        result: the metrics.json content.
        table: the predictions.csv table.
        figures: ``{key: file name}`` of figures in the report (key order = report order).
        sections: markdown report sections (each starting with ``## ``), after the evaluation's own.
        lead: markdown sections before the summary (what was evaluated against what: external data, overlap).
        files: other files written into ``run_dir`` (listed in the report).
        beside_model: writes of files that live beside the checkpoint (its decision file, or ``decision.out``), which
            other tools trust: done only once the evaluation's own files are written, so a failed evaluation leaves
            them as they were.
        gate_fit: the statistics of the training images the OOD gate is fitted from, once computed
            (`lungnet.evaluation.decisions.gate_sample`).
        scored: outputs computed before, by split, that `outputs` returns instead of scoring again (the ranks'
            gathered shards after a multi-process training, `lungnet.evaluation.sharded`).
    """

    cfg: DictConfig
    opts: dict
    run_dir: Path
    loaded: LoadedModel
    dm: LungDataModule
    data: Outputs
    fit: Outputs
    result: dict = field(default_factory=dict)
    table: pd.DataFrame | None = None
    figures: dict[str, str] = field(default_factory=dict)
    sections: list[str] = field(default_factory=list)
    lead: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    beside_model: list[Callable[[], object]] = field(default_factory=list)
    gate_fit: GateScatters | None = None
    scored: dict[str, Outputs] = field(default_factory=dict)

    @property
    def split(self) -> str:
        """The evaluated split."""
        return self.data.name

    @property
    def external(self) -> external.ExternalEvaluation | None:
        """What an external evaluation (``data=<another data set>``) scores; None for the checkpoint's own data."""
        return getattr(self.dm, "external", None)

    @property
    def labels(self) -> list[str]:
        """The scored classes: the checkpoint's labels, or the findings shared with an external data set."""
        return self.external.mapping.scored if self.external else list(self.loaded.labels)

    @property
    def device(self) -> str:
        """Where the model runs (``device=auto``: cuda when available)."""
        return resolve_device(str(self.cfg.device))

    def outputs(self, split: str, features: bool = False) -> Outputs:
        """The model's outputs on another split of the same data (val, to fit on, when another is evaluated); those
        in ``scored`` (with features when asked for; val and test after training) are not computed again."""
        out = self.scored.get(split)
        if out is None or (features and out.features is None):
            desc = f"Predicting {split}"
            out = model_outputs(
                self.loaded.model, self.dm.loader(split), self.loaded.multilabel, self.device, desc, features, split
            )
        return external.scored_outputs(out, self.external)


def compute(cfg: DictConfig, run_dir: str | Path) -> Evaluation:
    """Loads the checkpoint and data, checks that the decision file it will write can be written
    (`lungnet.evaluation.decision_target.check_target`), runs the model on the evaluated and fit splits, and scores
    it."""
    opts = options(cfg)
    split = str(cfg.split)
    files, manifest = model_files(cfg.ckpt)
    if manifest is not None or len(files) > 1:
        return compute_ensemble(cfg, Path(run_dir), opts)
    loaded = load_model(files[0])
    stats.operating_classes(loaded.labels, opts["operating_point"]["positive_class"])  # a wrong name fails first
    stats.operating_classes(loaded.labels, opts["decision_positive_class"])
    overrides = OmegaConf.to_container(cfg.data, resolve=True)
    dm = build_eval_data(loaded, overrides, split, Path(run_dir), cfg.paths.get("cache_dir"))
    ev = Evaluation(cfg, opts, Path(run_dir), loaded, dm, data=None, fit=None)  # type: ignore[arg-type]
    if ev.external:  # the operating point's class as the finding it is scored as
        op = opts["operating_point"]
        op["positive_class"] = ev.external.positive_class(op["positive_class"])
        opts["decision_positive_class"] = ev.external.positive_class(opts["decision_positive_class"])
    fit_name = fit_split(opts, split, dm)
    if not ev.external:  # data set B writes no decision file: the check is for the one this run will write
        decision_target.check_target(cfg, loaded.path, loaded.labels, split, fit_name)
    ev.data = ev.outputs(split, features=True)
    ev.fit = ev.data if fit_name == split else ev.outputs(fit_name, features=True)
    log.info("Operating point and temperature fitted on the %s split (%d images)", fit_name, len(ev.fit.targets))
    ev.result = score(ev)
    return ev


def compute_ensemble(cfg: DictConfig, run_dir: Path, opts: dict) -> Evaluation:
    """`compute` for an ensemble: every member on its own data module, outputs matched image by image and averaged
    (`lungnet.evaluation.ensemble`); nothing is written before the members and their images are checked."""
    split = str(cfg.split)
    ens = open_ensemble(cfg.ckpt)
    ensembles.check_split(ens, split, str(opts["operating_point"]["fit_on"]))
    if split != "all":  # every image of one folder is the same images for every member
        ensembles.check_same_images(ens, split, str(opts["operating_point"]["fit_on"]))
    stats.operating_classes(ens.labels, opts["operating_point"]["positive_class"])
    stats.operating_classes(ens.labels, opts["decision_positive_class"])
    overrides = OmegaConf.to_container(cfg.data, resolve=True)
    if any(external.is_external(m.loaded, overrides) for m in ens.members):
        raise ConfigError("data=<another data set> evaluates one checkpoint, not an ensemble: evaluate each member")
    dms = [build_eval_data(m.loaded, overrides, split, None) for m in ens.members]
    fit_name = ensembles.fit_split(ens, fit_split(opts, split, dms[0]), split)
    manifest = Path(ens.manifest) if ens.manifest is not None else run_dir / MANIFEST  # the decision file's stem
    decision_target.check_target(cfg, manifest, ens.labels, split, fit_name)
    model = ensembles.EnsembleModel(ens)
    device = resolve_device(str(cfg.device))
    data = ensembles.ensemble_outputs(model, dms, split, device)
    fit = data if fit_name == split else ensembles.ensemble_outputs(model, dms, fit_name, device)
    ensembles.write_run_files(model, dms[0], run_dir)
    ev = Evaluation(cfg, opts, run_dir, model, dms[0], data, fit)  # type: ignore[arg-type]
    log.info("Operating point and temperature fitted on the %s split (%d images)", fit_name, len(fit.targets))
    ev.result = score(ev)
    ev.result["input_size"] = model.spec.input_size
    return ev


def score(ev: Evaluation) -> dict:
    """Metrics with bootstrap CIs, calibration and the operating point of ``ev.data`` (the metrics.json core)."""
    labels, multilabel, opts = ev.labels, ev.loaded.multilabel, ev.opts
    probs, targets = ev.data.probs, ev.data.targets
    metrics = compute_metrics(probs, targets, labels, multilabel)
    per_class_extras(metrics, probs, targets, labels, multilabel)
    boot = opts["bootstrap"]
    groups = groups_for(ev)  # whole patients where the scored split names them
    unit = record(groups, len(targets), int(boot["resamples"]))
    log_unit(unit)
    cal = calibration(opts, multilabel, (ev.fit.name, ev.fit.probs, ev.fit.targets), probs, targets)
    temperature = cal["temperature"] or 1.0  # the operating point is fitted on the probabilities decisions use
    fit_cal = stats.scale_probs(ev.fit.probs, temperature, multilabel)
    result = {
        "checkpoint": str(ev.loaded.path.resolve()),
        "split": ev.split,
        "data_root": ev.dm.source.root,
        "data_name": ev.external.evaluated_on if ev.external else ev.loaded.data.get("name") or ev.dm.source.name,
        "external": ev.external.summary() if ev.external else None,
        "training_overlap": ev.dm.report.get("training_overlap"),
        "model": ev.loaded.spec.name,
        "input_size": ev.dm.image_size,
        "labels": labels,
        "multilabel": multilabel,
        "class_counts": {} if multilabel else {lab: m["support"] for lab, m in metrics["per_class"].items()},
        **metrics,
        "loss": stats.log_loss(probs, targets, multilabel),
        "bootstrap": {**boot, "method": f"percentile bootstrap {phrase(unit)}", **unit},
        "confidence_intervals": stats.bootstrap_ci(
            probs, targets, labels, multilabel, int(boot["resamples"]), int(boot["seed"]), float(boot["level"]), groups
        ),
        "calibration": cal,
        "operating_point": operating_point(
            opts,
            labels,
            multilabel,
            (ev.fit.name, fit_cal, ev.fit.targets),
            stats.scale_probs(probs, temperature, multilabel),
            targets,
        ),
    }
    sources = source_column(ev.dm.table, ev.data.paths)  # data=multi: each set's metrics beside the pooled ones
    if sources is not None:
        result.update(per_source_metrics(probs, targets, labels, sources, boot, groups))
    result = _plain(result)
    headline = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
    log.info("%s on %s (%d images): %s", ev.loaded.spec.name, ev.split, metrics["n"], headline)
    return result


def predictions(ev: Evaluation) -> pd.DataFrame:
    """The predictions.csv table: one row per image, ``p_<class>`` calibrated when a temperature was fitted, and
    ``op_<class>`` operating-point columns."""
    labels, multilabel = ev.labels, ev.loaded.multilabel
    probs = stats.scale_probs(ev.data.probs, ev.result["calibration"]["temperature"] or 1.0, multilabel)
    table = predictions_table(ev.data.paths, probs, ev.data.targets, labels, multilabel)
    sources = source_column(ev.dm.table, ev.data.paths)
    if sources is not None:
        table.insert(1, "source", sources)
    for lab, thr in ev.result["operating_point"]["thresholds"].items():
        table[f"op_{lab}"] = probs[:, labels.index(lab)] >= thr
    return table


def add_explanations(ev: Evaluation) -> None:
    """Report step: heatmaps of ``explain.n`` images (correct and wrong) in ``explanations/``."""
    explain_cfg = ev.cfg.get("explain")
    if explain_cfg is None or int(explain_cfg.get("n") or 0) <= 0:
        return
    if isinstance(ev.loaded, ensembles.EnsembleModel):
        log.info("No heatmaps for an ensemble (they are per model): evaluate a member for its explanations")
        return
    from lungnet.explain.run import explain_checkpoint

    summary = explain_checkpoint(
        ev.loaded,
        ev.external.model_label_table(ev.dm.table) if ev.external else ev.dm.datasets[ev.split],
        method=str(explain_cfg.method),
        n=int(explain_cfg.n),
        class_index=explain_cfg.get("class_index"),
        cam_layer=explain_cfg.get("cam_layer"),
        out_dir=ev.run_dir / "explanations",
        report_dir=ev.run_dir,
        alpha=float(ev.cfg.alpha),
        seed=int(ev.opts["bootstrap"]["seed"]),
        **(OmegaConf.to_container(explain_cfg.options, resolve=True) if explain_cfg.get("options") else {}),
    )
    ev.sections.append(summary["markdown"])


def _add_decisions(ev: Evaluation) -> None:
    from lungnet.evaluation.decisions import add_decisions

    if ev.external:  # the decision file speaks the model's own labels: only its OOD gate applies to data set B
        external.add_ood_flags(ev)
        return
    add_decisions(ev)


# Report steps, in report order: each takes the `Evaluation` and adds numbers, columns, figures and sections.
REPORT_STEPS: list[Callable[[Evaluation], None]] = [
    _add_decisions,
    external.add_lead_sections,  # before the summary: external evaluation (trained on A, evaluated on B), overlap
    ensembles.add_member_comparison,  # an ensemble against each member (paired bootstrap)
    add_per_source,  # data=multi: each data set's metrics with their intervals, beside the pooled ones
    add_explanations,
    add_audit,  # shortcut audit after DeGrave et al. 2021 (audit=false: skip)
    add_subgroups,  # per patient group metrics where the data carry metadata (subgroups=false: skip)
]


def write_evaluation(ev: Evaluation) -> None:
    """Writes figures, metrics.json, thresholds.json, predictions.csv, per_class.csv, report.md/.html and
    model_card.md into ``ev.run_dir``."""
    run_dir, result, labels = ev.run_dir, ev.result, ev.labels
    if ev.opts["report"]["figures"]:
        probs, targets = ev.data.probs, ev.data.targets
        own = plots.write_evaluation_figures(run_dir, result, probs, targets, labels, ev.loaded.multilabel)
        result["figures"] = {**own, **ev.figures}
    write_json(run_dir / "metrics.json", result)
    write_json(
        run_dir / "thresholds.json",
        {k: result["operating_point"][k] for k in ("target_sensitivity", "positive_class", "fit_split", "thresholds")},
    )
    write_csv(run_dir / "predictions.csv", ev.table)
    per_rows = [{"class": lab, **m} for lab, m in result["per_class"].items()]
    write_csv(run_dir / "per_class.csv", pd.DataFrame(per_rows))
    html_report = bool(ev.opts["report"]["html"])
    write_report(run_dir, result, ev.sections, html_report=html_report, files=ev.files, lead_sections=ev.lead)
    write_model_card(ev)
    log.info("Wrote metrics.json, predictions.csv, figures, report.md and model_card.md to %s", run_dir)


def evaluate(cfg: DictConfig, run_dir: str | Path, extra_sections: list[str] | None = None) -> dict:
    """Evaluates ``cfg.ckpt`` on ``cfg.split`` and writes every artefact into ``run_dir`` (see module doc).

    Args:
        cfg: the composed ``evaluate`` config.
        run_dir: output directory.
        extra_sections: markdown sections for the report (e.g. explanations), after the evaluation's own.

    Returns:
        The content of metrics.json.
    """
    return evaluate_with_predictions(cfg, run_dir, extra_sections)[0]


def evaluate_with_predictions(
    cfg: DictConfig, run_dir: str | Path, extra_sections: list[str] | None = None
) -> tuple[dict, np.ndarray, np.ndarray, list[str]]:
    """`evaluate`, also returning the (uncalibrated) probabilities, targets and image paths of the evaluated split."""
    ev = compute(cfg, run_dir)
    ev.sections += list(extra_sections or [])
    run_report_steps(ev)
    write_evaluation(ev)
    write_beside_model(ev)
    return ev.result, ev.data.probs, ev.data.targets, ev.data.paths


def run_report_steps(ev: Evaluation) -> None:
    """The predictions table, then every report step (`REPORT_STEPS`) on a scored evaluation."""
    ev.table = predictions(ev)
    for step in REPORT_STEPS:
        step(ev)


def write_beside_model(ev: Evaluation) -> None:
    """Writes the files that live beside the checkpoint (its decision file), once the evaluation's own are written."""
    for write in ev.beside_model:
        write()
