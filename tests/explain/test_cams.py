"""Every CAM on every registered model, targets (incl. a single-logit head), and hook release."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from lungnet.explain import ExplainError, LogitTarget, explain, list_methods, make_explainer
from lungnet.models.registry import create_model, list_models

CAMS = ["gradcam", "gradcampp", "hirescam", "eigencam"]


def _assert_maps(maps: np.ndarray, n: int, size: int) -> None:
    assert maps.shape == (n, size, size)
    assert maps.dtype == np.float32
    assert np.isfinite(maps).all()
    assert maps.min() >= 0.0 and maps.max() <= 1.0


@pytest.mark.parametrize("index,name", list(enumerate(list_models())))
def test_cams_on_every_registered_model(index, name):
    in_chans = 1 if index % 2 == 0 else 3
    torch.manual_seed(index)
    model = create_model(name, 3, in_chans=in_chans, image_size=64)
    x = torch.randn(2, in_chans, 64, 64)
    for method in CAMS:
        maps = explain(model, x, method)
        _assert_maps(maps, 2, 64)
        if method != "eigencam":
            assert maps.max() == pytest.approx(1.0), f"{name}/{method} gave a flat map"


@pytest.mark.parametrize("in_chans", [1, 3])
def test_scorecam_and_ig_on_small_models(in_chans):
    torch.manual_seed(0)
    model = create_model("simple_cnn", 2, in_chans=in_chans, image_size=32)
    x = torch.randn(2, in_chans, 32, 32)
    _assert_maps(explain(model, x, "scorecam", batch_size=64), 2, 32)
    _assert_maps(explain(model, x, "ig", n_steps=8), 2, 32)


def test_ig_on_resnet18_uses_captum_and_differs_per_class():
    torch.manual_seed(0)
    model = create_model("resnet18", 3, in_chans=1, image_size=48)
    x = torch.randn(1, 1, 48, 48)
    a, b = explain(model, x, "ig", targets=[0], n_steps=8), explain(model, x, "ig", targets=[2], n_steps=8)
    _assert_maps(a, 1, 48)
    assert not np.allclose(a, b)


def test_cam_layer_override_and_spec_default():
    model = create_model("resnet18", 2, in_chans=1, image_size=64)
    with make_explainer("gradcam", model) as default:
        assert default.layer is model.backbone.layer4
    with make_explainer("gradcam", model, cam_layer="backbone.layer3") as other:
        assert other.layer is model.backbone.layer3
        _assert_maps(other(torch.randn(1, 1, 64, 64)), 1, 64)
    with pytest.raises(ExplainError, match="not in the model"):
        make_explainer("gradcam", model, cam_layer="backbone.nope")
    with pytest.raises(ExplainError, match="choose from"):
        make_explainer("lime", model)


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "gradcampp"])
def test_target_class_decides_where_the_map_points(halves, method):
    model = halves(2)
    x = torch.ones(1, 1, 16, 16)
    left, right = (
        explain(model, x, method, targets=[0], cam_layer="features"),
        explain(model, x, method, targets=[1], cam_layer="features"),
    )
    assert left[0, :, :8].mean() > 0.9 and left[0, :, 8:].mean() < 0.1
    assert right[0, :, 8:].mean() > 0.9 and right[0, :, :8].mean() < 0.1


def test_single_logit_negative_prediction_explains_the_negated_logit(halves):
    model = halves(1)
    x = torch.ones(1, 1, 16, 16)
    x[..., 8:] = 3.0  # right half brighter: z = left - right < 0, a negative prediction
    assert model(x).item() < 0
    predicted = explain(model, x, "gradcam", cam_layer="features")  # default target: the predicted class (0)
    assert predicted[0, :, 8:].mean() > 0.9 and predicted[0, :, :8].mean() < 0.1
    positive = explain(model, x, "gradcam", targets=[1], cam_layer="features")
    assert positive[0, :, :8].mean() > 0.9
    # pytorch-grad-cam's own default on a 1-logit output explains "positive" whatever the prediction:
    with GradCAM(model=model, target_layers=[model.features]) as cam:
        library = cam(input_tensor=x, targets=[ClassifierOutputTarget(0)])
    assert library[0, :, :8].mean() > 0.9


def test_logit_target_rules():
    assert LogitTarget(0)(torch.tensor([2.0])).item() == -2.0
    assert LogitTarget(1)(torch.tensor([2.0])).item() == 2.0
    assert LogitTarget(2)(torch.tensor([1.0, 2.0, 3.0])).item() == 3.0
    with pytest.raises(ExplainError):
        LogitTarget(2)(torch.tensor([1.0]))


def test_multilabel_target_is_the_chosen_findings_logit(halves):
    model = halves(2)  # read as two independent sigmoid findings
    x = torch.ones(2, 1, 16, 16)
    maps = explain(model, x, "gradcam", targets=[1, 0], cam_layer="features")  # a target is a logit for multi-label too
    assert maps[0, :, 8:].mean() > 0.9 and maps[1, :, :8].mean() > 0.9


def _hooks(model: torch.nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) + len(m._backward_pre_hooks)
        for m in model.modules()
    )


@pytest.mark.parametrize("method", list_methods())
def test_hooks_released_after_with_also_on_error(method):
    model = create_model("simple_cnn", 2, in_chans=1, image_size=32)
    layer = model.get_submodule(model.spec.cam_layer)
    options = {"batch_size": 64} if method == "scorecam" else {}
    with make_explainer(method, model, **options) as explainer:
        if method != "ig":
            assert len(layer._forward_hooks) > 0  # hooks are really attached while inside
        explainer(torch.randn(1, 1, 32, 32))
    assert _hooks(model) == 0
    if hasattr(explainer, "cam"):  # nothing holding the autograd graph is kept either, nor the gradients
        assert explainer.cam.outputs is None and not explainer.cam.activations_and_grads.activations
        assert all(p.grad is None for p in model.parameters())
    # pytorch-grad-cam's own __exit__ swallows IndexError; ours must let every exception through.
    for error in (RuntimeError, IndexError):
        with pytest.raises(error):
            with make_explainer(method, model):
                raise error("boom")
        assert _hooks(model) == 0


def test_explain_releases_hooks_when_the_call_fails():
    model = create_model("simple_cnn", 2, in_chans=1, image_size=32)
    with pytest.raises(ExplainError):
        explain(model, torch.randn(2, 1, 32, 32), "gradcam", targets=[0])  # 1 target for 2 images
    assert _hooks(model) == 0
