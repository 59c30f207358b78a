"""Classification metrics as plain functions of labels and probabilities (used by evaluate and by training)."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.classifier import decide

UNKNOWN_TYPE = "tumour"  # the folder name of tumour scans whose type is not given


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """ECE over equal-width confidence bins: sum over bins of |accuracy - mean confidence| x bin share."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if confidence.size == 0:
        return float("nan")
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            error += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(error)


def classification_report(
    true: Sequence[str],
    probabilities: np.ndarray,
    labels: Sequence[str],
    negative_label: str,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Metrics for rows whose true label is one of ``labels``, plus tumour-vs-none figures, all with the app's
    decision rule (:func:`core.classifier.decide`).

    Rows with the true label ``"tumour"`` (tumour present, subtype unknown: the web-style scans) count towards tumour
    sensitivity and give their own recall, ``unknown_type_tumour_recall``.
    """
    labels = list(labels)
    true = np.asarray(list(true), dtype=object)
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(len(true), len(labels))
    predicted = np.array(decide(probabilities, labels, negative_label, threshold), dtype=object)
    known = np.isin(true, labels)
    report: dict[str, Any] = {"n": len(true), "n_labelled": int(known.sum())}
    if known.any():
        t, p = true[known], predicted[known]
        correct = int((t == p).sum())
        report["accuracy"] = correct / len(t)
        matrix = [[int(((t == a) & (p == b)).sum()) for b in labels] for a in labels]
        report["confusion_matrix"] = {"labels": labels, "rows_true_columns_predicted": matrix}
        per_class = {}
        for label in labels:
            tp = int(((t == label) & (p == label)).sum())
            predicted_n, true_n = int((p == label).sum()), int((t == label).sum())
            per_class[label] = {
                "precision": tp / predicted_n if predicted_n else None,
                "recall": tp / true_n if true_n else None,
                "support": true_n,
            }
        report["per_class"] = per_class
        chosen = probabilities[np.arange(len(true)), [labels.index(label) for label in predicted]]
        confidence = chosen[known]  # the probability of the label the app shows
        report["expected_calibration_error"] = expected_calibration_error(confidence, t == p)
    is_tumour = true != negative_label
    flagged = predicted != negative_label
    positives, negatives = int(is_tumour.sum()), int((~is_tumour).sum())
    found, cleared = int((flagged & is_tumour).sum()), int((~flagged & ~is_tumour).sum())
    report["tumour_sensitivity"] = found / positives if positives else None
    report["tumour_specificity"] = cleared / negatives if negatives else None
    report["tumour_positives"], report["tumour_negatives"] = positives, negatives
    unknown = true == UNKNOWN_TYPE
    unknown_n, unknown_found = int(unknown.sum()), int(flagged[unknown].sum())
    report["unknown_type_tumour_recall"] = unknown_found / unknown_n if unknown_n else None
    report["unknown_type_tumour_n"] = unknown_n
    # How far each headline proportion could be from the truth on this many scans (24 web-style scans: +-15 points)
    report["wilson_95"] = {
        "tumour_sensitivity": wilson_interval(found, positives),
        "tumour_specificity": wilson_interval(cleared, negatives),
        "unknown_type_tumour_recall": wilson_interval(unknown_found, unknown_n),
    }
    if known.any():
        report["wilson_95"]["accuracy"] = wilson_interval(correct, len(t))
    return report


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> list[float] | None:
    """95 % Wilson score interval of a proportion: honest at small n and near 0 or 1, where the normal one is not."""
    if n <= 0:
        return None
    share = successes / n
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(float(centre - half), 4), round(float(centre + half), 4)]


def percentiles_ms(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None}
    p50, p95 = np.percentile(np.asarray(values, dtype=np.float64), (50, 95))
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3)}


def machine() -> str:
    """Where a timing was taken (CPU model when the system says it, architecture, cores): a latency means nothing
    without it, and the 2-core machines of this project differ by more than 2x."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux
        lines = []
    names = [line.partition(":")[2].strip() for line in lines if line.startswith("model name")]
    return ", ".join([*names[:1], platform.machine(), f"{os.cpu_count()} CPU cores"])
