"""What a run directory records to be reproducible: versions, git commit, data fingerprint."""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path

import pandas as pd

PACKAGES = (
    "lungnet",
    "torch",
    "torchvision",
    "pytorch-lightning",
    "timm",
    "torchmetrics",
    "albumentations",
    "hydra-core",
    "grad-cam",
    "numpy",
    "pandas",
    "scikit-learn",
    "pydicom",
)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that decide a run's numbers."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit() -> str:
    """The commit of the lungnet checkout (``+dirty`` with local changes), or 'unknown'."""
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def data_fingerprint(table: pd.DataFrame) -> str:
    """SHA-256 of the sorted (path, size, split) list: changes when any file is added, removed or resized."""
    digest = hashlib.sha256()
    for path, split in sorted(zip(table["path"], table.get("split", [""] * len(table)), strict=True)):
        try:
            size = Path(path).stat().st_size
        except OSError:
            size = -1
        digest.update(f"{path}\t{size}\t{split}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def run_facts(table: pd.DataFrame | None) -> dict:
    """Everything environment.json records."""
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "git_commit": git_commit(),
        "command": " ".join(sys.argv),
        "data_fingerprint": data_fingerprint(table) if table is not None else None,
        "n_images": int(len(table)) if table is not None else 0,
    }
