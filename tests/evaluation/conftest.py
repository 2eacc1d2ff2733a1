"""A tiny trained checkpoint (simple_cnn, 32 px, synthetic phantoms, 2 epochs) shared by the evaluation tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from lungnet.train.training import train
from tests.conftest import compose_cfg

TINY = [
    "model=simple_cnn",
    "data.image_size=32",
    "data.batch_size=16",
    "data.num_workers=0",
    "data.persistent_workers=false",
    "trainer.precision=32-true",  # pinned: trainer=cpu says auto, which depends on the CPU
    "trainer.enable_progress_bar=false",
    "+trainer.enable_model_summary=false",
    "log_figures_every=1000",
    "bootstrap.resamples=50",  # the intervals of the validation summary training leaves beside its checkpoint
]

FAST_EVAL = [
    "bootstrap.resamples=200",
    "calibration.bins=10",
    "audit=false",
]  # the audit: tests/evaluation/test_audit_job.py


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A real 2-epoch training run directory on synthetic data (10 images per class and split-share)."""
    tmp = tmp_path_factory.mktemp("eval_run")
    cfg = compose_cfg(
        "train",
        [
            f"data.root={tmp / 'syn'}",
            "data.options.n_per_class=10",
            "data.options.size=32",
            "trainer.max_epochs=2",
            *TINY,
        ],
    )
    run = tmp / "run"
    train(cfg, run)
    return run


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_run: Path) -> Path:
    """The run's best checkpoint."""
    return tiny_run / "checkpoints" / "best.ckpt"
