"""The statistics page's figures: pure functions from aggregate rows to Plotly figures (unit-tested on data), and
their adapters from a :class:`core.services.statistics.Dashboard` / ``QualityBoard``.

Every figure takes counts that already follow the small-count rule (None = withheld, :mod:`core.analytics.stats`).
A withheld count is never drawn as zero or left blank: its bar is hatched, 4 high (the largest small count), and
labelled "withheld"; its hover text says why (a small count, or one the total would give away beside a small one).
Rates that would reveal one are left out of lines.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime, time, timedelta
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.analytics.stats import SMALL_CELL, WITHHELD_REASON
from core.analytics.stats import WITHHELD as WITHHELD_MARK
from core.domain.times import next_period, period_start
from core.services.statistics import LESION_QUANTILES_FROM, Dashboard, QualityBoard

CLASS_COLOURS = {
    "glioma": "#c0392b",
    "meningioma": "#d68910",
    "pituitary": "#7d3c98",
    "notumor": "#1f6f8b",
    "tumour": "#a93226",
}
WITHHELD = WITHHELD_REASON  # the hover text of a withheld bar
_LAYOUT = {  # a vertical tool bar at the right edge: it used to sit over the titles
    "margin": {"l": 10, "r": 40, "t": 40, "b": 10},
    "height": 320,
    "template": "plotly_white",
    "modebar": {"orientation": "v"},
}


def withheld_bars(counts: Sequence[int | None], colour: str | Sequence[str]) -> dict[str, Any]:
    """Bar settings (values, colours, hatching, labels, hover text) that show withheld counts as withheld."""
    colours = [colour] * len(counts) if isinstance(colour, str) else list(colour)
    return {
        "values": [SMALL_CELL - 1 if n is None else n for n in counts],
        "marker": {
            "color": ["rgba(150,150,150,0.35)" if n is None else c for n, c in zip(counts, colours, strict=True)],
            "pattern": {"shape": ["/" if n is None else "" for n in counts], "fgcolor": "#555", "size": 6},
        },
        "text": [WITHHELD_MARK if n is None else "" for n in counts],
        "customdata": [WITHHELD if n is None else f"{n:,}" for n in counts],
    }


def date_axis(starts: Sequence[str], period: str) -> dict[str, Any]:
    """A date axis that spans whole periods, from the first one's start to the last one's end (with one period of
    data Plotly otherwise zooms into a millisecond, "23:59:59.9995" ticks), ticked at the periods' starts when
    they are few enough to name each."""
    if not starts:
        return {"type": "date"}
    first, last = (datetime.fromisoformat(str(s)[:19]) for s in (min(starts), max(starts)))
    axis: dict[str, Any] = {"type": "date", "range": [str(first), str(period_end(last, period))]}
    if period == "day" and (last - first) < timedelta(days=10):
        axis |= {"dtick": 86_400_000, "tickformat": "%b %d"}
    elif period == "week" and (last - first) < timedelta(weeks=16):
        axis |= {"dtick": 7 * 86_400_000, "tick0": MONDAY, "tickformat": "%b %d"}
    elif period == "month" and (last - first) < timedelta(days=730):
        axis |= {"dtick": "M1", "tick0": "2000-01-01", "tickformat": "%b %Y"}
    return axis


MONDAY = "2000-01-03"  # weeks start on Mondays (core.domain.times.period_start)


def period_end(start: datetime, period: str) -> datetime:
    """The end of the period that begins at ``start`` (the next one's first midnight)."""
    return datetime.combine(next_period(start.date(), period), time(0))


def in_periods(figure: go.Figure, period: str) -> None:
    """Each point, bar and box drawn across the period it counts, from its start to its end (drawn centred on the
    period's first day, November's bar stood mostly over October, and a week's over the one before); control limits
    are drawn from each period's start to its end already."""
    span, first = {"week": (7 * 86_400_000, MONDAY), "month": ("M1", "2000-01-01")}.get(period, (86_400_000, MONDAY))
    figure.update_traces(
        xperiod=span,  # periods counted from ``first``
        xperiod0=first,
        xperiodalignment="middle",
        selector=lambda trace: trace.legendgroup != "limits",
    )


def count_ticks(largest: int | None) -> dict[str, object]:
    """Axis settings for counts: whole numbers only, from zero, at most six steps (61 to 99 got one tick each)."""
    top = max(int(largest or 0), 1)
    step = 10 ** max(0, math.floor(math.log10(top)) - 1)
    for factor in (1, 2, 5, 10, 20):
        if top / (step * factor) <= 6:
            step *= factor
            break
    return {"rangemode": "tozero", "tickformat": ",d", "dtick": max(1, step), "tick0": 0}


def error_bars(percent: Sequence[float | None], intervals: Sequence[tuple[float, float] | None]) -> dict[str, Any]:
    """Plotly asymmetric error bars (in percent) from 95 % intervals (proportions) around ``percent`` values."""
    pairs = list(zip(intervals, percent, strict=True))
    return {
        "type": "data",
        "array": [None if i is None or p is None else round(i[1] * 100 - p, 2) for i, p in pairs],
        "arrayminus": [None if i is None or p is None else round(p - i[0] * 100, 2) for i, p in pairs],
    }


def tumour_rate_figure(
    starts: Sequence[str],
    scans: Sequence[int | None],
    rates: Sequence[float | None],
    intervals: Sequence[tuple[float, float] | None],
    period: str,
    counted: str = "scans",
) -> go.Figure:
    """Two panels on one time axis: the tumour rate (percent) with its 95 % interval as error bars above, what is
    ``counted`` per period below ("studies" when the board counts studies: its bars said "scans"). ``scans`` None
    and ``rates`` None are withheld small counts; zero-scan periods are drawn as zero."""
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.62, 0.38], vertical_spacing=0.06)
    percent = [None if r is None else round(r * 100, 2) for r in rates]
    figure.add_scatter(
        x=list(starts),
        y=percent,
        mode="lines+markers",
        name="tumour rate % (95 % interval)",
        line_color="#c0392b",
        connectgaps=False,
        error_y={**error_bars(percent, intervals), "color": "rgba(192,57,43,0.45)", "width": 2},
        hovertemplate="%{x}: %{y:.1f} %<extra>tumour rate</extra>",
        row=1,
        col=1,
    )
    tallest = _count_panel(figure, starts, scans, counted, period)
    _two_panel_layout(figure, f"Tumour rate per {period} (model's calls, {counted})", starts, period)
    counted_in = [r for n, r in zip(scans, rates, strict=True) if n is None or n > 0]  # periods with results
    hidden = sum(r is None for r in counted_in)
    if hidden * 2 > len(counted_in):  # most of the line gone, unexplained: read as a chart that failed
        figure.add_annotation(
            text=f"{hidden} of {len(counted_in)} {period}s' rates withheld: fewer than {SMALL_CELL} results, "
            f"tumours or others<br>in a {period} could identify patients. A longer period adds them up.",
            xref="x domain",
            yref="y domain",
            x=0.5,
            y=0.98,  # along the panel's top, on white: in its middle it lay over the rates that are shown
            yanchor="top",
            bgcolor="rgba(255,255,255,0.9)",
            showarrow=False,
        )
    figure.update_yaxes(title="tumour rate %", range=[0, 100], row=1, col=1)
    figure.update_yaxes(title=counted, **count_ticks(tallest), row=2, col=1)
    return figure


def class_mix_figure(per_class: Mapping[str, int | None], names: Mapping[str, str] | None = None) -> go.Figure:
    """Scans per verdict, largest first (withheld counts listed last, without a bar); ``names`` maps labels to
    display names."""
    labels = sorted(per_class, key=lambda name: (per_class[name] is None, -(per_class[name] or 0)))
    counts = [per_class[name] for name in labels]
    bars = withheld_bars(counts, [CLASS_COLOURS.get(name, "#566573") for name in labels])
    figure = go.Figure(
        go.Bar(
            x=bars["values"],
            y=[(names or {}).get(name, name) for name in labels],
            orientation="h",
            marker=bars["marker"],
            text=bars["text"],
            textposition="outside",
            customdata=bars["customdata"],
            hovertemplate="%{y}: %{customdata}<extra></extra>",
        )
    )
    figure.update_layout(
        title="Class mix",
        xaxis={"title": "results", **count_ticks(max(bars["values"]) if counts else 0)},  # series counted too
        yaxis={"autorange": "reversed"},
        **_LAYOUT,
    )
    return figure


def confidence_figure(counts: Sequence[int | None]) -> go.Figure:
    """Histogram of the decision's confidence (the probability that the tumour / no-tumour call is right)."""
    bins = len(counts)
    centres = [(i + 0.5) / bins for i in range(bins)]
    bars = withheld_bars(counts, "#1f6f8b")
    figure = go.Figure(
        go.Bar(
            x=centres,
            y=bars["values"],
            width=1 / bins * 0.95,
            marker=bars["marker"],
            text=bars["text"],
            textposition="outside",
            customdata=bars["customdata"],
            hovertemplate="confidence %{x:.2f}: %{customdata}<extra></extra>",
        )
    )
    largest = max(bars["values"]) if counts else 0
    # a call is never less than 50 % sure with the usual 0.5 threshold: start the axis at the first filled bin
    first = next((i for i, n in enumerate(counts) if n != 0), bins // 2)
    figure.update_layout(
        title="Confidence of the tumour / no-tumour call",
        xaxis={"title": "confidence", "range": [min(0.5, first / bins), 1]},
        yaxis={"title": "scans", **count_ticks(largest)},
        **_LAYOUT,
    )
    return figure


def _count_panel(
    figure: go.Figure, starts: Sequence[str], counts: Sequence[int | None], noun: str, period: str
) -> None:
    """The lower panel of a two-panel chart: ``noun`` per period as bars, small counts withheld ("withheld"), each bar
    one period wide (a period shown alone is otherwise drawn a millisecond wide)."""
    bars = withheld_bars(counts, "#7f9fb3")
    figure.add_bar(
        x=list(starts),
        y=bars["values"],
        name=noun,
        marker=bars["marker"],
        text=bars["text"],
        textposition="outside",
        customdata=bars["customdata"],
        hovertemplate=f"%{{x}}: %{{customdata}} {noun}<extra></extra>",
        width=0.85 * _period_ms(period),
        showlegend=False,  # its axis names it; the legend drew its swatch as the first bar, hatched when withheld
        row=2,
        col=1,
    )
    return max(bars["values"]) if counts else 0


def _two_panel_layout(figure: go.Figure, title: str, starts: Sequence[str], period: str) -> None:
    """The title, legend and shared date axes of a chart with a count panel below its measure."""
    figure.update_layout(
        title=title, legend={"orientation": "h", "y": -0.15}, bargap=0.15, **{**_LAYOUT, "height": 420}
    )
    figure.update_xaxes(**date_axis(starts, period), row=1, col=1)
    figure.update_xaxes(**date_axis(starts, period), title=f"{period} starting", row=2, col=1)
    in_periods(figure, period)


def _period_ms(period: str) -> float:
    """About one period's length in milliseconds: the width of a box or bar on a date axis."""
    return {"day": 1, "week": 7, "month": 30}.get(period, 1) * 86_400_000.0


def lesion_volume_figure(
    starts: Sequence[str],
    studies: Sequence[int | None],
    quantiles: Sequence[Sequence[float] | None],
    period: str,
) -> go.Figure:
    """Two panels on one time axis: a box per period of the lesion volumes of tumour studies (mL; the box from the
    25th to the 75th percentile around the median, whiskers at the 10th and 90th: never a single study's extreme)
    above, the studies per period below. ``quantiles`` are (p10, p25, median, p75, p90) or None (withheld: fewer
    than 10 studies, or none); ``studies`` None are withheld counts, hatched."""
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.68, 0.32], vertical_spacing=0.06)
    shown = [(start, q) for start, q in zip(starts, quantiles, strict=True) if q is not None]
    figure.add_trace(
        go.Box(
            x=[start for start, _ in shown],
            lowerfence=[q[0] for _, q in shown],
            q1=[q[1] for _, q in shown],
            median=[q[2] for _, q in shown],
            q3=[q[3] for _, q in shown],
            upperfence=[q[4] for _, q in shown],
            name="lesion volume (mL)",
            marker_color="#a93226",
            boxpoints=False,
            hoverinfo="x+y",
            width=0.6 * _period_ms(period),
        ),
        row=1,
        col=1,
    )
    tallest = _count_panel(figure, starts, studies, "tumour studies with a volume", period)
    _two_panel_layout(figure, f"Lesion volume of tumour studies per {period}", starts, period)
    figure.update_yaxes(title="lesion volume (mL)", rangemode="tozero", row=1, col=1)
    figure.update_yaxes(title="studies", **count_ticks(tallest), row=2, col=1)
    if not shown:  # an empty axis from 0 to 4 read as volumes of 0 to 4 mL
        figure.update_yaxes(showticklabels=False, row=1, col=1)
        figure.add_annotation(
            text=f"No box: no {period} has {LESION_QUANTILES_FROM} tumour studies with a volume<br>(fewer would give "
            "single studies' volumes back). A longer period adds them up.",
            xref="x domain",
            yref="y domain",
            x=0.5,
            y=0.5,
            showarrow=False,
        )
    return figure


def agreement_figure(
    starts: Sequence[str],
    agreement: Sequence[float | None],
    intervals: Sequence[tuple[float, float] | None],
    flagged: Sequence[float | None],
    rejected: Sequence[float | None],
    period: str,
) -> go.Figure:
    """Agreement of the model with the radiologists' final labels (with its 95 % interval) and the shares of
    flagged and refused scans, per period, in percent."""
    figure = go.Figure()
    pct = [None if a is None else round(a * 100, 2) for a in agreement]
    figure.add_scatter(
        x=list(starts),
        y=pct,
        mode="lines+markers",
        name="agreement % (95 % interval)",
        line_color="#1f6f8b",
        error_y=error_bars(pct, intervals),
    )
    for name, values, colour in (("flagged for review %", flagged, "#d68910"), ("refused %", rejected, "#566573")):
        figure.add_scatter(
            x=list(starts),
            y=[None if v is None else round(v * 100, 2) for v in values],
            mode="lines+markers",
            name=name,
            line_color=colour,
            line_dash="dot",
        )
    figure.update_layout(
        title=f"Agreement with the radiologists per {period}",
        yaxis={"title": "%", "range": [0, 100]},
        xaxis=date_axis(starts, period),  # one period: Plotly zoomed into a millisecond
        legend={"orientation": "h", "y": -0.2},
        **_LAYOUT,
    )
    in_periods(figure, period)
    if starts and all(a is None for a in agreement):  # an empty line, unexplained, read as nothing reviewed
        figure.add_annotation(
            text=f"No {period}'s agreement to draw:<br>none reviewed, or fewer than 5 (withheld).<br>A longer period "
            "adds them up.",  # on three lines: on one it ran past both edges of the chart
            xref="paper",
            yref="paper",
            x=0.5,
            y=0.5,
            showarrow=False,
        )
    return figure


def drift_figure(
    starts: Sequence[str],
    rates: Sequence[float | None],
    limits: Sequence[tuple[float, float] | None],
    means: Sequence[float | None],
    mean_limits: Sequence[tuple[float, float] | None],
    alarms: tuple[Sequence[bool], Sequence[bool]],
    baseline_end: str | None,
    period: str = "day",
) -> go.Figure:
    """Control charts: the tumour rate against its p-chart limits (above) and the mean tumour probability
    against its x-bar limits (below), both from the baseline period; ``alarms``: per period, whether the rate and
    whether the mean is out of control, each drawn as a red cross on its own panel (one list marked a rate inside
    its limits out of control when the mean alone left them)."""
    figure = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        subplot_titles=("tumour rate % per scan or series", "mean tumour probability of single scans %"),
    )
    # each limit a segment across its period, from its start to its end (as steps, a period whose next one had no
    # limit lost its own)
    edges = [*starts, str(period_end(datetime.fromisoformat(str(starts[-1])[:19]), period))] if starts else []
    for row, values, bounds, flags in ((1, rates, limits, alarms[0]), (2, means, mean_limits, alarms[1])):
        pct = [None if v is None else round(v * 100, 2) for v in values]
        for k in (0, 1):
            steps = [None if b is None else round(b[k] * 100, 2) for b in bounds]
            figure.add_scatter(
                x=[x for i in range(len(steps)) for x in (edges[i], edges[i + 1], None)],
                y=[y for step in steps for y in (step, step, None)],
                mode="lines",
                line={"color": "#95a5a6", "dash": "dash"},
                name="control limits (3 sd)",  # one legend entry for both lines (it read "lower limit")
                showlegend=row == 1 and k == 0,
                legendgroup="limits",
                row=row,
                col=1,
            )
        figure.add_scatter(
            x=list(starts),
            y=pct,
            mode="lines+markers",
            name="observed",
            showlegend=row == 1,
            # out of control: red, and a larger cross with its words, so it shows without colour vision too
            marker={
                "color": ["#c0392b" if alarm else "#1f6f8b" for alarm in flags],
                "symbol": ["x" if alarm else "circle" for alarm in flags],
                "size": [12 if alarm else 7 for alarm in flags],
            },
            text=["out of control" if alarm else "" for alarm in flags],
            hovertemplate="%{x}: %{y}% %{text}<extra></extra>",
            line_color="#1f6f8b",
            row=row,
            col=1,
        )
    if baseline_end:  # at the end of the baseline's last period (a period starting by that day is in it)
        last = datetime.combine(period_start(datetime.fromisoformat(baseline_end).date(), period), time(0))
        figure.add_vline(x=str(period_end(last, period)), line_dash="dot", line_color="#566573")
    figure.update_layout(  # room above the upper panel's own title: the figure's title was drawn over it
        title="Drift against the baseline (3-sigma control limits)",
        **{**_LAYOUT, "height": 440, "margin": {**_LAYOUT["margin"], "t": 70}},
    )
    figure.update_xaxes(**date_axis(starts, period))  # one period: Plotly zoomed into a millisecond
    figure.update_yaxes(rangemode="nonnegative")  # a rate of 0 alone ran the axis from -1 %
    in_periods(figure, period)
    return figure


def rate(board: Dashboard) -> go.Figure:
    rows = board.periods
    return tumour_rate_figure(
        [row.start.isoformat() for row in rows],
        [row.scans for row in rows],
        [row.rate for row in rows],
        [row.interval for row in rows],
        board.period,
        "studies" if board.unit == "study" else "scans and series",
    )


def mix(board: Dashboard, names: Mapping[str, str]) -> go.Figure:
    return class_mix_figure(board.per_class, names)


def confidence(board: Dashboard) -> go.Figure:
    return confidence_figure(board.histogram)


def lesions(board: Dashboard) -> go.Figure:
    rows = board.lesions
    return lesion_volume_figure(
        [row.start.isoformat() for row in rows],
        [row.studies for row in rows],
        [row.quantiles for row in rows],
        board.period,
    )


def agreement(board: QualityBoard, period: str) -> go.Figure:
    rows = board.rows
    return agreement_figure(
        [r.start.isoformat() for r in rows],
        [r.agreement for r in rows],
        [r.agreement_interval for r in rows],
        [r.flagged_rate for r in rows],
        [r.rejected_rate for r in rows],
        period,
    )


def drift(board: QualityBoard, period: str) -> go.Figure:
    rows = board.rows
    end = board.drift.baseline_end.isoformat() if board.drift.baseline_end else None
    return drift_figure(
        [r.start.isoformat() for r in rows],
        [r.tumour_rate for r in rows],
        [r.rate_limits for r in rows],
        [r.mean_probability for r in rows],
        [r.mean_limits for r in rows],
        ([r.rate_out for r in rows], [r.mean_out for r in rows]),
        end,
        period,
    )
