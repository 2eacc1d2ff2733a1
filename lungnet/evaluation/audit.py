"""Shortcut audit after DeGrave et al. (Nature Machine Intelligence 2021): does the model need the lungs?

Three checks on the evaluated images, per class (one-vs-rest), each with its numbers:

- **Lungs hidden**: the images are re-scored with the central box (``center`` of each side, where the lungs are)
  replaced by the image's mean, and with only the border band (``border`` of each side) kept. An AUROC well
  above chance without the lungs means the model reads something outside them (markers, text, collimation,
  borders, the image source).
- **Source probe** (`lungnet.evaluation.source_probe`): where the images come from several sources (the data set of each
  image for a model trained on several, ``data=multi``; a folder per hospital; or the native image size, a proxy for the
  acquisition: DarkCovidNet's COVID-19 images vs its 256 px NIH images, the NIH sample's 64 vs 256 px files), a linear
  probe on the model's frozen features predicts the source (cross-validated AUROC), and the source alone predicts each
  class (AUROC of the class's share per source).
- **Where the heat is**: the share of Grad-CAM energy outside the central box and on the border band, against
  the same share for a weight-randomised copy of the model (Adebayo et al. 2018) on the same images.

A class is "shortcut likely" when its AUROC with the lungs hidden or with the border only reaches ``flag_auroc``
with a bootstrap interval above ``flag_lower``, when its source predicts it (``source_auroc``) and the probe
tells the sources apart (``source_auroc``), or when its heat outside the centre exceeds the randomised model's by
``heat_margin``; else "no shortcut signal found". Whatever the classes, when the probe tells the sources apart (AUROC
reaching ``source_auroc``, its interval above chance) the audit says so (``source.statement``). The checks are
indicators, not proof: a box is not a lung mask.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Subset

from lungnet.data import images
from lungnet.data.labels import normalise
from lungnet.data.preprocessing import logits_to_probs
from lungnet.evaluation.bootstrap_unit import patient_groups, record
from lungnet.evaluation.source_probe import probe_statement, source_probe, tells_sources_apart
from lungnet.explain.base import resolve_layer
from lungnet.explain.cams import make_explainer
from lungnet.explain.scoring import randomized_copy
from lungnet.scoring import stats
from lungnet.scoring.resample import Resampler

log = logging.getLogger(__name__)

DATA_SET = "the data set each image comes from"


def inner_box(height: int, width: int, fraction: float) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the centred box covering ``fraction`` of each side."""
    my, mx = round(height * (1 - fraction) / 2), round(width * (1 - fraction) / 2)
    return my, height - my, mx, width - mx


def fill_box(x: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """A copy of the batch with ``box`` set to each image's (and channel's) mean outside the box.

    The mean of what stays visible, so nothing of the hidden content (not even its brightness) reaches the model.
    """
    y0, y1, x0, x1 = box
    inside = torch.zeros(x.shape[-2:], dtype=torch.bool, device=x.device)
    inside[y0:y1, x0:x1] = True
    mean = x[..., ~inside].mean(dim=-1)[..., None, None] if (~inside).any() else x.mean(dim=(-2, -1), keepdim=True)
    return torch.where(inside, mean.expand_as(x), x)


def regions(height: int, width: int, center: float, border: float) -> tuple[np.ndarray, np.ndarray]:
    """Boolean maps: outside the central box, and the border band."""
    outside = np.ones((height, width), dtype=bool)
    y0, y1, x0, x1 = inner_box(height, width, center)
    outside[y0:y1, x0:x1] = False
    band = np.ones((height, width), dtype=bool)
    y0, y1, x0, x1 = inner_box(height, width, 1 - 2 * border)
    band[y0:y1, x0:x1] = False
    return outside, band


def subsample(targets: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` indices, in order, drawn with the class proportions kept (seeded)."""
    if len(targets) <= n:
        return np.arange(len(targets))
    rng = np.random.default_rng(seed)
    picked = [
        rng.permutation(np.flatnonzero(targets == c))[: max(1, round(n * np.mean(targets == c)))]
        for c in np.unique(targets)
    ]
    return np.sort(np.concatenate(picked))


@torch.no_grad()
def rescore(model, loader: DataLoader, score: Callable, opts: dict, multilabel: bool, device: str) -> dict:
    """Probabilities of the intact, lungs-hidden and border-only images, the frozen features and targets."""
    model = model.to(device).eval()
    center, border = float(opts["center"]), float(opts["border"])
    out: dict[str, list] = {"intact": [], "hidden": [], "border": [], "features": [], "targets": []}
    for batch in loader:
        x = batch["image"].to(device)
        h, w = x.shape[-2:]
        features = model.backbone(x)
        views = {
            "intact": model.head(features),
            "hidden": model(fill_box(x, inner_box(h, w, center))),
            "border": model(fill_box(x, inner_box(h, w, 1 - 2 * border))),
        }
        for key, logits in views.items():
            p = logits_to_probs(logits.float(), multilabel)
            out[key].append(score(p.cpu().numpy()))
        out["features"].append(features.flatten(1).float().cpu().numpy())
        out["targets"].append(batch["target"].numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def auroc_ci(
    probs: np.ndarray, truth: np.ndarray, resamples: int, seed: int, level: float = 0.95, groups=None
) -> list[dict]:
    """One-vs-rest AUROC per class (``truth``: (N, C) 0/1, NaN unknown) with a percentile bootstrap interval
    (``groups``: the patient of each image, resampled whole; None resamples images)."""
    point = stats.per_class_auroc(probs, truth, True)
    rng, draw = np.random.default_rng(seed), Resampler(len(probs), groups).draw
    draws = np.asarray([stats.per_class_auroc(probs[i], truth[i], True) for i in (draw(rng) for _ in range(resamples))])
    draws = draws.reshape(resamples, -1)
    out = []
    for j, value in enumerate(point):
        lo, hi = stats.percentile_interval(draws[:, j], level)
        out.append({"value": float(value), "lo": lo, "hi": hi})
    return out


def cam_grid(model, image: torch.Tensor) -> tuple[int, int]:
    """The spatial size of the model's Grad-CAM layer for ``image`` (a 2x2 grid cannot tell centre from border)."""
    layer, size = resolve_layer(model, None), []
    handle = layer.register_forward_hook(lambda _m, _i, out: size.append(tuple(out.shape[-2:])))
    try:
        with torch.no_grad():
            model(image)
    finally:
        handle.remove()
    return size[0]


def heat_shares(explainers: dict, images: torch.Tensor, target: int, center: float, border: float) -> dict:
    """Grad-CAM energy share outside the centre and on the border band for each explainer (trained, random), and
    for a flat map."""
    outside, band = regions(images.shape[-2], images.shape[-1], center, border)
    out: dict = {"flat": {"outside": float(outside.mean()), "border": float(band.mean())}}
    for name, explainer in explainers.items():
        maps = explainer(images, target)
        total = maps.sum(axis=(1, 2))
        valid = total > 1e-6  # an all-zero map (Grad-CAM of a dead class) says nothing about where
        out[name] = {"n_maps": int(valid.sum()), "mean_map": maps.mean(0)}
        for key, region in (("outside", outside), ("border", band)):
            shares = (maps[valid] * region).sum(axis=(1, 2)) / total[valid]
            out[name][key] = float(shares.mean()) if valid.any() else None
    return out


def class_heat(
    model, dataset, idx: np.ndarray, truth: np.ndarray, model_index: list[int], labels, opts: dict, device: str
) -> tuple[list, dict, tuple | None]:
    """Per class: `heat_shares` on up to ``cam_n`` of its images (None without any), the mean maps, the CAM grid."""
    n, heats, maps = int(opts["cam_n"]), [], {}
    if n <= 0:
        return [None] * len(labels), maps, None
    model = model.to(device).eval()
    random = randomized_copy(model, int(opts["seed"])).to(device)
    grid = None
    with make_explainer("gradcam", model) as trained_cam, make_explainer("gradcam", random) as random_cam:
        for c, label in enumerate(labels):
            images = class_images(dataset, idx, truth[:, c] == 1, n)
            if images is None:
                heats.append(None)
                continue
            grid = grid or cam_grid(model, images[:1].to(device))
            heat = heat_shares(
                {"trained": trained_cam, "random": random_cam},
                images.to(device),
                model_index[c],
                float(opts["center"]),
                float(opts["border"]),
            )
            maps[label] = {k: heat[k].pop("mean_map") for k in ("trained", "random")}
            heats.append(heat)
    return heats, maps, grid


def native_size(path: str | Path) -> str:
    """``<width>x<height> px`` of a file as stored: its image header, or a DICOM's Columns x Rows."""
    return "{}x{} px".format(*images.native_size(path))


def source_groups(
    paths: list[str], mode: str, labels: list[str] | None = None, min_share: float = 0.1, sets: list | None = None
) -> tuple[np.ndarray | None, str]:
    """A source name per image, and how it was found; (None, reason) when there is only one source.

    Args:
        paths: image files.
        mode: ``folder`` (the folder holding each image, when it is not the class folder: ``<class>/<hospital>/``
            layouts), ``size`` (native width x height; sizes holding less than ``min_share`` of the images pooled as
            "other sizes"), ``auto`` (the data sets of ``sets`` when there are several, else folder when that gives
            several sources, else size), or ``none``.
        labels: each image's label (folders named like it are class folders, not sources).
        min_share: smallest share of images a size needs to be a source of its own.
        sets: each image's data set (``data=multi``), or None.
    """
    if mode == "none":
        return None, "source probe off (audit.source=none)"
    if mode == "auto" and sets is not None and len(set(sets)) > 1:
        return np.asarray(sets, dtype=str), DATA_SET
    if mode in ("folder", "auto"):
        folders = [Path(p).parent.name for p in paths]
        labels = labels if labels is not None else [""] * len(paths)
        own = [normalise(f) != normalise(str(lab)) for f, lab in zip(folders, labels, strict=True)]
        if all(own) and len(set(folders)) > 1:
            return np.asarray(folders), "the folder holding each image"
        if mode == "folder":
            return None, "no folders below the class folders: no folder sources"
    sizes = pd.Series([native_size(p) for p in paths])
    share = sizes.map(sizes.value_counts(normalize=True))
    groups = np.where(share >= min_share, sizes, "other sizes")
    if len(set(groups)) < 2:
        return None, f"one native image size ({sizes.iloc[0]}): a single source"
    return groups, "the native image size (an acquisition proxy)"


def probe_verdict(probe: dict | None, how: str, opts: dict) -> dict:
    """``tells_apart`` (the probe's AUROC reaches ``source_auroc`` with its interval above chance) and, when it does,
    the audit's ``statement``."""
    apart = tells_sources_apart(probe, float(opts["source_auroc"]))
    return {"tells_apart": apart, **({"statement": probe_statement(probe, how == DATA_SET)} if apart else {})}


def class_images(dataset, indices: np.ndarray, positive: np.ndarray, n: int) -> torch.Tensor | None:
    """Up to ``n`` of the images ``indices`` where ``positive`` holds (in order), as one batch."""
    picked = [int(i) for i in indices[positive][:n]]
    return torch.stack([dataset[i]["image"] for i in picked]) if picked else None


def verdict(row: dict, opts: dict) -> tuple[str, list[str]]:
    """("shortcut likely" | "no shortcut signal found", the reasons with their numbers) for one class."""
    reasons = []
    for key, what in (("hidden", "lungs hidden"), ("border", "border only")):
        ci = row[key]
        if ci["value"] >= opts["flag_auroc"] and ci["lo"] > opts["flag_lower"]:
            reasons.append(f"AUROC {ci['value']:.2f} [{ci['lo']:.2f}, {ci['hi']:.2f}] with the {what}")
    source, probe = row.get("source_auroc"), row.get("probe_auroc")
    if source is not None and probe is not None and min(source, probe) >= opts["source_auroc"]:
        reasons.append(
            f"the image source predicts the class (AUROC {source:.2f}) and the features tell the sources "
            f"apart (probe AUROC {probe:.2f})"
        )
    heat = row.get("heat") or {}
    trained = None if heat.get("coarse") else (heat.get("trained") or {}).get("outside")
    ref, what = (heat.get("random") or {}).get("outside"), "a randomised model"
    if ref is None:  # the randomised model's maps were all zero: compare with a flat map
        ref, what = (heat.get("flat") or {}).get("outside"), "a flat map"
    if trained is not None and ref is not None and trained - ref >= opts["heat_margin"]:
        reasons.append(f"{trained:.0%} of the Grad-CAM energy outside the centre vs {ref:.0%} for {what}")
    return ("shortcut likely" if reasons else "no shortcut signal found"), reasons


SETTINGS = (
    "center",
    "border",
    "flag_auroc",
    "flag_lower",
    "source_auroc",
    "heat_margin",
    "cam_n",
    "max_images",
    "resamples",
    "seed",
)


def class_row(c: int, label: str, truth: np.ndarray, ci: dict, probe: dict | None, heat: dict | None, opts) -> dict:
    """One class of the audit: its numbers and its verdict."""
    row = {
        "class": label,
        "n": int(np.nansum(truth[:, c])),
        **{view: ci[view][c] for view in ("intact", "hidden", "border")},
        "heat": heat,
        "source_auroc": probe["class_by_source_auroc"][c] if probe else None,
        "probe_auroc": probe.get("probe_auroc") if probe else None,
    }
    row["verdict"], row["reasons"] = verdict(row, opts)
    return row


def run_audit(
    model, dataset, labels: list[str], score: Callable, model_index: list[int], opts: dict, device: str = "cpu"
) -> tuple[dict, dict]:
    """Runs the three checks on (a seeded subsample of) ``dataset``.

    Args:
        model: a `lungnet.models.registry.Classifier` (``backbone`` and ``head``).
        dataset: the evaluated `XrayDataset` (targets index ``labels``; multi-label: one column per label).
        labels: the scored classes.
        score: model probabilities -> probabilities over ``labels`` (identity, or an external mapping's ``scores``).
        model_index: per scored class, the model output whose Grad-CAM is drawn.
        opts: the ``audit`` settings (conf/evaluate.yaml).
        device: where the model runs.

    Returns:
        (the JSON-friendly result, arrays for the figures).
    """
    multilabel = bool(dataset.multilabel)
    all_truth = stats.one_vs_rest(dataset.targets.numpy(), len(labels), multilabel)
    idx = subsample(np.nan_to_num(all_truth).argmax(1), int(opts["max_images"]), int(opts["seed"]))
    loader = DataLoader(Subset(dataset, idx.tolist()), batch_size=int(opts["batch_size"]))
    views = rescore(model, loader, score, opts, multilabel, device)
    truth, seed = stats.one_vs_rest(views["targets"], len(labels), multilabel), int(opts["seed"])
    rows = dataset.table.iloc[idx]
    patients = patient_groups(rows["path"].tolist(), rows)  # None: no patient ids, images resampled
    ci = {
        k: auroc_ci(views[k], truth, int(opts["resamples"]), seed, groups=patients)
        for k in ("intact", "hidden", "border")
    }
    sets = rows["source"].astype(str).tolist() if "source" in rows else None
    groups, how = source_groups(
        rows["path"].tolist(), str(opts["source"]), rows["label"].astype(str).tolist(), sets=sets
    )
    probe = source_probe(views["features"], groups, truth, seed, patients) if groups is not None else None
    heats, maps, grid = class_heat(model, dataset, idx, truth, model_index, labels, opts, device)
    if grid is not None and min(grid) < 4:  # a 2x2 or 3x3 map cannot place heat at the border: no verdict from it
        heats = [dict(h, coarse=True) if h else h for h in heats]
    classes = [class_row(c, label, truth, ci, probe, heats[c], opts) for c, label in enumerate(labels)]
    result = {
        "n": int(len(idx)),
        "n_evaluated": len(dataset),
        "classes": classes,
        "cam_grid": list(grid) if grid else None,
        "source": {"how": how, **(probe or {}), **probe_verdict(probe, how, opts)},
        "settings": {k: opts[k] for k in SETTINGS},
        "bootstrap": record(patients, len(idx), int(opts["resamples"])),
    }
    return result, {"maps": maps, "views": example_views(dataset, idx, truth, opts)}


def example_views(dataset, idx: np.ndarray, truth: np.ndarray, opts: dict) -> list[torch.Tensor]:
    """An image of the last class with a positive (often the finding): intact, lungs hidden, border only."""
    positive = np.flatnonzero(np.nan_to_num(truth).sum(0) > 0)
    row = int(np.flatnonzero(truth[:, positive[-1]] == 1)[0]) if len(positive) else 0
    example = dataset[int(idx[row])]["image"][None]
    h, w = example.shape[-2:]
    center, border = float(opts["center"]), float(opts["border"])
    return [example, fill_box(example, inner_box(h, w, center)), fill_box(example, inner_box(h, w, 1 - 2 * border))]
