import numpy as np
from PIL import Image

from lungnet.data.labels import SYNTHETIC
from lungnet.data.synthetic import generate, mask_path_for, render_phantom


def test_generation_is_deterministic_and_masks_match(tmp_path):
    a = generate(tmp_path / "a", n_per_class=3, size=64, seed=5)
    b = generate(tmp_path / "b", n_per_class=3, size=64, seed=5)
    for label in SYNTHETIC:
        files = sorted((a / "images" / label).glob("*.png"))
        assert len(files) == 3
        for f in files:
            assert f.read_bytes() == (b / "images" / label / f.name).read_bytes()
            mask = np.asarray(Image.open(mask_path_for(f)))
            assert mask.shape == (64, 64)
            assert (mask.sum() == 0) == (label == "Normal")


def test_lesion_changes_pixels_inside_its_mask():
    img_n, _ = render_phantom("Normal", 96, np.random.default_rng(0))
    img_c, mask = render_phantom("Consolidation", 96, np.random.default_rng(0))
    inside = mask > 0
    diff = img_c.astype(float) - img_n.astype(float)
    assert diff[inside].mean() > 20  # a bright opacity where the mask says
