"""What an upload may cost before anything is decoded, and the checks that enforce it.

Every limit is checked from the file's size or its header, before a full decode:
- ``max_bytes`` matches ``server.maxUploadSize`` (the CLI enforces the same);
- ``max_pixels`` bounds what a header may declare;
- ``max_decoded_bytes`` bounds the raster as it will be decoded (width x height x bytes per pixel, after JPEG's
  reduced-size decoding), so a few-KB file cannot make the server allocate gigabytes;
- images larger than ``working_side`` are reduced right after decoding, before any float copy is made.
Together they keep the peak memory of one upload under about 200 MB whatever the file declares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from core.errors import ImageTooLarge, ImageTooSmall


@dataclass(frozen=True)
class Limits:
    """Size limits enforced before any full decode."""

    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 36_000_000
    max_decoded_bytes: int = 64 * 1024 * 1024
    working_side: int = 2048
    min_side: int = 64
    max_aspect_ratio: float = 4.0


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class StudyLimits:
    """What a whole upload of series (DICOM files, zips, NIfTI volumes) may cost, checked before decoding."""

    max_sections: int = 512
    max_series: int = 32
    max_total_bytes: int = 1024 * 2**20  # everything uploaded at once, zips unpacked
    max_volume_bytes: int = 96 * 2**20  # a NIfTI volume's voxels as stored, checked from its header before reading
    max_study_voxel_bytes: int = 384 * 2**20  # all NIfTI volumes of one upload together, from their headers
    max_volume_side: int = 1024
    max_files: int = 1024  # DICOM files in one upload (zips unpacked), counted before any is read
    max_zip_members: int = 4000
    max_compression_ratio: float = 200.0
    max_gap_ratio: float = 1.6  # a step this many times the usual spacing is a gap
    # pixels of every DICOM section in one upload, summed from the headers before any is decoded: the series keep
    # a byte a pixel for display, so this bounds their memory whatever the files' compression
    max_dicom_pixels: int = 512 * 2**20  # what max_total_bytes of uncompressed 16-bit files can hold


DEFAULT_STUDY_LIMITS = StudyLimits()


def check_dimensions(width: int, height: int, limits: Limits) -> None:
    """Refuse images too large to decode safely, too small to read, or too elongated to be a brain slice."""
    if width * height > limits.max_pixels:
        raise ImageTooLarge(
            f"The image declares {width} x {height} pixels; the limit is {limits.max_pixels / 1e6:.0f} megapixels."
        )
    if min(width, height) < limits.min_side:
        raise ImageTooSmall(
            f"The image is {width} x {height} pixels; at least {limits.min_side} pixels per side are needed."
        )
    if max(width, height) > limits.max_aspect_ratio * min(width, height):
        raise ImageTooSmall(
            f"The image is {width} x {height} pixels: too elongated to be a brain MRI slice "
            f"(aspect ratio above {limits.max_aspect_ratio:g}:1)."
        )


def check_decoded_size(width: int, height: int, bytes_per_pixel: float, limits: Limits) -> None:
    """Refuse a raster whose decoded form would exceed the memory budget of one upload."""
    decoded = width * height * bytes_per_pixel
    if decoded > limits.max_decoded_bytes:
        raise ImageTooLarge(
            f"The image would take {decoded / 2**20:.0f} MB once decoded ({width} x {height} pixels at "
            f"{bytes_per_pixel * 8:g} bits); the limit is {limits.max_decoded_bytes / 2**20:.0f} MB per scan. "
            "Export it at a lower resolution or bit depth."
        )


def stretch_to_uint8(values: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> np.ndarray:
    """Map the ``low_pct`` percentile to 0 and the ``high_pct`` percentile to 255 (clipped); flat input -> 0.

    Percentiles come from a regular subsample of at most about a million values, so the cost stays bounded.
    """
    values = np.asarray(values)
    return apply_stretch(values, *stretch_bounds(values, low_pct, high_pct))


def stretch_bounds(values: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> tuple[float, float]:
    """The (low, high) percentiles of :func:`stretch_to_uint8`, from a regular subsample (any number of axes)."""
    values = np.asarray(values)
    step = max(1, math.isqrt(values.size // 1_000_000 + 1))
    if values.ndim == 2:
        sample = values[::step, ::step]
    elif values.ndim == 3:  # a volume: every step-th voxel along each axis, without copying the whole
        step = max(1, round((values.size / 1_000_000) ** (1 / 3)))
        sample = values[::step, ::step, ::step]
    else:
        sample = values.ravel()[:: step * step]
    sample = np.asarray(sample, dtype=np.float32)
    finite = sample[np.isfinite(sample)]  # NaN voxels (outside a mask, say) are background, not data
    if finite.size == 0:
        return 0.0, 0.0
    low, high = (float(v) for v in np.percentile(finite, (low_pct, high_pct)))
    return low, high


def apply_stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """``low`` -> 0, ``high`` -> 255, clipped, as uint8 (zeros when the bounds are flat or not finite)."""
    if not math.isfinite(low) or not math.isfinite(high) or high <= low:
        return np.zeros(np.shape(values), dtype=np.uint8)
    scaled = (np.asarray(values, dtype=np.float32) - low) * np.float32(255.0 / (high - low))
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)  # NaN voxels: black background
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)
