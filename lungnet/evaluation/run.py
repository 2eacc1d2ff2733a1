"""``evaluate(cfg, run_dir)``: a checkpoint alone (plus an optional data-root override) -> every evaluation artefact.

``python evaluate.py ckpt=<path> [split=test|val|train|all]`` writes into its run directory:

- ``metrics.json``: headline and per-class metrics, loss, bootstrap confidence intervals, calibration
  (ECE before/after temperature scaling) and the operating point; ``per_class.csv``;
- ``predictions.csv``: one row per image, with ``op_<class>`` columns for the operating-point decisions;
- ``thresholds.json``: the fitted operating point (re-usable with ``operating_point.file=...``);
- ``confusion_matrix.png`` (single-label), ``roc.png``, ``pr.png``, ``reliability.png``;
- ``report.md`` and ``report.html``: a summary table, then every figure and table.

The operating point and the temperature are fitted on ``operating_point.fit_on`` (``auto``: the
validation split when another split is evaluated, else the evaluated split itself; the report says
which) and applied unchanged to the evaluated split.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from lungnet.checkpoint import LoadedModel, load_model
from lungnet.data.datamodule import LungDataModule
from lungnet.data.sources import DataError, LabelledFolderSource
from lungnet.data.splits import ExpectedSplits
from lungnet.evaluation import external, plots, stats
from lungnet.evaluation.predict import predict_loader, predictions_table
from lungnet.evaluation.report import write_report
from lungnet.evaluation.validity import validity_sections
from lungnet.io import write_csv, write_json
from lungnet.metrics import compute_metrics
from lungnet.training import resolve_root

log = logging.getLogger(__name__)

DEFAULTS = {
    "operating_point": {"target_sensitivity": 0.95, "positive_class": None, "fit_on": "auto", "file": None},
    "bootstrap": {"resamples": 1000, "seed": 0, "level": 0.95},
    "calibration": {"bins": 15, "temperature_scaling": True},
    "report": {"html": True, "figures": True},
}


def data_config(loaded: LoadedModel, overrides: dict) -> dict:
    """The checkpoint's data config with the non-null overrides applied."""
    cfg = dict(loaded.data)
    cfg.update({k: v for k, v in external.data_overrides(overrides).items() if v is not None})
    return resolve_root(cfg)


def check_compatible(loaded: LoadedModel, dm: LungDataModule) -> None:
    """Refuses data whose labels differ from the checkpoint's (another dataset, or a changed list)."""
    if list(dm.labels) != list(loaded.labels) or dm.multilabel != loaded.multilabel:
        raise DataError(
            f"Checkpoint {loaded.path} was trained on labels {loaded.labels} but the data "
            f"'{dm.source.name}' at {dm.source.root} has labels {dm.labels}: use a matching dataset"
        )


def build_eval_data(loaded: LoadedModel, overrides: dict, split: str, run_dir: Path) -> LungDataModule:
    """The DataModule for evaluating ``loaded`` on ``split`` (``all``: every image, no split).

    ``data=<another data set>`` (``overrides`` with another source or name) is an external evaluation
    (`lungnet.evaluation.external`); ``split=all`` and external evaluations refuse images the checkpoint was
    trained or validated on (``dm.report["training_overlap"]``).
    """
    if external.is_external(loaded, overrides):
        dm = external.build_external_data(loaded, overrides, split, run_dir)
        dm.report["training_overlap"] = external.check_training_overlap(
            loaded, dm, split, external.external_config(loaded, overrides)
        )
        return dm
    cfg = data_config(loaded, overrides)
    # the splits are recomputed from the data config and seed: they must still hold the training-time images
    allow = bool(cfg.get("allow_leakage"))
    expected = None if split == "all" else ExpectedSplits.of(loaded.hparams, loaded.path, "evaluate", allow)
    dm = LungDataModule(cfg, loaded.spec, seed=loaded.seed, run_dir=run_dir, expected_splits=expected)
    if split == "all":
        if loaded.multilabel:
            raise DataError("split=all reads <root>/<class>/ folders, which cannot hold multi-label targets")
        dm.source = LabelledFolderSource(cfg["root"], loaded.labels)
        table = dm.load_table(all_images=True)
        dm.table = table
        dm.datasets["all"] = dm.make_dataset(table, train=False)
    else:
        check_compatible(loaded, dm)
        dm.setup("test")
    dm.report["training_overlap"] = external.check_training_overlap(loaded, dm, split, cfg)
    return dm


def options(cfg: DictConfig) -> dict:
    """The evaluation options of ``cfg`` (operating_point, bootstrap, calibration, report) over `DEFAULTS`."""
    out = {}
    for key, default in DEFAULTS.items():
        given = cfg.get(key)
        out[key] = {**default, **(OmegaConf.to_container(given, resolve=True) if given is not None else {})}
    return out


def fit_split(opts: dict, split: str, dm: LungDataModule) -> str:
    """Where the operating point and temperature are fitted (``auto``: val when evaluating another split)."""
    fit_on = str(opts["operating_point"]["fit_on"])
    if fit_on != "auto":
        return fit_on
    return "val" if split != "val" and "val" in dm.datasets else split


def read_thresholds(path: str | Path, labels: list[str]) -> dict[str, float]:
    """Thresholds from a ``thresholds.json`` written by an earlier evaluation (or ``{label: threshold}``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"operating_point.file: no thresholds file at {path}")
    data = json.loads(path.read_text())
    thresholds = data.get("thresholds", data)
    unknown = set(thresholds) - set(labels)
    if unknown:
        raise DataError(f"{path} names classes {sorted(unknown)} that the checkpoint does not have ({labels})")
    return {k: float(v) for k, v in thresholds.items()}


def operating_point(
    opts: dict, labels: list[str], multilabel: bool, fit: tuple[str, np.ndarray, np.ndarray], probs, targets
) -> dict:
    """Fits (or reads) the thresholds and reports sensitivity/specificity where fitted and on the evaluated data."""
    op_cfg = opts["operating_point"]
    name, fit_probs, fit_targets = fit
    target = float(op_cfg["target_sensitivity"])
    if op_cfg.get("file"):
        thresholds = read_thresholds(op_cfg["file"], labels)
        source = "file"
    else:
        positive = op_cfg.get("positive_class")
        thresholds = stats.fit_operating_point(fit_probs, fit_targets, labels, multilabel, target, positive)
        source = "fitted"
    return {
        "target_sensitivity": target,
        "positive_class": op_cfg.get("positive_class"),
        "source": source,
        "file": str(op_cfg.get("file")) if op_cfg.get("file") else None,
        "fit_split": name if source == "fitted" else "file",
        "thresholds": thresholds,
        "fitted": stats.apply_operating_point(fit_probs, fit_targets, labels, multilabel, thresholds),
        "applied": stats.apply_operating_point(probs, targets, labels, multilabel, thresholds),
    }


def calibration(opts: dict, multilabel: bool, fit: tuple[str, np.ndarray, np.ndarray], probs, targets) -> dict:
    """ECE and reliability bins, before and (optionally) after temperature scaling fitted on ``fit``."""
    bins = int(opts["calibration"]["bins"])
    out = {
        "bins": bins,
        "ece": stats.expected_calibration_error(probs, targets, multilabel, bins),
        "reliability": stats.reliability_bins(*stats.calibration_pairs(probs, targets, multilabel), bins),
        "temperature": None,
    }
    if opts["calibration"]["temperature_scaling"] and len(fit[1]):
        temperature = stats.fit_temperature(fit[1], fit[2], multilabel)
        scaled = stats.scale_probs(probs, temperature, multilabel)
        out.update(
            temperature=temperature,
            fit_split=fit[0],
            ece_after=stats.expected_calibration_error(scaled, targets, multilabel, bins),
            loss_after=stats.log_loss(scaled, targets, multilabel),
            reliability_after=stats.reliability_bins(*stats.calibration_pairs(scaled, targets, multilabel), bins),
        )
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
    metrics["precision_macro"] = float(per["precision"].mean())
    metrics["recall_macro"] = float(per["recall"].mean())


def write_figures(run_dir: Path, result: dict, probs, targets, labels: list[str], multilabel: bool) -> dict:
    """All evaluation figures; returns ``{key: file name}``."""
    figures = {}
    title = f"{result['model']} on {result.get('data_name')} ({result['split']}, n={result['n']})"
    if not multilabel:
        fig = plots.confusion_figure(result["confusion_matrix"], labels, title)
        figures["confusion_matrix"] = plots.save_figure(fig, run_dir / "confusion_matrix.png").name
    what = "per finding" if multilabel else "one-vs-rest"
    op = result["operating_point"].get("applied")
    fig = plots.roc_figure(probs, targets, labels, multilabel, f"ROC {what}: {title}", op)
    figures["roc"] = plots.save_figure(fig, run_dir / "roc.png").name
    fig = plots.pr_figure(probs, targets, labels, multilabel, f"Precision-recall {what}: {title}")
    figures["pr"] = plots.save_figure(fig, run_dir / "pr.png").name
    cal = result["calibration"]
    fig = plots.reliability_figure(
        cal["reliability"],
        cal["ece"],
        cal.get("reliability_after"),
        cal.get("ece_after"),
        cal["temperature"],
        multilabel,
    )
    figures["reliability"] = plots.save_figure(fig, run_dir / "reliability.png").name
    return figures


def _plain(obj):
    """numpy arrays and scalars -> lists and floats (for JSON)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


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
    """`evaluate`, also returning the probabilities, targets and image paths of the evaluated split."""
    run_dir = Path(run_dir)
    opts = options(cfg)
    split = str(cfg.split)
    loaded = load_model(cfg.ckpt)
    labels, multilabel = loaded.labels, loaded.multilabel
    stats.operating_classes(labels, opts["operating_point"]["positive_class"])  # a wrong class name fails first
    overrides = OmegaConf.to_container(cfg.data, resolve=True)
    dm = build_eval_data(loaded, overrides, split, run_dir)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    probs, targets, paths = predict_loader(
        loaded.model, dm.loader(split), multilabel, device, desc=f"Evaluating {split}"
    )
    ext = getattr(dm, "external", None)  # external evaluation: scored on the findings shared with the data
    if ext is not None:
        labels, probs = ext.mapping.scored, ext.mapping.scores(probs)
        opts["operating_point"]["positive_class"] = ext.positive_class(opts["operating_point"]["positive_class"])
    fit_name = fit_split(opts, split, dm)
    if fit_name == split:
        fit = (split, probs, targets)
    else:
        fit_probs, fit_targets, _ = predict_loader(loaded.model, dm.loader(fit_name), multilabel, device, "Fitting")
        fit = (fit_name, fit_probs, fit_targets)
    log.info("Operating point and temperature fitted on the %s split (%d images)", fit_name, len(fit[1]))

    metrics = compute_metrics(probs, targets, labels, multilabel)
    per_class_extras(metrics, probs, targets, labels, multilabel)
    boot = opts["bootstrap"]
    result = {
        "checkpoint": str(Path(cfg.ckpt).resolve()),
        "split": split,
        "data_root": dm.source.root,
        "data_name": ext.evaluated_on if ext else loaded.data.get("name") or dm.source.name,
        "external": ext.summary() if ext else None,
        "training_overlap": dm.report.get("training_overlap"),
        "model": loaded.spec.name,
        "input_size": dm.image_size,
        "labels": labels,
        "multilabel": multilabel,
        "class_counts": {} if multilabel else {lab: m["support"] for lab, m in metrics["per_class"].items()},
        **metrics,
        "loss": stats.log_loss(probs, targets, multilabel),
        "bootstrap": {**boot, "method": "percentile bootstrap over images"},
        "confidence_intervals": stats.bootstrap_ci(
            probs, targets, labels, multilabel, int(boot["resamples"]), int(boot["seed"]), float(boot["level"])
        ),
        "calibration": calibration(opts, multilabel, fit, probs, targets),
        "operating_point": operating_point(opts, labels, multilabel, fit, probs, targets),
    }
    result = _plain(result)
    if opts["report"]["figures"]:
        result["figures"] = write_figures(run_dir, result, probs, targets, labels, multilabel)
    # shortcut audit and subgroup metrics (lungnet.evaluation.validity): result["audit"], result["subgroups"]
    validity = validity_sections(cfg, opts, loaded, dm, split, result, (probs, targets, paths), run_dir, device)
    result = _plain(result)
    write_json(run_dir / "metrics.json", result)
    write_json(
        run_dir / "thresholds.json",
        {k: result["operating_point"][k] for k in ("target_sensitivity", "positive_class", "fit_split", "thresholds")},
    )
    table = predictions_table(paths, probs, targets, labels, multilabel, None if ext else loaded.thresholds)
    for lab, thr in result["operating_point"]["thresholds"].items():
        table[f"op_{lab}"] = probs[:, labels.index(lab)] >= thr
    write_csv(run_dir / "predictions.csv", table)
    per_rows = [{"class": lab, **m} for lab, m in result["per_class"].items()]
    write_csv(run_dir / "per_class.csv", pd.DataFrame(per_rows))
    explain_cfg = cfg.get("explain")
    if explain_cfg is not None and int(explain_cfg.get("n") or 0) > 0:
        from lungnet.explain.run import explain_checkpoint

        summary = explain_checkpoint(
            loaded,
            ext.model_label_table(dm.table) if ext else dm.datasets[split],
            method=str(explain_cfg.method),
            n=int(explain_cfg.n),
            class_index=explain_cfg.get("class_index"),
            cam_layer=explain_cfg.get("cam_layer"),
            out_dir=run_dir / "explanations",
            report_dir=run_dir,
            seed=int(boot["seed"]),
            **(OmegaConf.to_container(explain_cfg.options, resolve=True) if explain_cfg.get("options") else {}),
        )
        extra_sections = [*(extra_sections or []), summary["markdown"]]
    extra_sections = [*(extra_sections or []), *validity]
    write_report(run_dir, result, extra_sections, html_report=bool(opts["report"]["html"]))
    headline = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
    log.info("%s on %s (%d images): %s", loaded.spec.name, split, metrics["n"], headline)
    log.info("Wrote metrics.json, predictions.csv, figures and report.md to %s", run_dir)
    return result, probs, targets, paths
