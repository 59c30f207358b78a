"""Classification metrics as plain functions of labels and probabilities (used by evaluate and by training)."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.analytics.stats import wilson_interval as wilson
from core.model.decision import UNKNOWN_TYPE, DecisionRule, decision_confidence, tumour_probabilities


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
    rule: DecisionRule | None = None,
) -> dict[str, Any]:
    """Metrics for rows whose true label is one of ``labels``, plus tumour-vs-none figures, all with the app's
    decision rule (:class:`core.model.decision.DecisionRule`; the default rule of these labels when None).

    Rows with the true label ``"tumour"`` (tumour present, subtype unknown: the web-style scans) count towards tumour
    sensitivity and give their own recall, ``unknown_type_tumour_recall``. A "tumour, type uncertain" verdict is
    a found tumour but not a right subtype. Two calibration errors: ``expected_calibration_error`` of the
    four-class probabilities (top label against the truth, rows of a known label) and ``tumour_calibration_error``
    of the decision's confidence against whether the tumour / no-tumour call was right (every row).
    """
    labels = list(labels)
    true = np.asarray(list(true), dtype=object)
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(len(true), len(labels))
    rule = rule or DecisionRule(labels=tuple(labels), negative_label=negative_label)
    predicted = np.array(rule.labels_of(probabilities), dtype=object)
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
        top = probabilities[known]
        top_label = np.asarray(labels, dtype=object)[top.argmax(axis=1)]
        report["expected_calibration_error"] = expected_calibration_error(top.max(axis=1), top_label == t)
    is_tumour = true != negative_label
    flagged = predicted != negative_label
    tumour_probability = tumour_probabilities(probabilities, labels, negative_label)
    if len(true):
        confidence = decision_confidence(tumour_probability, flagged)
        report["tumour_calibration_error"] = expected_calibration_error(confidence, flagged == is_tumour)
    positives, negatives = int(is_tumour.sum()), int((~is_tumour).sum())
    found, cleared = int((flagged & is_tumour).sum()), int((~flagged & ~is_tumour).sum())
    report["tumour_sensitivity"] = found / positives if positives else None
    report["tumour_specificity"] = cleared / negatives if negatives else None
    report["tumour_positives"], report["tumour_negatives"] = positives, negatives
    report["review_share"] = float(rule.in_review_band(tumour_probability).mean()) if len(true) else None
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


def wilson_interval(successes: int, n: int) -> list[float] | None:
    """95 % Wilson score interval of a proportion, rounded: honest at small n and near 0 or 1, where the normal
    one is not."""
    interval = wilson(successes, n)
    return None if interval is None else [round(interval[0], 4), round(interval[1], 4)]


def patient_interval(hits: Sequence[bool], patients: Sequence[str], draws: int = 2000) -> list[float] | None:
    """95 % interval of a proportion whose trials come in clusters (the sections of one patient), by resampling the
    patients with replacement (percentile bootstrap, fixed seed). Sections of one patient are not independent
    trials: a Wilson interval over sections is far too narrow when a handful of patients give them all."""
    if not len(hits):
        return None
    names, group = np.unique(np.asarray(patients, dtype=object).astype(str), return_inverse=True)
    successes = np.bincount(group, weights=np.asarray(hits, dtype=np.float64), minlength=len(names))
    trials = np.bincount(group, minlength=len(names)).astype(np.float64)
    chosen = np.random.default_rng(0).integers(0, len(names), size=(draws, len(names)))
    shares = successes[chosen].sum(axis=1) / trials[chosen].sum(axis=1)
    low, high = np.percentile(shares, (2.5, 97.5))
    return [round(float(low), 4), round(float(high), 4)]


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
