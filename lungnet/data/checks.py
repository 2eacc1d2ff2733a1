"""Data checks at setup: unreadable files, images under two labels, exact and near duplicates, and patient leakage
across splits.

Near duplicates use a 256-bit difference hash (dHash, 16x16) of the decoded grayscale image:
robust to resizing, recompression and small intensity changes, unlike the exact byte hash. A
64-bit dHash is useless on chest X-rays (they all look alike: on DarkCovidNet 40 % of images
have another within 4 bits); at 256 bits unrelated radiographs differ by 18 bits or more (1st
percentile) while resized or recompressed copies stay within about 13.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from lungnet.data.images import ImageReadError, read_image
from lungnet.data.near_duplicates import near_duplicate_report
from lungnet.data.sources import DataError
from lungnet.data.splits import check_patient_overlap, split_overlap
from lungnet.io import printable, write_csv

log = logging.getLogger(__name__)

HASH_SIDE = 16  # dHash grid: HASH_SIDE**2 = 256 bits
SCAN_CHUNK = 16  # files per task handed to a scan process
POOL_FROM = 128  # fewer files are scanned in this process: starting the pool costs more (importing pandas et al.)


def dhash(image: np.ndarray, side: int = HASH_SIDE) -> str:
    """Difference hash of a grayscale image: one bit per horizontal neighbour pair of a side x (side+1) grid.

    Args:
        image: (H, W) float array, as `read_image` returns.
        side: grid side; the hash has ``side**2`` bits.

    Returns:
        The hash as a hex string.
    """
    small = Image.fromarray(np.asarray(image, dtype=np.float32), mode="F").resize(
        (side + 1, side), Image.Resampling.BOX
    )
    grid = np.asarray(small)
    return np.packbits(grid[:, 1:] > grid[:, :-1]).tobytes().hex()


def _check_one(path: str, decode: bool) -> tuple[str, str, str, int, int]:
    """(sha1 of the bytes or '', error reason or '', dHash or '', height, width): whatever reading one file raises is
    its reason; the native size is 0 x 0 when the file was not decoded. The file is read once: its bytes are hashed
    and decoded from memory."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        return "", f"cannot read file ({exc.strerror or exc})", "", 0, 0
    digest = hashlib.sha1(raw).hexdigest()
    if not decode:
        return digest, "", "", 0, 0
    try:
        image = read_image(path, data=raw)
        return digest, "", dhash(image), int(image.shape[0]), int(image.shape[1])
    except ImageReadError as exc:
        return digest, exc.reason, "", 0, 0
    except Exception as exc:  # noqa: BLE001 - one file's fault, of whatever type, is that file's row in bad_files.csv
        # not an ImageReadError: a case read_image does not name yet (or a bug), so its type and traceback are kept
        log.warning("Unexpected %s reading %s", type(exc).__name__, printable(path), exc_info=True)
        return digest, f"unreadable ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})", "", 0, 0


def _check_chunk(paths: list[str], decode: bool) -> list[tuple[str, str, str, int, int]]:
    return [_check_one(p, decode) for p in paths]


def available_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def check_paths(
    paths: list[str], decode: bool, workers: int | None = None, desc: str = "Checking images"
) -> list[tuple[str, str, str, int, int]]:
    """`_check_one` over ``paths`` with a progress bar: in this process with one worker, else in ``workers``
    processes (None: every available core; decoding holds the GIL for much of its time: threads do not scale).

    Returns:
        One (sha1, error, dhash, height, width) tuple per path, in order.
    """
    workers = available_cores() if workers is None else max(1, int(workers))
    bar = tqdm(total=len(paths), desc=desc, unit="img", leave=False, mininterval=1.0)
    if workers == 1 or len(paths) < POOL_FROM:
        results = []
        for p in paths:
            results.append(_check_one(p, decode))
            bar.update()
        bar.close()
        return results
    chunks = [paths[i : i + SCAN_CHUNK] for i in range(0, len(paths), SCAN_CHUNK)]
    results = []
    if sys.platform.startswith("linux"):  # not fork: this process may hold threads (torch, tqdm)
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])  # imported once in the server, not in every worker
    else:
        context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=context) as pool:
        for part in pool.map(_check_chunk, chunks, [decode] * len(chunks)):
            results.extend(part)
            bar.update(len(part))
    bar.close()
    return results


def scan_files(
    table: pd.DataFrame, verify: bool = True, workers: int | None = None, near_duplicates: bool = False
) -> pd.DataFrame:
    """Hashes every file and (with ``verify`` or ``near_duplicates``) decodes it once (`check_paths`).

    A row the source already marked bad (a non-empty ``error``, e.g. a blank label cell) keeps its reason and is
    not read, so it is reported and skipped (or refused) like an unreadable file. Whatever reading one file raises
    becomes that file's ``error`` (an exception other than `ImageReadError` is also logged with its traceback).
    `lungnet.data.manifest.scan_table` does the same and keeps what it found for the next command.

    Returns:
        The table with ``sha1``, ``error`` ('' for good files) and ``dhash`` ('' when not decoded) columns.
    """
    paths = table["path"].tolist()
    known = table["error"].fillna("").astype(str).tolist() if "error" in table else [""] * len(paths)
    todo = [p for p, e in zip(paths, known, strict=True) if not e]
    found = dict(zip(todo, check_paths(todo, bool(verify or near_duplicates), workers), strict=True))
    results = [found[p] if not e else ("", e, "") for p, e in zip(paths, known, strict=True)]
    table = table.copy()
    table["sha1"] = [r[0] for r in results]
    table["error"] = [r[1] for r in results]
    table["dhash"] = [r[2] for r in results]
    return table


def label_key(table: pd.DataFrame) -> pd.Series:
    """Each row's label in a comparable form: a multi-label finding string as its sorted set (``B|A`` is ``A|B``)."""
    labels = table["label"].fillna("").astype(str).tolist()
    keys = {s: "|".join(sorted({t.strip() for t in s.split("|")})) for s in set(labels)}  # once per distinct cell
    return pd.Series([keys[s] for s in labels], index=table.index, dtype=object)


def drop_repeated_rows(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (file, label): a label file that lists an image twice with the same label counts it once."""
    if table["path"].is_unique:  # a repeated row repeats a path: none here (the usual table), no label keys
        return table
    repeated = pd.DataFrame({"path": table["path"], "label": label_key(table)}).duplicated().to_numpy()
    if not repeated.any():
        return table
    log.warning(
        "%d row(s) repeat a file with the same label (e.g. %s): each counted once",
        int(repeated.sum()),
        printable(table["path"][repeated].iloc[0]),
    )
    return table[~repeated].reset_index(drop=True)


def _origin(table: pd.DataFrame, i) -> str:
    """`` (Data_Entry_2017.csv line 7)``: where the source read a row's label (``origin``), or ''."""
    origin = str(table.at[i, "origin"]) if "origin" in table else ""
    return f" ({origin})" if origin and origin != "nan" else ""


def mark_label_conflicts(table: pd.DataFrame) -> pd.DataFrame:
    """Marks as bad every readable row whose image (its bytes: ``sha1``) another row gives a different label.

    One rule for every source: a byte copy in another class folder, or two rows of a label CSV for one file. Each
    row's ``error`` names the other row, so `handle_bad_files` stops the run naming both, or (``skip``) lists both
    in ``bad_files.csv`` and trains on neither: which label is right cannot be told.

    Args:
        table: the table after `scan_files` (``sha1``, ``error``, ``label``; ``origin`` optional).

    Returns:
        A copy with ``error`` set on the contradicting rows.
    """
    sha1 = table["sha1"]
    usable = (table["error"].to_numpy() == "") & (sha1.to_numpy() != "")
    table = table.copy()
    shared = usable & sha1.duplicated(keep=False).to_numpy()
    if not shared.any():  # no image read under two rows (the usual table): nothing to compare
        return table
    shared = table.loc[shared, ["sha1", "source"] if "source" in table else ["sha1"]]
    key = label_key(table)
    # data=multi: a copy in another data set is named in that set's vocabulary, not a contradiction (it stays grouped)
    for _, rows in shared.groupby(["sha1", "source"] if "source" in shared else "sha1", sort=False):
        if key[rows.index].nunique() < 2:
            continue
        for i in rows.index:
            j = next(k for k in rows.index if key[k] != key[i])
            table.at[i, "error"] = (
                f"label {table.at[i, 'label']!r}{_origin(table, i)} contradicts label {table.at[j, 'label']!r} of "
                f"the same image (identical bytes) at {printable(table.at[j, 'path'])}{_origin(table, j)}"
            )
    return table


def bad_rows(table: pd.DataFrame, good: np.ndarray) -> pd.DataFrame:
    """The ``path`` and ``error`` of the rows not ``good``, numbered from 0 (each column's array taken, not a ``loc``
    of rows and columns: ~0.6 ms less of a command's fixed setup cost)."""
    bad = np.flatnonzero(~good)
    return pd.DataFrame({c: table[c].array[bad] for c in ("path", "error")})


def handle_bad_files(table: pd.DataFrame, policy: str, report: Path | None) -> pd.DataFrame:
    """Writes bad files to ``report`` (CSV: path, error) and drops them (``skip``) or stops (``error``).

    Raises:
        DataError: ``policy == "error"`` and some files are bad (the message lists them).
    """
    if policy not in {"skip", "error"}:
        raise DataError(f"data.on_bad_file must be 'skip' or 'error', got {policy!r}")
    is_bad = table["error"].to_numpy() != ""
    if report is not None:
        write_csv(report, table.loc[is_bad, ["path", "error"]])
    if not is_bad.any():
        return table
    bad = table[is_bad]
    listing = "\n".join(
        f"  {printable(p)}: {e}" for p, e in zip(bad["path"].head(20), bad["error"].head(20), strict=True)
    )
    more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
    where = f" (full list: {report})" if report is not None else ""
    if policy == "error":
        raise DataError(
            f"{len(bad)} unusable image file(s) (unreadable, a blank label, or contradicting labels){where}:\n"
            f"{listing}{more}\n"
            "Fix or remove them, or set data.on_bad_file=skip to train without them."
        )
    log.warning(
        "Skipping %d unusable image file(s) (unreadable, a blank label, or contradicting labels)%s:\n%s%s",
        len(bad),
        where,
        listing,
        more,
    )
    return table[table["error"] == ""].reset_index(drop=True)


def check_class_sizes(table: pd.DataFrame, labels: list[str], name: str, left_out: int = 0, minimum: int = 2) -> None:
    """Every class of a single-label data set has at least ``minimum`` usable images (one to train, one to check).

    Args:
        table: the usable images (``label`` column).
        labels: the classes the model will be told about.
        name: the data set, for the message.
        left_out: unreadable or unlabelled files already left out (said in the message).
        minimum: images each class needs.

    Raises:
        DataError: names the classes, their counts and what to do.
    """
    counts = table["label"].value_counts()
    few = {lab: int(counts.get(lab, 0)) for lab in labels if counts.get(lab, 0) < minimum}
    if few:
        listing = ", ".join(f"'{lab}' has {n}" for lab, n in few.items())
        bad = f" ({left_out} unreadable or unlabelled file(s) were left out)" if left_out else ""
        raise DataError(
            f"Dataset '{name}': {listing} usable image(s){bad}; every class needs at least {minimum} (one to train "
            "on, one to validate). Add images of it, or use labels without it (nih6: data.options.findings); a "
            "model cannot learn a class it never sees"
        )


def check_training_classes(table: pd.DataFrame, labels: list[str], name: str, multilabel: bool) -> None:
    """After splitting, the training split holds every class (single-label); multi-label findings only warn.

    Raises:
        DataError: a class without training images; names where its images went and what to do.
    """
    in_train = table["split"].to_numpy() == "train"
    if multilabel:
        known = [lab for lab in labels if lab in table]
        # one pass over the training rows' label columns, not one per label
        positive = (table[known].to_numpy()[in_train] == 1).any(axis=0)
        empty = [lab for lab, hit in zip(known, positive, strict=True) if not hit]
        if empty:
            log.warning("Dataset '%s': no positive training image of %s: those outputs stay untrained", name, empty)
        return
    counts = table.loc[in_train, "label"].value_counts()
    missing = [lab for lab in labels if counts.get(lab, 0) == 0]
    if missing:
        where = {lab: table.loc[table["label"] == lab, "split"].value_counts().to_dict() for lab in missing}
        raise DataError(
            f"Dataset '{name}': no training image of {missing} after splitting (their images: {where}). Add images "
            "of it, or, when the data ships its own split, move some into its train folder"
        )


def leakage_report(table: pd.DataFrame, near_threshold: int | None = None) -> dict:
    """Counts exact duplicates (same bytes) and shared patients between each pair of splits.

    Args:
        table: the split table (with ``sha1`` and, for near duplicates, ``dhash`` from `scan_files`).
        near_threshold: also count perceptual near duplicates within this many bits (None: off).
    """
    report: dict = {"duplicate_images": {}, "shared_patients": check_patient_overlap(table)}
    if "sha1" in table and (table["sha1"].to_numpy() != "").any():
        sha1 = table["sha1"]
        report["duplicate_images"] = split_overlap(sha1, table["split"])
        dup_within = sha1[sha1.to_numpy() != ""].duplicated().sum()
        report["duplicate_images"]["within_dataset"] = int(dup_within)
    if near_threshold is not None and "dhash" in table:
        report.update(near_duplicate_report(table, int(near_threshold)))
    return report


def enforce_no_test_leak(report: dict, allow: bool) -> None:
    """Refuses to go on when the test split shares images (exact or near) or patients with train or val.

    Raises:
        DataError: leakage found and ``allow`` is False.
    """
    kinds = ("duplicate_images", "near_duplicate_images", "shared_patients")
    problems = [
        f"{kind.replace('_', ' ')} {pair}: {n}"
        for kind in kinds
        for pair, n in report.get(kind, {}).items()
        if pair in ("train/test", "val/test") and n
    ]
    if problems and not allow:
        near = any(p.startswith("near") for p in problems) and "near_duplicate_groups" not in report
        group = ", or data.near_duplicates=group to keep near copies in one split (those lungnet makes)" if near else ""
        raise DataError(
            "The test split leaks into training data (" + "; ".join(problems) + "; details in data_report.json). "
            f"Remove the duplicates{group}, or set data.allow_leakage=true to run anyway (results will be optimistic)."
        )
    if problems:
        log.warning("Test leakage allowed by data.allow_leakage: %s", "; ".join(problems))
