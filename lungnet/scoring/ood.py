"""Out-of-distribution gate: how unlike the training images an input is, from the model's penultimate features.

The score is the Mahalanobis distance of an image's pooled backbone features to the nearest class mean of the
training images, under one covariance shared by the classes (Lee et al., NeurIPS 2018), divided by the feature
width (so in-distribution images score about 1). The covariance is estimated as probabilistic PCA (Tipping &
Bishop 1999): the ``dims`` leading axes of the within-class scatter keep their variances, every other direction
gets their mean (``noise``). Two reasons for that instead of a full inverse (what `pytorch_ood.detector.Mahalanobis`
computes, against which the tests check this one): a chest X-ray set has a few hundred to a few thousand images
for 1280 features, where the full covariance is singular; and the gate is stored as data in the checkpoint's
decision file, where ``dims`` axes take a few hundred KB against 6.5 MB for a 1280 x 1280 precision matrix.

The threshold is a quantile (default 0.95) of the scores of images the model was not trained on (the validation
split): by construction about 5 % of such images are flagged, and anything further from the training images than
95 % of real validation images is.

Pooled features of a fine-tuned model hardly change when a film is turned: a film rotated by 90 or 180 degrees
scores like an upright one. `ImageGate` adds a second PPCA-Mahalanobis gate on a ``THUMB`` x ``THUMB`` grey
thumbnail of the model's own preprocessed input (`gate_inputs` appends it to the features), standardised per image
(zero mean, unit contrast: the layout, not the exposure), which sees where the lungs, the mediastinum and the
diaphragm are; a flat (blank) image standardises to all zeros. Each part is thresholded at the 0.975 quantile of
val, and an image is OOD when either part flags it (about 5 % of val in all); its score is the larger of the two part
scores divided by their thresholds (flagged above 1). A stored gate without the image part (`OodGate`) scores the
features alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from lungnet.scoring.gate_inputs import THUMB, gate_scatters, split_inputs
from lungnet.scoring.scatter import Scatter, leading_axes
from lungnet.scoring.stored_array import encode_array, read_array
from lungnet.untrusted import BadValue, Fields

METHOD = "mahalanobis-ppca"
IMAGE_METHOD = "mahalanobis-ppca+thumbnail"
IMAGE_DIMS = 8  # principal axes of the thumbnails' covariance
CHUNK = 4096  # rows scored at a time


@dataclass(frozen=True)
class OodGate:
    """A fitted gate: Mahalanobis distance under a PPCA covariance, and the threshold above which an input is OOD.

    Attributes:
        means: (C, D) class means of the training features (one row for multi-label models).
        components: (D, k) leading axes of the within-class scatter.
        variances: (k,) variances along them.
        noise: variance of every other direction.
        threshold: scores above it are flagged (inf until `calibrate` sets it).
        reference: scores of the images the threshold was set on (for shift tests), or empty.
        info: where it was fitted and calibrated (split names, counts, quantile, feature layer).
    """

    means: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    noise: float
    threshold: float = float("inf")
    reference: np.ndarray = field(default_factory=lambda: np.zeros(0))
    info: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, features: np.ndarray, classes: np.ndarray | None = None, dims: int = 64, **info) -> OodGate:
        """Fits class means and the shared PPCA covariance, in float32 (the precision the gate is stored in; half
        float64's CPU for the D x D scatter, the finish's largest step at 2048 features), sums in float64.

        Args:
            features: (N, D) penultimate features of the training images.
            classes: (N,) class indices (single-label), or None for one common mean (multi-label).
            dims: principal axes kept (fewer when N or D is smaller).
            **info: facts to record (e.g. ``fit_split="train"``).

        Raises:
            ValueError: fewer than 3 images.
        """
        return cls.from_scatter(Scatter.of(features, classes), dims, **info)

    @classmethod
    def from_scatter(cls, stats: Scatter, dims: int = 64, device=None, **info) -> OodGate:
        """`fit` from the training features' statistics (`lungnet.scoring.scatter.Scatter`, summed across ranks);
        ``device``: a torch device for the leading axes (`lungnet.scoring.scatter.leading_axes`), None: the host.

        Raises:
            ValueError: fewer than 3 images.
        """
        n, classes = stats.n, len(stats.classes)
        if n < 3:
            raise ValueError(f"the OOD gate needs at least 3 training images, got {n}")
        scatter = stats.scatter / np.float32(max(n - classes, 1))
        width = stats.width
        k = int(max(1, min(dims, width - 1, n - classes)))
        eigval, eigvec = leading_axes(scatter, k, device)
        total = max(float(np.trace(scatter, dtype=np.float64)), 0.0)  # every eigenvalue's sum: the rest's mean
        floor = max(total / width * 1e-6, 1e-12)
        rest = width - k
        noise = max((total - float(eigval.sum())) / rest if rest else floor, floor)
        info = {"method": METHOD, "dims": k, "feature_dim": int(width), "fit_n": int(n), **info}
        variances = np.maximum(eigval.astype(np.float64), noise)
        return cls(stats.means, eigvec.astype(np.float64), variances, noise, info=info)

    def score(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance to the nearest class mean, per feature dimension: (N,).

        In float64, ``CHUNK`` rows at a time: memory stays flat in N (112k images of 2048 features would take
        ~6 GB of float64 temporaries at once).
        """
        x = np.asarray(features)[:, : self.means.shape[1]]  # without a thumbnail part
        out = np.empty(len(x))
        for start in range(0, len(x), CHUNK):
            out[start : start + CHUNK] = self._score_rows(np.asarray(x[start : start + CHUNK], dtype=np.float64))
        return out

    def _score_rows(self, x: np.ndarray) -> np.ndarray:
        """`score` of a block of float64 rows."""
        best = np.full(len(x), np.inf)
        for mean in self.means:
            d = x - mean
            proj = d @ self.components
            residual = np.einsum("ij,ij->i", d, d) - np.einsum("ij,ij->i", proj, proj)
            dist = (proj * proj / self.variances).sum(1) + np.maximum(residual, 0.0) / self.noise
            best = np.minimum(best, dist)
        return best / self.means.shape[1]

    def calibrate(self, features: np.ndarray, quantile: float = 0.95, split: str = "val") -> OodGate:
        """A copy whose threshold is the ``quantile`` of the scores of ``features`` (images not trained on)."""
        scores = self.score(features)
        threshold = float(np.quantile(scores, quantile)) if len(scores) else float("inf")
        info = {**self.info, "threshold_split": split, "threshold_n": int(len(scores)), "quantile": float(quantile)}
        return replace(self, threshold=threshold, reference=scores, info=info)

    def flag(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores, flags): flags are True where the score is above the threshold."""
        scores = self.score(features)
        return scores, scores > self.threshold

    def to_dict(self) -> dict:
        """JSON-ready data (arrays as base64 float32)."""
        return {
            **self.info,
            "threshold": self.threshold,
            "noise": self.noise,
            "means": encode_array(self.means),
            "components": encode_array(self.components),
            "variances": encode_array(self.variances),
            "reference_scores": [float(s) for s in self.reference],
        }

    @classmethod
    def from_dict(cls, data: dict, key: str = "ood") -> OodGate:
        """Inverse of `to_dict`, every value checked (`lungnet.untrusted`).

        Args:
            data: the stored gate.
            key: where it is in its file, for messages (``ood``, ``ood.features``).

        Raises:
            BadValue: an unknown method, a malformed array or a value out of range, named by its key.
        """
        f = Fields(data, f"{key}.")
        f.string("method", choices=[METHOD])
        means, comps = read_array(f, "means", 2), read_array(f, "components", 2)
        variances = read_array(f, "variances", 1)
        if comps.shape != (means.shape[1], len(variances)):
            fit = f"shape ({means.shape[1]}, {len(variances)}), to fit means {means.shape} and variances"
            raise BadValue(f.key("components"), None, fit, said=f"of shape {comps.shape}")
        if (variances <= 0).any():
            raise BadValue(f.key("variances"), None, "numbers > 0", said="an array with values <= 0")
        keys = {"threshold", "noise", "means", "components", "variances", "reference_scores"}
        return cls(
            means=means,
            components=comps,
            variances=variances,
            noise=f.number("noise", gt=0),
            threshold=f.number("threshold", null=True, default=None, gt=0) or float("inf"),  # null: not calibrated
            reference=f.numbers("reference_scores", default=[], ge=0),
            info={k: v for k, v in data.items() if k not in keys},
        )


@dataclass(frozen=True)
class ImageGate:
    """Two gates, flagged when either flags: `OodGate` on the pooled features and one on the input's thumbnail.

    Attributes:
        features: the gate on the first ``features.info["feature_dim"]`` columns of `gate_inputs`.
        image: the gate on the ``THUMB**2`` thumbnail columns after them, standardised per image (`layout`).
        threshold: always 1 (each part's own threshold).
        reference: scores of the images the parts were thresholded on (for shift tests), or empty.
        info: method, where the parts were fitted and thresholded.
    """

    features: OodGate
    image: OodGate
    threshold: float = 1.0
    reference: np.ndarray = field(default_factory=lambda: np.zeros(0))
    info: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, inputs: np.ndarray, classes: np.ndarray | None = None, dims: int = 64, **info) -> ImageGate:
        """Fits both parts on `gate_inputs` of the training images (``dims``: the feature part's axes)."""
        return cls.from_scatters(*gate_scatters(inputs, classes), dims=dims, **info)

    @classmethod
    def from_scatters(cls, features: Scatter, image: Scatter, dims: int = 64, device=None, **info) -> ImageGate:
        """`fit` from each part's statistics (`gate_scatters`, or summed across ranks); ``device``: as
        `OodGate.from_scatter`."""
        feats = OodGate.from_scatter(features, dims=dims, device=device, **info)
        image_part = OodGate.from_scatter(image, IMAGE_DIMS, device, **{**info, "layer": "input thumbnail"})
        return cls(feats, image_part, info={"method": IMAGE_METHOD, **info})

    def parts(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Each part's score divided by its threshold: ``{"features": (N,), "image": (N,)}``."""
        features, thumbnails = self.split(inputs)
        return {
            "features": self.features.score(features) / self.features.threshold,
            "image": self.image.score(thumbnails) / self.image.threshold,
        }

    def split(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`split_inputs` (what the parts were fitted on) of inputs as wide as this gate's.

        Raises:
            ValueError: ``inputs`` are not as wide as this gate's features plus the thumbnail.
        """
        x = np.asarray(inputs)
        width = self.features.means.shape[1]
        if x.ndim != 2 or x.shape[1] != width + THUMB * THUMB:
            raise ValueError(f"gate inputs of shape {x.shape}, expected (N, {width} features + {THUMB**2} thumbnail)")
        return split_inputs(x)

    def reference_parts(self) -> dict[str, np.ndarray]:
        """`parts` of the images the gate was thresholded on, in their order, from the parts' reference scores (no
        second scoring)."""
        return {
            "features": self.features.reference / self.features.threshold,
            "image": self.image.reference / self.image.threshold,
        }

    def score(self, inputs: np.ndarray) -> np.ndarray:
        """The larger part score relative to its threshold: (N,)."""
        return np.maximum(*self.parts(inputs).values())

    def flag(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores, flags): flagged where either part flags."""
        scores = self.score(inputs)
        return scores, scores > self.threshold

    def calibrate(self, inputs: np.ndarray, quantile: float = 0.95, split: str = "val") -> ImageGate:
        """A copy with each part thresholded at ``1 - (1 - quantile) / 2`` of ``inputs``' scores (either flags
        about ``1 - quantile`` of such images)."""
        features, thumbnails = self.split(inputs)
        each = 1 - (1 - quantile) / 2
        feats = self.features.calibrate(features, each, split)
        image = self.image.calibrate(thumbnails, each, split)
        done = replace(self, features=feats, image=image)
        scores = np.maximum(feats.reference / feats.threshold, image.reference / image.threshold)  # = done.score(x)
        info = {**self.info, "threshold_split": split, "threshold_n": len(features), "quantile": float(quantile)}
        info["rate_on_threshold_split"] = float((scores > 1).mean()) if len(scores) else None
        return replace(done, reference=scores, info=info)

    def to_dict(self) -> dict:
        """JSON-ready data: both parts in full."""
        return {
            **self.info,
            "threshold": self.threshold,
            "features": self.features.to_dict(),
            "image": self.image.to_dict(),
            "reference_scores": [float(s) for s in self.reference],
        }

    @classmethod
    def from_dict(cls, data: dict, key: str = "ood") -> ImageGate:
        """Inverse of `to_dict`, every value checked (`OodGate.from_dict`).

        Raises:
            BadValue: malformed or out of range, named by its key.
        """
        f = Fields(data, f"{key}.")
        f.string("method", choices=[IMAGE_METHOD])
        parts = tuple(OodGate.from_dict(f.raw(part), f.key(part)) for part in ("features", "image"))
        if parts[1].means.shape[1] != THUMB * THUMB:
            said = f"of shape {parts[1].means.shape}"
            raise BadValue(f.key("image.means"), None, f"{THUMB**2} columns, a {THUMB} x {THUMB} thumbnail", said=said)
        info = {k: v for k, v in data.items() if k not in {"threshold", "features", "image", "reference_scores"}}
        reference = f.numbers("reference_scores", default=[], ge=0)
        return cls(*parts, f.number("threshold", default=1.0, gt=0), reference, info)


def flag_parts(gate, features, parts: dict[str, np.ndarray] | None = None):
    """(part scores or None, scores, flags) of ``features`` under a stored gate: an `ImageGate` scores each part once
    (the score is the larger part) or takes ``parts`` where they are known (`ImageGate.reference_parts`); the
    others score as their ``flag``.

    Raises:
        ValueError: ``parts`` of another number of images than ``features``.
    """
    if not isinstance(gate, ImageGate):
        return None, *gate.flag(features)
    if parts is not None and any(len(v) != len(features) for v in parts.values()):
        raise ValueError(f"OOD part scores of {[len(v) for v in parts.values()]} images for {len(features)} images")
    parts = parts if parts is not None else gate.parts(features)
    scores = np.maximum(*parts.values())
    return parts, scores, scores > gate.threshold


ANY_MEMBER = "any-member"


@dataclass(frozen=True)
class AnyMemberGate:
    """The OOD gate of an ensemble: an image is flagged when any member's own gate flags it.

    Members differ in feature width and scale, so their gates are kept apart: each scores its own member's
    features, and the ensemble's score is the largest member score relative to that member's threshold
    (``max_m score_m / threshold_m``), flagged above 1. Members without a gate do not vote. Each member flags about
    5 % of its validation images, so the ensemble flags at least as many (the report gives the measured rate).

    Attributes:
        gates: one entry per member, in the ensemble's order (None: that member has no gate).
        threshold: always 1 (a member's own threshold).
        reference: ensemble scores of the images the member gates were calibrated on (for shift tests), or empty.
        info: method, member count, where the reference was scored.
    """

    gates: tuple[OodGate | ImageGate | None, ...]
    threshold: float = 1.0
    reference: np.ndarray = field(default_factory=lambda: np.zeros(0))
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not any(g is not None for g in self.gates):
            raise ValueError("an ensemble OOD gate needs at least one member with a gate")
        voting = sum(g is not None for g in self.gates)
        object.__setattr__(
            self, "info", {"method": ANY_MEMBER, "members": len(self.gates), "voting": voting, **self.info}
        )

    def score(self, features) -> np.ndarray:
        """The largest member score relative to its threshold, per image: (N,).

        Args:
            features: one (N, D_m) array (or None) per member, in the ensemble's order.
        """
        if len(features) != len(self.gates):
            raise ValueError(f"{len(features)} feature arrays for an ensemble gate of {len(self.gates)} members")
        rel = [g.score(f) / g.threshold for g, f in zip(self.gates, features, strict=True) if g is not None]
        return np.max(np.stack(rel), axis=0)

    def flag(self, features) -> tuple[np.ndarray, np.ndarray]:
        """(scores, flags): flagged where any voting member's gate flags."""
        scores = self.score(features)
        return scores, scores > self.threshold

    def calibrate(self, features, split: str = "val") -> AnyMemberGate:
        """A copy holding the ensemble scores of ``features`` as its reference (the thresholds stay the members')."""
        scores = self.score(features)
        info = {**self.info, "threshold_split": split, "threshold_n": int(len(scores))}
        info["rate_on_threshold_split"] = float((scores > self.threshold).mean()) if len(scores) else None
        return replace(self, reference=scores, info=info)

    def to_dict(self) -> dict:
        """JSON-ready data: the member gates in full (the ensemble's decision file stands on its own)."""
        return {
            **self.info,
            "threshold": self.threshold,
            "gates": [g.to_dict() if g is not None else None for g in self.gates],
            "reference_scores": [float(s) for s in self.reference],
        }

    @classmethod
    def from_dict(cls, data: dict, key: str = "ood") -> AnyMemberGate:
        """Inverse of `to_dict`, every value checked (`gate_from_dict`).

        Raises:
            BadValue: malformed or out of range, named by its key.
        """
        f = Fields(data, f"{key}.")
        stored = enumerate(f.items("gates"))
        gates = tuple(None if g is None else gate_from_dict(g, f"{key}.gates[{i}]") for i, g in stored)
        if not any(g is not None for g in gates):
            raise BadValue(f.key("gates"), None, "at least one member gate", said="all null")
        info = {k: v for k, v in data.items() if k not in {"threshold", "gates", "reference_scores"}}
        reference = f.numbers("reference_scores", default=[], ge=0)
        return cls(gates, f.number("threshold", default=1.0, gt=0), reference, info)


def gate_from_dict(data: dict, key: str = "ood") -> OodGate | ImageGate | AnyMemberGate:
    """A stored gate: a model's (`ImageGate`, or `OodGate` from before the image part) or an ensemble's
    (`AnyMemberGate`), by its ``method``.

    Raises:
        BadValue: an unknown method, or a malformed gate, named by its key (``key``: where it is in its file).
    """
    method = Fields(data, f"{key}.").string("method", choices=[METHOD, IMAGE_METHOD, ANY_MEMBER])
    if method == ANY_MEMBER:
        return AnyMemberGate.from_dict(data, key)
    return ImageGate.from_dict(data, key) if method == IMAGE_METHOD else OodGate.from_dict(data, key)
