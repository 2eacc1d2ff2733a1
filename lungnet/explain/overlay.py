"""Heatmap overlays on the original radiograph, side-by-side figures with a title, and the caption of one image's
overlay (`heatmap_caption`: what the app shows under it and predict.py draws under its PNGs, `save_captioned`)."""

from __future__ import annotations

import logging
import os
import textwrap
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps

from lungnet.io import atomic_write

log = logging.getLogger(__name__)


def resize_map(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D map to ``size`` = (H, W), values clipped to [0, 1]."""
    heat = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    if heat.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (H, W), got shape {heat.shape}")
    if heat.shape != tuple(size):
        t = torch.from_numpy(np.ascontiguousarray(heat))[None, None]
        heat = torch.nn.functional.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)[0, 0].numpy()
    return np.clip(heat, 0.0, 1.0)


def _gray(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    img = img.astype(np.float32)
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        img = img[..., :3].mean(axis=-1)
    if img.ndim != 2:
        raise ValueError(f"image must be grayscale (H, W) or RGB (H, W, 3), got shape {img.shape}")
    return np.clip(np.nan_to_num(img), 0.0, 1.0)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float, cmap: str = "jet") -> np.ndarray:
    """Colours the heatmap over the grayscale radiograph at the radiograph's own resolution.

    The X-ray stays gray; the colour map is blended in with a per-pixel weight that grows with the
    heat (``alpha`` at the peak, a faint wash at zero), so cold regions remain readable.

    Args:
        image: grayscale X-ray (H0, W0) in [0, 1] (uint8 and RGB are accepted), original resolution.
        heatmap: map of any size in [0, 1]; resized (bilinear) to (H0, W0).
        alpha: colour weight at the map's maximum.
        cmap: matplotlib colour map (``jet`` or ``turbo``).

    Returns:
        RGB uint8 array (H0, W0, 3).
    """
    gray = _gray(image)
    heat = resize_map(heatmap, gray.shape)
    colour = colormaps[cmap](heat)[..., :3].astype(np.float32)
    weight = (alpha * (0.25 + 0.75 * heat))[..., None]
    rgb = (1.0 - weight) * gray[..., None] + weight * colour
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def _figure(panels: int, cols: int, cell: float = 3.0, title_lines: int = 3):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = -(-panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols, (cell + 0.14 * title_lines) * rows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    return fig, axes.ravel()


def _save(fig, path: str | os.PathLike) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def save_side_by_side(
    path: str | os.PathLike,
    image: np.ndarray,
    heatmap: np.ndarray,
    title: str,
    alpha: float,
    color: str = "k",
    heat_title: str = "heatmap",
) -> Path:
    """Writes a PNG: the original radiograph beside its heatmap overlay, under a title.

    Args:
        path: output PNG.
        image: grayscale X-ray (H0, W0) in [0, 1], original resolution.
        heatmap: map of any size in [0, 1].
        title: figure title (true/predicted class, probability, correct/wrong).
        alpha: overlay strength.
        color: title colour.
        heat_title: caption of the overlay panel (method and explained class).
    """
    fig, axes = _figure(2, 2, cell=3.4)
    axes[0].imshow(_gray(image), cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("original", fontsize=9)
    axes[1].imshow(overlay(image, heatmap, alpha))
    axes[1].set_title(heat_title, fontsize=9)
    fig.suptitle(title, fontsize=10, color=color)
    return _save(fig, path)


def save_grid(
    path: str | os.PathLike,
    images: list[np.ndarray],
    heatmaps: list[np.ndarray],
    titles: list[str],
    colors: list[str] | None = None,
    cols: int = 4,
    *,
    alpha: float,
    suptitle: str = "",
) -> Path:
    """Writes a PNG grid of overlays (one panel per image, each with its own short title)."""
    if not images:
        raise ValueError("save_grid needs at least one image")
    lines = max(str(t).count("\n") + 1 for t in titles)
    fig, axes = _figure(len(images), min(cols, len(images)), cell=2.6, title_lines=lines)
    colors = colors or ["k"] * len(images)
    for ax, image, heat, title, color in zip(axes, images, heatmaps, titles, colors, strict=False):
        ax.imshow(overlay(image, heat, alpha))
        ax.set_title(title, fontsize=7, color=color)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return _save(fig, path)


SCALE_LABELS = ("low", "attention", "high")  # the colour bar's labels, left to right (the app's page says the same)
CAPTION_WIDTH = 72  # characters per caption line in a PNG
MIN_SIDE = 480  # a smaller overlay is drawn larger, to this long side in pixels


def heatmap_caption(row: dict, name: str, method: str) -> dict:
    """The caption of one image's heatmap overlay: file, decision, the explained class and its probability.

    Args:
        row: the image's predictions row (`lungnet.serve.inference.Predictor.rows`: decision, decision_reason,
            decision_note, ood, heatmap_class, p_<label>).
        name: the file name to show.
        method: the heatmap method (e.g. ``gradcam``).

    Returns:
        ``{"lines": [...], "mark": "ood" | "abstain" | ""}``: the mark says the heatmap explains no decision.
    """
    decision = row.get("decision", row.get("predicted", ""))
    explained = row.get("heatmap_class") or row.get("predicted", "")
    prob = row.get(f"p_{explained}")
    lines = [str(name)]
    mark = "ood" if row.get("ood") else "abstain" if decision == "abstain" else ""
    if mark == "ood":
        lines.append("OUT OF DISTRIBUTION: unlike the training images, the heatmap means nothing here")
    elif mark:
        lines.append("ABSTAINED: refer to a person; the heatmap explains no decision")
    lines.append(f"Decision: {decision}" + (f" ({row['decision_reason']})" if row.get("decision_reason") else ""))
    if row.get("decision_note"):
        lines.append(f"Note: {row['decision_note']}")
    where = f"{explained}, probability {float(prob):.3f}" if prob is not None else str(explained)
    lines.append(f"Heatmap: {method} of {where}; colour from blue (low) to red (high attention)")
    return {"lines": lines, "mark": mark}


def save_captioned(
    path: str | os.PathLike, rgb: np.ndarray, caption: dict, cmap: str = "jet", max_side: int = 1024
) -> Path:
    """Writes a PNG: the overlay ``rgb``, a colour bar (low to high attention) and the `heatmap_caption` under it;
    an abstained or OOD image gets a red frame and its mark's line in red.

    Args:
        path: output PNG.
        rgb: the overlay (`overlay`), RGB uint8 (H, W, 3).
        caption: `heatmap_caption`.
        cmap: the colour map the overlay used.
        max_side: the overlay's long side in the PNG is at most this many pixels (at least ``MIN_SIDE``).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    dpi = 100
    h, w = rgb.shape[:2]
    scale = min(max(max(h, w), MIN_SIDE), max_side) / max(h, w) / dpi  # inches per overlay pixel
    width, height = max(w * scale, 4.8), h * scale
    text = [textwrap.wrap(line, CAPTION_WIDTH) or [""] for line in caption["lines"]]
    fig = plt.figure(figsize=(width, height + 0.7 + 0.17 * sum(map(len, text))), dpi=dpi)
    ax = fig.add_axes((0, 1 - height / fig.get_figheight(), 1, height / fig.get_figheight()))
    ax.imshow(rgb)
    ax.set_xticks([])
    ax.set_yticks([])
    alert = "red" if caption["mark"] else "none"
    for spine in ax.spines.values():
        spine.set(visible=bool(caption["mark"]), color=alert, linewidth=4)
    bar = fig.add_axes((0.2, 1 - (height + 0.35) / fig.get_figheight(), 0.6, 0.12 / fig.get_figheight()))
    cbar = fig.colorbar(plt.cm.ScalarMappable(Normalize(0, 1), cmap), cax=bar, orientation="horizontal")
    cbar.set_ticks([0, 0.5, 1], labels=list(SCALE_LABELS), fontsize=8)
    y = 1 - (height + 0.75) / fig.get_figheight()
    for k, wrapped in enumerate(text):
        colour = "red" if caption["mark"] and k == 1 else "black"
        for line in wrapped:
            fig.text(0.01, y, line, fontsize=8, color=colour, va="top", family="DejaVu Sans")
            y -= 0.17 / fig.get_figheight()
    try:
        return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=dpi, bbox_inches="tight"), mode="wb")
    finally:
        plt.close(fig)
