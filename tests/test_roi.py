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


def montage(rows: int, cols: int, size: int = 200, tumour_at: int | None = None) -> np.ndarray:
    """Slices tiled edge to edge, as a viewer's multi-up export or a scanner's mosaic lays them out."""
    tiles = [synthetic_slice(size, tumour=k == tumour_at, seed=k) for k in range(rows * cols)]
    return np.vstack([np.hstack(tiles[r * cols : (r + 1) * cols]) for r in range(rows)])


@pytest.mark.parametrize(("rows", "cols"), [(2, 2), (1, 2), (2, 1), (3, 3)])
def test_several_heads_in_one_image_are_refused_not_read_as_the_largest_alone(rows: int, cols: int) -> None:
    """A 2 x 2 export with a glioma in one tile was cropped to one column of tiles and called no tumour at 0.03
    (accepted by the gate, saved): one head was read and the others ignored."""
    from core.errors import SeveralImages

    for tumour_at in range(rows * cols):
        with pytest.raises(SeveralImages, match="several heads side by side"):
            find_brain(montage(rows, cols, tumour_at=tumour_at))


def test_a_slice_with_smaller_or_narrow_regions_beside_the_head_is_not_taken_for_several_heads() -> None:
    """What a real slice has beside its largest region: eyes, a region a fifth of its size, or two hemispheres at
    the vertex (each twice as high as wide): none is a second head."""
    head = synthetic_slice(256)
    eye = head.copy()
    yy, xx = np.mgrid[0:256, 0:256]
    eye[((yy - 20) ** 2 + (xx - 30) ** 2) <= 18**2] = 200  # round, about a sixth of the head's area
    assert find_brain(eye).box[2] - find_brain(eye).box[0] >= 150
    hemispheres = np.zeros((256, 256), np.uint8)
    for cx in (96, 160):  # two half-ellipses 60 x 180 with a 4-pixel fissure
        hemispheres[((yy - 128) / 90.0) ** 2 + ((xx - cx) / 30.0) ** 2 <= 1.0] = 180
    hemispheres[:, 126:130] = 0
    assert find_brain(hemispheres).area_fraction > 0.05
