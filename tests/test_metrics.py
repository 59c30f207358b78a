"""The one decision rule and the metrics computed with it."""

from __future__ import annotations

import numpy as np
import pytest

from core.classifier import decide
from core.metrics import classification_report, expected_calibration_error

LABELS = ("glioma", "meningioma", "notumor", "pituitary")


def test_the_verdict_follows_the_tumour_probability_not_the_single_largest_class() -> None:
    rows = np.array(
        [
            [0.20, 0.20, 0.40, 0.20],  # arg-max says notumor, but P(tumour) = 0.60
            [0.05, 0.05, 0.80, 0.10],
            [0.10, 0.30, 0.45, 0.15],  # P(tumour) = 0.55: meningioma, the most probable tumour class
            [0.25, 0.00, 0.50, 0.25],  # exactly at the threshold: tumour (a second reader errs towards looking)
            [0.70, 0.10, 0.10, 0.10],
        ]
    )
    assert decide(rows, LABELS, "notumor") == ["glioma", "notumor", "meningioma", "glioma", "glioma"]
    assert decide(rows, LABELS, "notumor", threshold=0.58) == ["glioma", "notumor", "notumor", "notumor", "glioma"]


def test_two_label_cards_decide_by_threshold() -> None:
    rows = np.array([[0.6, 0.4], [0.3, 0.7]])
    assert decide(rows, ("notumor", "tumour"), "notumor") == ["notumor", "tumour"]
    assert decide(rows, ("notumor", "tumour"), "notumor", threshold=0.35) == ["tumour", "tumour"]


def test_report_counts_with_the_decision_rule_and_scores_unknown_type_tumours() -> None:
    true = ["glioma", "notumor", "notumor", "pituitary", "tumour", "tumour", "tumour", "meningioma"]
    probabilities = np.array(
        [
            [0.20, 0.20, 0.40, 0.20],  # glioma, caught by P(tumour) = 0.6
            [0.05, 0.05, 0.80, 0.10],  # true negative
            [0.30, 0.30, 0.30, 0.10],  # false positive (glioma)
            [0.00, 0.00, 0.10, 0.90],  # pituitary
            [0.00, 0.90, 0.10, 0.00],  # web tumour found
            [0.10, 0.10, 0.70, 0.10],  # web tumour missed
            [0.60, 0.00, 0.40, 0.00],  # web tumour found
            [0.00, 1.00, 0.00, 0.00],  # meningioma
        ]
    )
    report = classification_report(true, probabilities, LABELS, "notumor")
    assert report["n"] == 8 and report["n_labelled"] == 5
    assert report["accuracy"] == pytest.approx(4 / 5)
    assert report["confusion_matrix"]["rows_true_columns_predicted"] == [
        [1, 0, 0, 0],
        [0, 1, 0, 0],
        [1, 0, 1, 0],
        [0, 0, 0, 1],
    ]
    assert report["per_class"]["glioma"] == {"precision": 0.5, "recall": 1.0, "support": 1}
    assert report["tumour_sensitivity"] == pytest.approx(5 / 6)  # 3 known + 2 of 3 web tumours
    assert report["tumour_specificity"] == pytest.approx(1 / 2)
    assert report["unknown_type_tumour_recall"] == pytest.approx(2 / 3) and report["unknown_type_tumour_n"] == 3
    # confidence is the probability of the label shown: 0.2, 0.8, 0.3, 0.9, 1.0 for the labelled rows
    expected = expected_calibration_error(np.array([0.2, 0.8, 0.3, 0.9, 1.0]), np.array([1, 1, 0, 1, 1]))
    assert report["expected_calibration_error"] == pytest.approx(expected)


def test_expected_calibration_error_of_perfectly_calibrated_bins_is_zero() -> None:
    confidence = np.array([0.75] * 4 + [1.0] * 2)
    assert expected_calibration_error(confidence, np.array([1, 1, 1, 0, 1, 1])) == pytest.approx(0.0)
    assert expected_calibration_error(np.array([0.9, 0.9]), np.array([0, 0])) == pytest.approx(0.9)
