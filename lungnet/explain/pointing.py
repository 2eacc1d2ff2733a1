"""Score a checkpoint's explanations against ground-truth lesions, per method, into CSV and markdown.

Uses the metrics of `lungnet.explain.scoring` on cases from `lungnet.explain.groundtruth`::

    cases = synthetic_cases(test_paths, loaded.labels)        # or nih_box_cases(nih_root, loaded.labels)
    result = score_checkpoint(loaded, cases, ["gradcam", "hirescam"], out_dir, "synthetic", None, True)
    print(result["markdown"])
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lungnet.artifacts.checkpoint import LoadedModel
from lungnet.data.labels import DEFAULT_THRESHOLD
from lungnet.data.preprocessing import Preprocessing
from lungnet.explain.base import ExplainError
from lungnet.explain.cams import make_explainer
from lungnet.explain.run import TITLES, as_loaded, preprocessor
from lungnet.explain.scoring import (
    Case,
    chance_levels,
    energy_share,
    pointing_hit,
    randomized_copy,
    rank_correlation,
    wilson_interval,
)
from lungnet.io import write_csv, write_text
from lungnet.scoring.outputs import file_probabilities

log = logging.getLogger(__name__)


def _even_subset(cases: list[Case], n: int | None) -> list[Case]:
    """At most ``n`` cases, taken round-robin over classes (deterministic)."""
    if n is None or len(cases) <= n:
        return list(cases)
    by_class: dict[int, list[Case]] = {}
    for case in cases:
        by_class.setdefault(case.class_index, []).append(case)
    queues, out = list(by_class.values()), []
    while len(out) < n:
        for queue in queues:
            if queue and len(out) < n:
                out.append(queue.pop(0))
    return out


def _maps(method: str, model, batch: torch.Tensor, targets: list[int], cam_layer, chunk: int, **options) -> np.ndarray:
    out = []
    with make_explainer(method, model, cam_layer, **options) as explainer:
        for i in range(0, len(batch), chunk):
            out.append(explainer(batch[i : i + chunk], targets[i : i + chunk]))
    return np.concatenate(out)


@dataclass
class PointingScores:
    """Scores of several methods on lesion cases, before anything is written (`compute_scores` -> `write_scores`).

    Attributes:
        name: the ground-truth set (``synthetic``, ``nih``).
        model: the model's name.
        n_cases: lesions scored.
        n_detected: of them, those the model detected (their class predicted, or above threshold).
        images: one row per method and image (hit, energy share, chance levels, Spearman vs random).
        summary: one row per method plus the chance row of a uniform map.
    """

    name: str
    model: str
    n_cases: int
    n_detected: int
    images: pd.DataFrame
    summary: pd.DataFrame


def _detect(loaded: LoadedModel, cases: list[Case]) -> tuple[torch.Tensor, list[int], np.ndarray, list[bool]]:
    """(input batch, target classes, probabilities, detected) of the cases, with the checkpoint's preprocessing."""
    paths = [c.path for c in cases]
    probs, batch = file_probabilities(loaded.model, paths, preprocessor(loaded), loaded.multilabel, len(paths) or 1)
    targets = [c.class_index for c in cases]
    if loaded.multilabel:
        detected = [bool(p[t] >= DEFAULT_THRESHOLD) for p, t in zip(probs, targets, strict=True)]
    else:
        detected = [int(np.argmax(p)) == t for p, t in zip(probs, targets, strict=True)]
    return batch, targets, probs, detected


def on_images(prep: Preprocessing, maps, cases: list[Case]) -> list[np.ndarray]:
    """Model-input maps laid over each case's image content (``resize=pad``/``crop``), the lesion mask's frame."""
    return [prep.on_image(m, case.mask.shape) for m, case in zip(maps, cases, strict=True)]


def _method_rows(method: str, cases: list[Case], maps, rand, probs, detected, chance) -> list[dict]:
    """One row per case for ``method``: its maps (and the randomised model's, or None) against the lesions."""
    return [
        {
            "method": method,
            "path": case.path,
            "class": case.class_name,
            "p_class": float(probs[k, case.class_index]),
            "detected": detected[k],
            "hit": pointing_hit(maps[k], case.mask),
            "energy_share": energy_share(maps[k], case.mask),
            "chance_hit": chance[k][0],
            "chance_energy": chance[k][1],
            "spearman_random": rank_correlation(maps[k], rand[k]) if rand is not None else float("nan"),
        }
        for k, case in enumerate(cases)
    ]


def compute_scores(
    loaded: LoadedModel,
    cases: list[Case],
    methods: Sequence[str],
    name: str,
    n: int | None,
    sanity: bool,
    cam_layer: str | None = None,
    images_per_call: int = 8,
    seed: int = 0,
    method_options: dict[str, dict] | None = None,
) -> PointingScores:
    """Explains each case for its lesion's class with every method and scores the maps; see `score_checkpoint`."""
    cases = _even_subset(cases, n)
    if not cases:
        raise ExplainError(f"No ground-truth lesions to score for '{name}'")
    batch, targets, probs, detected = _detect(loaded, cases)
    chance = [chance_levels(c.mask) for c in cases]
    random_model = randomized_copy(loaded.model, seed) if sanity else None
    prep, rows = Preprocessing.from_loaded(loaded), []
    for method in methods:
        opts = (method_options or {}).get(method, {})
        log.info("Scoring %s on %d %s lesions", method, len(cases), name)
        maps = on_images(prep, _maps(method, loaded.model, batch, targets, cam_layer, images_per_call, **opts), cases)
        rand = _maps(method, random_model, batch, targets, cam_layer, images_per_call, **opts) if sanity else None
        rand = on_images(prep, rand, cases) if rand is not None else None
        rows += _method_rows(method, cases, maps, rand, probs, detected, chance)
    images = pd.DataFrame(rows)
    return PointingScores(name, loaded.spec.name, len(cases), int(np.sum(detected)), images, _summarise(images, chance))


def write_scores(scores: PointingScores, out_dir: str | os.PathLike) -> dict:
    """Writes ``pointing_<name>.csv``, ``pointing_<name>_images.csv`` and ``pointing_<name>.md``.

    Returns:
        dict with ``summary`` and ``images`` (DataFrames), ``markdown`` and the written paths.
    """
    folder, name = Path(out_dir), scores.name
    paths = {
        "csv": write_csv(folder / f"pointing_{name}.csv", scores.summary),
        "images_csv": write_csv(folder / f"pointing_{name}_images.csv", scores.images),
    }
    markdown = _score_markdown(scores.summary, name, scores.model, scores.n_cases, scores.n_detected)
    paths["md"] = write_text(folder / f"pointing_{name}.md", markdown)
    written = {k: str(v) for k, v in paths.items()}
    return {"summary": scores.summary, "images": scores.images, "markdown": markdown, **written}


def score_checkpoint(
    ckpt: str | os.PathLike | LoadedModel,
    cases: list[Case],
    methods: Sequence[str],
    out_dir: str | os.PathLike,
    name: str,
    n: int | None,
    sanity: bool,
    cam_layer: str | None = None,
    images_per_call: int = 8,
    seed: int = 0,
    method_options: dict[str, dict] | None = None,
) -> dict:
    """Pointing game, energy share and the randomisation check for several methods on lesion cases.

    Each case is explained for its lesion's class. The explain command passes ``methods``, ``n`` (``score_n``) and
    ``sanity`` (defaults: `lungnet.schema.ExplainConfig`). Writes ``pointing_<name>.csv`` (one row per
    method, plus the chance level of an uninformative map), ``pointing_<name>_images.csv`` (one row
    per method and image) and ``pointing_<name>.md`` (`compute_scores`, then `write_scores`).

    Args:
        ckpt: checkpoint path or `LoadedModel`.
        cases: from `lungnet.explain.groundtruth` (`synthetic_cases`, `nih_box_cases`).
        methods: explanation methods to score.
        out_dir: output folder.
        name: ground-truth set name used in file names and the table title.
        n: at most this many cases (round-robin over classes); None = all.
        sanity: also explain a re-initialised copy of the model and report the Spearman correlation.
        cam_layer: target-layer override.
        images_per_call: images per explainer call.
        seed: seed of the randomised model.
        method_options: per-method options, e.g. ``{"scorecam": {"batch_size": 64}}``.

    Returns:
        dict with ``summary`` and ``images`` (DataFrames), ``markdown`` and the written paths.
    """
    scores = compute_scores(
        as_loaded(ckpt), cases, methods, name, n, sanity, cam_layer, images_per_call, seed, method_options
    )
    return write_scores(scores, out_dir)


def _summarise(images: pd.DataFrame, chance: list[tuple[float, float]]) -> pd.DataFrame:
    out = []
    for method, g in images.groupby("method", sort=False):
        hits = int(g["hit"].sum())
        lo, hi = wilson_interval(hits, len(g))
        det = g[g["detected"]]
        out.append(
            {
                "method": method,
                "n": len(g),
                "pointing_hit_rate": hits / len(g),
                "hit_ci_low": lo,
                "hit_ci_high": hi,
                "hit_rate_detected": float(det["hit"].mean()) if len(det) else float("nan"),
                "energy_share": float(g["energy_share"].mean()),
                "spearman_vs_random": float(g["spearman_random"].mean()),
            }
        )
    hit_c, energy_c = (float(np.mean(v)) for v in zip(*chance, strict=True))
    out.append(
        {
            "method": "chance (uniform map)",
            "n": len(chance),
            "pointing_hit_rate": hit_c,
            "hit_ci_low": float("nan"),
            "hit_ci_high": float("nan"),
            "hit_rate_detected": float("nan"),
            "energy_share": energy_c,
            "spearman_vs_random": float("nan"),
        }
    )
    return pd.DataFrame(out)


def _fmt(x: float, digits: int = 2) -> str:
    return "-" if not np.isfinite(x) else f"{x:.{digits}f}"


def _score_markdown(summary: pd.DataFrame, name: str, model: str, n: int, n_detected: int) -> str:
    lines = [
        f"### Explanations against ground truth: {name}",
        "",
        f"{n} lesions, each explained for its own class with {model} ({n_detected} of them detected by "
        "the model). Pointing game (Zhang et al. 2016): the map's maximum within 15 px at 224 px (scaled) of the "
        "lesion; energy share: fraction of the map inside it. Spearman vs random: rank correlation between the "
        "trained and a re-initialised model's maps (Adebayo et al. 2018; near 1 = the map ignores the weights).",
        "",
        "| method | n | pointing hit rate (95% CI) | hit rate, detected only | energy share | Spearman vs random |",
        "|---|---|---|---|---|---|",
    ]
    for r in summary.itertuples():
        ci = f" ({_fmt(r.hit_ci_low)}-{_fmt(r.hit_ci_high)})" if np.isfinite(r.hit_ci_low) else ""
        lines.append(
            f"| {TITLES.get(r.method, r.method)} | {r.n} | {_fmt(r.pointing_hit_rate)}{ci} "
            f"| {_fmt(r.hit_rate_detected)} | {_fmt(r.energy_share)} | {_fmt(r.spearman_vs_random)} |"
        )
    return "\n".join(lines) + "\n"
