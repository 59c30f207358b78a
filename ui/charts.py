"""The statistics page's figures, from a :class:`core.services.statistics.Dashboard` (small counts withheld)."""

from __future__ import annotations

from collections.abc import Mapping

import plotly.graph_objects as go

from core.analytics.charts import (
    agreement_figure,
    class_mix_figure,
    confidence_figure,
    drift_figure,
    tumour_rate_figure,
)
from core.services.statistics import Dashboard, QualityBoard


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


def drift(board: QualityBoard) -> go.Figure:
    rows = board.rows
    end = board.drift.baseline_end.isoformat() if board.drift.baseline_end else None
    return drift_figure(
        [r.start.isoformat() for r in rows],
        [r.tumour_rate for r in rows],
        [r.rate_limits for r in rows],
        [r.mean_probability for r in rows],
        [r.mean_limits for r in rows],
        [r.out_of_control for r in rows],
        end,
    )
