"""Data checks at setup: unreadable files, exact duplicates and patient leakage across splits."""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from lungnet.data.images import ImageReadError, read_image
from lungnet.data.sources import DataError
from lungnet.data.splits import check_patient_overlap

log = logging.getLogger(__name__)


def _check_one(path: str, verify: bool) -> tuple[str, str]:
    """(sha1 of the bytes or '', error reason or '')."""
    try:
        digest = hashlib.sha1(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        return "", f"cannot read file ({exc.strerror or exc})"
    if verify:
        try:
            read_image(path)
        except ImageReadError as exc:
            return digest, exc.reason
    return digest, ""


def scan_files(table: pd.DataFrame, verify: bool = True, workers: int = 4) -> pd.DataFrame:
    """Hashes every file and (with ``verify``) decodes it once.

    Returns:
        The table with a ``sha1`` column and an ``error`` column ('' for good files).
    """
    paths = table["path"].tolist()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(
            tqdm(
                pool.map(lambda p: _check_one(p, verify), paths),
                total=len(paths),
                desc="Checking images",
                unit="img",
                leave=False,
                mininterval=1.0,
            )
        )
    table = table.copy()
    table["sha1"] = [r[0] for r in results]
    table["error"] = [r[1] for r in results]
    return table


def handle_bad_files(table: pd.DataFrame, policy: str, report: Path | None) -> pd.DataFrame:
    """Writes bad files to ``report`` (CSV) and drops them (``skip``) or stops (``error``).

    Raises:
        DataError: ``policy == "error"`` and some files are bad (the message lists them).
    """
    if policy not in {"skip", "error"}:
        raise DataError(f"data.on_bad_file must be 'skip' or 'error', got {policy!r}")
    bad = table[table["error"] != ""]
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        tmp = report.with_suffix(".tmp")
        bad[["path", "error"]].to_csv(tmp, index=False, encoding="utf-8", errors="backslashreplace")
        tmp.replace(report)
    if bad.empty:
        return table
    listing = "\n".join(f"  {p}: {e}" for p, e in zip(bad["path"].head(20), bad["error"].head(20), strict=True))
    more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
    where = f" (full list: {report})" if report is not None else ""
    if policy == "error":
        raise DataError(
            f"{len(bad)} unreadable image file(s){where}:\n{listing}{more}\n"
            "Fix or remove them, or set data.on_bad_file=skip to train without them."
        )
    log.warning("Skipping %d unreadable image file(s)%s:\n%s%s", len(bad), where, listing, more)
    return table[table["error"] == ""].reset_index(drop=True)


def leakage_report(table: pd.DataFrame) -> dict:
    """Counts exact duplicates (same bytes) and shared patients between each pair of splits."""
    report: dict = {"duplicate_images": {}, "shared_patients": check_patient_overlap(table)}
    if "sha1" in table and (table["sha1"] != "").any():
        splits = ["train", "val", "test"]
        for i, a in enumerate(splits):
            for b in splits[i + 1 :]:
                ha = set(table.loc[table["split"] == a, "sha1"])
                hb = set(table.loc[table["split"] == b, "sha1"])
                report["duplicate_images"][f"{a}/{b}"] = len((ha & hb) - {""})
        dup_within = table[table["sha1"] != ""].duplicated("sha1").sum()
        report["duplicate_images"]["within_dataset"] = int(dup_within)
    return report


def enforce_no_test_leak(report: dict, allow: bool) -> None:
    """Refuses to go on when the test split shares images or patients with train or val.

    Raises:
        DataError: leakage found and ``allow`` is False.
    """
    problems = [
        f"{kind} {pair}: {n}"
        for kind in ("duplicate_images", "shared_patients")
        for pair, n in report[kind].items()
        if pair in ("train/test", "val/test") and n
    ]
    if problems and not allow:
        raise DataError(
            "The test split leaks into training data (" + "; ".join(problems) + "). "
            "Remove the duplicates, or set data.allow_leakage=true to run anyway (results will be optimistic)."
        )
    if problems:
        log.warning("Test leakage allowed by data.allow_leakage: %s", "; ".join(problems))
