"""What a session keeps of one analysed scan: display-size images encoded once, heat maps, the verdict.

A session never holds the full-resolution scan or the model input: :func:`scan_view` turns an analysis into a
:class:`ScanView` of a few tens of kilobytes (the original with its brain box as PNG at display size, the crop as
the model sees it, one Grad-CAM map per label as 8-bit images, the lesion outline as a few contour points at
display size), and the analysis is dropped.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from core.imaging.geometry import pixel_spacing, spacing_text
from core.imaging.raster import encode_png
from core.model.analysis import Analysis, Prediction
from core.model.explain import Explainer, overlay
from core.model.gate import REJECTED

DISPLAY_SIDE = 512
OUTLINE_RGB = (255, 0, 255)  # the lesion outline: magenta, apart from the green box and the red heat map


def scaled_outline(outline: Sequence[np.ndarray], scale: float | np.ndarray) -> tuple[np.ndarray, ...]:
    """Contours of (x, y) slice pixels -> the same contours on an image ``scale`` times the slice's size (a number,
    or (x, y) factors for an image resized unlike in each direction; pixel centres map as a resize maps them)."""
    return tuple(
        np.round((np.asarray(c, np.float64) + 0.5) * scale - 0.5).astype(np.int32).reshape(-1, 2) for c in outline
    )


def draw_outline(rgb: np.ndarray, outline: Sequence[np.ndarray], color: tuple[int, int, int] = OUTLINE_RGB) -> None:
    """The lesion contours drawn in place on an RGB (or BGR, with the colour given so) 8-bit image: a dark rim
    under a bright line, so the outline stands out on bright tissue and on dark background alike."""
    if not len(outline):
        return
    thickness = max(2, round(max(rgb.shape[:2]) / 256))  # 2 px at least: JPEG frames blur thinner colour
    contours = [np.asarray(c, np.int32).reshape(-1, 1, 2) for c in outline]
    cv2.polylines(rgb, contours, True, (0, 0, 0), thickness + 2, cv2.LINE_AA)
    cv2.polylines(rgb, contours, True, color, thickness, cv2.LINE_AA)


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
    heat: dict[str, np.ndarray] = field(default_factory=dict)  # label -> uint8 (size x size): the default's, then
    # each other label's once asked for (:meth:`heat_of`; all four up front were half a batch's CPU)
    explained: str | None = None  # the label whose map is shown by default
    acquisition: Mapping[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    lesion_px: int | None = None  # the segmenter's lesion area (None: no segmenter, or the gate refused the scan)
    lesion_mm2: float | None = None  # in mm^2 when the scan gives its pixel spacing
    outline: tuple[np.ndarray, ...] = ()  # the lesion's contours, (x, y) on the displayed original
    letters: Mapping[str, str] = field(default_factory=dict)  # patient directions at its edges ({}: not given)
    model_input: np.ndarray | None = field(default=None, repr=False)  # what another label's map is made from
    encoded: dict[str, tuple[Any, str]] = field(default_factory=dict, repr=False)  # base64 PNGs last shown, by kind

    def original(self, outlined: bool = False) -> bytes:
        """The displayed original (PNG) with the brain box and, when asked and there is one, the lesion outline."""
        if not outlined or not self.outline:
            return self.original_png
        bgr = cv2.imdecode(np.frombuffer(self.original_png, np.uint8), cv2.IMREAD_COLOR)
        draw_outline(bgr, self.outline, OUTLINE_RGB[::-1])
        return encode_png(bgr)

    def heat_of(self, label: str, explainer: Explainer | None) -> np.ndarray | None:
        """The heat map of ``label`` (uint8), made the first time it is asked for; None for a refused scan (no map
        at all) or without the explainer a label not yet made needs."""
        if label not in self.heat and self.heat and explainer is not None and self.model_input is not None:
            self.heat[label] = _heat(explainer, self.model_input, label)
        return self.heat.get(label)

    def original_b64(self, outlined: bool = False) -> str:
        """:meth:`original` as base64, made once (a batch's page encoded its 40 panels again on every rerun)."""
        return self._encoded("original", outlined, lambda: self.original(outlined))

    def crop_b64(self) -> str:
        """The model's view as a base64 PNG, made once."""
        return self._encoded("crop", None, lambda: encode_png(self.crop))

    def overlay_b64(self, label: str, opacity: float, explainer: Explainer | None = None) -> str | None:
        """:meth:`overlay` as a base64 PNG, the last one asked for kept (None: no map)."""
        if self.heat_of(label, explainer) is None:
            return None

        def make() -> bytes:
            return encode_png(cv2.cvtColor(self.overlay(label, opacity), cv2.COLOR_RGB2BGR))  # type: ignore[arg-type]

        return self._encoded("overlay", (label, opacity), make)

    def _encoded(self, kind: str, key: Any, make: Callable[[], bytes]) -> str:
        if kind not in self.encoded or self.encoded[kind][0] != key:
            self.encoded[kind] = (key, base64.b64encode(make()).decode("ascii"))
        return self.encoded[kind][1]

    def overlay(self, label: str, opacity: float, explainer: Explainer | None = None) -> np.ndarray | None:
        """RGB crop with the heat map of ``label`` blended in (None when there is no map: a refused scan)."""
        heat = self.heat_of(label, explainer)
        if heat is None:
            return None
        return overlay(self.crop, heat.astype(np.float32) / 255.0, opacity)


def _heat(explainer: Explainer, model_input: np.ndarray, label: str) -> np.ndarray:
    return np.round(explainer.heat_on_input(model_input, label) * 255).astype(np.uint8)


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


def display_factors(shape: tuple[int, ...], spacing: Sequence[float] | None = None) -> tuple[float, float]:
    """The (row, column) factors an image of ``shape`` is drawn at: square pixels (the coarser axis stretched when
    rows and columns are spaced unlike, as ``spacing`` in mm says; 1.0 x 0.5 mm pixels were drawn squashed 2:1 on
    the Scan page while the Study page drew the same file true) and at most :data:`DISPLAY_SIDE` a side."""
    rows_mm, columns_mm = (float(spacing[0]), float(spacing[1])) if spacing else (1.0, 1.0)
    finest = min(rows_mm, columns_mm)
    fy, fx = (rows_mm / finest, columns_mm / finest) if finest > 0 else (1.0, 1.0)  # a zero spacing: as stored
    scale = min(1.0, DISPLAY_SIDE / max(shape[0] * fy, shape[1] * fx))
    return fy * scale, fx * scale


def displayed(image: np.ndarray, spacing: Sequence[float] | None) -> np.ndarray:
    """An image (grey or colour) resampled to :func:`display_factors`: the one resampling of every page's picture
    (single scans here, a series' sections in :func:`core.services.series_views.as_displayed`)."""
    fy, fx = display_factors(image.shape, spacing)
    if abs(fy - 1) < 1e-6 and abs(fx - 1) < 1e-6:
        return image
    size = (max(1, round(image.shape[1] * fx)), max(1, round(image.shape[0] * fy)))  # (width, height)
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if max(fx, fy) <= 1 else cv2.INTER_LINEAR)


def _display_png(pixels: np.ndarray, box: tuple[int, int, int, int], spacing: Sequence[float] | None) -> bytes:
    return encode_png(cv2.cvtColor(displayed(with_box(pixels, box), spacing), cv2.COLOR_RGB2BGR))


def _facts_as_shown(acquisition: Mapping[str, str], spacing: tuple[float, float] | None) -> dict[str, str]:
    """The file's acquisition facts, its pixel spacing as the image beside them is shown (rows, then columns): a
    slice stored transposed read the header's order on the Scan page, turned to the image's once reopened."""
    if spacing is None:
        return dict(acquisition)
    return {**acquisition, "PixelSpacing": spacing_text(spacing)}


def scan_view(analysis: Analysis, explainer: Explainer | None) -> ScanView:
    """The session's view of an analysis: the heat map of the label explained by default (the others when asked
    for: :meth:`ScanView.heat_of`) unless the gate refused the scan."""
    scan, prediction = analysis.scan, analysis.prediction
    heat: dict[str, np.ndarray] = {}
    explained = None
    if explainer is not None and prediction.gate.decision != REJECTED:
        explained = explainer.default_label(prediction)
        heat[explained] = _heat(explainer, analysis.model_input, explained)
    lesion = analysis.lesion if prediction.gate.decision != REJECTED else None  # no outline on a refused image
    spacing = pixel_spacing(scan)
    drawn_at = np.array(display_factors(scan.pixels.shape, spacing)[::-1])  # (x, y), as the outline's points
    return ScanView(
        sha256=scan.sha256,
        format=scan.format,
        width=scan.width,
        height=scan.height,
        frame=scan.frame,
        original_png=_display_png(scan.pixels, prediction.roi, spacing),
        crop=model_view(analysis.model_input),
        prediction=prediction,
        heat=heat,
        explained=explained,
        acquisition=_facts_as_shown(scan.acquisition, spacing),
        warnings=tuple(scan.warnings),
        lesion_px=None if lesion is None else lesion.area_px,
        lesion_mm2=None if lesion is None else lesion.area_mm2,
        outline=() if lesion is None else scaled_outline(lesion.outline, drawn_at),
        letters=scan.letters,
        model_input=analysis.model_input if heat else None,
    )
