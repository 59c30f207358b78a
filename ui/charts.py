"""The statistics page's figures, from a :class:`core.services.statistics.Dashboard` (small counts withheld)."""

from __future__ import annotations

from collections.abc import Mapping

import plotly.graph_objects as go

from core.analytics.charts import class_mix_figure, confidence_figure, tumour_rate_figure
from core.services.statistics import Dashboard


def rate(board: Dashboard) -> go.Figure:
    rows = board.periods
    return tumour_rate_figure(
        [row.start.isoformat() for row in rows],
        [row.scans for row in rows],
        [row.rate for row in rows],
        [row.interval for row in rows],
        board.period,
    )


def mix(board: Dashboard, names: Mapping[str, str]) -> go.Figure:
    return class_mix_figure(board.per_class, names)


def confidence(board: Dashboard) -> go.Figure:
    return confidence_figure(board.histogram)
