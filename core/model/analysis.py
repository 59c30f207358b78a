"""Bytes in, verdict out: read -> crop -> preprocess -> predict -> decide -> gate, with per-stage timings.

The app, the CLI, the evaluator and the benchmarks all call :func:`analyse`; nothing else strings the stages
together. Pure: no storage, no screen.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from core.errors import NoModelAnswer, ScanError
from core.imaging import DEFAULT_LIMITS, Limits, Scan, read_scan
from core.imaging.geometry import pixel_spacing
from core.model.classifier import Classifier
from core.model.gate import REJECTED, GateResult, assess, with_review
from core.model.lesion import Lesion, Segmenter, lesion_of
from core.model.preprocess import to_model_input
from core.model.roi import BrainRegion, find_brain


@dataclass(frozen=True)
class Prediction:
    """One verdict. ``roi`` is (x0, y0, x1, y1) in the scan's pixels; timings are milliseconds per stage;
    ``confidence`` is the probability that the tumour / no-tumour call is right (:mod:`core.model.decision`)."""

    label: str
    probabilities: Mapping[str, float]
    tumour_probability: float
    confidence: float
    is_tumour: bool
    roi: tuple[int, int, int, int]
    model_name: str
    model_version: str
    timings_ms: Mapping[str, float]
    gate: GateResult

    def to_json(self) -> dict[str, Any]:
        return {
            "gate": self.gate.to_json(),
            "label": self.label,
            "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
            "tumour_probability": round(self.tumour_probability, 6),
            "confidence": round(self.confidence, 6),
            "roi": list(self.roi),
            "model": {"name": self.model_name, "version": self.model_version},
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
        }


@dataclass(frozen=True, eq=False)
class Analysis:
    """Everything the UI draws for one scan: the decoded scan, the brain region, the model input and the verdict
    (whose ``gate`` says whether it may be shown as a diagnosis)."""

    scan: Scan
    region: BrainRegion
    model_input: np.ndarray
    prediction: Prediction
    lesion: Lesion | None = None  # where the segmenter sees a lesion, when one is loaded


def analyse(data: bytes, classifier: Classifier, limits: Limits = DEFAULT_LIMITS, frame: int | None = None) -> Analysis:
    """Run the whole pipeline on uploaded bytes. Raises a :class:`core.errors.ScanError` for an unusable scan."""
    started = time.perf_counter()
    scan = read_scan(data, limits, frame)
    read_done = time.perf_counter()
    return analyse_scan(scan, classifier, {"read": (read_done - started) * 1000}, read_done)


def analyse_scan(
    scan: Scan, classifier: Classifier, timings: dict[str, float] | None = None, started: float | None = None
) -> Analysis:
    """The pipeline from a decoded scan on (crop, preprocess, predict, decide, gate; the lesion when the
    classifier has a segmenter beside it)."""
    started = time.perf_counter() if started is None else started
    timings = dict(timings or {})
    region = find_brain(scan.pixels)
    crop_done = time.perf_counter()
    model_input = to_model_input(scan.pixels, region.box, classifier.card.input)
    prep_done = time.perf_counter()
    raw, calibrated, embedding = classifier.scores_and_embedding(model_input[None])
    predict_done = time.perf_counter()
    timings |= {
        "crop": (crop_done - started) * 1000,
        "preprocess": (prep_done - crop_done) * 1000,
        "predict": (predict_done - prep_done) * 1000,
    }
    analysis = _verdict(scan, region, model_input, classifier, (raw[0], calibrated[0], _row(embedding, 0)), timings)
    return with_lesions([analysis], classifier.segmenter)[0] if classifier.segmenter is not None else analysis


def with_lesions(analyses: Sequence[Analysis], segmenter: Segmenter, batch_size: int = 32) -> list[Analysis]:
    """The analyses with the segmenter's lesion on each slice (batched; its time in ``timings_ms["segment"]``). A
    slice the gate refused (not a brain MRI) keeps ``lesion`` None: nothing is measured on what is not read."""
    wanted = [a for a in analyses if a.prediction.gate.decision != REJECTED]
    measured: dict[int, tuple[Lesion, float]] = {}
    for start in range(0, len(wanted), batch_size):
        chunk = wanted[start : start + batch_size]
        began = time.perf_counter()
        maps = segmenter.probabilities([a.scan.pixels for a in chunk], [a.region.box for a in chunk])
        share = (time.perf_counter() - began) * 1000 / len(chunk)
        for analysis, probability in zip(chunk, maps, strict=True):
            lesion = lesion_of(probability, segmenter.card.threshold, pixel_spacing(analysis.scan))
            measured[id(analysis)] = (replace(lesion, by=segmenter.name), share)
    done = []
    for analysis in analyses:
        if id(analysis) not in measured:
            done.append(analysis)
            continue
        lesion, share = measured[id(analysis)]
        timings = dict(analysis.prediction.timings_ms)
        timings["segment"] = share
        timings["total"] = timings.get("total", 0.0) + share
        done.append(replace(analysis, prediction=replace(analysis.prediction, timings_ms=timings), lesion=lesion))
    return done


def analyse_scans(scans: Sequence[Scan], classifier: Classifier, batch_size: int = 64) -> list[Analysis | ScanError]:
    """The same pipeline for many decoded scans (the sections of a series), the model run in batches. A scan
    without a head region gets its :class:`core.errors.ScanError` in its place; ``predict`` timings are the
    batch's time shared evenly."""
    prepared: list[tuple[Scan, BrainRegion, np.ndarray, dict[str, float]] | ScanError] = []
    for scan in scans:
        started = time.perf_counter()
        try:
            region = find_brain(scan.pixels)
        except ScanError as error:
            prepared.append(error)
            continue
        crop_done = time.perf_counter()
        model_input = to_model_input(scan.pixels, region.box, classifier.card.input)
        timings = {"crop": (crop_done - started) * 1000, "preprocess": (time.perf_counter() - crop_done) * 1000}
        prepared.append((scan, region, model_input, timings))
    ready = [(k, p) for k, p in enumerate(prepared) if not isinstance(p, ScanError)]
    done: list[tuple[int, Analysis]] = []
    for start in range(0, len(ready), batch_size):
        chunk = ready[start : start + batch_size]
        began = time.perf_counter()
        raw, calibrated, embedding = classifier.scores_and_embedding(np.stack([p[2] for _, p in chunk]))
        share = (time.perf_counter() - began) * 1000 / len(chunk)
        for i, (k, (scan, region, model_input, timings)) in enumerate(chunk):
            outputs = (raw[i], calibrated[i], _row(embedding, i))
            try:
                done.append((k, _verdict(scan, region, model_input, classifier, outputs, timings | {"predict": share})))
            except ScanError as error:  # no usable answer for this section: the others are still read
                prepared[k] = error
    analyses = [a for _, a in done]
    if classifier.segmenter is not None:
        analyses = with_lesions(analyses, classifier.segmenter)
    read = dict(zip((k for k, _ in done), analyses, strict=True))
    return [p if isinstance(p, ScanError) else read[k] for k, p in enumerate(prepared)]


def _row(embedding: np.ndarray, i: int) -> np.ndarray | None:
    return embedding[i] if embedding.size else None


def _verdict(
    scan: Scan,
    region: BrainRegion,
    model_input: np.ndarray,
    classifier: Classifier,
    outputs: tuple[np.ndarray, np.ndarray, np.ndarray | None],
    timings: dict[str, float],
) -> Analysis:
    """Decide and gate one scan from the model's outputs for it (raw, calibrated, embedding)."""
    raw, calibrated, embedding = outputs
    if not (np.isfinite(raw).all() and np.isfinite(calibrated).all()):  # NaN >= threshold is False: "no tumour"
        raise NoModelAnswer("The model gave no usable answer for this image (not a number); nothing was decided.")
    card = classifier.card
    began = time.perf_counter()
    decision = card.rule.apply(calibrated)
    logits = raw if card.output == "logits" else None
    gate = assess(scan, region, logits, card.temperature, classifier.gate_policy, embedding)
    gate = with_review(gate, decision.review_reasons)
    timings = dict(timings) | {"decide": (time.perf_counter() - began) * 1000}  # the rule and the gate's checks
    timings["total"] = sum(timings.values())
    prediction = Prediction(
        label=decision.label,
        probabilities={label: float(p) for label, p in zip(card.labels, calibrated, strict=True)},
        tumour_probability=decision.tumour_probability,
        confidence=decision.confidence,
        is_tumour=decision.is_tumour,
        roi=region.box,
        model_name=card.name,
        model_version=card.version,
        timings_ms=timings,
        gate=gate,
    )
    return Analysis(scan=scan, region=region, model_input=model_input, prediction=prediction)
