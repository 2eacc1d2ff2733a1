"""ModelSpec: what a model needs from the data and what explainers need from the model.

A spec travels with the model (``model.spec``) and into every checkpoint as a plain dict, so
`evaluate.py`, `predict.py` and the explainers never guess the input size, the normalisation or
the Grad-CAM target layer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelSpec:
    """Preprocessing and explanation facts of one model.

    Attributes:
        name: lungnet model name (registry key or timm name).
        arch: the underlying timm/torchvision architecture name.
        input_size: default square input side in pixels.
        in_chans: input channels (1 for grayscale stems, 3 for replicated grayscale).
        mean: per-channel mean the backbone was trained with.
        std: per-channel std.
        cam_layer: dotted module path of the Grad-CAM target layer (inside the `Classifier`).
        num_classes: number of outputs.
    """

    name: str
    arch: str
    input_size: int = 224
    in_chans: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    cam_layer: str = ""
    num_classes: int = 2
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain types only (safe for ``torch.load(weights_only=True)``)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        """Inverse of `to_dict`."""
        d = dict(d)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)
