"""The one decision rule and the metrics computed with it."""

from __future__ import annotations

import os
import platform

import numpy as np
import pytest

from core.evaluation.metrics import classification_report, expected_calibration_error, machine, wilson_interval
from core.model.decision import DecisionRule, decide

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
    assert report["wilson_95"]["unknown_type_tumour_recall"] == wilson_interval(2, 3)
    assert report["wilson_95"]["tumour_specificity"] == wilson_interval(1, 2)
    assert report["wilson_95"]["accuracy"] == wilson_interval(4, 5)
    # four-class calibration: the top class's probability against whether it is the true class (labelled rows)
    expected = expected_calibration_error(np.array([0.4, 0.8, 0.3, 0.9, 1.0]), np.array([0, 1, 0, 1, 1]))
    assert report["expected_calibration_error"] == pytest.approx(expected)
    # the call's calibration: its confidence (P(tumour) or 1 - P(tumour)) against whether the call was right
    calls = expected_calibration_error(
        np.array([0.6, 0.8, 0.7, 0.9, 0.9, 0.7, 0.6, 1.0]), np.array([1, 1, 0, 1, 1, 0, 1, 1])
    )
    assert report["tumour_calibration_error"] == pytest.approx(calls)
    # sent to a reader: of P(tumour) 0.6, 0.2, 0.7, 0.9, 0.9, 0.3, 0.6, 1.0, those in the rule's band [low, high)
    for band, share in (((0.25, 0.65), 3 / 8), ((0.1, 0.95), 7 / 8), ((0.5, 0.5), 0.0)):
        rule = DecisionRule(labels=tuple(LABELS), review_band=band)
        assert classification_report(true, probabilities, LABELS, "notumor", rule)["review_share"] == pytest.approx(
            share
        )


def test_type_uncertain_verdicts_count_as_found_tumours_but_not_as_right_types() -> None:
    rule = DecisionRule(labels=tuple(LABELS), subtype_min_share=0.6)
    probabilities = np.array([[0.45, 0.40, 0.15, 0.0], [0.80, 0.05, 0.15, 0.0]])
    assert rule.labels_of(probabilities) == ["tumour", "glioma"]
    report = classification_report(["glioma", "glioma"], probabilities, LABELS, "notumor", rule)
    assert report["tumour_sensitivity"] == 1.0 and report["accuracy"] == 0.5


def test_wilson_interval_matches_published_values_and_stays_inside_0_1() -> None:
    assert wilson_interval(5, 10) == pytest.approx([0.2366, 0.7634], abs=1e-4)  # textbook values
    assert wilson_interval(0, 10) == pytest.approx([0.0, 0.2775], abs=1e-4)
    low, high = wilson_interval(20, 24)
    assert 0.6 < low < 0.7 and 0.9 < high < 0.95  # 20 of 24 web-style scans: the 90 % target is inside
    assert wilson_interval(1145, 1145)[1] == pytest.approx(1.0) and wilson_interval(0, 0) is None


def test_expected_calibration_error_of_perfectly_calibrated_bins_is_zero() -> None:
    confidence = np.array([0.75] * 4 + [1.0] * 2)
    assert expected_calibration_error(confidence, np.array([1, 1, 1, 0, 1, 1])) == pytest.approx(0.0)
    assert expected_calibration_error(np.array([0.9, 0.9]), np.array([0, 0])) == pytest.approx(0.9)


def test_machine_names_the_cpu_and_its_cores_for_every_timing_report() -> None:
    described = machine()
    assert described.endswith(f"{os.cpu_count()} CPU cores") and platform.machine() in described


def test_the_review_band_reason_states_the_probability_as_the_panel_does() -> None:
    """The reason said "tumour probability 10%" beside a panel that said 9.9%: one probability, written one way."""
    from core.model.decision import percent

    rule = DecisionRule(labels=tuple(LABELS), review_band=(0.05, 0.89))
    notumor = LABELS.index("notumor")
    row = np.full(len(LABELS), 0.099 / (len(LABELS) - 1))
    row[notumor] = 0.901
    decision = rule.apply(row)
    assert decision.review_reasons == ("tumour probability 9.9% is in the review band (5%-89%)",)
    assert percent(decision.tumour_probability) == "9.9%"
