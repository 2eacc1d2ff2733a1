"""Shared fixtures: tiny generated folders and CSVs in tmp_path, and the real sets in ../shared/data."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network in tests
if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n 2: one intra-op thread per worker (and its subprocesses)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
# training runs build prepared stores by default (data.cache: null): in a folder of this session, not ~/.cache
_CACHE = tempfile.mkdtemp(prefix="lungnet-test-")
os.environ.setdefault("LUNGNET_CACHE_DIR", os.path.join(_CACHE, "lungnet", "images"))
# data set manifests too: never beside a shared data root (../shared/data may be writable on a CI machine)
os.environ.setdefault("LUNGNET_MANIFEST_DIR", os.path.join(_CACHE, "lungnet", "manifests"))

import lungnet  # noqa: E402, F401 - registers the structured configs (lungnet.schema) that conf/*.yaml build on

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
SHARED = Path(os.environ.get("LUNGNET_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared(name: str) -> Path:
    """A real data set from ../shared/data, or skip when this checkout has none beside it."""
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"real data {path} not present (set LUNGNET_SHARED_DATA)")
    return path


def write_png(path: Path, seed: int, size: int = 32, mode: str = "L") -> Path:
    """A small random grayscale-ish image (distinct per seed)."""
    rng = np.random.default_rng(seed)
    arr = (rng.random((size, size)) * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr)
    img.convert(mode).save(path)
    return path


def make_class_folders(root: Path, classes: list[str], n: int, splits: list[str] | None = None, size: int = 32) -> Path:
    """``root/[split/]class/img_i.png`` with ``n`` distinct images per class (and split)."""
    seed = 0
    for split in splits or [""]:
        for cls in classes:
            for i in range(n):
                seed += 1
                write_png(root / split / cls / f"img_{i:03d}.png", seed, size)
    return root


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    """Pneumonia layout with train/val/test, 6 images per class and split."""
    return make_class_folders(tmp_path / "chest_xray", ["NORMAL", "PNEUMONIA"], 6, ["train", "val", "test"])


@pytest.fixture
def tiny_nih(tmp_path: Path) -> Path:
    """An NIH-like folder: Data_Entry_2017.csv and 30 PNGs from 10 patients."""
    root = tmp_path / "nih"
    findings = ["No Finding", "Effusion", "Atelectasis|Effusion", "Pneumonia", "Infiltration", "No Finding"]
    rows = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position"]
    k = 0
    for patient in range(1, 11):
        for follow in range(3):
            name = f"{patient:08d}_{follow:03d}.png"
            write_png(root / "images" / name, k)
            rows.append(f"{name},{findings[k % len(findings)]},{follow},{patient},50,M,PA")
            k += 1
    (root / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")
    return root


# Overrides for a tiny, fast training run (simple CNN, 32 px, one epoch).
TINY = [
    "model=simple_cnn",
    "data.image_size=32",
    "data.batch_size=8",
    "data.num_workers=0",
    "data.persistent_workers=false",
    "trainer.max_epochs=1",
    "trainer.precision=32-true",  # pinned: trainer=cpu says auto, which depends on the CPU
    "trainer.enable_progress_bar=false",
    "bootstrap.resamples=50",  # the intervals of the validation summary training leaves beside its checkpoint
]


def compose_cfg(name: str, overrides: list[str]):
    """Composes conf/<name>.yaml with overrides through Hydra's compose API."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def run_script(
    script: str, args: list[str], cwd: Path | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """``python <repo>/<script> args`` in a subprocess, offline and with warnings off; output captured."""
    cmd = [sys.executable, str(ROOT / script), *args]
    return subprocess.run(cmd, cwd=cwd, env=offline_env(), capture_output=True, text=True, timeout=timeout)


def run_module(
    module: str, args: list[str], cwd: Path | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """``python -m <module> args`` in a subprocess with the repository on the import path (the bench scripts run
    as modules: ``bench.perf.scale``), offline and with warnings off; output captured."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", module, *args]
    env = offline_env(PYTHONPATH=path)
    return subprocess.run(cmd, cwd=cwd or ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def start_module(module: str, args: list[str]) -> subprocess.Popen:
    """`run_module` started in the background (text pipes): several refusals can run while a test does its work."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", module, *args]
    env = offline_env(PYTHONPATH=path)
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def offline_env(**extra: str) -> dict[str, str]:
    """This process's environment for a subprocess: offline (no waiting on the Hugging Face hub), Python's
    warnings off, and ``extra`` on top."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", **extra}


def command_main(name: str):
    """The console-script function of command ``name`` (``lungnet.commands.<name>.main``)."""
    return importlib.import_module(f"lungnet.commands.{name}").main


def run_cli(command, args: list[str], monkeypatch) -> None:
    """Runs a `lungnet.commands.wrapper` command in-process with ``args`` as its command line (Hydra parses
    ``sys.argv``)."""
    monkeypatch.setattr(sys, "argv", [f"lungnet-{command.__name__}", *args])
    command()
