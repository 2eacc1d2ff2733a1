"""lungnet.serve.predict_batch: predict.py's heatmap PNGs carry the app's caption; abstained and OOD images are
marked."""

from __future__ import annotations

import numpy as np
from PIL import Image

from lungnet.artifacts.decision import new_record
from lungnet.artifacts.paths import decision_path
from lungnet.serve.inference import Predictor
from lungnet.serve.predict_batch import COLUMNS, prediction_row
from tests.serve.test_inference import LABELS, make_checkpoint, xray


def red_pixels(path) -> int:
    """Pure red pixels: the frame of a marked heatmap (the overlay blends its colours with the grey X-ray)."""
    arr = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int(((arr[..., 0] > 240) & (arr[..., 1] < 15) & (arr[..., 2] < 15)).sum())


def test_heatmap_pngs_carry_the_caption_and_mark_abstained_images(tmp_path):
    ckpt = make_checkpoint(tmp_path / "best.ckpt", size=32)
    record = new_record(LABELS, False, ckpt)
    record.abstain_below = 1.0  # every image is referred
    record.write(tmp_path / "all.decision.json")
    paths = {}
    for name, decision in (("plain", "none"), ("abstained", str(tmp_path / "all.decision.json"))):
        predictor = Predictor(ckpt, decision=decision)
        (pred,) = predictor.predict_iter([xray()], explain="gradcam", image_max_side=256)
        row = prediction_row(predictor, pred, 0, tmp_path / name, "gradcam", 0.45, {})
        paths[name] = tmp_path / name / row["heatmap"]
        overlay = predictor.overlay(pred, 0.45)
        png = Image.open(paths[name])
        assert png.size[1] / png.size[0] > overlay.shape[0] / overlay.shape[1] + 0.15  # colour bar and caption below
    assert red_pixels(paths["abstained"]) > red_pixels(paths["plain"]) + 500  # the red frame
    assert not decision_path(ckpt).exists()
    assert "decision_note" in COLUMNS
