"""Figures are pure functions of aggregate rows: check the data they draw."""

from __future__ import annotations

from datetime import date

from core.charts import CLASS_COLOURS, class_mix_figure, confidence_figure, probabilities_figure, tumour_rate_figure
from core.stats import PeriodRate


def test_tumour_rate_hides_rates_of_small_periods() -> None:
    periods = [
        PeriodRate(date(2026, 3, 2), 10, 4),
        PeriodRate(date(2026, 3, 9), 3, 3),
        PeriodRate(date(2026, 3, 16), 5, 0),
    ]
    figure = tumour_rate_figure(periods, "week")
    bars, line = figure.data
    assert list(bars.y) == [10, 3, 5]
    assert list(line.y) == [40.0, None, 0.0]
    assert list(line.x) == ["2026-03-02", "2026-03-09", "2026-03-16"]
    assert figure.layout.title.text == "Tumour rate per week"


def test_class_mix_is_sorted_and_coloured_by_label() -> None:
    figure = class_mix_figure({"notumor": 3, "glioma": 7}, {"notumor": "No tumour", "glioma": "Glioma"})
    bar = figure.data[0]
    assert list(bar.y) == ["Glioma", "No tumour"] and list(bar.x) == [7, 3]
    assert list(bar.marker.color) == [CLASS_COLOURS["glioma"], CLASS_COLOURS["notumor"]]


def test_confidence_histogram_bins_span_zero_to_one() -> None:
    bar = confidence_figure([0, 1, 2, 3, 4]).data[0]
    assert list(bar.y) == [0, 1, 2, 3, 4]
    assert list(bar.x) == [0.1, 0.3, 0.5, 0.7, 0.9]


def test_probabilities_are_drawn_in_percent() -> None:
    bar = probabilities_figure({"glioma": 0.25, "notumor": 0.75}).data[0]
    assert list(bar.x) == [25.0, 75.0] and list(bar.text) == ["25.0%", "75.0%"]
