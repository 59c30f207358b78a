"""The brain crop: finds the head at any size and intensity, and says 'no brain' instead of crashing."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import NoBrainFound
from core.model.roi import find_brain
from tests.scans import synthetic_slice


def head_bounds(size: int) -> tuple[float, float, float, float]:
    """The synthetic head ellipse's extent (x0, y0, x1, y1)."""
    return size * (0.5 - 0.32), size * (0.5 - 0.40), size * (0.5 + 0.32), size * (0.5 + 0.40)


@pytest.mark.parametrize("size", [96, 256, 512, 1024])
def test_box_encloses_the_head_at_any_size(size: int) -> None:
    region = find_brain(synthetic_slice(size))
    x0, y0, x1, y1 = region.box
    hx0, hy0, hx1, hy1 = head_bounds(size)
    assert x0 <= hx0 and y0 <= hy0 and x1 >= hx1 and y1 >= hy1
    assert (x1 - x0) < 0.8 * size  # and stays tight around it
    assert 0.3 < region.area_fraction < 0.5 and 0.7 < region.fill < 0.85


def test_relative_box_is_the_same_across_resolutions() -> None:
    boxes = [np.array(find_brain(synthetic_slice(s)).box) / s for s in (256, 1024)]
    assert np.abs(boxes[0] - boxes[1]).max() < 0.02


def test_dark_low_contrast_scan_is_still_found() -> None:
    dim = (synthetic_slice(256).astype(np.float32) * 0.15).astype(np.uint8)  # intensities 0..36
    x0, y0, x1, y1 = find_brain(dim).box
    assert x1 - x0 > 0.5 * 256 and y1 - y0 > 0.6 * 256


def test_margin_grows_the_box_but_stays_inside_the_image() -> None:
    image = synthetic_slice(256, offset=(0, 90))  # head touching the right edge
    tight, wide = find_brain(image, margin=0.0).box, find_brain(image, margin=0.1).box
    assert wide[0] < tight[0] and wide[1] < tight[1]
    assert wide[2] <= 256 and wide[3] <= 256


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((256, 256), np.uint8),
        np.full((256, 256), 255, np.uint8),
        np.full((256, 256), 90, np.uint8),
        np.pad(np.full((6, 6), 255, np.uint8), 125),  # a speck
    ],
    ids=["black", "white", "grey", "speck"],
)
def test_blank_or_speck_images_raise_no_brain_found(image: np.ndarray) -> None:
    with pytest.raises(NoBrainFound, match="No brain region"):
        find_brain(image)


def test_noise_never_crashes() -> None:
    """Noise of any shape, thin strips and single pixels included: a box inside the image or NoBrainFound, never
    another error (the crop is the first step of every analysis)."""
    rng = np.random.default_rng(0)
    outcomes = []
    for shape in ((300, 200), (200, 300), (64, 64), (1, 1), (1, 400), (400, 1), (3, 3), (2048, 16)):
        for kind in ("uniform", "sparse", "bright"):
            noise = rng.integers(0, 256, shape, dtype=np.uint8)
            if kind == "sparse":
                noise = noise * (rng.random(shape) < 0.05)
            elif kind == "bright":
                noise = noise | 128
            try:
                x0, y0, x1, y1 = find_brain(noise.astype(np.uint8)).box
            except NoBrainFound:
                outcomes.append("none")
                continue
            assert 0 <= x0 < x1 <= shape[1] and 0 <= y0 < y1 <= shape[0], (shape, kind)
            outcomes.append("box")
    assert len(outcomes) == 24 and "none" in outcomes  # a single pixel holds no brain
