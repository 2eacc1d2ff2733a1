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
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field, replace

import numpy as np

METHOD = "mahalanobis-ppca"


def encode_array(array: np.ndarray) -> dict:
    """A float array as JSON-ready data: shape and little-endian float32 bytes in base64."""
    arr = np.ascontiguousarray(array, dtype="<f4")
    return {"shape": list(arr.shape), "dtype": "float32", "base64": base64.b64encode(arr.tobytes()).decode("ascii")}


def decode_array(data: dict) -> np.ndarray:
    """Inverse of `encode_array` (float64 result).

    Raises:
        ValueError: malformed entry (wrong size or type).
    """
    if data.get("dtype") != "float32":
        raise ValueError(f"unsupported array dtype {data.get('dtype')!r} (expected float32)")
    raw = np.frombuffer(base64.b64decode(data["base64"], validate=True), dtype="<f4")
    return raw.reshape([int(s) for s in data["shape"]]).astype(np.float64)


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
        """Fits class means and the shared PPCA covariance.

        Args:
            features: (N, D) penultimate features of the training images.
            classes: (N,) class indices (single-label), or None for one common mean (multi-label).
            dims: principal axes kept (fewer when N or D is smaller).
            **info: facts to record (e.g. ``fit_split="train"``).

        Raises:
            ValueError: fewer than 3 images.
        """
        x = np.asarray(features, dtype=np.float64)
        if len(x) < 3:
            raise ValueError(f"the OOD gate needs at least 3 training images, got {len(x)}")
        groups = np.zeros(len(x), dtype=int) if classes is None else np.asarray(classes, dtype=int)
        present = np.unique(groups)
        means = np.stack([x[groups == g].mean(0) for g in present])
        centred = x - means[np.searchsorted(present, groups)]
        scatter = centred.T @ centred / max(len(x) - len(present), 1)
        eigval, eigvec = np.linalg.eigh(scatter)
        order = np.argsort(eigval)[::-1]
        eigval, eigvec = np.clip(eigval[order], 0.0, None), eigvec[:, order]
        k = int(max(1, min(dims, x.shape[1] - 1, len(x) - len(present))))
        floor = max(float(eigval.mean()) * 1e-6, 1e-12)
        rest = eigval[k:]
        noise = max(float(rest.mean()) if rest.size else floor, floor)
        info = {"method": METHOD, "dims": k, "feature_dim": int(x.shape[1]), "fit_n": int(len(x)), **info}
        return cls(means, eigvec[:, :k], np.maximum(eigval[:k], noise), noise, info=info)

    def score(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance to the nearest class mean, per feature dimension: (N,)."""
        x = np.asarray(features, dtype=np.float64)
        best = np.full(len(x), np.inf)
        for mean in self.means:
            d = x - mean
            proj = d @ self.components
            residual = (d * d).sum(1) - (proj * proj).sum(1)
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
    def from_dict(cls, data: dict) -> OodGate:
        """Inverse of `to_dict`.

        Raises:
            ValueError: an unknown method or malformed arrays.
        """
        if data.get("method") != METHOD:
            raise ValueError(f"unknown OOD method {data.get('method')!r} (this lungnet reads {METHOD})")
        try:
            means, comps = decode_array(data["means"]), decode_array(data["components"])
            variances = decode_array(data["variances"])
            if comps.shape != (means.shape[1], len(variances)):
                raise ValueError(f"components {comps.shape} do not fit means {means.shape}")
            keys = {"threshold", "noise", "means", "components", "variances", "reference_scores"}
            threshold = data.get("threshold")
            return cls(
                means=means,
                components=comps,
                variances=variances,
                noise=float(data["noise"]),
                threshold=float("inf") if threshold is None else float(threshold),
                reference=np.asarray(data.get("reference_scores") or [], dtype=np.float64),
                info={k: v for k, v in data.items() if k not in keys},
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed OOD gate ({exc!r})") from exc
