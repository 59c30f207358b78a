"""Images that are not brain MRI, generated in code: negatives for fitting the input gate, and for its tests and
measurements.

Kinds: uniform and 1/f ("natural-image-like") noise, random shapes, text documents, chest-X-ray-like
radiographs, colour photographs (gradients and shapes), gray photographs with a brain-like blob, and MR sections
of other body parts (pelvis, abdomen, spine, knee): grayscale, dark background, textured tissue, the inputs every
fixed image check lets through (a pelvic MR section was accepted and called "no tumour" by model 2.1.0's gate).
"""

from __future__ import annotations

import cv2
import numpy as np

KINDS = ("noise", "pink_noise", "shapes", "document", "chest_xray", "colour_photo", "gray_scene", "body_mr")
BODY_PARTS = ("pelvis", "abdomen", "spine", "knee")


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
    if kind == "body_mr":
        return body_mr(BODY_PARTS[seed % len(BODY_PARTS)], rng, size)
    raise ValueError(kind)


def _ellipse(canvas: np.ndarray, centre: tuple[float, float], axes: tuple[float, float], value: float) -> None:
    size = canvas.shape[0]
    cv2.ellipse(
        canvas,
        (int(centre[0] * size), int(centre[1] * size)),
        (max(1, int(axes[0] * size)), max(1, int(axes[1] * size))),
        0,
        0,
        360,
        float(value),
        -1,
    )


def body_mr(part: str, rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """An MR-like section of ``part``: a body outline with a bright fat rim, muscle-grey tissue, organs and bones,
    1/f texture, blur and noise on a near-black background; T1- or T2-like at random (bright or dark fluid)."""
    tissue = np.zeros((size, size), np.float32)
    fluid = rng.choice([0.15, 0.9])  # T1: dark urine and CSF; T2: bright
    jitter = rng.uniform(-0.03, 0.03, 2)
    if part == "spine":  # sagittal: a tall body, a column of vertebral bodies and discs, the cord behind them
        _ellipse(tissue, (0.5, 0.5), (0.34, 0.52), 0.85)
        _ellipse(tissue, (0.5, 0.5), (0.31, 0.5), 0.45)
        for k in range(-4, 5):
            y = 0.5 + k * 0.1 + jitter[1]
            cv2.rectangle(
                tissue, (int(0.42 * size), int((y - 0.04) * size)), (int(0.56 * size), int((y + 0.04) * size)), 0.6, -1
            )
        cv2.rectangle(tissue, (int(0.59 * size), 0), (int(0.63 * size), size), fluid, -1)
    elif part == "knee":  # sagittal knee: femur above, tibia below, a dark joint line, the patella in front
        _ellipse(tissue, (0.5, 0.5), (0.3, 0.55), 0.8)
        _ellipse(tissue, (0.5, 0.5), (0.26, 0.53), 0.4)
        cv2.rectangle(tissue, (int(0.37 * size), 0), (int(0.63 * size), int(0.46 * size)), 0.75, -1)
        _ellipse(tissue, (0.5, 0.44), (0.15, 0.07), 0.75)
        cv2.rectangle(tissue, (int(0.38 * size), int(0.52 * size)), (int(0.62 * size), size), 0.75, -1)
        _ellipse(tissue, (0.28, 0.46), (0.04, 0.08), 0.7)
        cv2.line(tissue, (int(0.35 * size), int(0.49 * size)), (int(0.65 * size), int(0.49 * size)), fluid * 0.6, 3)
    else:  # axial pelvis or abdomen: a wide body, fat rim, muscle, organs; femoral heads or liver and kidneys
        _ellipse(tissue, (0.5, 0.52), (0.46 + jitter[0], 0.3 + jitter[1]), 0.85)
        _ellipse(tissue, (0.5, 0.52), (0.41 + jitter[0], 0.25 + jitter[1]), 0.42)
        _ellipse(tissue, (0.5, 0.7), (0.05, 0.05), 0.65)  # a vertebral body or the sacrum
        if part == "pelvis":
            for x in (0.24, 0.76):
                _ellipse(tissue, (x, 0.55), (0.07, 0.07), 0.1)
                _ellipse(tissue, (x, 0.55), (0.06, 0.06), 0.7)
            _ellipse(tissue, (0.5, 0.45), (0.11, 0.08), fluid)  # bladder
        else:
            _ellipse(tissue, (0.32, 0.45), (0.18, 0.14), 0.5)  # liver
            for x in (0.36, 0.64):
                _ellipse(tissue, (x, 0.62), (0.05, 0.07), 0.55)
            _ellipse(tissue, (0.6, 0.4), (0.07, 0.06), fluid)  # stomach
    turn = cv2.getRotationMatrix2D((size / 2, size / 2), rng.uniform(-12, 12), rng.uniform(0.8, 1.1))
    tissue = cv2.warpAffine(tissue, turn, (size, size), flags=cv2.INTER_NEAREST)
    body = tissue > 0
    texture = _pink_noise(rng, size).astype(np.float32) - 0.5
    image = tissue * rng.uniform(0.75, 1.0) + body * texture * rng.uniform(0.1, 0.25)
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.6, 1.5))
    image += rng.normal(0, rng.uniform(0.005, 0.03), image.shape).astype(np.float32)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def collection(per_kind: int = 30, size: int = 256) -> list[tuple[str, np.ndarray]]:
    return [(kind, make(kind, 1000 * k + i, size)) for k, kind in enumerate(KINDS) for i in range(per_kind)]
