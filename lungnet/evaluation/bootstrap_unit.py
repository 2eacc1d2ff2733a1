"""What an evaluation's bootstrap resamples: whole patients where the scored split names them, images otherwise.

Films of one patient are not independent cases: resampling them one by one makes every interval too narrow when
patients have several. The scored split's table (``splits/<split>.csv``: ``path``, ``label``, ``patient``) gives each
image its patient; `groups_for` turns that into bootstrap groups for `lungnet.scoring.resample.Resampler` (an
image without a patient id is its own group), `record` into the ``bootstrap`` block of metrics.json, and `phrase`
into the words the reports put beside their intervals.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

PATIENT = "patient"  # the patient id column of every source table and split file (`lungnet.data.sources`)


def patient_groups(paths: list[str], table: pd.DataFrame | None) -> np.ndarray | None:
    """Bootstrap groups of ``paths``: ``pat:<id>`` from ``table``'s patient column, ``img:<path>`` where unknown.

    Args:
        paths: the scored images, in the order of the predictions.
        table: rows with ``path`` and ``patient`` columns (the data module's table or a split file), or None.

    Returns:
        (N,) group keys, or None when no scored image has a patient id (the bootstrap then resamples images).
    """
    if table is None or PATIENT not in table.columns or "path" not in table.columns or not len(paths):
        return None
    ids = table.drop_duplicates("path").set_index("path")[PATIENT]
    ids = ids.where(ids.notna(), "").astype(str).str.strip()  # ids come from files: anything becomes text
    path = pd.Series([str(p) for p in paths], dtype=object)
    patient = path.map(ids).fillna("").astype(str)
    if (patient == "").all():
        return None
    return np.where(patient == "", "img:" + path, "pat:" + patient).astype(str)


def groups_for(ev) -> np.ndarray | None:
    """The bootstrap groups of an evaluation's scored images (``ev.data.paths``), from its data module's table."""
    return patient_groups(list(ev.data.paths), getattr(ev.dm, "table", None))


def record(groups: np.ndarray | None, n: int, resamples: int) -> dict:
    """``{"unit", "n_units", "n_images", "n_resamples"}``: what each resample draws, for metrics.json."""
    if groups is None:
        return {"unit": "image", "n_units": int(n), "n_images": int(n), "n_resamples": int(resamples)}
    units = len(np.unique(groups))
    return {"unit": PATIENT, "n_units": int(units), "n_images": int(n), "n_resamples": int(resamples)}


def phrase(boot: dict | None) -> str:
    """``over patients (10 patients, 30 images; a drawn patient brings every image)`` or ``over images``.

    Results written before the unit was recorded resampled images.
    """
    boot = boot or {}
    if boot.get("unit") != PATIENT:
        return "over images"
    n_units, n_images = boot.get("n_units", "?"), boot.get("n_images", "?")
    return f"over patients ({n_units} patients, {n_images} images; a drawn patient brings every image)"


def log_unit(boot: dict) -> None:
    """Says on the log what the bootstrap resamples."""
    log.info("Bootstrap intervals resample %s", phrase(boot).removeprefix("over "))
