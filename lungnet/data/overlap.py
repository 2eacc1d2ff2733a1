"""A model's training images, remembered as content hashes, and the check that evaluated images are not among them.

A checkpoint keeps, per split (``train``, ``val``), a 64-bit prefix of each image file's SHA-1 (exact copies)
and its 256-bit dHash (`lungnet.data.checks.dhash`: resized or recompressed copies), as tensors under the
checkpoint key ``image_hashes``: 40 bytes per image, no file names. `find_overlap` compares a folder being
evaluated against them; `enforce` stops the evaluation (`DataError`, exit status 2) unless
``data.allow_leakage=true``, in which case the report says how many images the model had seen.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch

from lungnet.data.checks import dhash
from lungnet.data.images import ImageReadError, read_image
from lungnet.data.near_duplicates import near_pairs
from lungnet.data.sources import DataError
from lungnet.io import printable

log = logging.getLogger(__name__)

HASH_KEY = "image_hashes"
RECORDED_SPLITS = ("train", "val")
DHASH_BYTES = 32


def exact64(sha1_hex: pd.Series) -> np.ndarray:
    """64-bit prefixes of hex SHA-1 digests as int64 (the bit pattern of the first 8 bytes)."""
    raw = b"".join(bytes.fromhex(h[:16]) for h in sha1_hex)
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64).view(np.int64)


def dhash_bytes(hashes: pd.Series) -> np.ndarray:
    """Hex 256-bit dHashes -> (N, 32) uint8."""
    raw = b"".join(bytes.fromhex(h) for h in hashes)
    return np.frombuffer(raw, dtype=np.uint8).reshape(len(hashes), DHASH_BYTES)


def image_hashes(table: pd.DataFrame) -> dict:
    """The hashes a checkpoint keeps of its training and validation images.

    Args:
        table: the split table after `lungnet.data.checks.scan_files` (``sha1``, ``dhash``, ``split``).

    Returns:
        ``{"version": 1, "train": {"exact": int64 (N,), "dhash": uint8 (M, 32)}, "val": {...}}``; images without
        a dHash (``data.verify=false``) are left out of ``dhash`` only.
    """
    out: dict = {"version": 1}
    for split in RECORDED_SPLITS:
        rows = table[(table["split"] == split) & (table["sha1"] != "")]
        with_dhash = rows["dhash"][rows["dhash"].str.len() == 2 * DHASH_BYTES] if "dhash" in rows else pd.Series([])
        out[split] = {
            "exact": torch.from_numpy(exact64(rows["sha1"]).copy()),
            "dhash": torch.from_numpy(dhash_bytes(with_dhash).copy()),
        }
    return out


class RecordImageHashes(pl.Callback):
    """Writes `image_hashes` into every checkpoint the Trainer saves (``checkpoint["image_hashes"]``)."""

    def __init__(self, hashes: dict) -> None:
        self.hashes = hashes

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint[HASH_KEY] = self.hashes


def recorded_hashes(ckpt: dict) -> dict | None:
    """The `image_hashes` of a checkpoint dict (`lungnet.artifacts.checkpoint.read_checkpoint`), or None for older
    ones."""
    hashes = ckpt.get(HASH_KEY)
    return hashes if isinstance(hashes, dict) and hashes.get("version") == 1 else None


def fill_dhash(table: pd.DataFrame) -> pd.DataFrame:
    """Decodes the images that have no dHash yet (``data.verify=false``) and adds it; unreadable ones keep ''."""
    table = table.copy()
    if "dhash" not in table:
        table["dhash"] = ""
    for i in np.flatnonzero(table["dhash"].fillna("").to_numpy() == ""):
        try:
            table.iloc[i, table.columns.get_loc("dhash")] = dhash(read_image(table["path"].iloc[i]))
        except ImageReadError as exc:
            log.warning("No near-duplicate check for %s: %s", printable(table["path"].iloc[i]), exc.reason)
    return table


@dataclass
class Overlap:
    """Evaluated images that are copies of images the model was trained (or validated) on.

    Attributes:
        n_evaluated: images checked.
        exact: per recorded split, evaluated images whose bytes equal one of its images.
        near: per recorded split, evaluated images within ``near_threshold`` dHash bits of one (exact included);
            empty when near duplicates were not checked.
        near_threshold: the threshold in bits, or None.
        examples: up to 10 ``{"path", "split", "kind", "distance"}`` rows.
        recorded: whether the checkpoint had hashes at all (False for checkpoints made before lungnet kept them).
        allowed: ``data.allow_leakage=true`` let the evaluation go on.
        n_seen: evaluated images found among the recorded ones (exact or near, any split; each counted once).
        seen: per row of the evaluated table, whether it is one of them.
    """

    n_evaluated: int
    exact: dict[str, int] = field(default_factory=dict)
    near: dict[str, int] = field(default_factory=dict)
    near_threshold: int | None = None
    examples: list[dict] = field(default_factory=list)
    recorded: bool = True
    allowed: bool = False
    n_seen: int = 0
    seen: np.ndarray | None = field(default=None, repr=False)

    def summary(self) -> dict:
        """A JSON-friendly dict (metrics.json ``training_overlap``), without the per-row ``seen`` mask."""
        return {k: v for k, v in asdict(self).items() if k != "seen"}


def find_overlap(table: pd.DataFrame, hashes: dict | None, near_threshold: int | None, against=RECORDED_SPLITS):
    """Which rows of ``table`` (``sha1``, and ``dhash`` for near copies) are among the recorded images.

    Args:
        table: the evaluated images (after `scan_files`).
        hashes: a checkpoint's `image_hashes` (None: nothing recorded, nothing found).
        near_threshold: dHash distance in bits that still counts as a copy; None: exact copies only.
        against: the recorded splits to compare with (``("train",)`` when evaluating the model's own val split).

    Returns:
        An `Overlap`.
    """
    result = Overlap(n_evaluated=len(table), near_threshold=near_threshold, recorded=hashes is not None)
    seen = np.zeros(len(table), dtype=bool)
    result.seen = seen
    if hashes is None or table.empty:
        return result
    evaluated_exact = exact64(table["sha1"].fillna("0" * 40).replace("", "0" * 40))
    for split in against:
        recorded = hashes.get(split) or {}
        exact = np.isin(evaluated_exact, np.asarray(recorded.get("exact", torch.zeros(0)), dtype=np.int64))
        exact &= (table["sha1"] != "").to_numpy()
        result.exact[split] = int(exact.sum())
        hits = [(i, "exact copy", 0) for i in np.flatnonzero(exact)]
        if near_threshold is not None:
            near = _near_rows(
                table, np.asarray(recorded.get("dhash", torch.zeros(0, DHASH_BYTES)), np.uint8), near_threshold
            )
            result.near[split] = int(len(near))
            hits += [(i, "near copy", d) for i, d in near.items() if not exact[i]]
            exact[list(near)] = True
        seen |= exact
        for i, kind, distance in hits[: max(0, 10 - len(result.examples))]:
            result.examples.append(
                {"path": printable(table["path"].iloc[i]), "split": split, "kind": kind, "distance": int(distance)}
            )
    result.n_seen = int(seen.sum())
    return result


def _near_rows(table: pd.DataFrame, recorded: np.ndarray, threshold: int) -> dict[int, int]:
    """``{row: smallest distance}`` for rows within ``threshold`` bits of a recorded dHash."""
    has = table["dhash"].fillna("").str.len().to_numpy() == 2 * DHASH_BYTES
    rows = np.flatnonzero(has)
    if not len(rows) or not len(recorded):
        return {}
    ours = dhash_bytes(table["dhash"].iloc[rows]).copy().view(np.uint64)
    theirs = np.ascontiguousarray(recorded).view(np.uint64)
    pairs = near_pairs(ours, theirs, int(threshold))
    best = pd.Series(pairs[:, 2]).groupby(rows[pairs[:, 0]]).min()
    return {int(row): int(d) for row, d in best.items()}


def enforce(overlap: Overlap, allow: bool, checkpoint: str | Path) -> Overlap:
    """Stops when evaluated images are among the checkpoint's training or validation images.

    Raises:
        DataError: copies found and ``allow`` is False; the message gives the counts and examples.
    """
    overlap.allowed = bool(allow)
    if not overlap.recorded:
        log.warning(
            "%s keeps no image hashes (made before lungnet recorded them): overlap with its training "
            "images not checked",
            checkpoint,
        )
        return overlap
    if not overlap.n_seen:
        return overlap
    counts = "; ".join(
        f"{split}: {overlap.exact.get(split, 0)} exact" + (f", {overlap.near[split]} near" if overlap.near else "")
        for split in overlap.exact
    )
    examples = "\n".join(f"  {e['path']} ({e['kind']} of a {e['split']} image)" for e in overlap.examples[:5])
    message = (
        f"{overlap.n_seen} of {overlap.n_evaluated} evaluated images are copies of images {checkpoint} was trained "
        f"or validated on ({counts}), e.g.:\n{examples}\n"
    )
    if not allow:
        raise DataError(
            message + "Evaluate on images the model has not seen, or set data.allow_leakage=true to "
            "evaluate anyway (the report then says so; the numbers will be optimistic)."
        )
    log.warning("%sdata.allow_leakage=true: evaluating anyway (optimistic numbers)", message)
    return overlap


def overlap_markdown(summary: dict | None) -> str:
    """The report section for metrics.json's ``training_overlap`` ('' when nothing was checked or found)."""
    if not summary:
        return ""
    if not summary["recorded"]:
        return (
            "## Overlap with the training images\n\nThe checkpoint keeps no image hashes (made before lungnet "
            "recorded them): whether these images were trained on was not checked.\n"
        )
    if not summary["n_seen"]:
        kinds = "exact" + (f" or near (dHash within {summary['near_threshold']} bits)" if summary["near"] else "")
        return (
            f"## Overlap with the training images\n\nNone of the {summary['n_evaluated']} images is an {kinds} "
            "copy of an image the model was trained or validated on.\n"
        )
    rows = "\n".join(f"- `{e['path']}`: {e['kind']} of a {e['split']} image" for e in summary["examples"])
    return (
        "## Overlap with the training images\n\n"
        f"**{summary['n_seen']} of {summary['n_evaluated']} evaluated images are copies of images the model was "
        f"trained or validated on** (exact: {summary['exact']}; near: {summary['near'] or 'not checked'}). "
        "The evaluation ran because data.allow_leakage=true: its numbers are optimistic.\n\n" + rows + "\n"
    )


def training_copies(files: list[str], hashes: dict | None) -> dict[str, str]:
    """``{file: "train" | "val"}`` for the files whose bytes equal an image the checkpoint was trained or validated on
    (exact copies; `predict.py` marks them). Unreadable files are skipped (the prediction reports them)."""
    if hashes is None or not files:
        return {}
    recorded = {
        s: set(np.asarray((hashes.get(s) or {}).get("exact", torch.zeros(0))).tolist()) for s in RECORDED_SPLITS
    }
    found = {}
    for f in files:
        try:
            value = int(exact64(pd.Series([hashlib.sha1(Path(f).read_bytes()).hexdigest()]))[0])
        except OSError:
            continue
        split = next((s for s in RECORDED_SPLITS if value in recorded[s]), None)
        if split:
            found[str(f)] = split
    return found
