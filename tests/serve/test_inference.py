"""Predictor and predict.py: preprocessing as in evaluation, every readable format, error rows, heatmaps, exports."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lungnet.artifacts.checkpoint import CheckpointError, load_model
from lungnet.commands.wrapper import run_safely
from lungnet.data.images import collect_inputs
from lungnet.data.preprocessing import uncrop
from lungnet.data.transforms import Normalize, build_transform, make_pipeline
from lungnet.models.registry import create_model
from lungnet.serve.inference import Predictor, Preprocessing
from lungnet.serve.predict_batch import run_batch
from tests.conftest import compose_cfg, run_script, shared, write_png

LABELS = ["Covid-19", "No_findings", "Pneumonia"]


def make_checkpoint(
    path: Path,
    name: str = "simple_cnn",
    size: int = 32,
    labels: list[str] | None = None,
    resize: str = "squash",
    multilabel: bool = False,
    in_chans: int | None = None,
    seed: int = 0,
) -> Path:
    """A lungnet checkpoint of a randomly initialised model, in the layout training writes (no training)."""
    labels = labels or LABELS
    torch.manual_seed(seed)
    options = {"in_chans": in_chans or (1 if name == "simple_cnn" else 3), "drop_rate": 0.0, "head_hidden": 0}
    model = create_model(name, num_classes=len(labels), image_size=size, **options)
    hparams = {
        "model": {"name": name, "pretrained": False, "weights": None, "cache_dir": None, **options},
        "labels": labels,
        "multilabel": multilabel,
        "spec": model.spec.to_dict(),
        "data": {"source": "darkcovidnet", "image_size": size, "resize": resize},
    }
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "hyper_parameters": hparams}, path)
    return path


def overflowing_checkpoint(path: Path) -> Path:
    """A checkpoint whose weights are all finite but whose output is not: a head of 3e38s (float32 tops at 3.4e38)
    overflows, as after a training run that blew up without a NaN (lr=100)."""
    make_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    for key, tensor in checkpoint["state_dict"].items():
        if key.startswith("model.head.") and tensor.is_floating_point():
            tensor.fill_(3e38)
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.ckpt")


@pytest.fixture(scope="module")
def predictor(ckpt) -> Predictor:
    return Predictor(ckpt)


def xray(cls: str = "Pneumonia", k: int = 0) -> Path:
    return sorted((shared("darkcovidnet") / cls).glob("*.jpg"))[k]


def test_preprocessing_is_the_checkpoint_eval_pipeline(predictor, ckpt):
    loaded = load_model(ckpt)
    image, tensor = predictor.load(xray())
    expected = make_pipeline(
        build_transform(loaded.spec.input_size, None, loaded.data["resize"]),
        Normalize(loaded.spec.mean, loaded.spec.std, loaded.spec.in_chans),
    )(image)
    assert tensor.shape == (1, 32, 32)
    torch.testing.assert_close(tensor, expected)
    with torch.no_grad():
        reference = loaded.probabilities(loaded.model(expected[None])).numpy()
    np.testing.assert_allclose(predictor.probabilities(tensor[None]), reference, atol=1e-6)


def test_monochrome1_dicom_comes_out_with_dark_lungs(tmp_path):
    predictor = Predictor(make_checkpoint(tmp_path / "m.ckpt", size=64))
    _, tensor = predictor.load(shared("dicom") / "RG1_UNCR.dcm")
    img = tensor[0].numpy()  # normalisation is monotone: darker stays darker
    rows = slice(int(0.2 * 64), int(0.5 * 64))
    lungs = np.concatenate([img[rows, int(0.2 * 64) : int(0.35 * 64)], img[rows, int(0.65 * 64) : int(0.8 * 64)]], 1)
    mediastinum = img[rows, int(0.45 * 64) : int(0.55 * 64)]
    abdomen = img[int(0.8 * 64) : int(0.95 * 64), int(0.2 * 64) : int(0.8 * 64)]
    assert lungs.mean() < mediastinum.mean() - 0.3 and lungs.mean() < abdomen.mean() - 0.3


def test_jpeg2000_dicom_matches_the_uncompressed_one(predictor):
    rows = predictor.predict([shared("dicom") / "RG1_UNCR.dcm", shared("dicom") / "RG1_J2KI.dcm"])
    assert [r["error"] for r in rows] == ["", ""]  # decoded here (Pillow's OpenJPEG), lossy but close
    p = np.array([[r[f"p_{lab}"] for lab in LABELS] for r in rows])
    assert np.abs(p[0] - p[1]).max() < 0.02


def test_missing_jpeg2000_decoder_names_the_package(predictor, monkeypatch):
    import pydicom.dataset

    def no_decoder(self):
        raise RuntimeError("Unable to decode the pixel data: no plugins available")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(no_decoder))
    (row,) = predictor.predict([shared("dicom") / "RG1_J2KI.dcm"])
    assert "pip install pylibjpeg pylibjpeg-openjpeg" in row["error"] and row["predicted"] == ""


def test_formats_16bit_tiff_rgba_and_error_rows(predictor, tmp_path):
    base = (np.linspace(0, 1, 48 * 48).reshape(48, 48) ** 2).astype(np.float64)
    Image.fromarray((base * 65535).astype(np.uint16)).save(tmp_path / "a16.png")
    Image.fromarray((base * 255).astype(np.uint8)).save(tmp_path / "b8.tif")
    rgba = np.dstack([(base * 255).astype(np.uint8)] * 3 + [np.full((48, 48), 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "c.png")
    (tmp_path / "d.png").write_text("not an image")
    (tmp_path / "e.jpg").write_bytes(b"")
    rows = predictor.predict(collect_inputs(tmp_path), batch_size=2)
    assert [Path(r["file"]).name for r in rows] == ["a16.png", "b8.tif", "c.png", "d.png", "e.jpg"]
    good, bad = rows[:3], rows[3:]
    assert all(r["error"] == "" and r["predicted"] in LABELS for r in good)
    probs = np.array([[r[f"p_{lab}"] for lab in LABELS] for r in good])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-3)  # 16-bit keeps the same picture as 8-bit
    assert "not an image" in bad[0]["error"] and "empty file" in bad[1]["error"]


def test_without_a_decision_file_the_prediction_is_the_arg_max(predictor):
    rows = predictor.predict([xray("Covid-19"), xray("No_findings")])
    for r in rows:
        assert r["predicted"] == max(LABELS, key=lambda lab: r[f"p_{lab}"])


def test_collect_inputs_folder_glob_and_missing(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("sub/x.png", "y.JPG", "notes.txt", ".hidden.png"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in collect_inputs(tmp_path)] == ["x.png", "y.JPG"]  # sorted by path: sub/x.png, y.JPG
    assert [p.name for p in collect_inputs(f"{tmp_path}/**/*.png")] == ["x.png"]
    assert [p.name for p in collect_inputs(tmp_path / "notes.txt")] == ["notes.txt"]  # named: kept (error row)
    with pytest.raises(FileNotFoundError, match="No files match"):
        collect_inputs(f"{tmp_path}/*.dcm")
    with pytest.raises(FileNotFoundError, match="Input not found"):
        collect_inputs(tmp_path / "nope")


def test_pad_resize_heatmaps_cover_only_the_image(tmp_path):
    predictor = Predictor(make_checkpoint(tmp_path / "p.ckpt", size=32, resize="pad"))
    wide = Image.open(xray()).convert("L")
    wide = wide.crop((0, 0, wide.width, wide.height // 2))  # 2:1, so padding adds bands above and below
    wide.save(tmp_path / "wide.png")
    (pred,) = predictor.predict_iter([tmp_path / "wide.png"], explain="gradcam")
    h, w = pred.image.shape
    hh, hw = pred.heatmap.shape
    assert hw == 32 and hh in (15, 16, 17)  # the padding bands were cropped away
    rgb = predictor.overlay(pred, 0.45)
    assert rgb.shape == (h, w, 3) and rgb.dtype == np.uint8


def test_missing_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        Predictor(tmp_path / "none.ckpt")


def _script(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return run_script("predict.py", args, cwd, timeout=300)


def test_predict_script_writes_csv_and_overlays(ckpt, tmp_path):
    data = tmp_path / "in"
    data.mkdir()
    for k in range(2):
        (data / f"p{k}.jpg").write_bytes(xray("Pneumonia", k).read_bytes())
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "outputs"
    proc = _script([f"ckpt={ckpt}", f"input={data}", "explain=gradcam", f"paths.log_dir={out}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = list((out / "predict").glob("*/*"))
    table = pd.read_csv(run / "predictions.csv", keep_default_na=False)
    assert list(table.columns[:3]) == ["file", "predicted", "confidence"]  # no decision file: the arg-max alone
    assert {f"p_{lab}" for lab in LABELS} <= set(table.columns)
    assert table["error"].astype(bool).tolist() == [True, False, False]  # broken.png sorts first
    heat = [run / h for h in table["heatmap"] if h]
    assert len(heat) == 2
    width, height = Image.open(xray("Pneumonia", 0)).size
    png = Image.open(heat[0]).size  # the overlay (long side at most 1024 px), its colour bar and caption below it
    assert png[1] / png[0] > height / width + 0.15 and max(png) <= 1024 + 400
    assert "Predicting" in proc.stderr  # tqdm progress bar
    assert "Traceback" not in proc.stderr


def test_predict_script_user_error_exits_2_without_traceback(tmp_path):
    proc = _script([f"ckpt={tmp_path / 'x.ckpt'}", f"input={tmp_path}", f"paths.log_dir={tmp_path}"], tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "x.ckpt: not found" in output and "Traceback" not in output


def test_predict_script_exits_non_zero_when_nothing_could_be_classified(ckpt, tmp_path):
    data = tmp_path / "in"
    data.mkdir()
    (data / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (data / "b.jpg").write_bytes(b"")
    out = tmp_path / "outputs"
    proc = _script([f"ckpt={ckpt}", f"input={data}", f"paths.log_dir={out}"], tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "None of the 2 input file(s) could be read" in output, output[-3000:]
    assert "Traceback" not in output
    (run,) = list((out / "predict").glob("*/*"))
    table = pd.read_csv(run / "predictions.csv", keep_default_na=False)  # the rows are still written
    assert table["file"].map(lambda f: Path(f).name).tolist() == ["a.png", "b.jpg"] and table["error"].all()


def test_a_model_with_non_finite_output_is_refused_and_writes_no_decision(tmp_path, caplog):
    """Before: every image "decided" as the first class with empty probabilities, exit 0."""
    model = overflowing_checkpoint(tmp_path / "m" / "best.ckpt")
    images = [write_png(tmp_path / "in" / f"{k}.png", k) for k in range(3)]
    cfg = compose_cfg("predict", [f"ckpt={model}", f"input={tmp_path / 'in'}", "decision=none"])
    with pytest.raises(SystemExit) as exc:
        run_safely(run_batch, cfg, tmp_path / "out")
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert exc.value.code == 2 and len(errors) == 1, errors
    assert errors[0] == (
        f"CheckpointError: {model}: the model's output is not finite (NaN or inf) for 3 of 3 images "
        f"(e.g. {images[0]}); its weights are unusable (did its training diverge?): retrain it, e.g. with a lower "
        "optimizer.lr"
    )
    assert not (tmp_path / "out" / "predictions.csv").exists()


def test_predictor_downsamples_as_training_did(tmp_path):
    path = make_checkpoint(tmp_path / "down.ckpt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["hyper_parameters"]["data"]["downsample_to"] = 16
    torch.save(ckpt, path)
    predictor = Predictor(path)
    assert predictor.prep.downsample_to == 16
    assert Preprocessing.from_dict(predictor.prep.to_dict()) == predictor.prep  # the export sidecar keeps it
    image, tensor = predictor.load(xray())
    loaded = load_model(path)
    norm = Normalize(loaded.spec.mean, loaded.spec.std, loaded.spec.in_chans)
    torch.testing.assert_close(tensor, make_pipeline(build_transform(32, None, "squash", 16), norm)(image))
    assert not torch.allclose(tensor, make_pipeline(build_transform(32, None, "squash"), norm)(image), atol=0.05)


def test_overlay_image_is_reduced_but_the_model_input_is_not(predictor):
    dicom = shared("dicom") / "RG1_UNCR.dcm"  # 1955 x 1841 px
    (full,) = predictor.predict_iter([dicom], explain="gradcam")
    (small,) = predictor.predict_iter([dicom], explain="gradcam", image_max_side=256)
    assert full.image.shape == (1955, 1841) and small.image.shape == (256, 241)
    np.testing.assert_array_equal(small.probs, full.probs)  # the model saw the full decode both times
    assert predictor.overlay(small, 0.45).shape == (256, 241, 3)
    (plain,) = predictor.predict_iter([dicom])
    assert plain.image is None and plain.heatmap is None


def test_uncrop_lays_a_crop_heatmap_over_the_centre_of_a_wide_image():
    """``resize=crop``: the model saw the centred square; its heatmap goes there, the cut-off sides stay zero."""
    heat = np.ones((8, 8), np.float32)
    full = uncrop(heat, (100, 200))  # 100 x 100 centre square of a 100 x 200 film
    assert full.shape == (8, 16)
    assert full[:, 4:12].min() == 1.0
    assert full[:, :4].max() == full[:, 12:].max() == 0.0
    assert uncrop(heat, (50, 50)).shape == (8, 8)


def test_the_heatmap_explains_the_decided_class(tmp_path):
    """With an operating point the decision can be a class other than the arg-max: the heatmap follows the
    decision (and says which class it explains), not the arg-max."""
    from lungnet.artifacts.decision import new_record
    from lungnet.artifacts.paths import decision_path

    ckpt = make_checkpoint(tmp_path / "d.ckpt", size=32)
    files = [xray(k=k) for k in range(3)]
    plain = Predictor(ckpt, decision="none")
    probs = np.array([[row[f"p_{lab}"] for lab in LABELS] for row in plain.predict(files)])
    other = [j for j in range(len(LABELS)) if j != int(probs[0].argmax())][0]
    record = new_record(LABELS, False, ckpt)
    record.positive_class, record.thresholds = LABELS[other], {LABELS[other]: 0.0}  # always decided
    record.write(decision_path(ckpt))
    predictor = Predictor(ckpt)
    (pred,) = predictor.predict_iter([files[0]], explain="gradcam")
    assert pred.row["decision"] == pred.row["heatmap_class"] == LABELS[other]
    (argmax,) = plain.predict_iter([files[0]], explain="gradcam")
    assert argmax.row["heatmap_class"] == LABELS[int(probs[0].argmax())]
    assert not np.allclose(pred.heatmap, argmax.heatmap)
