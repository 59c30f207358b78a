"""What a session keeps of one analysed scan: display-size images encoded once, heat maps, the verdict.

A session never holds the full-resolution scan or the model input: :func:`scan_view` turns an analysis into a
:class:`ScanView` of a few tens of kilobytes (the original with its brain box as PNG at display size, the crop as
the model sees it, one Grad-CAM map per label as 8-bit images), and the analysis is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import cv2
import numpy as np

from core.model.analysis import Analysis, Prediction
from core.model.explain import Explainer, overlay
from core.model.gate import REJECTED

DISPLAY_SIDE = 512


@dataclass(frozen=True, eq=False)
class ScanView:
    """Display-ready facts of one analysed scan (or frame)."""

    sha256: str
    format: str
    width: int
    height: int
    frame: int | None
    original_png: bytes
    crop: np.ndarray  # uint8, the model's view of the crop (size x size)
    prediction: Prediction
    heat: Mapping[str, np.ndarray] = field(default_factory=dict)  # label -> uint8 (size x size)
    explained: str | None = None  # the label whose map is shown by default
    acquisition: Mapping[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def overlay(self, label: str, opacity: float) -> np.ndarray | None:
        """RGB crop with the heat map of ``label`` blended in (None when there is no map: a refused scan)."""
        heat = self.heat.get(label)
        if heat is None:
            return None
        return overlay(self.crop, heat.astype(np.float32) / 255.0, opacity)


def with_box(pixels: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The gray slice as RGB with the brain box drawn in (line width scales with the image)."""
    rgb = cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB)
    thickness = max(1, round(max(pixels.shape) / 200))
    x0, y0, x1, y1 = box
    cv2.rectangle(rgb, (x0, y0), (x1 - 1, y1 - 1), (0, 200, 120), thickness)
    return rgb


def model_view(model_input: np.ndarray) -> np.ndarray:
    """The model's input tensor (its first channel) as an 8-bit image."""
    return (np.clip(model_input[:, :, 0], 0, 1) * 255).astype(np.uint8)


def _display_png(pixels: np.ndarray, box: tuple[int, int, int, int]) -> bytes:
    boxed = with_box(pixels, box)
    scale = DISPLAY_SIDE / max(boxed.shape[:2])
    if scale < 1:
        boxed = cv2.resize(boxed, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(boxed, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 image
        raise ValueError("PNG encoding failed")
    return encoded.tobytes()


def scan_view(analysis: Analysis, explainer: Explainer | None) -> ScanView:
    """The session's view of an analysis: heat maps for every label unless the gate refused the scan."""
    scan, prediction = analysis.scan, analysis.prediction
    heat: dict[str, np.ndarray] = {}
    explained = None
    if explainer is not None and prediction.gate.decision != REJECTED:
        explained = explainer.default_label(prediction)
        for label in explainer.classifier.card.labels:
            on_input = explainer.heat_on_input(analysis.model_input, label)
            heat[label] = np.round(on_input * 255).astype(np.uint8)
    return ScanView(
        sha256=scan.sha256,
        format=scan.format,
        width=scan.width,
        height=scan.height,
        frame=scan.frame,
        original_png=_display_png(scan.pixels, prediction.roi),
        crop=model_view(analysis.model_input),
        prediction=prediction,
        heat=heat,
        explained=explained,
        acquisition=dict(scan.acquisition),
        warnings=tuple(scan.warnings),
    )
