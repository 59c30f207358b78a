"""Plotly figures for the statistics page, built by pure functions from aggregate rows (unit-tested on data).

Every figure takes counts that already follow the small-count rule (None = withheld, :mod:`core.analytics.stats`);
withheld cells are left out of bars and lines and say so in their hover text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.analytics.stats import SMALL_CELL

CLASS_COLOURS = {
    "glioma": "#c0392b",
    "meningioma": "#d68910",
    "pituitary": "#7d3c98",
    "notumor": "#1f6f8b",
    "tumour": "#a93226",
}
WITHHELD = f"fewer than {SMALL_CELL} (withheld)"
_LAYOUT = {"margin": {"l": 10, "r": 10, "t": 40, "b": 10}, "height": 320, "template": "plotly_white"}


def count_ticks(largest: int | None) -> dict[str, object]:
    """Axis settings for counts: whole numbers only, from zero."""
    top = max(int(largest or 0), 1)
    step = 10 ** max(0, math.floor(math.log10(top)) - 1)
    for factor in (1, 2, 5, 10):
        if top / (step * factor) <= 6:
            step *= factor
            break
    return {"rangemode": "tozero", "tickformat": ",d", "dtick": max(1, step), "tick0": 0}


def tumour_rate_figure(
    starts: Sequence[str],
    scans: Sequence[int | None],
    rates: Sequence[float | None],
    intervals: Sequence[tuple[float, float] | None],
    period: str,
) -> go.Figure:
    """Two panels on one time axis: the tumour rate (percent) with its 95 % interval as error bars above, scans per
    period below. ``scans`` None and ``rates`` None are withheld small counts; zero-scan periods are drawn as zero."""
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.62, 0.38], vertical_spacing=0.06)
    percent = [None if r is None else round(r * 100, 2) for r in rates]
    above = [
        None if i is None or r is None else round(i[1] * 100 - r, 2) for i, r in zip(intervals, percent, strict=True)
    ]
    below = [
        None if i is None or r is None else round(r - i[0] * 100, 2) for i, r in zip(intervals, percent, strict=True)
    ]
    figure.add_scatter(
        x=list(starts),
        y=percent,
        mode="lines+markers",
        name="tumour rate % (95 % interval)",
        line_color="#c0392b",
        connectgaps=False,
        error_y={"type": "data", "array": above, "arrayminus": below, "color": "rgba(192,57,43,0.45)", "width": 2},
        hovertemplate="%{x}: %{y:.1f} %<extra>tumour rate</extra>",
        row=1,
        col=1,
    )
    figure.add_bar(
        x=list(starts),
        y=[0 if n is None else n for n in scans],
        name="scans",
        marker_color=["rgba(0,0,0,0)" if n is None else "#7f9fb3" for n in scans],
        customdata=[WITHHELD if n is None else f"{n:,}" for n in scans],
        hovertemplate="%{x}: %{customdata} scans<extra></extra>",
        row=2,
        col=1,
    )
    figure.update_layout(
        title=f"Tumour rate per {period}",
        legend={"orientation": "h", "y": -0.15},
        bargap=0.15,
        **{**_LAYOUT, "height": 420},
    )
    figure.update_xaxes(type="date", row=1, col=1)
    figure.update_xaxes(type="date", title=f"{period} starting", row=2, col=1)
    figure.update_yaxes(title="tumour rate %", range=[0, 100], row=1, col=1)
    figure.update_yaxes(title="scans", **count_ticks(max((n or 0) for n in scans) if scans else 0), row=2, col=1)
    return figure


def class_mix_figure(per_class: Mapping[str, int | None], names: Mapping[str, str] | None = None) -> go.Figure:
    """Scans per verdict, largest first (withheld counts listed last, without a bar); ``names`` maps labels to
    display names."""
    labels = sorted(per_class, key=lambda name: (per_class[name] is None, -(per_class[name] or 0)))
    counts = [per_class[name] for name in labels]
    figure = go.Figure(
        go.Bar(
            x=[0 if n is None else n for n in counts],
            y=[(names or {}).get(name, name) for name in labels],
            orientation="h",
            marker_color=[CLASS_COLOURS.get(name, "#566573") for name in labels],
            customdata=[WITHHELD if n is None else f"{n:,}" for n in counts],
            hovertemplate="%{y}: %{customdata}<extra></extra>",
        )
    )
    figure.update_layout(
        title="Class mix", xaxis={"title": "scans", **count_ticks(max((n or 0) for n in counts) if counts else 0)},
        yaxis={"autorange": "reversed"}, **_LAYOUT,
    )  # fmt: skip
    return figure


def confidence_figure(counts: Sequence[int | None]) -> go.Figure:
    """Histogram of the decision's confidence (the probability that the tumour / no-tumour call is right)."""
    bins = len(counts)
    centres = [(i + 0.5) / bins for i in range(bins)]
    figure = go.Figure(
        go.Bar(
            x=centres,
            y=[0 if n is None else n for n in counts],
            width=1 / bins * 0.95,
            marker_color="#1f6f8b",
            customdata=[WITHHELD if n is None else f"{n:,}" for n in counts],
            hovertemplate="confidence %{x:.2f}: %{customdata}<extra></extra>",
        )
    )
    largest = max((n or 0) for n in counts) if counts else 0
    # a call is never less than 50 % sure with the usual 0.5 threshold: start the axis at the first filled bin
    first = next((i for i, n in enumerate(counts) if n != 0), bins // 2)
    figure.update_layout(
        title="Confidence of the tumour / no-tumour call",
        xaxis={"title": "confidence", "range": [min(0.5, first / bins), 1]},
        yaxis={"title": "scans", **count_ticks(largest)},
        **_LAYOUT,
    )
    return figure
