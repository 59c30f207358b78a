"""Augmentation: one randomly varied model input from a full-frame slice, through the inference crop and scaling."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from core.errors import NoBrainFound
from core.model.preprocess import InputSpec, crop_square, resize_square, square_to_input
from core.model.roi import find_brain
from core.training.config import TrainConfig


def match_histogram(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Re-render uint8 ``image`` with the intensity distribution of uint8 ``reference`` (CDF matching)."""
    src_cdf = np.cumsum(np.bincount(image.ravel(), minlength=256)).astype(np.float64)
    ref_cdf = np.cumsum(np.bincount(reference.ravel(), minlength=256)).astype(np.float64)
    mapping = np.interp(src_cdf / src_cdf[-1], ref_cdf / ref_cdf[-1], np.arange(256))
    return mapping.astype(np.uint8)[image]


def move_frame(pixels: np.ndarray, angle: float, scale: float = 1.0, shift: Sequence[float] = (0.0, 0.0)) -> np.ndarray:
    """The whole frame turned by ``angle`` degrees and scaled about its centre, then shifted by ``shift`` (x, y) as
    shares of its width and height, black fill: how a head can sit in a scan from elsewhere."""
    height, width = pixels.shape
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, scale)
    matrix[:, 2] += np.asarray(shift, np.float64) * (width, height)
    return cv2.warpAffine(pixels, matrix, (width, height), flags=cv2.INTER_LINEAR, borderValue=0)


def augment(
    pixels: np.ndarray,
    rng: np.random.Generator,
    spec: InputSpec,
    reference: np.ndarray | None,
    lesion: Callable[[np.ndarray, np.random.Generator], np.ndarray | None] | None = None,
    rotation: float = TrainConfig.rotation,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One randomly varied model input from a full-frame slice, through the inference crop and scaling.

    With ``lesion`` (a function that puts a lesion into a square crop: a transplant or a painted one) the second
    value is the same input with that lesion (None when none fits): every other random choice is shared, so the
    pair differs only by the lesion.
    """
    angle, scale = rng.uniform(-rotation, rotation), rng.uniform(0.9, 1.1)
    moved = move_frame(pixels, angle, scale, rng.uniform(-0.06, 0.06, 2))
    if rng.random() < 0.5:
        moved = np.ascontiguousarray(moved[:, ::-1])
    try:
        box = find_brain(moved, margin=rng.uniform(0.0, 0.12)).box
    except NoBrainFound:
        moved, box = pixels, find_brain(pixels).box
    square = crop_square(moved, box)
    if rng.random() < 0.3:
        square = resize_square(square, int(rng.integers(spec.size // 3, spec.size)))
    square = resize_square(square, spec.size)
    painted = lesion(square, rng) if lesion is not None else None
    head = _head_mask(square)  # one head for both twins: their looks then differ only by the lesion
    if painted is None:
        return _vary_appearance(square, rng, spec, reference, head), None
    twin = copy.deepcopy(rng)  # the lesioned copy takes the same appearance draws
    return _vary_appearance(square, rng, spec, reference, head), _vary_appearance(painted, twin, spec, reference, head)


def _head_mask(square: np.ndarray) -> np.ndarray:
    """The head: everything above a low threshold (a third of Otsu's), its largest region filled."""
    level = max(8.0, 0.3 * float(cv2.threshold(square, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[0]))
    _, above = cv2.threshold(square, level, 255, cv2.THRESH_BINARY)
    contours, _ = cv2.findContours(above, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return np.zeros(square.shape, bool)
    return cv2.drawContours(np.zeros_like(square), [max(contours, key=cv2.contourArea)], -1, 255, cv2.FILLED) > 0


def vary_sequence(square: np.ndarray, rng: np.random.Generator, head: np.ndarray) -> np.ndarray:
    """Looks the collections differ by: another sequence's contrast (intensities inverted inside the head, as T1
    against T2), a skull-stripped brain (the outer rim of the head removed), and the dark, low-contrast slices of
    some scanners."""
    draw = rng.random(3)
    if draw[0] < 0.08:
        square = np.where(head, 255 - square, 0).astype(np.uint8)
    if draw[1] < 0.12:
        side = square.shape[0]
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (int(0.12 * side) | 1,) * 2)
        brain = cv2.erode(head.astype(np.uint8), kernel)
        square = np.where(brain > 0, square, 0).astype(np.uint8)
    if draw[2] < 0.2:
        dark = rng.uniform(0.35, 0.75)
        square = np.clip(square.astype(np.float32) * dark + rng.uniform(0, 10), 0, 255).astype(np.uint8)
    return square


def _vary_appearance(
    square: np.ndarray, rng: np.random.Generator, spec: InputSpec, reference: np.ndarray | None, head: np.ndarray
) -> np.ndarray:
    """Sequence look, histogram, gamma, contrast, brightness, blur, noise and JPEG quality, then the inference
    scaling."""
    square = vary_sequence(square, rng, head)
    if reference is not None and rng.random() < 0.25:
        square = match_histogram(square, reference)
    x = square.astype(np.float32) / 255.0
    x = x ** math.exp(rng.uniform(math.log(0.6), math.log(1.7)))
    x = (x - 0.5) * rng.uniform(0.75, 1.25) + 0.5 + rng.uniform(-0.08, 0.08)
    if rng.random() < 0.3:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.4, 1.3))
    if rng.random() < 0.3:
        x = x + rng.normal(0, rng.uniform(0.005, 0.04), x.shape).astype(np.float32)
    image = np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 95))])
        if ok:
            image = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE)
    return square_to_input(image, spec)
