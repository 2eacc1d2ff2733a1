"""``explain.yaml``: `ExplainConfig`, the options of ``lungnet-explain`` (heatmaps of a checkpoint's predictions)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lungnet.schema.evaluate import heatmap_alpha
from lungnet.schema.fields import Choice, opt
from lungnet.schema.train import PathsConfig


class ExplainMethod(Choice):
    """The heatmap methods (`lungnet.explain.cams.list_methods`); each one's options: conf/explain/<method>.yaml."""

    gradcam = "gradcam"
    gradcampp = "gradcampp"
    hirescam = "hirescam"
    scorecam = "scorecam"
    eigencam = "eigencam"
    ig = "ig"


class Score(Choice):
    """What heatmaps are scored against (`lungnet.explain.job.SCORES`)."""

    none = "none"
    synthetic = "synthetic"
    nih = "nih"


@dataclass
class ExplainOptions:
    """``options.*``: set ones go over conf/explain/<method>.yaml's options (null: the method's own)."""

    batch_size: int | None = opt(None, "scorecam: masked images per forward pass", ge=1)
    n_steps: int | None = opt(None, "ig: Riemann steps from the baseline to the image", ge=1)
    internal_batch_size: int | None = opt(None, "ig: images per captum forward pass", ge=1)


@dataclass
class ExplainData:
    root: str | None = opt(None, "the data set's folder when it moved since training")


@dataclass
class ExplainConfig:
    """``lungnet-explain``: heatmap overlays of a checkpoint's correct and wrong predictions, optionally scored."""

    ckpt: Any = opt(help="the checkpoint (.ckpt) to explain")
    method: ExplainMethod = opt(ExplainMethod.gradcam, "the heatmap method; its options: conf/explain/<method>.yaml")
    n: int = opt(16, "images explained (up to half of them wrong predictions)", ge=1)
    class_index: Any = opt(None, "null: each image's predicted class; or a label / index (multi-label: a finding)")
    cam_layer: str | None = opt(None, "null: the model's own spec.cam_layer; or a dotted path, e.g. backbone.layer3")
    alpha: float = heatmap_alpha()
    options: ExplainOptions = opt(factory=ExplainOptions)
    images: str = opt(
        "test", "train, val or test (the checkpoint's splits), a folder (<class>/ subfolders) or a .csv with path"
    )
    data: ExplainData = opt(factory=ExplainData)
    out: str = opt("${paths.log_dir}/explain/${now:%Y-%m-%d}/${now:%H-%M-%S}", "the run directory")
    score: Score = opt(
        Score.none, "none; or against the synthetic phantoms' lesion masks or NIH's BBox_List_2017.csv under data.root"
    )
    # typed Any: a list (methods=[gradcam,ig]) or one quoted string ('methods=gradcam,ig')
    methods: Any = opt(factory=ExplainMethod.values, help="the methods scored, e.g. methods=[gradcam,ig]")
    score_n: int | None = opt(None, "at most this many lesions (round-robin over classes); null: all", ge=1)
    sanity: bool = opt(
        True, "also explain a weight-randomised copy (Adebayo et al. 2018) and report the rank correlation"
    )
    threads: int | None = opt(None, "torch CPU threads (null: torch's default)", ge=1)
    paths: PathsConfig = opt(factory=PathsConfig)
