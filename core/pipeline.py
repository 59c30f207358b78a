"""Bytes in, verdict out: read -> crop -> preprocess -> predict, with per-stage timings.

The app, the CLI, the evaluator and the benchmark all call :func:`analyse`; nothing else strings the stages together.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from core.classifier import Classifier, Prediction
from core.gate import assess
from core.imaging import DEFAULT_LIMITS, Limits, Scan, read_scan
from core.preprocess import to_model_input
from core.roi import BrainRegion, find_brain


@dataclass(frozen=True, eq=False)
class Analysis:
    """Everything the UI draws for one scan: the decoded scan, the brain region, the model input and the verdict
    (whose ``gate`` says whether it may be shown as a diagnosis)."""

    scan: Scan
    region: BrainRegion
    model_input: np.ndarray
    prediction: Prediction


def analyse(data: bytes, classifier: Classifier, limits: Limits = DEFAULT_LIMITS, frame: int | None = None) -> Analysis:
    """Run the whole pipeline on uploaded bytes. Raises a :class:`core.errors.ScanError` for an unusable scan."""
    started = time.perf_counter()
    scan = read_scan(data, limits, frame)
    read_done = time.perf_counter()
    region = find_brain(scan.pixels)
    crop_done = time.perf_counter()
    model_input = to_model_input(scan.pixels, region.box, classifier.card.input)
    prep_done = time.perf_counter()
    raw, calibrated = classifier.scores(model_input[None])
    probabilities = calibrated[0]
    predict_done = time.perf_counter()
    label, by_label, tumour_probability = classifier.verdict(probabilities)
    card = classifier.card
    logits = raw[0] if card.output == "logits" else None
    gate = assess(scan, region, logits, probabilities, card.temperature, classifier.gate_policy)
    timings = {
        "read": (read_done - started) * 1000,
        "crop": (crop_done - read_done) * 1000,
        "preprocess": (prep_done - crop_done) * 1000,
        "predict": (predict_done - prep_done) * 1000,
        "total": (predict_done - started) * 1000,
    }
    prediction = Prediction(
        label=label,
        probabilities=by_label,
        tumour_probability=tumour_probability,
        roi=region.box,
        model_name=classifier.card.name,
        model_version=classifier.card.version,
        timings_ms=timings,
        gate=gate,
    )
    return Analysis(scan=scan, region=region, model_input=model_input, prediction=prediction)
