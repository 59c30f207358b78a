"""Synthetic lesions painted into normal brain crops (counterfactual twins for training, and a shortcut probe)."""

from __future__ import annotations

import cv2
import numpy as np


def _smooth_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Low-frequency noise with unit standard deviation (for irregular outlines and texture)."""
    noise = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), max(sigma, 0.5))
    return noise / max(float(noise.std()), 1e-6)


def bright_head(square: np.ndarray) -> np.ndarray | None:
    """The head of a uint8 square crop as bright tissue by Otsu, its largest region filled (None: none found). Not
    the crop's outline (find_brain): that one takes in the face and neck on sagittal and low axial slices, and
    lesions placed in it landed in orbits and sinuses."""
    _, bright = cv2.threshold(cv2.GaussianBlur(square, (5, 5), 0), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    contours, _ = cv2.findContours(bright, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    return cv2.drawContours(np.zeros_like(square), [max(contours, key=cv2.contourArea)], -1, 255, cv2.FILLED)


def inner_part(head: np.ndarray) -> np.ndarray:
    """Where a lesion may be placed in ``head``: eroded by 15 % of the side each way."""
    return cv2.erode(head, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (int(0.3 * head.shape[0]) | 1,) * 2))


def synthetic_lesion(square: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """Paste a random tumour-like lesion into a uint8 square brain crop; None when none fits or it would not show.

    The training collection has almost no axial tumour scans in web style: every axial web slice is normal, so a
    network can learn "axial web slice = no tumour". A lesion painted into those very slices (irregular outline,
    bright, dark or ring-enhancing, optional oedema halo and mass effect pushing the anatomy aside) is a tumour scan
    of that source, so the slice's look stops predicting the label.
    """
    side = square.shape[0]
    head = bright_head(square)
    if head is None:
        return None
    ys, xs = np.nonzero(inner_part(head))
    if len(xs) < 20:
        return None
    brain = square[head > 0].astype(np.float32)
    median, high = float(np.median(brain)), float(np.percentile(brain, 99))
    pick = int(rng.integers(len(xs)))
    cx, cy = float(xs[pick]), float(ys[pick])
    radius = side * rng.uniform(0.05, 0.15)
    angle, aspect = rng.uniform(0, np.pi), rng.uniform(0.65, 1.0)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    rho = np.sqrt(dx * dx + dy * dy) + 1e-6
    image = square.astype(np.float32)
    # 0 on the head's outline (3 px in), 1 from 8 % of the side further in: skull and background stay put
    inside = np.clip((cv2.distanceTransform(head, cv2.DIST_L2, 5) - 3) / (0.08 * side), 0, 1)
    if rng.random() < 0.5:  # mass effect: tissue around the lesion pushed outwards
        falloff = np.where(rho < radius, rho / radius, np.exp(-(((rho - radius) / radius) ** 2)))
        push = rng.uniform(0.1, 0.4) * radius * falloff * inside
        image = cv2.remap(image, xx - dx / rho * push, yy - dy / rho * push, cv2.INTER_LINEAR)
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / radius
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / (radius * aspect)
    dist = np.sqrt(u * u + v * v) + 0.25 * _smooth_noise((side, side), radius / 2, rng)
    texture = 1.0 + rng.uniform(0.03, 0.15) * _smooth_noise((side, side), rng.uniform(1, 3), rng)
    kind = rng.choice(("bright", "dark", "ring"))
    if kind == "bright":
        core, level = 1.0, rng.uniform(max(median, 0.8 * high), 1.15 * high)
    elif kind == "dark":
        core, level = 1.0, rng.uniform(0.25, 0.7) * median
    else:
        core, level = rng.uniform(0.5, 0.8), rng.uniform(0.25, 0.8) * median
    rim = rng.uniform(max(median, 0.85 * high), 1.15 * high)
    if rng.random() < 0.5:  # oedema: a soft halo, brighter or darker than the tissue it replaces
        halo = np.clip((1.0 + rng.uniform(0.3, 1.0) - dist) / 0.5, 0, 1) * rng.uniform(0.2, 0.5) * inside
        image = image * (1 + halo * rng.choice((-0.4, 0.5)))
    edge = rng.uniform(0.5, 2.0)
    outer = cv2.GaussianBlur((dist < 1.0).astype(np.float32), (0, 0), edge) * inside
    inner_core = cv2.GaussianBlur((dist < core).astype(np.float32), (0, 0), edge) * inside
    image = image * (1 - outer) + rim * texture * (outer - inner_core) + level * texture * inner_core
    painted = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    lesion = outer > 0.5
    contrast = np.abs(painted[lesion].astype(np.float32) - square[lesion]).mean() if lesion.sum() >= 20 else 0.0
    return painted if contrast >= max(20.0, 0.5 * float(brain.std())) else None  # an invisible lesion is no tumour
