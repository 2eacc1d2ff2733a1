"""Ground-truth lesions to score heatmaps against: synthetic phantom masks and NIH radiologists' boxes."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from lungnet.data.formats import walk_images
from lungnet.data.images import read_image
from lungnet.data.labels import match_label, normalise
from lungnet.data.synthetic import mask_path_for
from lungnet.explain.scoring import Case, box_mask

log = logging.getLogger(__name__)

NIH_BOX_SPACE = 1024.0  # BBox_List_2017.csv coordinates are in the original 1024 x 1024 images
NIH_BOX_ALIASES = {"infiltrate": "Infiltration"}


def synthetic_cases(images, labels: list[str]) -> list[Case]:
    """Cases for synthetic phantoms that have a lesion (``Normal`` images have an empty mask and are skipped).

    Args:
        images: image paths under ``images/<class>/``, or a table / Dataset with a ``path`` column.
        labels: the model's labels (the class comes from the folder name).
    """
    table = getattr(images, "table", images)
    paths = table["path"].tolist() if isinstance(table, pd.DataFrame) else list(table)
    cases = []
    for path in paths:
        name = match_label(Path(path).parent.name, labels)
        mask_path = mask_path_for(path)
        if name is None or not mask_path.is_file():
            log.debug("No class or mask for %s", path)
            continue
        mask = read_image(mask_path) > 0.5
        if mask.any():
            cases.append(Case(str(path), labels.index(name), name, mask))
    log.info("Synthetic ground truth: %d images with lesion masks of %d given", len(cases), len(paths))
    return cases


def _nih_label(finding: str, labels: list[str]) -> str | None:
    key = normalise(finding)
    wanted = NIH_BOX_ALIASES.get(key, finding)
    return next((lab for lab in labels if normalise(lab) == normalise(wanted)), None)


def nih_box_cases(root: str | os.PathLike, labels: list[str], bbox_csv: str | os.PathLike | None = None) -> list[Case]:
    """Cases from NIH ChestX-ray14's ``BBox_List_2017.csv`` for the images present under ``root``.

    Boxes are given in the original 1024 px space and scaled to each file's own size; several
    boxes of one finding on one image form one mask. Findings the model does not output are skipped.

    Args:
        root: folder holding the PNGs (anywhere below) and, by default, the CSV.
        labels: the model's labels.
        bbox_csv: the box list (default ``root/BBox_List_2017.csv``).
    """
    root = Path(root)
    csv = Path(bbox_csv) if bbox_csv else root / "BBox_List_2017.csv"
    if not csv.is_file():
        raise FileNotFoundError(f"NIH box list not found: {csv}")
    boxes = pd.read_csv(csv)
    boxes = boxes.rename(columns={boxes.columns[0]: "image", boxes.columns[1]: "finding"})
    coords = boxes.columns[2:6]
    files = {p.name: p for p in walk_images(root)}
    cases, skipped = [], {}
    for (image, finding), rows in boxes.groupby(["image", "finding"], sort=True):
        label = _nih_label(str(finding), labels)
        if label is None or image not in files:
            reason = "finding not in the model's labels" if label is None else "image not found"
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        shape = read_image(files[image]).shape
        scale = (shape[1] / NIH_BOX_SPACE, shape[0] / NIH_BOX_SPACE)
        mask = box_mask(shape, [tuple(map(float, r)) for r in rows[coords].to_numpy(np.float64)], scale)
        cases.append(Case(str(files[image]), labels.index(label), label, mask))
    log.info("NIH boxes: %d image-finding pairs%s", len(cases), f"; skipped {skipped}" if skipped else "")
    return cases
