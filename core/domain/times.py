"""Instants as UTC milliseconds, and the UTC offsets of a time zone over a range (for calendar days in the DB).

Every time zone's offset is a multiple of 15 minutes, so a local calendar day is a sum of UTC quarter-hours: both
stores group by quarter-hour and shift each by the zone's offset at that instant (daylight saving included).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

DAY_MS = 86_400_000
QUARTER_MS = 900_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PERIODS = ("day", "week", "month")


def to_ms(moment: datetime) -> int:
    """Whole milliseconds since the epoch, cut as BSON cuts them (rounded, a moment 0.4 ms before midnight fell on
    the next day in SQLite and on its own day in MongoDB)."""
    return (moment - EPOCH) // timedelta(milliseconds=1)


def from_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def as_utc(value: datetime | int) -> datetime:
    """A datetime from either store (naive UTC, aware, or milliseconds) as an aware UTC datetime."""
    if isinstance(value, int):
        return from_ms(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@lru_cache(maxsize=256)
def utc_offset_segments(timezone: str, start_ms: int, end_ms: int) -> tuple[tuple[int, int], ...]:
    """((from_ms, offset_ms), ...): the zone's UTC offset from each instant on, covering [start_ms, end_ms]."""
    zone = ZoneInfo(timezone)

    def offset(ms: int) -> int:
        return int(from_ms(ms).astimezone(zone).utcoffset().total_seconds() * 1000)

    segments = [(start_ms, offset(start_ms))]
    step = 86_400_000  # zone transitions are weeks apart at the least: a day's step never straddles two
    at = start_ms
    while at < end_ms:
        nxt = min(at + step, end_ms)
        if offset(nxt) != segments[-1][1]:
            low, high = at, nxt  # offset(low) is the old one, offset(high) the new: find the first new instant
            while high - low > 1:
                mid = (low + high) // 2
                if offset(mid) == segments[-1][1]:
                    low = mid
                else:
                    high = mid
            segments.append((high, offset(nxt)))
        at = nxt
    return tuple(segments)


def period_start(day: date, period: str) -> date:
    """The first day of the day, Monday-start week or calendar month that holds ``day``."""
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())  # ISO weeks start on Monday
    if period == "month":
        return day.replace(day=1)
    raise ValueError(f"period must be one of {PERIODS}")


def next_period(start: date, period: str) -> date:
    if period == "day":
        return start + timedelta(days=1)
    if period == "week":
        return start + timedelta(days=7)
    return (start.replace(day=28) + timedelta(days=4)).replace(day=1)


def period_starts(first: date, last: date, period: str) -> list[date]:
    """The first day of every period from the one holding ``first`` to the one holding ``last``."""
    starts, start = [], period_start(first, period)
    while start <= last:
        starts.append(start)
        start = next_period(start, period)
    return starts


def local_midnight(day: date, timezone: str) -> datetime:
    """The UTC instant of ``day``'s local midnight in ``timezone``."""
    return datetime.combine(day, time(0), ZoneInfo(timezone)).astimezone(UTC)


def local_day(moment: datetime | None, timezone: str) -> date:
    """The local day in ``timezone`` of ``moment`` (None: now)."""
    return (moment or datetime.now(UTC)).astimezone(ZoneInfo(timezone)).date()


def period_bounds(first_ms: int, last_ms: int, timezone: str, period: str) -> list[tuple[date, int]]:
    """The local periods of ``timezone`` from the one holding ``first_ms`` to the one holding ``last_ms`` (UTC
    milliseconds, both included): each period's first local day and the UTC instant (ms) of its local midnight."""
    zone = ZoneInfo(timezone)
    first, last = (from_ms(ms).astimezone(zone).date() for ms in (first_ms, last_ms))
    return [(start, to_ms(local_midnight(start, timezone))) for start in period_starts(first, last, period)]
