"""The SQLite store's dashboard aggregates (a mixin of :class:`core.storage.sqlite.SQLiteStore`).

Summaries, calendar days, the per-version table and the per-day quality counts are summed from the ``rollup``
table (one row per UTC quarter-hour, model, verdict and gate decision, kept current by triggers in the same
transaction as each write: :mod:`core.storage.migrations`) whenever the range starts and ends on whole quarters,
as every dashboard range does (a local midnight in any time zone). Any other range is answered from the results
themselves; a contract test proves both give the same figures.
"""

from __future__ import annotations

from datetime import date, timedelta
from itertools import pairwise
from typing import Any

from core.storage.protocol import EVERYTHING, day_rows, fold_summary
from core.storage.records import DayCount, DayQuality, Filters, ModelRow, Summary
from core.storage.timebuckets import DAY_MS, QUARTER_MS, from_ms, to_ms, utc_offset_segments

_SUMMARY_KEYS = ("label", "gate", "n", "tumour", "confidence", "first", "last")


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
    for column, values in (("label", filters.labels), ("model_version", filters.model_versions),
                           ("gate", filters.gates), ("kind", filters.kinds)):  # fmt: skip
        if values:
            clauses.append(f"{column} IN ({', '.join('?' * len(values))})")
            params += list(values)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _rollup_where(filters: Filters) -> tuple[str, list[Any]]:
    return where_sql(filters, "quarter", QUARTER_MS)


def day_sql(timezone: str, first_ms: int, last_ms: int) -> tuple[str, list[Any]]:
    """SQL for the local calendar day (days since 1970-01-01) of a column ``quarter_ms`` in ``timezone``."""
    segments = utc_offset_segments(timezone, first_ms, last_ms)
    cases = " ".join("WHEN quarter_ms < ? THEN ?" for _ in segments[1:])
    offset_sql = f"CASE {cases} ELSE ? END" if cases else "?"
    params: list[Any] = []
    for (_, previous_offset), (boundary, _) in pairwise(segments):
        params += [boundary, previous_offset]
    params.append(segments[-1][1])
    return f"(quarter_ms + {offset_sql}) / {DAY_MS}", params


class SQLiteAggregates:
    """Requires ``_query()`` and ``_where()`` from the store."""

    _query: Any
    _where: Any

    # --- the summary --------------------------------------------------------------------------------------

    def summary(self, filters: Filters = EVERYTHING) -> Summary:
        if _aligned(filters):
            where, params = _rollup_where(filters)
            sql = ("SELECT label, gate, sum(n), sum(tumour), sum(confidence_sum), min(first_ms), max(last_ms) "
                   f"FROM rollup{where} GROUP BY label, gate")  # fmt: skip
        else:
            where, params = self._where(filters)
            sql = ("SELECT label, gate, count(*), sum(is_tumour), sum(confidence), min(created_ms), max(created_ms) "
                   f"FROM scans{where} GROUP BY label, gate")  # fmt: skip
        rows = self._query(sql, params)
        return fold_summary([dict(zip(_SUMMARY_KEYS, row, strict=True)) for row in rows])

    def _time_range(self, filters: Filters) -> tuple[int, int] | None:
        summary = self.summary(filters)
        return None if summary.first is None else (to_ms(summary.first), to_ms(summary.last))

    # --- calendar days ------------------------------------------------------------------------------------

    def _quarters(self, filters: Filters, columns: str, raw_columns: str) -> tuple[str, list[Any]]:
        """A subquery of per-quarter sums (``quarter_ms`` and ``columns``), from the roll-up when it can."""
        if _aligned(filters):
            where, params = _rollup_where(filters)
            return f"SELECT quarter * {QUARTER_MS} AS quarter_ms, {columns} FROM rollup{where} GROUP BY quarter", params
        where, params = self._where(filters)
        return (f"SELECT created_ms / {QUARTER_MS} * {QUARTER_MS} AS quarter_ms, {raw_columns} FROM scans{where} "
                f"GROUP BY created_ms / {QUARTER_MS}"), params  # fmt: skip

    def daily_counts(self, filters: Filters, timezone: str) -> list[DayCount]:
        span = self._time_range(filters)
        if span is None:
            return []
        day, day_params = day_sql(timezone, *span)
        inner, params = self._quarters(filters, "sum(n) AS n, sum(tumour) AS tumour",
                                       "count(*) AS n, sum(is_tumour) AS tumour")  # fmt: skip
        rows = self._query(
            f"SELECT {day} AS day, sum(n), sum(tumour) FROM ({inner}) GROUP BY day ORDER BY day", [*day_params, *params]
        )
        return day_rows([tuple(row) for row in rows])

    def daily_quality(self, filters: Filters, timezone: str) -> list[DayQuality]:
        scope = Filters(
            start=filters.start, end=filters.end, model_versions=filters.model_versions, kinds=filters.kinds
        )
        span = self._time_range(scope)
        if span is None:
            return []
        day, day_params = day_sql(timezone, *span)
        shown = "gate != 'rejected'"
        rolled = (
            f"sum(CASE WHEN {shown} THEN n ELSE 0 END) AS shown, "
            f"sum(CASE WHEN {shown} THEN tumour ELSE 0 END) AS tumour, "
            "sum(CASE WHEN gate = 'needs_review' THEN n ELSE 0 END) AS flagged, "
            "sum(CASE WHEN gate = 'rejected' THEN n ELSE 0 END) AS rejected, "
            f"sum(CASE WHEN {shown} THEN reviewed ELSE 0 END) AS reviewed, "
            f"sum(CASE WHEN {shown} THEN agreed ELSE 0 END) AS agreed, "
            f"sum(CASE WHEN {shown} THEN probability_sum ELSE 0 END) AS p, "
            f"sum(CASE WHEN {shown} THEN probability_squares ELSE 0 END) AS p2"
        )
        reviewed = f"review_count > 0 AND {shown}"
        raw = (
            f"sum({shown}) AS shown, sum(is_tumour AND {shown}) AS tumour, sum(gate = 'needs_review') AS flagged, "
            f"sum(gate = 'rejected') AS rejected, sum({reviewed}) AS reviewed, "
            f"sum({reviewed} AND final_label = label) AS agreed, "
            f"sum(CASE WHEN {shown} THEN tumour_probability ELSE 0 END) AS p, "
            f"sum(CASE WHEN {shown} THEN tumour_probability * tumour_probability ELSE 0 END) AS p2"
        )
        inner, params = self._quarters(scope, rolled, raw)
        rows = self._query(
            f"SELECT {day} AS day, sum(shown), sum(tumour), sum(flagged), sum(rejected), sum(reviewed), sum(agreed), "
            f"sum(p), sum(p2) FROM ({inner}) GROUP BY day ORDER BY day",
            [*day_params, *params],
        )
        return [
            DayQuality(date(1970, 1, 1) + timedelta(days=int(d)), int(a), int(b), int(c), int(e), int(f), int(g),
                       float(p), float(q))
            for d, a, b, c, e, f, g, p, q in rows
        ]  # fmt: skip

    # --- per model version --------------------------------------------------------------------------------

    def by_model(self, filters: Filters = EVERYTHING) -> list[ModelRow]:
        if _aligned(filters):
            where, params = _rollup_where(filters)
            sql = ("SELECT model_name, model_version, sum(n), sum(tumour), sum(confidence_sum) / sum(n), "
                   f"min(first_ms), max(last_ms) FROM rollup{where} GROUP BY model_version, model_name "
                   "ORDER BY min(first_ms)")  # fmt: skip
        else:
            where, params = self._where(filters)
            sql = ("SELECT model_name, model_version, count(*), sum(is_tumour), avg(confidence), min(created_ms), "
                   f"max(created_ms) FROM scans{where} GROUP BY model_version, model_name "
                   "ORDER BY min(created_ms)")  # fmt: skip
        return [
            ModelRow(name, version, int(n), int(t), float(c), from_ms(first), from_ms(last))
            for name, version, n, t, c, first, last in self._query(sql, params)
        ]
