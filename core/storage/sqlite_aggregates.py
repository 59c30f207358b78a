"""The SQLite store's dashboard aggregates (a mixin of :class:`core.storage.sqlite.SQLiteStore`).

Summaries, calendar days, the per-version table and the per-day quality counts are summed from the roll-ups (kept
current by triggers in the same transaction as each write: :mod:`core.storage.schema`) whenever the range starts
and ends on whole quarters, as every dashboard range does (a local midnight in any time zone): the whole UTC days
of the range from ``rollup_day``, its partial days at either end from the quarter-hour ``rollup``. A local calendar
day is the roll-up day nearest to it (a UTC day, or a day shifted by whole hours from ``rollup_shifted``) that
holds its noon, plus the quarters it takes from the neighbouring day, minus those it gives away (an hour's or less
in nearly every zone; read by quarter of the day, one query part per stretch of constant UTC offset). Any other range is
answered from the results themselves; a contract test proves both give the same figures.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import replace
from datetime import date, timedelta
from itertools import pairwise
from typing import Any

from core.domain.results import DayCount, DayQuality, Filters, ModelRow, Summary
from core.domain.times import DAY_MS, QUARTER_MS, from_ms, to_ms, utc_offset_segments
from core.storage.protocol import EVERYTHING, day_rows, fold_summary
from core.storage.schema import SHIFT_HOURS
from core.storage.sqlite_base import SQLiteBase

SHOWN_SQL = "gate != 'rejected'"  # a result with a verdict (the gate refused none of it)
REVIEWED_SQL = f"review_count > 0 AND {SHOWN_SQL}"
_SUMMARY_KEYS = ("label", "gate", "n", "tumour", "confidence", "first", "last")
_MEASURES = ("n", "tumour", "reviewed", "agreed", "probability_sum", "probability_squares")  # in the roll-ups
_SUMMED = ", ".join(f"sum({measure}) AS {measure}" for measure in _MEASURES)


def _aligned(filters: Filters) -> bool:
    return all(bound is None or to_ms(bound) % QUARTER_MS == 0 for bound in (filters.start, filters.end))


def where_sql(filters: Filters, time_column: str = "created_ms", unit_ms: int = 1) -> tuple[str, list[Any]]:
    """`` WHERE ...`` (or nothing) and its parameters for ``filters``, on a time column counted in ``unit_ms``
    (milliseconds for the results, quarter-hours for the roll-ups)."""
    clauses, params = [], []
    if filters.start is not None:
        clauses.append(f"{time_column} >= ?")
        params.append(to_ms(filters.start) // unit_ms)
    if filters.end is not None:
        clauses.append(f"{time_column} < ?")
        params.append(to_ms(filters.end) // unit_ms)
    for column, values in (
        ("label", filters.labels),
        ("model_version", filters.model_versions),
        ("gate", filters.gates),
        ("kind", filters.kinds),
    ):
        if values:
            clauses.append(f"{column} IN ({', '.join('?' * len(values))})")
            params += list(values)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _rollup_where(filters: Filters) -> tuple[str, list[Any]]:
    return where_sql(filters, "quarter", QUARTER_MS)


def split_range(filters: Filters, shift_ms: int = 0) -> tuple[Filters | None, list[Filters]]:
    """``filters`` as its whole UTC days, or whole days shifted by ``shift_ms`` (bounds on day boundaries, in UTC;
    None when it holds no whole day) and the partial days at either end (the same filters bounded by what is
    left)."""
    start = None if filters.start is None else to_ms(filters.start) + shift_ms
    end = None if filters.end is None else to_ms(filters.end) + shift_ms
    first = None if start is None else -(-start // DAY_MS)
    last = None if end is None else end // DAY_MS
    if first is not None and last is not None and first >= last:
        return None, [filters] if start < end else []
    days = replace(
        filters,
        start=None if first is None else from_ms(first * DAY_MS - shift_ms),
        end=None if last is None else from_ms(last * DAY_MS - shift_ms),
    )
    edges = []
    if start is not None and start < first * DAY_MS:
        edges.append(replace(filters, end=days.start))
    if end is not None and last * DAY_MS < end:
        edges.append(replace(filters, start=days.end))
    return days, edges


def whole_days_and_edges(
    filters: Filters, day_sql: str, day_table: str, edge_sql: str, edge_table: str, edge_where: Any
) -> tuple[str, list[Any]]:
    """One subquery: ``day_sql`` over the whole UTC days of ``filters`` in ``day_table`` (its time column ``day``),
    UNION ALL ``edge_sql`` over the partial days in ``edge_table`` (conditions from ``edge_where(filters)``)."""
    days, edges = split_range(filters)
    parts, params = [], []
    if days is not None:
        where, day_params = where_sql(days, "day", DAY_MS)
        parts.append(f"SELECT {day_sql} FROM {day_table}{where}")
        params += day_params
    for edge in edges:
        where, edge_params = edge_where(edge)
        parts.append(f"SELECT {edge_sql} FROM {edge_table}{where}")
        params += edge_params
    return " UNION ALL ".join(parts) or f"SELECT {day_sql} FROM {day_table} WHERE 0", params


def day_sql(timezone: str, first_ms: int, last_ms: int, instant: str = "quarter_ms") -> tuple[str, list[Any]]:
    """SQL for the local calendar day (days since 1970-01-01) in ``timezone`` of ``instant`` (UTC milliseconds: a
    column or an expression)."""
    segments = utc_offset_segments(timezone, first_ms, last_ms)
    cases = " ".join(f"WHEN {instant} < ? THEN ?" for _ in segments[1:])
    offset_sql = f"CASE {cases} ELSE ? END" if cases else "?"
    params: list[Any] = []
    for (_, previous_offset), (boundary, _) in pairwise(segments):
        params += [boundary, previous_offset]
    params.append(segments[-1][1])
    return f"({instant} + {offset_sql}) / {DAY_MS}", params


def _nearest_shift(segments: tuple[tuple[int, int], ...]) -> int:
    """The day roll-up (shift in ms: 0 for UTC days, else one of ``SHIFT_HOURS``) closest to every UTC offset of
    ``segments``: the fewest quarters to correct."""
    offsets = {offset for _, offset in segments}
    return min((0, *(hours * 3_600_000 for hours in SHIFT_HOURS)), key=lambda h: max(abs(o - h) for o in offsets))


def _noon_owner(segments: tuple[tuple[int, int], ...], shift_ms: int) -> Any:
    """Day number (shifted by ``shift_ms``) -> the local day (of the zone with these offset ``segments``) that
    holds its noon: the day a whole day of a day roll-up counts for."""
    starts = [start for start, _ in segments]

    def owner(day: int) -> int:
        noon = day * DAY_MS - shift_ms + DAY_MS // 2
        return (noon + segments[max(0, bisect_right(starts, noon) - 1)][1]) // DAY_MS

    return owner


def _moved_quarters(
    days: Filters, segments: tuple[tuple[int, int], ...], shift_ms: int, keys: str
) -> tuple[str, list[Any]]:
    """SQL for (day shifted by ``shift_ms``, local day, *``keys``, *sums of the ``_MEASURES``) over the quarters
    of the whole ``days`` that may belong to another local day than their shifted day's noon, one part per stretch
    of constant UTC offset (so that the local day is plain arithmetic, and only the quarters that can move are
    read, by ``rollup_by_slot``: the quarter of the UTC day)."""
    noon_offsets = {offset - shift_ms for _, offset in segments}
    parts, params = [], []
    for i, (_, offset) in enumerate(segments):
        slots = [  # quarters of the shifted day, then of the UTC day
            (s - shift_ms // QUARTER_MS) % 96
            for s in range(96)
            if any(
                (s * QUARTER_MS + offset - shift_ms) // DAY_MS != (DAY_MS // 2 + noon) // DAY_MS
                for noon in noon_offsets
            )
        ]
        if not slots:
            continue
        where, where_params = _rollup_where(days)
        where += f"{' AND' if where else ' WHERE'} quarter % 96 IN ({', '.join(map(str, sorted(slots)))})"
        for bound, operator in ((i, ">="), (i + 1, "<")):  # the stretch, in whole quarters
            if 0 < bound < len(segments):
                where += f" AND quarter {operator} ?"
                where_params.append(-(-segments[bound][0] // QUARTER_MS))
        parts.append(
            f"SELECT (quarter * {QUARTER_MS} + ?) / {DAY_MS} AS day, (quarter * {QUARTER_MS} + ?) / {DAY_MS} AS local"
            f"{keys}, {_SUMMED} FROM rollup{where} GROUP BY day, local{keys}"
        )
        params += [shift_ms, offset, *where_params]
    return " UNION ALL ".join(parts), params


class SQLiteAggregates(SQLiteBase):
    """The dashboard's aggregates, from the roll-ups and the results table."""

    @staticmethod
    def _where(filters: Filters) -> tuple[str, list[Any]]:
        return where_sql(filters)

    # --- the summary --------------------------------------------------------------------------------------

    def summary(self, filters: Filters = EVERYTHING) -> Summary:
        if _aligned(filters):
            columns = "label, gate, n, tumour, confidence_sum, first_ms, last_ms"
            rolled, params = whole_days_and_edges(filters, columns, "rollup_day", columns, "rollup", _rollup_where)
            sql = (
                "SELECT label, gate, sum(n), sum(tumour), sum(confidence_sum), min(first_ms), max(last_ms) "
                f"FROM ({rolled}) GROUP BY label, gate"
            )
        else:
            where, params = self._where(filters)
            sql = (
                "SELECT label, gate, count(*), sum(is_tumour), sum(confidence), min(created_ms), max(created_ms) "
                f"FROM scans{where} GROUP BY label, gate"
            )
        rows = self._query(sql, params)
        return fold_summary([dict(zip(_SUMMARY_KEYS, row, strict=True)) for row in rows])

    def _time_range(self, filters: Filters) -> tuple[int, int] | None:
        """The span whose UTC offsets a calendar-day query needs: the dates of ``filters`` within the first and
        last day with any results (from the primary key of the day roll-up: quick, and maybe a little wide)."""
        first, last = self._query("SELECT (SELECT min(day) FROM rollup_day), (SELECT max(day) FROM rollup_day)")[0]
        if first is None:
            return None
        first, last = first * DAY_MS, (last + 1) * DAY_MS - 1
        first = first if filters.start is None else max(first, to_ms(filters.start))
        last = last if filters.end is None else min(last, to_ms(filters.end))
        return (first, last) if first <= last else None

    # --- calendar days ------------------------------------------------------------------------------------

    def _local_days(self, filters: Filters, timezone: str, sums: str, by_gate: bool = False) -> list[tuple[Any, ...]]:
        """(local day number, results, *``sums``) for each calendar day of ``timezone`` that has results in the
        (quarter-aligned) range of ``filters``. The quarter roll-up's rows are first summed (plain sums of the
        ``_MEASURES``, per gate decision when ``by_gate``: ``sums`` has CASEs on it), so that ``sums`` run on a few
        rows per day, not on every row."""
        span = self._time_range(filters)
        if span is None:
            return []
        segments = utc_offset_segments(timezone, *span)
        totals: dict[int, list[Any]] = {}

        def add(rows: list[Any], owner: Any = None) -> None:
            """(day, *figures) rows; with ``owner``, (roll-up day, local day, *figures) rows whose figures count for
            their local day and not for the local day that holds their roll-up day's noon."""
            for row in rows:
                if owner is None:
                    day, *values = row
                else:
                    rolled_day, day, *values = row
                    if day == owner(rolled_day):
                        continue
                    add([(owner(rolled_day), *(-v for v in values))])
                total = totals.get(day)
                totals[day] = values if total is None else [t + v for t, v in zip(total, values, strict=True)]

        def outer(sql: str, keys: str) -> str:  # ``sql`` selects ``keys``, the gate when by_gate and the measures
            return f"SELECT {keys}, sum(n), {sums} FROM ({sql}) GROUP BY {keys}"

        gate = ", gate" if by_gate else ""

        shift = _nearest_shift(segments)
        days, edges = split_range(filters, shift)
        owner_of = _noon_owner(segments, shift)
        if days is not None:
            if shift:
                shifted = timedelta(milliseconds=shift)
                where, params = where_sql(
                    replace(days, start=days.start and days.start + shifted, end=days.end and days.end + shifted),
                    "day",
                    DAY_MS,
                )
                where = f"{where} AND shift = ?" if where else " WHERE shift = ?"
                sql = f"SELECT day, sum(n), {sums} FROM rollup_shifted{where} GROUP BY day"
                params.append(shift // 3_600_000)
            else:
                where, params = where_sql(days, "day", DAY_MS)
                sql = f"SELECT day, sum(n), {sums} FROM rollup_day{where} GROUP BY day"
            add([(owner_of(day), *values) for day, *values in self._query(sql, params)])
            moved, moved_params = _moved_quarters(days, segments, shift, gate)
            if moved:
                add(self._query(outer(moved, "day, local"), moved_params), owner=owner_of)
        local, local_params = day_sql(timezone, *span, instant=f"quarter * {QUARTER_MS}")
        for edge in edges:
            where, params = _rollup_where(edge)
            sql = f"SELECT {local} AS local{gate}, {_SUMMED} FROM rollup{where} GROUP BY local{gate}"
            add(self._query(outer(sql, "local"), [*local_params, *params]))
        return [(day, *values) for day, values in sorted(totals.items()) if values[0]]

    def _raw_days(self, filters: Filters, timezone: str, sums: str) -> list[tuple[Any, ...]]:
        """As :meth:`_local_days`, from the results themselves (any range); ``sums`` of result columns. A result
        takes its quarter's offset, as the roll-ups do."""
        span = self._time_range(filters)
        if span is None:
            return []
        day, day_params = day_sql(timezone, *span, instant=f"created_ms / {QUARTER_MS} * {QUARTER_MS}")
        where, params = self._where(filters)
        rows = self._query(
            f"SELECT {day} AS day, {sums} FROM scans{where} GROUP BY day ORDER BY day", [*day_params, *params]
        )
        return [tuple(row) for row in rows]

    def daily_counts(self, filters: Filters, timezone: str) -> list[DayCount]:
        if not _aligned(filters):
            return day_rows(self._raw_days(filters, timezone, "count(*), sum(is_tumour)"))
        return day_rows(self._local_days(filters, timezone, "sum(tumour)"))

    def daily_quality(self, filters: Filters, timezone: str) -> list[DayQuality]:
        scope = Filters(
            start=filters.start, end=filters.end, model_versions=filters.model_versions, kinds=filters.kinds
        )
        shown = SHOWN_SQL
        if _aligned(scope):
            rolled = (
                f"sum(CASE WHEN {shown} THEN n ELSE 0 END), sum(CASE WHEN {shown} THEN tumour ELSE 0 END), "
                "sum(CASE WHEN gate = 'needs_review' THEN n ELSE 0 END), "
                "sum(CASE WHEN gate = 'rejected' THEN n ELSE 0 END), "
                f"sum(CASE WHEN {shown} THEN reviewed ELSE 0 END), sum(CASE WHEN {shown} THEN agreed ELSE 0 END), "
                f"sum(CASE WHEN {shown} THEN probability_sum ELSE 0 END), "
                f"sum(CASE WHEN {shown} THEN probability_squares ELSE 0 END)"
            )
            rows = [(day, *values) for day, _, *values in self._local_days(scope, timezone, rolled, by_gate=True)]
        else:
            reviewed = REVIEWED_SQL
            rows = self._raw_days(
                scope,
                timezone,
                f"sum({shown}) AS shown, sum(is_tumour AND {shown}) AS tumour, sum(gate = 'needs_review') AS flagged, "
                f"sum(gate = 'rejected') AS rejected, sum({reviewed}) AS reviewed, "
                f"sum({reviewed} AND final_label = label) AS agreed, "
                f"sum(CASE WHEN {shown} THEN tumour_probability ELSE 0 END) AS p, "
                f"sum(CASE WHEN {shown} THEN tumour_probability * tumour_probability ELSE 0 END) AS p2",
            )
        return [
            DayQuality(
                date(1970, 1, 1) + timedelta(days=int(d)),
                int(a),
                int(b),
                int(c),
                int(e),
                int(f),
                int(g),
                float(p),
                float(q),
            )
            for d, a, b, c, e, f, g, p, q in rows
        ]

    # --- per model version --------------------------------------------------------------------------------

    def by_model(self, filters: Filters = EVERYTHING) -> list[ModelRow]:
        if _aligned(filters):
            columns = "model_name, model_version, n, tumour, confidence_sum, first_ms, last_ms"
            rolled, params = whole_days_and_edges(filters, columns, "rollup_day", columns, "rollup", _rollup_where)
            sql = (
                "SELECT model_name, model_version, sum(n), sum(tumour), sum(confidence_sum) / sum(n), "
                f"min(first_ms), max(last_ms) FROM ({rolled}) GROUP BY model_version, model_name "
                "ORDER BY min(first_ms)"
            )
        else:
            where, params = self._where(filters)
            sql = (
                "SELECT model_name, model_version, count(*), sum(is_tumour), avg(confidence), min(created_ms), "
                f"max(created_ms) FROM scans{where} GROUP BY model_version, model_name "
                "ORDER BY min(created_ms)"
            )
        return [
            ModelRow(name, version, int(n), int(t), float(c), from_ms(first), from_ms(last))
            for name, version, n, t, c, first, last in self._query(sql, params)
        ]
