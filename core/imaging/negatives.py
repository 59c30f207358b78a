"""Images that are not brain MRI, generated in code: negatives for fitting the input gate, and for its tests and
measurements.

Kinds: uniform and 1/f ("natural-image-like") noise, random shapes, text documents, chest-X-ray-like
radiographs, colour photographs (gradients and shapes), and gray photographs with a brain-like blob.
"""

from __future__ import annotations

import cv2
import numpy as np

KINDS = ("noise", "pink_noise", "shapes", "document", "chest_xray", "colour_photo", "gray_scene")


def _pink_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    spectrum = np.fft.fft2(rng.normal(size=(size, size)))
    fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
    radius = np.sqrt(fx**2 + fy**2)
    radius[0, 0] = 1.0
    image = np.real(np.fft.ifft2(spectrum / radius ** rng.uniform(0.8, 1.6)))
    image = (image - image.min()) / (np.ptp(image) + 1e-9)
    return image


def make(kind: str, seed: int, size: int = 256) -> np.ndarray:
    """One image of ``kind``: uint8 gray (H, W) or RGB (H, W, 3)."""
    rng = np.random.default_rng(seed)
    if kind == "noise":
        return rng.integers(0, 256, (size, size), dtype=np.uint8)
    if kind == "pink_noise":
        return (_pink_noise(rng, size) * 255).astype(np.uint8)
    if kind == "shapes":
        image = np.full((size, size), int(rng.integers(0, 256)), np.uint8)
        for _ in range(int(rng.integers(3, 12))):
            colour = int(rng.integers(0, 256))
            a, b = rng.integers(0, size, 2), rng.integers(0, size, 2)
            choice = rng.integers(0, 3)
            if choice == 0:
                cv2.rectangle(image, tuple(map(int, a)), tuple(map(int, b)), colour, -1)
            elif choice == 1:
                cv2.circle(image, tuple(map(int, a)), int(rng.integers(5, size // 3)), colour, -1)
            else:
                cv2.line(image, tuple(map(int, a)), tuple(map(int, b)), colour, int(rng.integers(1, 12)))
        return image
    if kind == "document":
        image = np.full((size, size), int(rng.integers(225, 256)), np.uint8)
        y = int(rng.integers(10, 30))
        while y < size - 10:
            words = "".join(rng.choice(list("abcdefghij klmnop qrstuv wxyz"), int(rng.integers(10, 40))))
            cv2.putText(image, words, (8, y), cv2.FONT_HERSHEY_SIMPLEX, rng.uniform(0.3, 0.6), 20, 1)
            y += int(rng.integers(12, 26))
        return image
    if kind == "chest_xray":
        yy, xx = np.mgrid[0:size, 0:size] / size
        body = np.exp(-(((xx - 0.5) / 0.42) ** 6)) * np.clip(1.2 - yy * 0.3, 0, 1)
        lungs = np.zeros_like(body)
        for cx in (0.33, 0.67):
            lungs += np.exp(-(((xx - cx) / 0.12) ** 2 + ((yy - 0.45) / 0.28) ** 2))
        image = 0.25 + 0.6 * body - 0.45 * lungs + 0.08 * _pink_noise(rng, size)
        image += rng.uniform(-0.1, 0.1)
        return (np.clip(image, 0, 1) * 255).astype(np.uint8)
    if kind == "colour_photo":
        yy, xx = np.mgrid[0:size, 0:size] / size
        channels = [
            np.clip(rng.uniform(0, 1) + rng.uniform(-1, 1) * xx + rng.uniform(-1, 1) * yy, 0, 1) for _ in range(3)
        ]
        image = (np.dstack(channels) * 255).astype(np.uint8)
        for _ in range(int(rng.integers(2, 6))):
            centre = tuple(int(v) for v in rng.integers(0, size, 2))
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            cv2.circle(image, centre, int(rng.integers(10, size // 3)), colour, -1)
        return image
    if kind == "gray_scene":
        background = (_pink_noise(rng, size) * rng.uniform(60, 200)).astype(np.float32) + rng.uniform(20, 60)
        yy, xx = np.mgrid[0:size, 0:size] / size
        blob = ((xx - 0.5) / rng.uniform(0.2, 0.35)) ** 2 + ((yy - 0.5) / rng.uniform(0.2, 0.4)) ** 2 <= 1
        background[blob] = background[blob] * 0.5 + 90
        return np.clip(background, 0, 255).astype(np.uint8)
    raise ValueError(kind)


def collection(per_kind: int = 30, size: int = 256) -> list[tuple[str, np.ndarray]]:
    return [(kind, make(kind, 1000 * k + i, size)) for k, kind in enumerate(KINDS) for i in range(per_kind)]
