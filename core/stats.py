"""Dashboard figures derived from database aggregates (never from raw records): periods, rates, suppression."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from core.records import DayCount

PERIODS = ("day", "week", "month")
SMALL_CELL = 5


@dataclass(frozen=True)
class PeriodRate:
    """Scans and tumour verdicts in one period starting on ``start`` (a local date)."""

    start: date
    total: int
    tumour: int

    @property
    def rate(self) -> float:
        return self.tumour / self.total if self.total else 0.0


def period_start(day: date, period: str) -> date:
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())  # ISO weeks start on Monday
    if period == "month":
        return day.replace(day=1)
    raise ValueError(f"period must be one of {PERIODS}")


def roll_up(days: Sequence[DayCount], period: str) -> list[PeriodRate]:
    """Sum day rows into days, Monday-start weeks or calendar months (days come from the database)."""
    totals: dict[date, list[int]] = {}
    for row in days:
        bucket = totals.setdefault(period_start(row.day, period), [0, 0])
        bucket[0] += row.total
        bucket[1] += row.tumour
    return [PeriodRate(start, total, tumour) for start, (total, tumour) in sorted(totals.items())]


def suppress_small(count: int, threshold: int = SMALL_CELL) -> int | None:
    """Counts from 1 to threshold - 1 are withheld (None) so small cells cannot re-identify patients."""
    return None if 0 < count < threshold else count
