"""Validation figures and the shortcut probes recorded in the card."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.analytics.stats import wilson_interval
from core.errors import ScanError
from core.evaluation.metrics import classification_report, patient_interval
from core.imaging import Scan, read_scan_file
from core.model.decision import DecisionRule, decide, subtype_choice, tumour_probabilities
from core.model.preprocess import InputSpec, square_to_input, to_model_input
from core.model.roi import BrainRegion, find_brain
from core.training.augment import match_histogram
from core.training.calibration import calibrate, softmax
from core.training.config import CLASSES, NEGATIVE
from core.training.lesions import synthetic_lesion
from core.training.sources import Item


def readable(path: Path) -> tuple[Scan, BrainRegion] | None:
    """A file as the app reads it and its head region, or None where the app refuses it before the model (not
    read, or no head found): every fit leaves such a file out (fit-gate and fit-decision stopped at one, where
    calibrate left it out)."""
    try:
        scan = read_scan_file(path)
        return scan, find_brain(scan.pixels)
    except ScanError:
        return None


def inference_inputs(images: Sequence[np.ndarray], spec: InputSpec) -> np.ndarray:
    """Model inputs exactly as the app computes them (crop, square, resize, scale)."""
    return np.stack([to_model_input(img, find_brain(img).box, spec) for img in images])


def share_called_tumour(
    model: Any, inputs: Sequence[np.ndarray], temperature: float, bias: np.ndarray | None = None
) -> float:
    """Share of model inputs the app's rule would call a tumour."""
    logits = np.asarray(model.predict(np.stack(inputs), batch_size=64, verbose=0))
    labels = decide(calibrate(logits, temperature, bias), CLASSES, NEGATIVE)
    return float(np.mean([label != NEGATIVE for label in labels]))


def validation_report(
    logits: np.ndarray,
    labels: Sequence[str],
    temperature: float,
    inputs: np.ndarray,
    model: Any,
    spec: InputSpec,
    bias: np.ndarray | None = None,
) -> dict[str, Any]:
    """Metrics on the validation split, web-style tumour recall, and the histogram and lesion shortcut probes."""
    probs = calibrate(logits, temperature, bias)
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
        report["shortcut_probe_tumour_recall"] = share_called_tumour(model, probe, temperature, bias)
        report["shortcut_probe_n"] = len(tumour_rows)
    # Lesion probe: normal validation scans (never trained on) with a synthetic lesion painted in.
    rng = np.random.default_rng(1)
    painted = [synthetic_lesion(crop(i), rng) for i in normal_rows]
    probe = [square_to_input(p, spec) for p in painted if p is not None]
    if probe:
        report["lesion_probe_tumour_recall"] = share_called_tumour(model, probe, temperature, bias)
        report["lesion_probe_n"] = len(probe)
    return report


# --- per source -----------------------------------------------------------------------------------------------

LGG_MIN_TUMOUR = 300  # tumour slices scored for sensitivity: a clearly visible tumour
LGG_MIN_HEAD = 15_000  # tumour-free slices scored for specificity: enough head for a verdict
LGG_SCORED_SEQUENCES = ("flair", "t1c")
LGG_REPORTED_SEQUENCES = ("t1",)  # plain T1: its sensitivity is reported beside the targets, not part of them


def source_report(probabilities: np.ndarray, items: Sequence[Item], rule: DecisionRule | None = None) -> dict[str, Any]:
    """Figures per source, the LGG figures the targets name (sensitivity on FLAIR and post-contrast T1 slices
    with at least 300 tumour pixels, specificity on tumour-free slices with at least 15,000 head pixels, each per
    institution), the share of normal heads called tumour per plane, and calibration per source."""
    rule = rule or DecisionRule(labels=CLASSES, negative_label=NEGATIVE)
    labels = [item.label for item in items]
    report: dict[str, Any] = {}
    for source in sorted({item.source for item in items}):
        rows = [k for k, item in enumerate(items) if item.source == source]
        part = classification_report([labels[k] for k in rows], probabilities[rows], CLASSES, NEGATIVE, rule)
        report[source] = {
            key: part.get(key)
            for key in (
                "n",
                "accuracy",
                "tumour_sensitivity",
                "tumour_specificity",
                "tumour_positives",
                "tumour_negatives",
                "review_share",
                "unknown_type_tumour_recall",
                "expected_calibration_error",
                "tumour_calibration_error",
                "wilson_95",
            )
        }
        if any(item.institution for item in (items[k] for k in rows)):
            report[source]["targets"] = lgg_targets(probabilities[rows], [items[k] for k in rows], rule)
        planes = sorted({items[k].plane for k in rows if items[k].plane and items[k].label == NEGATIVE})
        if planes and source != "LGG":
            report[source]["called_tumour_by_plane"] = {
                plane: _share_called([k for k in rows if items[k].plane == plane], probabilities, rule)
                for plane in planes
            }
    return report


def lgg_targets(probabilities: np.ndarray, items: Sequence[Item], rule: DecisionRule) -> dict[str, Any]:
    """Sensitivity and specificity as the targets define them, per institution and pooled, with intervals."""
    called = np.array([label != NEGATIVE for label in rule.labels_of(probabilities)])
    out: dict[str, Any] = {}
    for institution in ["all", *sorted({item.institution for item in items})]:
        mine = [k for k, item in enumerate(items) if institution in ("all", item.institution)]
        clear = [k for k in mine if items[k].label != NEGATIVE and (items[k].tumour_pixels or 0) >= LGG_MIN_TUMOUR]
        tumour = [k for k in clear if items[k].sequence in LGG_SCORED_SEQUENCES]
        normal = [k for k in mine if items[k].label == NEGATIVE and (items[k].head_pixels or 0) >= LGG_MIN_HEAD]
        found, cleared = int(called[tumour].sum()), int((~called[normal]).sum())
        by_sequence = {
            sequence: _proportion(
                int(called[[k for k in clear if items[k].sequence == sequence]].sum()),
                len([k for k in clear if items[k].sequence == sequence]),
            )
            for sequence in (*LGG_SCORED_SEQUENCES, *LGG_REPORTED_SEQUENCES)
        }
        subtype = [k for k in tumour if called[k]]
        right_type = sum(rule.labels_of(probabilities[k : k + 1])[0] == "glioma" for k in subtype)
        out[institution] = {
            "sensitivity": _proportion(found, len(tumour)) | _by_patient(called[tumour], items, tumour),
            "specificity": _proportion(cleared, len(normal)) | _by_patient(~called[normal], items, normal),
            "sensitivity_by_sequence": by_sequence,
            "glioma_named_among_found": _proportion(right_type, len(subtype)),
        }
    return out


def _share_called(rows: Sequence[int], probabilities: np.ndarray, rule: DecisionRule) -> dict[str, Any]:
    labels = rule.labels_of(probabilities[list(rows)]) if rows else []
    return _proportion(sum(label != NEGATIVE for label in labels), len(rows))


def _by_patient(hits: np.ndarray, items: Sequence[Item], rows: Sequence[int]) -> dict[str, Any]:
    """The interval that counts patients, not sections, and how many patients the sections come from."""
    patients = [items[k].unit for k in rows]
    return {"patients": len(set(patients)), "patients_95": patient_interval(list(hits), patients)}


def _proportion(successes: int, n: int) -> dict[str, Any]:
    return {"value": successes / n if n else None, "n": n, "wilson_95": wilson_interval(successes, n)}


def fit_review_band(
    tumour_probability: np.ndarray,
    is_tumour: np.ndarray,
    max_error: float = 0.02,
    threshold: float = 0.5,
    least_confidence: float = 0.8,
) -> tuple[float, float]:
    """The review band [low, high) around ``threshold``: every call less than ``least_confidence`` sure (calibrated
    probabilities), widened until validation calls outside it are wrong at most ``max_error`` of the time on each
    side (no-tumour calls below ``low``, tumour calls from ``high``)."""
    p = np.asarray(tumour_probability, np.float64)
    truth = np.asarray(is_tumour, bool)

    def missed_below(low: float) -> float:  # tumours among the no-tumour calls below ``low``
        chosen = p < low
        return float(truth[chosen].mean()) if chosen.any() else 0.0

    def false_from(high: float) -> float:  # normal scans among the tumour calls from ``high``
        chosen = p >= high
        return float((~truth[chosen]).mean()) if chosen.any() else 0.0

    steps = np.round(np.arange(0.0, 0.5001, 0.01), 2)
    low = next((threshold - g for g in steps if missed_below(threshold - g) <= max_error), 0.0)
    high = next((threshold + g for g in steps if false_from(threshold + g) <= max_error), 1.0)
    low, high = min(low, 1.0 - least_confidence), max(high, least_confidence)
    return round(float(max(low, 0.0)), 2), round(float(min(high, 1.0)), 2)


def fit_subtype_share(
    probabilities: np.ndarray, labels: Sequence[str], min_accuracy: float = 0.9, threshold: float = 0.5
) -> float | None:
    """The smallest share of P(tumour) the top type must hold for the verdict to name it, such that named types
    of validation tumours of known type (called tumour: P(tumour) from the card's ``threshold``) are right at least
    ``min_accuracy`` of the time (None: always name)."""
    tumour_probability = tumour_probabilities(probabilities, CLASSES, NEGATIVE)
    typed = np.array([label in CLASSES and label != NEGATIVE for label in labels]) & (tumour_probability >= threshold)
    if not typed.any():
        return None
    top, share = subtype_choice(probabilities, CLASSES, NEGATIVE)
    right = np.array([CLASSES[t] == label for t, label in zip(top, labels, strict=True)])
    # "always name" (cut 0) is checked on every typed row: a top type holds at least a third of P(tumour), so a
    # first cut of 0.5 left the rows between a third and a half named without ever being checked
    for cut in [0.0, *np.round(np.arange(0.36, 1.0, 0.02), 2)]:
        named = typed & (share >= cut)
        if named.any() and right[named].mean() >= min_accuracy:
            return None if cut == 0.0 else float(cut)
    return 0.98
