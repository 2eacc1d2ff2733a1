"""Fine-tuning from a lungnet checkpoint (``model.weights=<ckpt>``): backbone and the head rows of shared findings."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from lungnet.artifacts.checkpoint import CheckpointError
from lungnet.models.registry import ModelError, create_model
from lungnet.train.finetune import build_model, is_lungnet_checkpoint, match_outputs
from lungnet.train.module import LitClassifier
from lungnet.train.training import train
from tests.conftest import TINY, compose_cfg
from tests.serve.test_inference import make_checkpoint

SIMPLE = {"name": "simple_cnn", "in_chans": 1, "drop_rate": 0.0, "head_hidden": 0, "pretrained": False}
NIH = ["Effusion", "Pneumonia", "Atelectasis"]


def pneumonia_checkpoint(path, **options):
    """A 2-class lungnet checkpoint of a ``pneumonia`` run (NORMAL, PNEUMONIA) of simple_cnn."""
    make_checkpoint(path, labels=["NORMAL", "PNEUMONIA"], seed=1, **options)
    ckpt = torch.load(path, weights_only=True)
    ckpt["hyper_parameters"]["data"]["source"] = "pneumonia"
    torch.save(ckpt, path)
    return path, {k[len("model.") :]: v for k, v in ckpt["state_dict"].items()}


def test_the_matching_row_and_the_backbone_are_carried_over(tmp_path):
    """PNEUMONIA of a pneumonia model starts Pneumonia of an nih6 model (one finding, two spellings)."""
    path, old = pneumonia_checkpoint(tmp_path / "old.ckpt")
    torch.manual_seed(7)
    module = LitClassifier({**SIMPLE, "weights": str(path)}, NIH, multilabel=True, data={"source": "nih6"})
    new, report = module.model.state_dict(), module.weights_report
    assert report["carried"] == [
        {"from": "PNEUMONIA", "from_index": 1, "to": "Pneumonia", "to_index": 1, "finding": "Pneumonia"}
    ]
    assert [f["to"] for f in report["fresh"]] == ["Effusion", "Atelectasis"]
    backbone = [k for k in old if k.startswith("backbone.")]
    assert report["backbone_tensors"] == len(backbone) > 0 and report["source"] == str(path)
    assert all(torch.equal(new[k], old[k]) for k in backbone)
    assert torch.equal(new["head.1.weight"][1], old["head.1.weight"][1])
    assert torch.equal(new["head.1.bias"][1], old["head.1.bias"][1])
    assert not torch.equal(new["head.1.weight"][0], old["head.1.weight"][0])  # Effusion: fresh, not NORMAL's row
    json.dumps(report)  # plain data, for weights_report.json


def test_findings_map_each_side_through_its_source():
    carried, fresh = match_outputs(
        ["Bacterial Pneumonia", "Viral Pneumonia", "Normal"], "lung5", ["NORMAL", "PNEUMONIA"], "pneumonia"
    )
    assert [(c["from"], c["to_index"]) for c in carried] == [("Normal", 0)]
    assert fresh[0]["to"] == "PNEUMONIA" and fresh[0]["reason"].startswith("ambiguous: Bacterial Pneumonia")
    carried, fresh = match_outputs(["cats", "dogs"], "folder", ["dogs", "owls"], "folder")  # no finding: by name
    assert [(c["from"], c["to_index"]) for c in carried] == [("dogs", 0)] and fresh[0]["to"] == "owls"


def test_grayscale_stem_spread_over_rgb_and_another_hidden_layer_starts_the_head_fresh(tmp_path):
    path, old = pneumonia_checkpoint(tmp_path / "old.ckpt")
    model, report = build_model({**SIMPLE, "in_chans": 3, "head_hidden": 8, "weights": str(path)}, NIH, "nih6")
    stem = next(k for k, v in old.items() if v.dim() == 4)
    assert torch.allclose(model.state_dict()[stem], old[stem].repeat(1, 3, 1, 1) / 3)
    assert report["carried"] == [] and len(report["fresh"]) == 3 and "head_hidden=8" in report["fresh"][0]["reason"]


def test_another_architecture_is_refused_in_one_line(tmp_path):
    path, _ = pneumonia_checkpoint(tmp_path / "old.ckpt")
    with pytest.raises(ModelError) as exc:
        build_model({**SIMPLE, "name": "resnet18", "in_chans": 3, "weights": str(path)}, NIH, "nih6")
    message = str(exc.value)
    assert "\n" not in message and str(path) in message and "'simple_cnn'" in message and "resnet18" in message


def test_a_checkpoint_holding_a_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    hp = {"labels": ["a", "b"], "spec": {}, "model": argparse.Namespace(name="simple_cnn")}
    torch.save({"state_dict": {}, "hyper_parameters": hp}, path)
    assert is_lungnet_checkpoint(path)  # told from its names alone, nothing unpickled
    with pytest.raises(CheckpointError) as exc:
        build_model({**SIMPLE, "weights": str(path)}, NIH, "nih6")
    message = str(exc.value)
    assert "\n" not in message and "holds pickled Python objects" in message and "argparse.Namespace" in message


def test_a_state_dict_file_still_loads_into_the_backbone(tmp_path):
    source = create_model("simple_cnn", num_classes=2, in_chans=3)  # a state dict is read as an RGB one
    torch.save(source.state_dict(), tmp_path / "plain.pth")
    assert not is_lungnet_checkpoint(tmp_path / "plain.pth")
    model, report = build_model({**SIMPLE, "in_chans": 3, "weights": str(tmp_path / "plain.pth")}, NIH, "nih6")
    assert report is None
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in source.backbone.state_dict().items())


def test_training_writes_the_weights_report(tmp_path, tiny_folder):
    path, _ = pneumonia_checkpoint(tmp_path / "old.ckpt", size=32)
    args = ["data=pneumonia", f"data.root={tiny_folder}", f"model.weights={path}", *TINY]
    train(compose_cfg("train", args), tmp_path / "run")
    report = json.loads((tmp_path / "run" / "weights_report.json").read_text())
    assert [(c["from"], c["to_index"]) for c in report["carried"]] == [("NORMAL", 0), ("PNEUMONIA", 1)]
    assert report["fresh"] == [] and set(report) >= {"source", "carried", "fresh", "backbone_tensors"}
