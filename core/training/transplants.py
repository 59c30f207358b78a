"""Lesion transplants: a real tumour region from one patient's slice blended into a normal slice of another.

The donors are tumour slices with a hand-drawn mask (the LGG collection's FLAIR and post-contrast T1 slices of
training patients). Each donor region (the mask, slightly dilated, and its pixels) is scaled to the recipient's
crop, placed inside the recipient's brain, and blended with Poisson image editing (OpenCV's ``seamlessClone``),
which keeps the lesion's own texture and edges while matching the surrounding intensities. The result is a tumour
scan of the recipient's source and sequence, so only the lesion tells it from its untouched twin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from core.imaging import read_scan_file
from core.training.lesions import bright_head, inner_part
from core.training.sources import Item

DONOR_SEQUENCES = ("flair", "t1c")


@dataclass(frozen=True)
class Donor:
    """A tumour region: ``patch`` (uint8 pixels around the lesion) and ``mask`` (uint8 0/255, same shape, the
    lesion slightly dilated: what is blended); ``frame_side`` is the side of the slice it came from (to scale it
    like its head); ``lesion`` (same shape, 0/255) the drawn lesion itself, for a segmentation label."""

    patch: np.ndarray
    mask: np.ndarray
    frame_side: int
    lesion: np.ndarray | None = None


def _donor(image: np.ndarray, drawn: np.ndarray, dilation: int, frame_side: int) -> Donor:
    """The region around ``drawn`` (uint8 0/255, ``image``'s shape), its mask dilated by a ``dilation`` disc."""
    mask = cv2.dilate(drawn, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (dilation, dilation)))
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    region = (slice(y0, y1), slice(x0, x1))
    return Donor(image[region].copy(), mask[region].copy(), frame_side, drawn[region].copy())


def crop_donor(crop: np.ndarray, lesion: np.ndarray, min_pixels: int = 100) -> Donor | None:
    """A donor from a brain crop (the crop cache's) and its lesion mask; None when the lesion is too small."""
    drawn = (lesion > 0).astype(np.uint8) * 255
    if int(drawn.sum()) // 255 < min_pixels:
        return None
    # a crop's head fills it as a recipient crop's does: this frame side makes the transplant's scale about 1
    return _donor(crop, drawn, 5, round(max(crop.shape) / 0.8))


def donors(items: Sequence[Item], images: Sequence[np.ndarray], min_pixels: int = 300) -> list[Donor]:
    """Donor regions from tumour slices with a mask of at least ``min_pixels`` (FLAIR and post-contrast T1)."""
    found = []
    for item, image in zip(items, images, strict=True):
        if item.mask is None or item.sequence not in DONOR_SEQUENCES or (item.tumour_pixels or 0) < min_pixels:
            continue
        mask = read_scan_file(item.mask).pixels
        if mask.shape != image.shape or not (mask > 127).any():
            continue
        donor = _donor(image, (mask > 127).astype(np.uint8) * 255, 7, max(image.shape))
        if int(donor.mask.sum()) // 255 >= min_pixels:
            found.append(donor)
    return found


def brain_interior(square: np.ndarray) -> np.ndarray:
    """Where a lesion may be placed: the bright head (:func:`core.training.lesions.bright_head`), eroded by 15 % of
    the side, as a painted lesion's place."""
    head = bright_head(square)
    return np.zeros_like(square) if head is None else inner_part(head)


def transplant(square: np.ndarray, donor: Donor, rng: np.random.Generator) -> np.ndarray | None:
    """``square`` (a uint8 brain crop) with ``donor``'s lesion blended in; None when it does not fit or show."""
    done = transplant_with_mask(square, donor, rng)
    return None if done is None else done[0]


def transplant_with_mask(
    square: np.ndarray, donor: Donor, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`transplant`, and where the lesion now is in ``square`` (uint8 0/255; the donor's drawn lesion, or its
    blended region when it has none)."""
    side = square.shape[0]
    inner = brain_interior(square)
    ys, xs = np.nonzero(inner)
    if len(xs) < 20:
        return None
    # the donor's head filled about 75 % of its frame; the recipient crop is about 90 % head
    scale = side / (0.8 * donor.frame_side) * rng.uniform(0.7, 1.3)
    height, width = (max(3, round(d * scale)) for d in donor.patch.shape)
    if height >= side - 4 or width >= side - 4:
        return None
    patch = cv2.resize(donor.patch, (width, height), interpolation=cv2.INTER_AREA)
    mask = (cv2.resize(donor.mask, (width, height), interpolation=cv2.INTER_NEAREST) > 127).astype(np.uint8) * 255
    drawn = donor.lesion if donor.lesion is not None else donor.mask
    lesion = (cv2.resize(drawn, (width, height), interpolation=cv2.INTER_NEAREST) > 127).astype(np.uint8) * 255
    if rng.random() < 0.5:
        patch, mask, lesion = patch[:, ::-1].copy(), mask[:, ::-1].copy(), lesion[:, ::-1].copy()
    pick = int(rng.integers(len(xs)))
    cx = int(np.clip(xs[pick], width // 2 + 2, side - width // 2 - 3))
    cy = int(np.clip(ys[pick], height // 2 + 2, side - height // 2 - 3))
    mask[0, :], mask[-1, :], mask[:, 0], mask[:, -1] = 0, 0, 0, 0  # seamlessClone needs a border inside the patch
    if mask.sum() < 20 * 255:
        return None
    blended = cv2.seamlessClone(
        cv2.cvtColor(patch, cv2.COLOR_GRAY2BGR),
        cv2.cvtColor(square, cv2.COLOR_GRAY2BGR),
        mask,
        (cx, cy),
        cv2.NORMAL_CLONE,
    )
    result = cv2.cvtColor(blended, cv2.COLOR_BGR2GRAY)
    changed = np.abs(result.astype(np.int16) - square).astype(np.float32)
    region = changed[changed > 0]
    if region.size < 20 or float(np.percentile(region, 90)) < 12:
        return None  # an invisible lesion is no tumour
    # seamlessClone centres the bounding box of the mask (not the patch) on (cx, cy)
    bx, by, bw, bh = cv2.boundingRect(mask)
    placed = np.zeros_like(square)
    top, left = cy - bh // 2, cx - bw // 2
    placed[top : top + bh, left : left + bw] = lesion[by : by + bh, bx : bx + bw]
    return result, placed
