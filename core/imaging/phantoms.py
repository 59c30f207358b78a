"""A digital phantom of a brain slice, generated in code (no real scan), and its PNG/JPEG encodings: for tests,
benchmarks and demonstrations, like MONAI's synthetic test images."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def synthetic_slice(
    size: int = 512, *, tumour: bool = False, seed: int = 0, offset: tuple[int, int] = (0, 0)
) -> np.ndarray:
    """A head-like uint8 slice: black background, skull ring, textured brain, dark ventricles, optional lesion."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = size * 0.5 + offset[0], size * 0.5 + offset[1]
    ry, rx = size * 0.40, size * 0.32
    r = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    image = np.zeros((size, size), np.float32)
    image[r <= 1.0] = 200.0
    brain = r <= 0.85
    texture = rng.normal(0, 1, (size // 8 + 1, size // 8 + 1)).astype(np.float32)
    texture = np.kron(texture, np.ones((8, 8), np.float32))[:size, :size]
    image[brain] = 105.0 + 12.0 * texture[brain]
    ventricles = ((yy - cy) / (ry * 0.22)) ** 2 + ((xx - cx) / (rx * 0.12)) ** 2 <= 1.0
    image[ventricles] = 30.0
    if tumour:
        ty, tx = cy - ry * 0.35, cx + rx * 0.35
        lesion = ((yy - ty) ** 2 + (xx - tx) ** 2) <= (size * 0.07) ** 2
        image[lesion] = 240.0
    image += rng.normal(0, 2, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def png_bytes(array: np.ndarray, mode: str | None = None, **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, "PNG", **save)
    return buffer.getvalue()


def jpeg_bytes(array: np.ndarray, quality: int = 92, **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=quality, **save)
    return buffer.getvalue()
