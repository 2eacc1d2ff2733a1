import math

import pytest
import torch
from omegaconf import OmegaConf

from lungnet.scoring.metrics import compute_metrics
from lungnet.train.module import LitClassifier
from tests.conftest import compose_cfg

MODEL = {"name": "simple_cnn", "in_chans": 1}


def _compose_group(group: str, option: str) -> dict:
    """conf/<group>/<option>.yaml as the training config holds it."""
    cfg = compose_cfg("train", [f"{group}={option}"])
    return OmegaConf.to_container(cfg[group], resolve=True)


def test_multilabel_bce_ignores_nan():
    module = LitClassifier(MODEL, ["a", "b", "c"], multilabel=True)
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    target = torch.tensor([[1.0, float("nan"), 0.0]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([2.0, 0.5]), torch.tensor([1.0, 0.0]))
    assert torch.isclose(module.loss(logits, target), expected)
    assert module.loss(logits, torch.full((1, 3), float("nan"))) == 0


def test_weighted_ce_and_label_smoothing():
    module = LitClassifier(MODEL, ["a", "b"], label_smoothing=0.1)
    module.set_class_weights([1.0, 3.0])
    logits, target = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    expected = torch.nn.functional.cross_entropy(logits, target, weight=torch.tensor([1.0, 3.0]), label_smoothing=0.1)
    assert torch.isclose(module.loss(logits, target), expected)
    assert module.hparams["class_weights"] == [1.0, 3.0]


@pytest.mark.parametrize(("opt", "sched"), [("adamw", "cosine"), ("sgd", "plateau"), ("adam", "none")])
def test_optimisers_and_schedulers(opt, sched):
    optimizer, scheduler = _compose_group("optimizer", opt), _compose_group("scheduler", sched)
    module = LitClassifier(
        MODEL, ["a", "b"], optimizer={**optimizer, "lr": 0.01}, scheduler=scheduler, backbone_lr_mult=0.1
    )
    out = module.configure_optimizers()
    optimizer = out if isinstance(out, torch.optim.Optimizer) else out["optimizer"]
    lrs = sorted(g["lr"] for g in optimizer.param_groups)
    assert lrs == pytest.approx([0.001, 0.01])


def test_compute_metrics_single_and_multilabel():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]).numpy()
    m = compute_metrics(probs, torch.tensor([0, 1, 1, 1]).numpy(), ["n", "p"], multilabel=False)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["confusion_matrix"] == [[1, 0], [1, 2]]
    assert m["per_class"]["p"]["recall"] == pytest.approx(2 / 3)
    assert m["per_class"]["n"]["specificity"] == pytest.approx(2 / 3)
    ml = compute_metrics(
        probs,
        torch.tensor([[1.0, 0.0], [0.0, float("nan")], [1.0, 1.0], [0.0, 1.0]]).numpy(),
        ["x", "y"],
        multilabel=True,
    )
    assert ml["per_class"]["x"]["auroc"] == pytest.approx(1.0)
    assert not math.isnan(ml["auroc_macro"])


def test_mixup_mixes_pairs_and_leaves_an_odd_last_image_unmixed():
    from lungnet.train.module import build_mixer, mix_batch

    torch.manual_seed(0)
    mixer = build_mixer({"mixup_alpha": 0.4, "cutmix_alpha": 1.0}, 3, multilabel=False)
    images, target = torch.rand(5, 1, 8, 8), torch.tensor([0, 1, 2, 1, 2])
    mixed, soft = mix_batch(mixer, images, target)
    assert mixed.shape == images.shape and soft.shape == (5, 3)
    assert torch.allclose(soft.sum(1), torch.ones(5))
    assert torch.equal(mixed[4], images[4]) and torch.equal(soft[4], torch.tensor([0.0, 0.0, 1.0]))
    assert not torch.equal(soft[:4], torch.nn.functional.one_hot(target[:4], 3).float())  # pairs got mixed labels
    assert images.data_ptr() != mixed.data_ptr()  # the batch itself is left as it was


def test_mixup_off_by_default_and_refused_for_multilabel():
    from lungnet.errors import ConfigError
    from lungnet.train.module import build_mixer

    assert build_mixer(None, 2, False) is None
    assert build_mixer({"mixup_alpha": 0.0, "cutmix_alpha": 0.0, "prob": 1.0}, 2, False) is None
    with pytest.raises(ConfigError, match="single-label"):
        LitClassifier(MODEL, ["a", "b"], multilabel=True, mixup={"mixup_alpha": 0.2})


def test_soft_targets_give_the_hard_label_loss_when_one_hot():
    module = LitClassifier(MODEL, ["a", "b", "c"], label_smoothing=0.05, mixup={"mixup_alpha": 0.2})
    logits, target = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
    soft = torch.nn.functional.one_hot(target, 3).float()
    assert torch.isclose(module.loss(logits, soft), module.loss(logits, target))
