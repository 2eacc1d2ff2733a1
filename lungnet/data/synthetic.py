"""Procedurally generated chest-radiograph phantoms: the embedded default data set.

SYNTHETIC DATA, NOT PATIENTS. Each image has a body silhouette, two dark lung fields, ribs, a
mediastinum and a heart shadow, film noise and a random pose, plus one class-specific finding at a
random position:

- ``Normal``: nothing added.
- ``Consolidation``: a dense lobar opacity in the lower or middle zone of one lung.
- ``Cavity``: an upper-zone nodule with a lucent centre (TB-like), sometimes with a satellite.
- ``Haze``: bilateral, peripheral ground-glass haze (COVID-like).

The finding's pixel mask is saved beside every image (``masks/<class>/<name>.png``), so heatmaps
can be scored against ground truth. The folder layout (``images/<class>/*.png``) is the plain
class-folder layout every other folder dataset uses.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from lungnet.data.labels import SYNTHETIC
from lungnet.errors import DataError

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2


def _smooth_blob(yy, xx, cy, cx, ry, rx, rng: np.random.Generator) -> np.ndarray:
    """A soft-edged irregular blob in [0, 1]."""
    angle = np.arctan2(yy - cy, xx - cx)
    wobble = 1 + 0.18 * np.sin(3 * angle + rng.uniform(0, 6.3)) + 0.1 * np.sin(5 * angle + rng.uniform(0, 6.3))
    d = np.sqrt(_ellipse(yy, xx, cy, cx, ry, rx)) / wobble
    return np.clip(1.5 - 1.5 * d, 0, 1) ** 0.7


def render_phantom(label: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Renders one phantom radiograph.

    Args:
        label: one of `lungnet.data.labels.SYNTHETIC`.
        size: output side in pixels.
        rng: the random generator (all randomness comes from it).

    Returns:
        (image, mask): uint8 arrays of shape (size, size); the mask is 255 on the finding.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cx = 0.5 + rng.uniform(-0.03, 0.03)
    scale = rng.uniform(0.92, 1.05)
    body = np.clip(1.3 - _ellipse(yy, xx, 0.58, cx, 0.55 * scale, 0.46 * scale), 0, 1) ** 0.5
    img = 0.15 + 0.55 * body
    lungs = np.zeros_like(img)
    lung_boxes = []
    for side in (-1, 1):
        lcx = cx + side * 0.19 * scale
        lcy = 0.47 + rng.uniform(-0.02, 0.02)
        ry, rx = 0.27 * scale, 0.13 * scale * rng.uniform(0.9, 1.1)
        lung = np.clip(1.2 - _ellipse(yy, xx, lcy, lcx, ry, rx), 0, 1) ** 0.6
        lung *= np.clip((np.abs(xx - cx) - 0.04) / 0.04, 0, 1)  # keep the midline clear
        lungs = np.maximum(lungs, lung)
        lung_boxes.append((lcy, lcx, ry, rx))
    heart = _smooth_blob(yy, xx, 0.64, cx + 0.06, 0.13 * scale, 0.15 * scale, rng)
    mediastinum = np.exp(-(((xx - cx) / 0.05) ** 2)) * np.clip((yy - 0.12) / 0.05, 0, 1) * body
    img = img - 0.45 * lungs * (1 - 0.85 * heart) + 0.15 * mediastinum + 0.08 * heart
    # ribs: bright arcs across the lung fields
    for k in range(9):
        y0 = 0.22 + k * 0.065
        arc = y0 + 0.08 * ((xx - cx) / 0.4) ** 2
        img += 0.07 * lungs * np.exp(-(((yy - arc) / 0.012) ** 2))
    mask = np.zeros_like(img, dtype=bool)
    side = rng.integers(2)
    lcy, lcx, ry, rx = lung_boxes[side]
    if label == "Consolidation":
        cy = lcy + rng.uniform(0.0, 0.6) * ry
        lesion = (
            _smooth_blob(
                yy, xx, cy, lcx + rng.uniform(-0.3, 0.3) * rx, rng.uniform(0.07, 0.11), rng.uniform(0.05, 0.08), rng
            )
            * lungs
        )
        img += 0.5 * lesion
        mask = lesion > 0.25
    elif label == "Cavity":
        cy, ccx = lcy - rng.uniform(0.45, 0.7) * ry, lcx + rng.uniform(-0.3, 0.3) * rx
        r = rng.uniform(0.035, 0.05)
        d = np.sqrt(_ellipse(yy, xx, cy, ccx, r, r))
        ring = np.exp(-(((d - 1.0) / 0.28) ** 2))
        img += 0.45 * ring - 0.12 * (d < 0.7)
        mask = d < 1.35
        if rng.random() < 0.5:
            d2 = np.sqrt(_ellipse(yy, xx, cy + 0.08, ccx + rng.uniform(-0.05, 0.05), 0.02, 0.02))
            img += 0.35 * np.clip(1.2 - d2, 0, 1)
            mask |= d2 < 1.1
    elif label == "Haze":
        for lcy2, lcx2, ry2, rx2 in lung_boxes:
            e = _ellipse(yy, xx, lcy2, lcx2, ry2, rx2)
            periphery = np.clip((e - 0.3) / 0.5, 0, 1) * np.clip(1.2 - e, 0, 1) ** 0.6
            texture = rng.uniform(0.6, 1.0, size=(size // 8 + 1, size // 8 + 1))
            texture = np.kron(texture, np.ones((8, 8)))[:size, :size]
            img += 0.4 * periphery * texture
            mask |= periphery > 0.2
    elif label != "Normal":
        raise ValueError(f"unknown synthetic label {label!r}; expected one of {SYNTHETIC}")
    img += rng.normal(0, 0.025, img.shape)
    img = np.clip(img, 0, 1)
    return (img * 255).astype(np.uint8), (mask.astype(np.uint8) * 255)


def generate(root: str | Path, n_per_class: int = 150, size: int = 128, seed: int = 0, write: bool = True) -> Path:
    """Writes the synthetic set under ``root`` unless an identical one is already there.

    Args:
        root: target folder; ``images/<class>/`` and ``masks/<class>/`` are created in it.
        n_per_class: images per class.
        size: image side in pixels.
        seed: generator seed; the same seed gives byte-identical files.
        write: False: only use an identical set already there, never write (a path a checkpoint names).

    Returns:
        The root folder.

    Raises:
        DataError: ``write=False`` and no identical set at ``root``.
    """
    root = Path(root)
    manifest = {
        "version": GENERATOR_VERSION,
        "n_per_class": n_per_class,
        "size": size,
        "seed": seed,
        "labels": SYNTHETIC,
        "note": "SYNTHETIC phantoms generated by lungnet, not patient data",
    }
    manifest_path = root / "manifest.json"
    if manifest_path.exists() and json.loads(manifest_path.read_text()) == manifest:
        return root
    if not write:
        there = "another synthetic set" if manifest_path.exists() else "no synthetic set (no manifest.json)"
        raise DataError(
            f"{root} holds {there} ({n_per_class} per class, {size} px, seed {seed} wanted), and lungnet generates "
            "synthetic data only when training: give data.root=<the folder train.py generated>, or generate it "
            f"with train.py data=synthetic data.root={root}"
        )
    log.info("Generating SYNTHETIC chest-radiograph phantoms (%d per class, %d px) in %s", n_per_class, size, root)
    rng = np.random.default_rng(seed)
    for label in SYNTHETIC:
        (root / "images" / label).mkdir(parents=True, exist_ok=True)
        (root / "masks" / label).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img, mask = render_phantom(label, size, rng)
            name = f"{label.lower()}_{i:05d}.png"
            Image.fromarray(img).save(root / "images" / label / name)
            Image.fromarray(mask).save(root / "masks" / label / name)
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(manifest_path)
    return root


def mask_path_for(image_path: str | Path) -> Path:
    """The lesion mask belonging to a synthetic image (``images/<c>/x.png`` -> ``masks/<c>/x.png``)."""
    p = Path(image_path)
    return p.parent.parent.parent / "masks" / p.parent.name / p.name
