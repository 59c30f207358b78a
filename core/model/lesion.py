"""Where the lesion is and how big: the lesion segmenter's card, its per-pixel probability mapped back onto the
original slice, the outline, the area (mm^2 when the pixel spacing is known) and a series' volume in mL.

The segmenter (:mod:`core.training.segment`) sees the same brain crop as the classifier, through the same
preprocessing (:func:`core.model.preprocess.to_model_input`); its output goes back onto the slice through the exact
inverse of that geometry (:func:`core.model.preprocess.input_to_image`). Its card
(``models/btd-lesion.json``) names the weights and their SHA-256, the input size, the threshold and the figures
measured leaving whole institutions out.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.errors import ModelError
from core.model.classifier import load_checked_model, traced
from core.model.preprocess import InputSpec, input_to_image, to_model_input


@dataclass(frozen=True)
class LesionCard:
    name: str
    version: str
    weights_file: str
    weights_sha256: str
    size: int
    threshold: float = 0.5
    figures: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def from_file(cls, path: str | Path) -> LesionCard:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
            return cls(
                name=str(raw["name"]),
                version=str(raw["version"]),
                weights_file=str(raw["weights"]["file"]),
                weights_sha256=str(raw["weights"]["sha256"]).lower(),
                size=int(raw["input"]["size"]),
                threshold=float(raw.get("threshold", 0.5)),
                figures=dict(raw.get("figures", {})),
                path=path,
            )
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as error:
            raise ModelError(f"Lesion card {path.name} cannot be read ({type(error).__name__}).") from error

    @property
    def spec(self) -> InputSpec:
        return InputSpec(self.size, 1, crop=True, scaling="unit")


@dataclass(frozen=True)
class Lesion:
    """The lesion on one slice: its mask (the slice's shape), area in pixels and mm^2 (None without a spacing),
    and its outline (a list of (N, 2) x, y contours in slice pixels)."""

    mask: np.ndarray
    area_px: int
    area_mm2: float | None
    outline: list[np.ndarray]
    by: str = ""  # the segmenter that measured it ("name version"): volumes of two are not one lesion's course


class Segmenter:
    """A loaded lesion segmenter. Thread-safe: one forward pass at a time."""

    def __init__(self, card: LesionCard, model: Any) -> None:
        self.card = card
        self.model = model
        self.lock = threading.Lock()
        self._forward = traced(lambda batch: model(batch, training=False), (card.size, card.size, 1))

    @classmethod
    def from_card(cls, card_path: str | Path) -> Segmenter:
        card = LesionCard.from_file(card_path)
        base = card.path.parent if card.path is not None else Path(".")
        model = load_checked_model(base / card.weights_file, card.weights_sha256, card.name)
        if tuple(model.input_shape[1:]) != (card.size, card.size, 1) or int(model.output_shape[-1]) != 1:
            raise ModelError(f"Lesion model {card.name} does not take and give ({card.size}, {card.size}, 1).")
        segmenter = cls(card, model)
        segmenter.crop_probabilities(np.zeros((1, card.size, card.size, 1), np.float32))  # trace once now
        return segmenter

    def crop_probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Model inputs (N, size, size, 1) in [0, 1] -> lesion probabilities (N, size, size), float32."""
        with self.lock:
            return np.asarray(self._forward(batch.astype(np.float32, copy=False)))[..., 0]

    def probabilities(
        self, slices: Sequence[np.ndarray], boxes: Sequence[tuple[int, int, int, int] | None]
    ) -> list[np.ndarray]:
        """Each uint8 slice with its brain box -> its lesion probability on the slice itself (same shape)."""
        if not slices:
            return []
        spec = self.card.spec
        batch = np.stack([to_model_input(pixels, box, spec) for pixels, box in zip(slices, boxes, strict=True)])
        crops = self.crop_probabilities(batch)
        return [input_to_image(c, box, s.shape) for c, box, s in zip(crops, boxes, slices, strict=True)]

    def lesion(
        self, pixels: np.ndarray, box: tuple[int, int, int, int] | None, spacing: tuple[float, float] | None = None
    ) -> Lesion:
        return replace(lesion_of(self.probabilities([pixels], [box])[0], self.card.threshold, spacing), by=self.name)

    @property
    def name(self) -> str:
        """Its name, version and weights (a segmenter retrained under the same name and version is another)."""
        return f"{self.card.name} {self.card.version} ({self.card.weights_sha256[:8]})"


def lesion_of(probability: np.ndarray, threshold: float, spacing: tuple[float, float] | None = None) -> Lesion:
    """The lesion where ``probability`` >= ``threshold``: mask, area and outline."""
    mask = probability >= threshold
    area = int(mask.sum())
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    outline = [c.reshape(-1, 2) for c in contours if len(c) >= 3]
    return Lesion(mask, area, area_mm2(area, spacing), outline)


def area_mm2(area_px: int, spacing: tuple[float, float] | None) -> float | None:
    """Pixels -> mm^2 with the (row, column) pixel spacing in mm; None when the spacing is unknown."""
    if spacing is None:
        return None
    return round(area_px * float(spacing[0]) * float(spacing[1]), 2)


def volume_ml(areas_px: Sequence[int], spacing: tuple[float, float] | None, step_mm: float | None) -> float | None:
    """A series' lesion volume: the sum of its sections' areas times the distance between sections (DICOM spacing
    along the slice normal, NIfTI's third zoom); None when either spacing is unknown."""
    if spacing is None or step_mm is None or not step_mm > 0:
        return None
    return round(sum(areas_px) * float(spacing[0]) * float(spacing[1]) * float(step_mm) / 1000.0, 3)


def sections_spanned(areas_px: Sequence[int]) -> tuple[int, int] | None:
    """The first and last section index with any lesion, or None."""
    hit = [i for i, a in enumerate(areas_px) if a > 0]
    return (hit[0], hit[-1]) if hit else None
