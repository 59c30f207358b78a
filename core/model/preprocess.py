"""The one path from a decoded slice to the model's input tensor, shared by training and inference.

Steps: crop to the brain box (when the card says so), pad to a square with black so the anatomy keeps its aspect,
resize to the card's input size, then scale intensities per image as the card says:
- ``"unit"``: x / 255 (the original Flask model);
- ``"percentile"``: the 1st percentile -> 0 and the 99th -> 1, clipped to [0, 1] (removes each source's
  brightness and contrast, one of the shortcuts the training data offers).

With ``mirror`` the model gets a second channel: the left-right asymmetry of the scaled crop, |s - flip(s)| of the
crop smoothed by a Gaussian of 2 % of its side. The crop is centred on the head, so on axial and coronal slices the
midline is near the centre column: normal anatomy largely cancels, a one-sided mass does not (the cue a reader uses).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SCALINGS = ("unit", "percentile")


@dataclass(frozen=True)
class InputSpec:
    """What the model expects: a ``size`` x ``size`` image with ``channels`` channels.

    1 channel: the scaled slice; 3: the same repeated (RGB models); 2 (``mirror``): the slice and its asymmetry.
    """

    size: int
    channels: int = 1
    crop: bool = True
    scaling: str = "percentile"
    mirror: bool = False

    def __post_init__(self) -> None:
        valid_channels = (2,) if self.mirror else (1, 3)
        if self.size < 8 or self.channels not in valid_channels or self.scaling not in SCALINGS:
            raise ValueError(f"unsupported input spec: {self}")


def crop_square(pixels: np.ndarray, box: tuple[int, int, int, int] | None) -> np.ndarray:
    """Cut ``box`` (x0, y0, x1, y1) out of a 2-D slice and pad it with black to a centred square."""
    if box is not None:
        x0, y0, x1, y1 = box
        pixels = pixels[y0:y1, x0:x1]
    height, width = pixels.shape
    side = max(height, width)
    if height == width:
        return pixels
    top, left = (side - height) // 2, (side - width) // 2
    return cv2.copyMakeBorder(pixels, top, side - height - top, left, side - width - left, cv2.BORDER_CONSTANT, value=0)


def resize_square(square: np.ndarray, size: int) -> np.ndarray:
    """Resize a square uint8 image to ``size`` x ``size`` (area averaging when shrinking)."""
    if square.shape[0] == size:
        return square
    interpolation = cv2.INTER_AREA if square.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interpolation)


def scale_intensities(image: np.ndarray, scaling: str) -> np.ndarray:
    """uint8 (or float in 0..255) image -> float32 model input in [0, 1], per ``scaling``."""
    values = image.astype(np.float32)
    if scaling == "unit":
        return values / 255.0
    low, high = (float(v) for v in np.percentile(values, (1.0, 99.0)))
    if high - low < 1e-3:
        return np.zeros_like(values)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def asymmetry(scaled: np.ndarray) -> np.ndarray:
    """|s - flip(s)| of the smoothed square ``scaled`` image (Gaussian sigma 2 % of its side), float32."""
    smooth = cv2.GaussianBlur(scaled, (0, 0), 0.02 * scaled.shape[1])
    return np.abs(smooth - smooth[:, ::-1])


def channels(scaled: np.ndarray, spec: InputSpec) -> np.ndarray:
    """A scaled (size, size) image -> the (size, size, channels) array the model takes."""
    if spec.mirror:
        return np.dstack([scaled, asymmetry(scaled)])
    if spec.channels == 3:
        return np.repeat(scaled[:, :, None], 3, axis=2)
    return scaled[:, :, None]


def to_model_input(pixels: np.ndarray, box: tuple[int, int, int, int] | None, spec: InputSpec) -> np.ndarray:
    """Slice + brain box -> float32 array of shape (size, size, channels), exactly as the model was trained."""
    return square_to_input(resize_square(crop_square(pixels, box if spec.crop else None), spec.size), spec)


def square_to_input(square: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The last step of :func:`to_model_input`: a (size, size) crop -> intensity scaling and channels."""
    return channels(scale_intensities(square, spec.scaling), spec)


def input_to_image(square_map: np.ndarray, box: tuple[int, int, int, int] | None, shape: tuple[int, int]) -> np.ndarray:
    """The inverse of :func:`to_model_input`'s geometry: a (size, size) map on the model's input (a lesion
    probability) back onto the original slice of ``shape`` (rows, columns): resized to the padded square's side,
    the padding removed, placed in ``box``; zero outside the box. float32."""
    x0, y0, x1, y1 = box if box is not None else (0, 0, shape[1], shape[0])
    height, width = y1 - y0, x1 - x0
    side = max(height, width)
    values = square_map.astype(np.float32)
    if values.shape[0] != side:
        interpolation = cv2.INTER_LINEAR if side > values.shape[0] else cv2.INTER_AREA
        values = cv2.resize(values, (side, side), interpolation=interpolation)
    top, left = (side - height) // 2, (side - width) // 2
    image = np.zeros(shape, np.float32)
    image[y0:y1, x0:x1] = values[top : top + height, left : left + width]
    return image
