"""The shortcut audit flags a model trained on a border marker and not one trained on the lungs' findings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lungnet.data.synthetic import render_phantom
from lungnet.evaluation.audit_job import audit
from lungnet.train.training import train
from tests.conftest import compose_cfg
from tests.evaluation.conftest import TINY

SIZE = 64


def write_set(root: Path, positive: str, marker: bool, n_train: int = 48, n_val: int = 24, seed: int = 0) -> Path:
    """A pneumonia-layout set of phantoms: NORMAL = Normal phantoms, PNEUMONIA = ``positive`` phantoms, the latter
    with a bright square in the top-left border band when ``marker``."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for cls, label in (("NORMAL", "Normal"), ("PNEUMONIA", positive)):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                image, _ = render_phantom(label, SIZE, rng)
                if marker and cls == "PNEUMONIA":
                    image[1:6, 1:6] = 255
                Image.fromarray(image).save(root / split / cls / f"{i:03d}.png")
    return root


def train_and_audit(tmp: Path, positive: str, marker: bool) -> dict:
    data = write_set(tmp / "data", positive, marker)
    overrides = [
        "data=pneumonia",
        f"data.root={data}",
        "data.carve_val=false",
        "data.balance=none",
        "trainer.max_epochs=6",
        "optimizer.lr=3e-3",
        *TINY,
    ]
    train(compose_cfg("train", overrides), tmp / "run")
    cfg = compose_cfg(
        "audit", [f"ckpt={tmp / 'run' / 'checkpoints' / 'best.ckpt'}", "audit.cam_n=8", "audit.resamples=200"]
    )
    return audit(cfg, tmp / "audit")


@pytest.fixture(scope="module")
def marker_audit(tmp_path_factory) -> tuple[dict, Path]:
    tmp = tmp_path_factory.mktemp("marker")
    return train_and_audit(tmp, "Normal", marker=True), tmp


@pytest.fixture(scope="module")
def lesion_audit(tmp_path_factory) -> tuple[dict, Path]:
    tmp = tmp_path_factory.mktemp("lesion")
    return train_and_audit(tmp, "Consolidation", marker=False), tmp


def by_class(result: dict) -> dict:
    return {row["class"]: row for row in result["classes"]}


def test_a_border_marker_model_is_flagged(marker_audit):
    result, tmp = marker_audit
    pneumonia = by_class(result)["PNEUMONIA"]
    assert pneumonia["intact"]["value"] > 0.9  # the marker is all there is to learn
    assert pneumonia["hidden"]["value"] > 0.9 and pneumonia["border"]["value"] > 0.9
    assert pneumonia["verdict"] == "shortcut likely"
    assert any("with the lungs hidden" in r for r in pneumonia["reasons"])
    report = (tmp / "audit" / "audit.md").read_text()
    assert "**shortcut likely**: AUROC" in report
    for name in ("audit.png", "audit_views.png", "audit.json"):
        assert (tmp / "audit" / name).is_file()
    assert json.loads((tmp / "audit" / "audit.json").read_text())["split"] == "val"


def test_a_model_of_lung_findings_is_not_flagged(lesion_audit):
    result, _ = lesion_audit
    rows = by_class(result)
    assert rows["PNEUMONIA"]["intact"]["value"] > 0.75  # it learnt the consolidation
    for row in rows.values():
        assert row["verdict"] == "no shortcut signal found", row
        assert row["hidden"]["value"] < 0.7
