import math

import pytest
import torch
from omegaconf import OmegaConf

from lungnet.metrics import compute_metrics
from lungnet.module import LitClassifier
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
