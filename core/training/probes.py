"""Validation figures and the shortcut probes recorded in the card."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from core.evaluation.metrics import classification_report
from core.model.decision import decide
from core.model.preprocess import InputSpec, square_to_input, to_model_input
from core.model.roi import find_brain
from core.training.augment import match_histogram
from core.training.calibration import softmax
from core.training.config import CLASSES, NEGATIVE
from core.training.lesions import synthetic_lesion


def inference_inputs(images: Sequence[np.ndarray], spec: InputSpec) -> np.ndarray:
    """Model inputs exactly as the app computes them (crop, square, resize, scale)."""
    return np.stack([to_model_input(img, find_brain(img).box, spec) for img in images])


def share_called_tumour(model: Any, inputs: Sequence[np.ndarray], temperature: float) -> float:
    """Share of model inputs the app's rule would call a tumour."""
    logits = np.asarray(model.predict(np.stack(inputs), batch_size=64, verbose=0))
    labels = decide(softmax(logits / temperature), CLASSES, NEGATIVE)
    return float(np.mean([label != NEGATIVE for label in labels]))


def validation_report(
    logits: np.ndarray, labels: Sequence[str], temperature: float, inputs: np.ndarray, model: Any, spec: InputSpec
) -> dict[str, Any]:
    """Metrics on the validation split, web-style tumour recall, and the histogram and lesion shortcut probes."""
    probs = softmax(logits / temperature)
    report = classification_report(labels, probs, CLASSES, NEGATIVE)
    uncalibrated = classification_report(labels, softmax(logits), CLASSES, NEGATIVE)
    report["expected_calibration_error_uncalibrated"] = uncalibrated.get("expected_calibration_error")
    labels_arr = np.asarray(labels)
    known = np.isin(labels_arr, CLASSES)
    report["mean_confidence"] = float(probs.max(axis=1)[known].mean()) if known.any() else None
    # Shortcut probe: known-subtype tumour scans re-rendered with a random notumor scan's histogram.
    tumour_rows = np.nonzero(known & (labels_arr != NEGATIVE))[0]
    normal_rows = np.nonzero(labels_arr == NEGATIVE)[0]

    def crop(row: int) -> np.ndarray:  # the grayscale channel back to uint8
        return (inputs[row, :, :, 0] * 255).astype(np.uint8)

    if len(tumour_rows) and len(normal_rows):
        rng = np.random.default_rng(0)
        probe = []
        for i in tumour_rows:
            ref = crop(rng.choice(normal_rows))
            probe.append(square_to_input(match_histogram(crop(i), ref), spec))
        report["shortcut_probe_tumour_recall"] = share_called_tumour(model, probe, temperature)
        report["shortcut_probe_n"] = len(tumour_rows)
    # Lesion probe: normal validation scans (never trained on) with a synthetic lesion painted in.
    rng = np.random.default_rng(1)
    painted = [synthetic_lesion(crop(i), rng) for i in normal_rows]
    probe = [square_to_input(p, spec) for p in painted if p is not None]
    if probe:
        report["lesion_probe_tumour_recall"] = share_called_tumour(model, probe, temperature)
        report["lesion_probe_n"] = len(probe)
    return report
