"""Plotly figures for the statistics page, built by pure functions from aggregate rows (unit-tested on data)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

from core.stats import SMALL_CELL, PeriodRate

CLASS_COLOURS = {
    "glioma": "#c0392b",
    "meningioma": "#d68910",
    "pituitary": "#7d3c98",
    "notumor": "#1f6f8b",
    "tumour": "#c0392b",
}
_LAYOUT = {"margin": {"l": 10, "r": 10, "t": 40, "b": 10}, "height": 320, "template": "plotly_white"}


def tumour_rate_figure(periods: Sequence[PeriodRate], period: str) -> go.Figure:
    """Bars: scans per period; line: tumour rate (hidden where a period has fewer than SMALL_CELL scans)."""
    starts = [p.start.isoformat() for p in periods]
    rates = [p.rate * 100 if p.total >= SMALL_CELL else None for p in periods]
    figure = go.Figure()
    figure.add_bar(x=starts, y=[p.total for p in periods], name="scans", marker_color="#b8cdd9", yaxis="y2")
    figure.add_scatter(x=starts, y=rates, name="tumour rate %", mode="lines+markers", line_color="#c0392b")
    figure.update_layout(
        title=f"Tumour rate per {period}",
        xaxis={"type": "category", "title": f"{period} starting"},
        yaxis={"title": "tumour rate %", "range": [0, 100], "side": "left"},
        yaxis2={"title": "scans", "overlaying": "y", "side": "right", "showgrid": False},
        legend={"orientation": "h", "y": -0.2},
        **_LAYOUT,
    )
    return figure


def class_mix_figure(per_class: Mapping[str, int], names: Mapping[str, str] | None = None) -> go.Figure:
    """Scans per predicted class, largest first; ``names`` maps labels to display names."""
    labels = sorted(per_class, key=lambda name: -per_class[name])
    figure = go.Figure(
        go.Bar(
            x=[per_class[name] for name in labels],
            y=[(names or {}).get(name, name) for name in labels],
            orientation="h",
            marker_color=[CLASS_COLOURS.get(name, "#566573") for name in labels],
        )
    )
    figure.update_layout(title="Class mix", xaxis_title="scans", yaxis={"autorange": "reversed"}, **_LAYOUT)
    return figure


def confidence_figure(counts: Sequence[int]) -> go.Figure:
    bins = len(counts)
    centres = [(i + 0.5) / bins for i in range(bins)]
    figure = go.Figure(go.Bar(x=centres, y=list(counts), width=1 / bins * 0.95, marker_color="#1f6f8b"))
    figure.update_layout(
        title="Confidence of the predicted class", xaxis={"title": "confidence", "range": [0, 1]}, **_LAYOUT
    )
    return figure


def probabilities_figure(probabilities: Mapping[str, float], names: Mapping[str, str] | None = None) -> go.Figure:
    """Horizontal bars of one scan's class probabilities, in percent; ``names`` maps labels to display names."""
    labels = list(probabilities)
    figure = go.Figure(
        go.Bar(
            x=[probabilities[name] * 100 for name in labels],
            y=[(names or {}).get(name, name) for name in labels],
            orientation="h",
            marker_color=[CLASS_COLOURS.get(name, "#566573") for name in labels],
            text=[f"{probabilities[name] * 100:.1f}%" for name in labels],
            textposition="auto",
        )
    )
    figure.update_layout(
        xaxis={"range": [0, 100], "title": "probability %"},
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        height=180,
        template="plotly_white",
    )
    return figure
