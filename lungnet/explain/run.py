"""Explain a checkpoint on images: overlay PNGs, a grid, a summary CSV and a markdown section for report.md.

``explain_checkpoint`` is the one call for `evaluate.py`, ``python -m lungnet.explain`` and notebooks;
`lungnet.explain.pointing.score_checkpoint` scores methods against lesion masks or boxes.
"""

from __future__ import annotations

import logging
import os
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lungnet.artifacts.checkpoint import LoadedModel, load_model
from lungnet.data.images import read_image
from lungnet.data.labels import DEFAULT_THRESHOLD, NO_FINDING, join_flags
from lungnet.data.preprocessing import Preprocessing
from lungnet.explain.base import ExplainError
from lungnet.explain.cams import make_explainer
from lungnet.explain.overlay import save_grid, save_side_by_side
from lungnet.io import write_csv
from lungnet.scoring.outputs import file_probabilities

log = logging.getLogger(__name__)

TITLES = {
    "gradcam": "Grad-CAM",
    "gradcampp": "Grad-CAM++",
    "hirescam": "HiResCAM",
    "scorecam": "Score-CAM",
    "eigencam": "EigenCAM",
    "ig": "Integrated Gradients",
}
MAX_CANDIDATES = 512


def as_loaded(ckpt: str | os.PathLike | LoadedModel) -> LoadedModel:
    """A `LoadedModel` from a checkpoint path (or the same object)."""
    return ckpt if isinstance(ckpt, LoadedModel) else load_model(ckpt)


def preprocessor(loaded: LoadedModel) -> Callable[[np.ndarray], torch.Tensor]:
    """The checkpoint's evaluation pipeline: image (H, W) in [0, 1] -> normalised tensor (C, S, S)."""
    return Preprocessing.from_loaded(loaded).pipeline()


def image_table(images, loaded: LoadedModel) -> pd.DataFrame:
    """Normalises the accepted inputs to a table with ``path`` and ``truth`` (class index, vector or None).

    Args:
        images: image paths, a table with ``path`` and ``target`` (or one column per label when
            multi-label, or ``label``), or a Dataset with ``.table`` (`lungnet.data.dataset.XrayDataset`).
        loaded: the model (its labels).
    """
    table = getattr(images, "table", images)
    if not isinstance(table, pd.DataFrame):
        return pd.DataFrame({"path": [str(p) for p in table], "truth": [None] * len(table)})
    if "path" not in table:
        raise ExplainError("an image table needs a 'path' column")
    if loaded.multilabel and set(loaded.labels) <= set(table.columns):
        truth = list(table[loaded.labels].to_numpy(np.float32))
    elif "target" in table and not loaded.multilabel:
        truth = [int(t) for t in table["target"]]
    elif "label" in table and not loaded.multilabel:
        truth = [loaded.labels.index(lab) if lab in loaded.labels else None for lab in table["label"]]
    else:
        truth = [None] * len(table)
    return pd.DataFrame({"path": table["path"].astype(str).tolist(), "truth": truth})


@torch.no_grad()
def _judge(loaded: LoadedModel, probs: np.ndarray, truth, explained: int) -> tuple[str, str, float, str | None]:
    """(true text, predicted text, probability of the explained class, correct|wrong|None)."""
    labels = loaded.labels
    if loaded.multilabel:
        thr = DEFAULT_THRESHOLD
        p = float(probs[explained])
        said = "positive" if p >= thr else "negative"
        pred = f"{labels[explained]} {said}"
        if truth is None or not np.isfinite(truth[explained]):
            true = "unknown"
            verdict = None
        else:
            true = join_flags(np.asarray(truth)[None] == 1, labels, NO_FINDING)[0]
            verdict = "correct" if (p >= thr) == (truth[explained] == 1) else "wrong"
        return true, pred, p, verdict
    top = int(np.argmax(probs))
    true = labels[truth] if truth is not None else "unknown"
    verdict = None if truth is None else ("correct" if top == truth else "wrong")
    return true, labels[top], float(probs[explained]), verdict


def _round_robin(table: pd.DataFrame) -> pd.DataFrame:
    """Rows interleaved over true classes (file order within a class), so a short pick covers them all."""
    key = table["true"].astype(str)
    return table.assign(_rank=key.groupby(key).cumcount()).sort_values(["_rank"], kind="stable").drop(columns="_rank")


def _select(table: pd.DataFrame, n: int) -> pd.DataFrame:
    """Up to ``n`` rows, half of them wrong predictions when there are enough, spread over the true classes."""
    wrong = _round_robin(table[table["verdict"] == "wrong"])
    rest = _round_robin(table[table["verdict"] != "wrong"])
    take_wrong = min(len(wrong), max(n // 2, n - len(rest)))
    return pd.concat([rest.head(n - take_wrong), wrong.head(take_wrong)])


def _class_index(loaded: LoadedModel, class_index: int | str | None) -> int | None:
    if class_index is None or isinstance(class_index, (int, np.integer)):
        if class_index is not None and not 0 <= int(class_index) < max(2, len(loaded.labels)):
            raise ExplainError(f"class_index {class_index} out of range for labels {loaded.labels}")
        return None if class_index is None else int(class_index)
    if class_index not in loaded.labels:
        raise ExplainError(f"Unknown class '{class_index}'; the model's classes are {loaded.labels}")
    return loaded.labels.index(class_index)


def _short(text: str, keep: int = 2) -> str:
    """A multi-label list ``A|B|C|D`` shortened for a figure title: ``A, B +2``."""
    parts = str(text).split("|")
    return ", ".join(parts[:keep]) + (f" +{len(parts) - keep}" if len(parts) > keep else "")


def _cell(text: object) -> str:
    """Text safe inside a markdown table cell (multi-label truths are joined with '|')."""
    return str(text).replace("|", "\\|")


def _link(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


@dataclass
class Explanations:
    """Heatmaps of the picked images, before anything is drawn (`compute_explanations` -> `write_explanations`).

    Attributes:
        method: the explanation method.
        model: the model's name.
        target_layer: the layer explained (informative; IG attributes to the input).
        chosen_class: the class explained for every image, or None (each image's predicted class).
        table: one row per picked image: path, truth, true, predicted, probability, verdict, explained,
            explained_index.
        originals: the images as read (H, W) in [0, 1].
        maps: their heatmaps, in [0, 1] at the model's input size.
    """

    method: str
    model: str
    target_layer: str
    chosen_class: str | None
    table: pd.DataFrame
    originals: list[np.ndarray] = field(repr=False)
    maps: list[np.ndarray] = field(repr=False)


def pick_images(loaded: LoadedModel, images, n: int, chosen: int | None, seed: int = 0) -> pd.DataFrame:
    """Up to ``n`` images judged by the model, half of them wrong predictions when the truth is known.

    At most `MAX_CANDIDATES` images (shuffled with ``seed``) are predicted; each row gets its true and predicted
    text, the probability of the explained class (``chosen``, or the predicted one) and the verdict.
    """
    table = image_table(images, loaded)
    table = table.sample(frac=1.0, random_state=seed).head(MAX_CANDIDATES).reset_index(drop=True)
    if table.empty:
        raise ExplainError("No images to explain")
    probs, _ = file_probabilities(loaded.model, table["path"].tolist(), preprocessor(loaded), loaded.multilabel)
    explained = [chosen if chosen is not None else int(np.argmax(p)) for p in probs]
    judged = [_judge(loaded, p, t, e) for p, t, e in zip(probs, table["truth"], explained, strict=True)]
    table["true"], table["predicted"], table["probability"], table["verdict"] = zip(*judged, strict=True)
    table["explained"] = [loaded.labels[e] for e in explained]
    table["explained_index"] = explained
    return _select(table, n)


def compute_explanations(
    loaded: LoadedModel,
    images,
    method: str,
    n: int,
    class_index: int | str | None = None,
    cam_layer: str | None = None,
    images_per_call: int = 8,
    seed: int = 0,
    **options,
) -> Explanations:
    """Picks ``n`` images (`pick_images`) and computes their heatmaps; arguments as in `explain_checkpoint`."""
    chosen = _class_index(loaded, class_index)
    table = pick_images(loaded, images, n, chosen, seed)
    prep = Preprocessing.from_loaded(loaded)
    pipeline = prep.pipeline()
    originals = [read_image(p) for p in table["path"]]
    device = next(loaded.model.parameters()).device
    maps: list[np.ndarray] = []
    with make_explainer(method, loaded.model, cam_layer, **options) as explainer:
        for i in range(0, len(table), images_per_call):
            batch = torch.stack([pipeline(img) for img in originals[i : i + images_per_call]])
            maps += list(explainer(batch.to(device), table["explained_index"].iloc[i : i + images_per_call].tolist()))
    maps = [prep.on_image(m, img.shape) for m, img in zip(maps, originals, strict=True)]  # pad/crop: the content
    return Explanations(
        method=method,
        model=loaded.spec.name,
        target_layer=str(cam_layer or loaded.spec.cam_layer),
        chosen_class=None if chosen is None else loaded.labels[chosen],
        table=table,
        originals=originals,
        maps=maps,
    )


def _verdict_color(verdict: str | None) -> tuple[str, str]:
    verdict = verdict or "unlabelled"
    return verdict, {"correct": "green", "wrong": "red"}.get(verdict, "black")


def _draw(result: Explanations, folder: Path, alpha: float) -> tuple[list[Path], Path]:
    """One side-by-side figure per image and a grid of all of them (overlay opacity ``alpha``); returns (figures,
    grid)."""
    name = TITLES.get(result.method, result.method)
    files, titles, colors = [], [], []
    rows = zip(result.table.itertuples(), result.originals, result.maps, strict=True)
    for k, (row, img, heat) in enumerate(rows):
        verdict, color = _verdict_color(row.verdict)
        true, pred = _short(row.true), _short(row.predicted)
        title = f"true: {true} | pred: {pred} | p({row.explained})={row.probability:.2f} | {verdict}"
        path = folder / f"{k:02d}_{Path(row.path).stem}.png"
        heat_title = f"{name} for {row.explained}"
        files.append(save_side_by_side(path, img, heat, f"{name}: {title}", alpha, color=color, heat_title=heat_title))
        titles.append(
            "\n".join(
                [Path(row.path).stem, *textwrap.wrap(f"true {true}", 34), *textwrap.wrap(f"pred {pred}", 34)]
                + [f"p({row.explained})={row.probability:.2f} {verdict}"]
            )
        )
        colors.append(color)
    grid = save_grid(
        folder / "grid.png",
        result.originals,
        result.maps,
        titles,
        colors,
        alpha=alpha,
        suptitle=f"{name} ({result.model})",
    )
    return files, grid


def _markdown(result: Explanations, files: list[Path], grid: Path, base: Path) -> str:
    """The report section: what was explained, the grid, and one linked row per image."""
    name, table = TITLES.get(result.method, result.method), result.table
    n_correct, n_wrong = int((table["verdict"] == "correct").sum()), int((table["verdict"] == "wrong").sum())
    target_text = "the predicted class" if result.chosen_class is None else f"class '{result.chosen_class}'"
    lines = [
        f"### Explanations: {name}",
        "",
        f"{len(table)} images ({n_correct} correct, {n_wrong} wrong predictions), heatmaps for {target_text}, "
        f"target layer `{result.target_layer}`" + (" (not used by IG)" if result.method == "ig" else "") + ".",
        "",
        f"![{name} grid]({_link(grid, base)})",
        "",
        "| image | true | predicted | explained | p | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for row, f in zip(table.itertuples(), files, strict=True):
        lines.append(
            f"| [{Path(row.path).name}]({_link(f, base)}) | {_cell(row.true)} | {_cell(row.predicted)} "
            f"| {_cell(row.explained)} | {row.probability:.3f} | {row.verdict or '-'} |"
        )
    return "\n".join(lines) + "\n"


def write_explanations(
    result: Explanations, out_dir: str | os.PathLike, report_dir: str | os.PathLike | None = None, *, alpha: float
) -> dict:
    """Writes ``out_dir/<method>/``: the figures (overlay opacity ``alpha``), ``grid.png`` and ``explanations.csv``;
    returns the summary.

    Returns:
        Summary dict: method, n, n_correct, n_wrong, files, grid, csv, markdown (links relative to ``report_dir``,
        default ``out_dir``).
    """
    folder = Path(out_dir) / result.method
    files, grid = _draw(result, folder, alpha)
    table = result.table.assign(file=[str(f) for f in files])
    csv = write_csv(folder / "explanations.csv", table.drop(columns=["truth"]))
    n_correct, n_wrong = int((table["verdict"] == "correct").sum()), int((table["verdict"] == "wrong").sum())
    markdown = _markdown(result, files, grid, Path(report_dir) if report_dir else Path(out_dir))
    name = TITLES.get(result.method, result.method)
    log.info("%s: %d overlays (%d correct, %d wrong) in %s", name, len(files), n_correct, n_wrong, folder)
    return {
        "method": result.method,
        "n": len(files),
        "n_correct": n_correct,
        "n_wrong": n_wrong,
        "files": [str(f) for f in files],
        "grid": str(grid),
        "csv": str(csv),
        "markdown": markdown,
    }


def explain_checkpoint(
    ckpt: str | os.PathLike | LoadedModel,
    images,
    method: str,
    n: int,
    class_index: int | str | None = None,
    out_dir: str | os.PathLike = "explanations",
    cam_layer: str | None = None,
    images_per_call: int = 8,
    report_dir: str | os.PathLike | None = None,
    seed: int = 0,
    *,
    alpha: float,
    **options,
) -> dict:
    """Explains ``n`` images (correct and wrong predictions) and writes the figures.

    Writes ``out_dir/<method>/NN_<name>.png`` (original beside overlay, titled with true and
    predicted class, probability and correct/wrong), ``grid.png`` with all of them and
    ``explanations.csv`` (`compute_explanations`, then `write_explanations`).

    Args:
        ckpt: checkpoint path or `LoadedModel`.
        images: image paths, a table (``path`` + ``target``/label columns) or an `XrayDataset`.
        method: gradcam, gradcampp, hirescam, scorecam, eigencam or ig.
        n: number of images; up to half are wrong predictions when the truth is known.
        class_index: class to explain (index or label; for multi-label a finding); None = predicted.
        out_dir: output folder.
        cam_layer: target-layer override (default: the checkpoint's ``spec.cam_layer``).
        images_per_call: images per explainer call (bounds memory).
        report_dir: folder of the report the markdown goes into (links are relative to it; default out_dir).
        seed: shuffles the candidates (at most 512) before the pick, so it is not all from one patient or class.
        alpha: heatmap opacity in the figures (the command's ``alpha``).
        **options: method options (``batch_size`` for scorecam, ``n_steps`` for ig).

    Returns:
        Summary dict: method, n, n_correct, n_wrong, files, grid, csv, markdown (a section for report.md).
    """
    result = compute_explanations(
        as_loaded(ckpt), images, method, n, class_index, cam_layer, images_per_call, seed, **options
    )
    return write_explanations(result, out_dir, report_dir, alpha=alpha)
