"""explain_checkpoint, score_checkpoint and ``python -m lungnet.explain`` on a tiny checkpoint."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lungnet.artifacts.checkpoint import LoadedModel, load_model
from lungnet.commands.explain import explain_options
from lungnet.commands.explain import main as explain
from lungnet.data.labels import NIH14, SYNTHETIC
from lungnet.explain import ExplainError
from lungnet.explain.groundtruth import synthetic_cases
from lungnet.explain.pointing import score_checkpoint
from lungnet.explain.run import explain_checkpoint
from lungnet.models.registry import create_model
from tests.conftest import compose_cfg, run_cli


def _table(root: Path) -> pd.DataFrame:
    paths = sorted((root / "images").glob("*/*.png"))
    return pd.DataFrame({"path": [str(p) for p in paths], "label": [p.parent.name for p in paths]})


def test_explain_checkpoint_writes_overlays_grid_and_markdown(tiny_checkpoint, synthetic_root, tmp_path):
    result = explain_checkpoint(tiny_checkpoint, _table(synthetic_root), "gradcam", n=6, out_dir=tmp_path, alpha=0.45)
    assert result["n"] == 6 and len(result["files"]) == 6
    assert result["n_correct"] + result["n_wrong"] == 6
    for f in [*result["files"], result["grid"]]:
        with Image.open(f) as img:
            assert img.size[0] > 200
    table = pd.read_csv(result["csv"])
    assert set(table["verdict"]) <= {"correct", "wrong"} and len(table) == 6
    assert len(set(table["true"])) >= 3, "the pick should spread over the true classes"
    md = result["markdown"]
    assert md.startswith("### Explanations: Grad-CAM") and "](gradcam/grid.png)" in md
    assert sum(line.startswith("| [") for line in md.splitlines()) == 6


def test_chosen_class_and_bad_class(tiny_checkpoint, synthetic_root, tmp_path):
    result = explain_checkpoint(tiny_checkpoint, _table(synthetic_root), "eigencam", 3, "Cavity", tmp_path, alpha=0.45)
    assert set(pd.read_csv(result["csv"])["explained"]) == {"Cavity"}
    assert "class 'Cavity'" in result["markdown"]
    with pytest.raises(ExplainError, match="Unknown class"):
        explain_checkpoint(tiny_checkpoint, _table(synthetic_root), "gradcam", 2, "Pneumonia", tmp_path, alpha=0.45)


def test_multilabel_explanations_judge_the_explained_finding(tmp_path):
    torch.manual_seed(0)
    model = create_model("simple_cnn", len(NIH14), in_chans=1, image_size=32).eval()
    loaded = LoadedModel(model, model.spec, list(NIH14), True, {"image_size": 32}, {}, tmp_path / "x.ckpt")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray((rng.random((40, 40)) * 255).astype(np.uint8)).save(paths[-1])
    table = pd.DataFrame({"path": [str(p) for p in paths], **{lab: [0.0, 1.0, np.nan] for lab in NIH14}})
    result = explain_checkpoint(
        loaded, table, "hirescam", n=3, class_index="Pneumonia", out_dir=tmp_path / "o", alpha=0.45
    )
    csv = pd.read_csv(result["csv"]).set_index("path")
    assert set(csv["explained"]) == {"Pneumonia"}
    assert pd.isna(csv.loc[str(paths[2]), "verdict"]) and csv.loc[str(paths[0]), "true"] == "No Finding"
    rows = [line for line in result["markdown"].splitlines() if line.startswith("| [")]
    assert all(len(re.findall(r"(?<!\\)\|", line)) == 7 for line in rows), "a '|' in a label must not split the cell"
    assert "Atelectasis\\|Cardiomegaly" in result["markdown"]


def test_score_checkpoint_tables(tiny_checkpoint, synthetic_root, tmp_path):
    loaded = load_model(tiny_checkpoint)
    cases = synthetic_cases(_table(synthetic_root), SYNTHETIC)
    result = score_checkpoint(loaded, cases, ["gradcam", "eigencam"], tmp_path, "synthetic", n=6, sanity=True)
    summary = pd.read_csv(result["csv"])
    assert list(summary["method"]) == ["gradcam", "eigencam", "chance (uniform map)"]
    assert (summary["n"] == 6).all()
    assert summary["pointing_hit_rate"].between(0, 1).all() and summary["energy_share"].between(0, 1).all()
    assert summary.loc[:1, "spearman_vs_random"].between(-1, 1).all()
    images = pd.read_csv(result["images_csv"])
    assert len(images) == 12 and {"hit", "energy_share", "spearman_random", "chance_hit"} <= set(images.columns)
    assert "| Grad-CAM | 6 |" in result["markdown"] and Path(result["md"]).read_text() == result["markdown"]


def test_cli_explains_and_scores(tiny_checkpoint, synthetic_root, tmp_path):
    out = tmp_path / "cli"
    cfg = compose_cfg(
        "explain",
        [
            f"ckpt={tiny_checkpoint}",
            "method=gradcampp",
            "n=4",
            f"images={synthetic_root / 'images'}",
            f"out={out}",
            "score=synthetic",
            "methods=[gradcam,hirescam]",
            "score_n=3",
            "sanity=false",
        ],
    )
    result = explain.task(cfg, Path(cfg.out))  # what lungnet-explain runs in its Hydra run directory
    assert result["explain"]["n"] == 4
    report = (out / "explanations_gradcampp.md").read_text()
    assert "### Explanations: Grad-CAM++" in report and "### Explanations against ground truth: synthetic" in report
    assert (out / "pointing_synthetic.csv").is_file() and (out / "gradcampp" / "grid.png").is_file()


def test_cli_arguments(tmp_path, monkeypatch, capsys, caplog):
    cfg = compose_cfg("explain", ["ckpt=x.ckpt", "method=scorecam", "options.batch_size=8"])
    assert cfg.method == "scorecam" and cfg.options.batch_size == 8 and cfg.n == 16
    assert explain_options("scorecam", cfg.options) == {"batch_size": 8}
    assert explain_options("ig", {}) == {"n_steps": 32, "internal_batch_size": 32}  # conf/explain/ig.yaml's
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.ckpt").write_bytes(b"")  # a file: a missing ckpt is refused first
    for args, message in [
        (["x.ckpt"], "key=value"),
        (["method=gradcam"], "ckpt="),
        (["ckpt=x.ckpt", "method=lime"], "method='lime' is not valid: it must be one of: gradcam"),
    ]:
        with pytest.raises(SystemExit) as exc:
            run_cli(explain, [*args, f"out={tmp_path / 'out'}"], monkeypatch)
        assert exc.value.code == 2
        assert message in "".join(capsys.readouterr()) + caplog.text  # Hydra's handlers once the task started
    assert not (tmp_path / "out").exists()  # refused: no run directory left behind


@pytest.mark.parametrize(("resize", "shape"), [("crop", (32, 64)), ("pad", (16, 32)), ("squash", (32, 32))])
def test_maps_cover_the_image_content_under_every_resize(tiny_checkpoint, tmp_path, resize, shape):
    """A 48 x 96 film: crop saw the centred square (the map gets the film's aspect, zero at the sides), pad added
    borders (cut off), squash stretched it (the map stretches back when drawn) - as predict.py and the app do."""
    from lungnet.explain.run import compute_explanations

    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    ckpt["hyper_parameters"]["data"]["resize"] = resize
    path = tmp_path / f"{resize}.ckpt"
    torch.save(ckpt, path)
    wide = tmp_path / "wide.png"
    Image.fromarray((np.random.default_rng(0).random((48, 96)) * 255).astype(np.uint8)).save(wide)
    result = compute_explanations(load_model(path), [str(wide)], "gradcam", n=1)
    assert result.maps[0].shape == shape
    if resize == "crop":
        assert result.maps[0][:, :16].max() == 0 and result.maps[0][:, 48:].max() == 0
