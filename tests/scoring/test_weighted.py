"""The bootstrap from multiplicity weights gives the numbers of rescoring each resample's images one by one."""

import numpy as np
import pytest

from lungnet.scoring import stats, weighted
from lungnet.scoring.resample import Resampler

LABELS = list("abcd")


def _data(multilabel: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """200 images, 4 classes, scores rounded to 2 decimals (many ties).

    Multi-label: 10% unknown targets, the last finding never positive (NaN AUROC). Single-label: the last class
    has one image, so many resamples lack it (left out of the macro averages).
    """
    rng = np.random.default_rng(seed)
    n = 200
    if multilabel:
        y = (rng.random((n, 4)) < [0.1, 0.3, 0.5, 0.0]).astype(float)
        p = np.round(np.clip(0.3 * y + 0.7 * rng.random((n, 4)), 0, 1), 2)
        y[rng.random((n, 4)) < 0.1] = np.nan
        return p, y
    y = np.concatenate([rng.integers(0, 3, n - 1), [3]])
    logits = rng.normal(size=(n, 4)) + 1.5 * np.eye(4)[y]
    return np.round(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), 2), y


def _groups(grouped: bool) -> np.ndarray | None:
    return np.random.default_rng(9).integers(0, 60, 200) if grouped else None


def _budget(resamples: int, multilabel: bool, targets: np.ndarray, *models: np.ndarray) -> int:
    """A chunk size in bytes that makes chunks of ``resamples`` resamples."""
    rows = max(weighted.WeightedScorer(p, targets, multilabel).rows() for p in models)
    return 8 * resamples * rows


def _reference_draws(probs, targets, multilabel, resamples, seed, groups) -> dict[str, np.ndarray]:
    """The loop `bootstrap_ci` ran before the weighted bootstrap: rescore every resample's images."""
    rng, draw = np.random.default_rng(seed), Resampler(len(probs), groups).draw
    draws: dict[str, list[float]] = {}
    for _ in range(resamples):
        idx = draw(rng)
        auroc = stats.per_class_auroc(probs[idx], targets[idx], multilabel)
        values = stats.headline(probs[idx], targets[idx], multilabel, auroc)
        values.update({f"auroc/{lab}": float(a) for lab, a in zip(LABELS, auroc, strict=True)})
        for key, value in values.items():
            draws.setdefault(key, []).append(value)
    return {key: np.asarray(value) for key, value in draws.items()}


def _reference_ci(probs, targets, multilabel, resamples, seed, level, groups) -> dict[str, dict[str, float]]:
    """`bootstrap_ci` as it was: the percentile intervals of `_reference_draws`."""
    point = stats.headline(probs, targets, multilabel)
    draws = _reference_draws(probs, targets, multilabel, resamples, seed, groups)
    out = {}
    for key in point if not multilabel else draws:
        lo, hi = stats.percentile_interval(draws[key], level)
        out[key] = {"lo": lo, "hi": hi, "resamples": int(np.isfinite(draws[key]).sum())}
    return out


def _assert_close(new, ref) -> None:
    np.testing.assert_allclose(np.asarray(new, dtype=float), np.asarray(ref, dtype=float), rtol=0, atol=1e-9)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("multilabel", [True, False])
@pytest.mark.parametrize("grouped", [False, True])
def test_weighted_draws_equal_rescoring_each_resample(multilabel, grouped):
    p, y = _data(multilabel)
    ref = _reference_draws(p, y, multilabel, 30, 4, _groups(grouped))
    # 7 resamples per chunk: 5 chunks, the last one short
    [(values, auroc)] = weighted.resampled_headlines(
        [p], y, multilabel, 30, np.random.default_rng(4), _groups(grouped), chunk_bytes=_budget(7, multilabel, y, p)
    )
    assert set(values) == {k for k in ref if not k.startswith("auroc/")}
    for key, value in values.items():
        _assert_close(value, ref[key])
    for j, lab in enumerate(LABELS):
        _assert_close(auroc[:, j], ref[f"auroc/{lab}"])
    if multilabel:  # the finding without positives
        assert np.isnan(auroc[:, 3]).all() and np.isfinite(auroc[:, :3]).all()
    else:  # some resamples lack the rare class: AUROC undefined there, the macro means over 3 classes
        assert 0 < np.isnan(auroc[:, 3]).sum() < 30


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("multilabel", [True, False])
def test_bootstrap_ci_equals_the_resampling_loop(multilabel, monkeypatch):
    p, y = _data(multilabel, seed=1)
    monkeypatch.setattr(weighted, "CHUNK_BYTES", _budget(3, multilabel, y, p))  # chunks of 3 resamples
    new = stats.bootstrap_ci(p, y, LABELS, multilabel, resamples=40, seed=2, level=0.9, groups=_groups(True))
    ref = _reference_ci(p, y, multilabel, 40, 2, 0.9, _groups(True))
    assert set(new) == set(ref)
    for key, entry in ref.items():
        _assert_close([new[key]["lo"], new[key]["hi"]], [entry["lo"], entry["hi"]])
        assert new[key]["resamples"] == entry["resamples"], key


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("multilabel", [True, False])
@pytest.mark.parametrize("grouped", [False, True])
def test_paired_bootstrap_equals_the_resampling_loop(multilabel, grouped, monkeypatch):
    p, y = _data(multilabel, seed=2)
    q = np.round(np.clip(p + np.random.default_rng(3).normal(0, 0.1, p.shape), 0, 1), 2)
    monkeypatch.setattr(weighted, "CHUNK_BYTES", _budget(4, multilabel, y, p, q))
    new = stats.paired_bootstrap(p, q, y, multilabel, resamples=30, seed=5, groups=_groups(grouped))
    a = _reference_draws(p, y, multilabel, 30, 5, _groups(grouped))
    b = _reference_draws(q, y, multilabel, 30, 5, _groups(grouped))
    for key, entry in new.items():
        diff = a[key] - b[key]
        finite = diff[np.isfinite(diff)]
        better = (finite < 0) if key == "loss" else (finite > 0)
        _assert_close([entry["lo"], entry["hi"]], stats.percentile_interval(finite, 0.95))
        assert entry["resamples"] == len(finite) and entry["a_better"] == pytest.approx(better.mean(), abs=1e-12)


def test_weights_are_the_draw_multiplicities_in_draw_order():
    resampler = Resampler(50, np.arange(50) // 3)
    rng = np.random.default_rng(0)
    draws = [resampler.draw(rng) for _ in range(10)]
    chunks = list(weighted.weight_chunks(resampler, np.random.default_rng(0), 10, 4))
    assert [c.shape for c in chunks] == [(50, 4), (50, 4), (50, 2)]
    expected = np.stack([np.bincount(idx, minlength=50) for idx in draws], axis=1)
    np.testing.assert_array_equal(np.concatenate(chunks, axis=1), expected)


def test_no_images_or_no_resamples_give_undefined_intervals():
    empty = stats.bootstrap_ci(np.zeros((0, 4)), np.zeros((0, 4)), LABELS, True, resamples=5)
    assert all(entry["resamples"] == 0 and np.isnan(entry["lo"]) for entry in empty.values())
    p, y = _data(False)
    none = stats.bootstrap_ci(p, y, LABELS, False, resamples=0)
    assert none["accuracy"]["resamples"] == 0 and np.isnan(none["accuracy"]["hi"])
