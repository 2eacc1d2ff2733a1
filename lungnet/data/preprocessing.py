"""The input contract of a trained model: how an image file becomes its input tensor, and its logits into probabilities.

`Preprocessing` is recorded in checkpoints (through the model spec and data config) and in export sidecars, and
read back by `lungnet.serve.inference.Predictor`, `lungnet.artifacts.runtimes` and `lungnet.explain`: one definition
for every
path from a file to a decision. `EnsembleInput` is the same contract for several checkpoints run as one
(`lungnet.artifacts.ensemble`): one input tensor per member. It sits beside the transforms (`lungnet.data.transforms`),
below everything that runs a model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from lungnet.data.transforms import Normalize, build_transform, make_pipeline
from lungnet.errors import CheckpointError
from lungnet.schema import MAX_IMAGE_SIZE, Resize


@dataclass(frozen=True)
class Preprocessing:
    """Everything needed to turn an image file into the model's input, and its outputs into decisions.

    Attributes:
        labels: class names in output order.
        multilabel: sigmoid outputs (independent findings) instead of softmax.
        input_size: square side the model was trained at.
        in_chans: input channels.
        mean: per-channel normalisation mean.
        std: per-channel normalisation std.
        resize: ``squash`` or ``pad`` (as in training).
        downsample_to: side every image was first reduced to in training (``data.downsample_to``), or None.
        model: the lungnet model name (informative).
    """

    labels: tuple[str, ...]
    multilabel: bool
    input_size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str = "squash"
    model: str = ""
    downsample_to: int | None = None

    def pipeline(self):
        """Image (H, W) float in [0, 1] -> normalised tensor (C, S, S), the evaluation transform."""
        return make_pipeline(
            build_transform(self.input_size, None, self.resize, self.downsample_to),
            Normalize(self.mean, self.std, self.in_chans),
        )

    def on_image(self, heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """A model-input-sized heatmap laid over the content of an image of ``shape`` (H, W): ``resize=pad`` added
        borders (cut off), ``resize=crop`` saw only the centred square (the cut-off sides get zero); ``squash``
        stretched the whole image (the map stretches back when drawn)."""
        if self.resize == "crop":
            return uncrop(heatmap, shape)
        if self.resize != "pad":
            return heatmap
        # where the image lands in the padded input: run the same transform on an all-ones image
        pad = build_transform(self.input_size, None, "pad", self.downsample_to)
        mask = pad(image=np.ones((*shape, 1), np.float32))["image"]
        rows, cols = np.nonzero(mask[..., 0] > 0.5)
        if rows.size == 0:
            return heatmap
        return heatmap[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]

    def to_dict(self) -> dict:
        """Plain JSON types."""
        d = asdict(self)
        d["labels"], d["mean"], d["std"] = list(self.labels), list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        """Inverse of `to_dict` (unknown keys, e.g. a sidecar's ``format``, are ignored)."""
        try:
            prep = cls(
                labels=tuple(str(x) for x in d["labels"]),
                multilabel=bool(d["multilabel"]),
                input_size=int(d["input_size"]),
                in_chans=int(d["in_chans"]),
                mean=tuple(float(x) for x in d["mean"]),
                std=tuple(float(x) for x in d["std"]),
                resize=str(d.get("resize") or "squash"),
                model=str(d.get("model", "")),
                downsample_to=int(d["downsample_to"]) if d.get("downsample_to") else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"Preprocessing record is incomplete or malformed ({exc!r}): {d}") from exc
        prep.check()
        return prep

    def check(self) -> None:
        """Refuses values no model was trained with: an image side beyond `lungnet.schema.MAX_IMAGE_SIZE` (it
        would allocate gigabytes per image), a channel count other than 1 or 3, non-finite or zero statistics.

        Raises:
            CheckpointError: ``Preprocessing record: <key>=<value> must be <what it accepts>``.
        """
        sides = {"input_size": self.input_size, "downsample_to": self.downsample_to or 8}
        bad = [(k, v, f"an integer in [8, {MAX_IMAGE_SIZE}]") for k, v in sides.items() if not 8 <= v <= MAX_IMAGE_SIZE]
        if self.in_chans not in (1, 3):
            bad.append(("in_chans", self.in_chans, "1 or 3"))
        if not all(math.isfinite(x) for x in self.mean) or not all(math.isfinite(x) and x > 0 for x in self.std):
            bad.append(("mean/std", (self.mean, self.std), "finite numbers, std > 0"))
        if self.resize not in Resize.values():
            bad.append(("resize", self.resize, "one of: " + ", ".join(Resize.values())))
        if bad:
            key, value, accepts = bad[0]
            raise CheckpointError(f"Preprocessing record: {key}={value!r} must be {accepts}")

    @classmethod
    def from_loaded(cls, loaded) -> Preprocessing:
        """From a `LoadedModel`: the spec's trained input size, mean/std, channels and the data config's resize."""
        spec = loaded.spec
        return cls(
            labels=tuple(loaded.labels),
            multilabel=loaded.multilabel,
            input_size=int(spec.input_size),
            in_chans=int(spec.in_chans),
            mean=tuple(spec.mean),
            std=tuple(spec.std),
            resize=str(loaded.data.get("resize") or "squash"),
            model=spec.name,
            downsample_to=int(loaded.data["downsample_to"]) if loaded.data.get("downsample_to") else None,
        )


def uncrop(heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A heatmap of the centred square of an image of ``shape`` (H, W) placed in a map of the image's aspect
    ratio, zero where ``resize=crop`` cut the image off."""
    height, width = shape
    side = min(height, width)
    scale = heatmap.shape[0] / side
    full = np.zeros((max(round(height * scale), 1), max(round(width * scale), 1)), dtype=heatmap.dtype)
    top, left = (full.shape[0] - heatmap.shape[0]) // 2, (full.shape[1] - heatmap.shape[1]) // 2
    full[top : top + heatmap.shape[0], left : left + heatmap.shape[1]] = heatmap
    return full


def logits_to_probs(logits: np.ndarray | torch.Tensor, multilabel: bool) -> np.ndarray | torch.Tensor:
    """Logits (N, C) -> probabilities: sigmoid per finding (multi-label) or softmax over classes.

    The one definition for every model path: a tensor gives a tensor (same dtype and device, autograd kept), an
    array (or list) gives a float64 array.
    """
    if not isinstance(logits, torch.Tensor):
        return logits_to_probs(torch.from_numpy(np.asarray(logits, dtype=np.float64)), multilabel).numpy()
    return torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=-1)


@dataclass(frozen=True)
class EnsembleInput:
    """The input contract of an ensemble, where `Predictor` reads a model's `Preprocessing`.

    ``pipeline()`` turns one decoded image into one tensor per member (each member's own evaluation transform).
    """

    members: tuple[Preprocessing, ...]
    model: str

    @property
    def labels(self) -> tuple[str, ...]:
        return self.members[0].labels

    @property
    def multilabel(self) -> bool:
        return self.members[0].multilabel

    @property
    def thresholds(self) -> None:
        return None

    @property
    def input_size(self) -> int | list[int]:
        """The members' input size (a list when they differ)."""
        sizes = [p.input_size for p in self.members]
        return sizes[0] if len(set(sizes)) == 1 else sizes

    @property
    def resize(self) -> str:
        return "/".join(dict.fromkeys(p.resize for p in self.members))

    def pipeline(self):
        """Image (H, W) in [0, 1] -> one input tensor per member."""
        pipes = [p.pipeline() for p in self.members]
        return lambda image: tuple(pipe(image) for pipe in pipes)


def stack(tensors: list) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """A batch from preprocessed images: one stacked tensor, or one per member for an ensemble's inputs."""
    if tensors and isinstance(tensors[0], tuple):
        return tuple(torch.stack(list(parts)) for parts in zip(*tensors, strict=True))
    return torch.stack(tensors)
