"""Bootstrap draws: images, or whole patients with all their images (a cluster bootstrap).

Images of one patient are not independent: resampling them one by one makes intervals too narrow when patients
have several films. Given a group per image (the patient; an image without one is its own group), each draw takes
as many groups as there are, with replacement, and every image of each drawn group.
"""

from __future__ import annotations

import numpy as np


class Resampler:
    """Index draws for a bootstrap over ``n`` images, grouped by ``groups`` when given.

    Args:
        n: number of images.
        groups: (n,) group key per image, or None to resample images.
    """

    def __init__(self, n: int, groups: np.ndarray | None = None) -> None:
        self.n = int(n)
        self.groups = None
        if groups is not None:
            keys = np.asarray(groups)
            if len(keys) != self.n:
                raise ValueError(f"groups has {len(keys)} entries for {self.n} images")
            _, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
            # groups numbered in order of their first image: with one image per group the draws are the image draws
            by_first = np.argsort(first, kind="stable")
            inverse, counts = np.argsort(by_first)[inverse.ravel()], counts[by_first]
            self.order = np.argsort(inverse, kind="stable")  # images sorted by group
            self.starts = np.cumsum(counts) - counts  # where each group's images begin in ``order``
            self.counts = counts
            self.groups = len(counts)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """One resample's image indices (about ``n`` of them when grouped, exactly ``n`` otherwise)."""
        if self.groups is None:
            return rng.integers(0, self.n, self.n)
        picked = rng.integers(0, self.groups, self.groups)
        sizes = self.counts[picked]
        block_starts = np.cumsum(sizes) - sizes
        within = np.arange(sizes.sum()) - np.repeat(block_starts, sizes)
        return self.order[np.repeat(self.starts[picked], sizes) + within]

    def describe(self) -> str:
        """How images are resampled, for reports."""
        return "images" if self.groups is None else f"patients ({self.groups} for {self.n} images)"
