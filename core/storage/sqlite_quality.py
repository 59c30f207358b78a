"""The SQLite store's monitoring aggregates (a mixin of :class:`core.storage.sqlite.SQLiteStore`): per-day quality
counts, the confusion of verdicts against final labels, and review turnaround, all computed by SQL over a
covering index (``scans_quality``)."""

from __future__ import annotations

from datetime import date, timedelta
from itertools import pairwise
from typing import Any

from core.storage.records import DayQuality, Filters
from core.storage.timebuckets import DAY_MS, QUARTER_MS, to_ms, utc_offset_segments

SHOWN_SQL = "gate != 'rejected'"
REVIEWED_SQL = f"review_count > 0 AND {SHOWN_SQL}"


class SQLiteQuality:
    """Requires ``_query()`` and ``_time_range()`` from the store."""

    _query: Any
    _time_range: Any

    @staticmethod
    def _scope(filters: Filters) -> tuple[str, list[Any]]:
        """Dates and model versions only: every gate decision is counted, each in its own column."""
        clauses, params = [], []
        if filters.start is not None:
            clauses.append("created_ms >= ?")
            params.append(to_ms(filters.start))
        if filters.end is not None:
            clauses.append("created_ms < ?")
            params.append(to_ms(filters.end))
        if filters.model_versions:
            clauses.append(f"model_version IN ({', '.join('?' * len(filters.model_versions))})")
            params += list(filters.model_versions)
        return " AND ".join(clauses) or "1", params

    def daily_quality(self, filters: Filters, timezone: str) -> list[DayQuality]:
        where, params = self._scope(filters)
        span = self._query(f"SELECT min(created_ms), max(created_ms) FROM scans WHERE {where}", params)[0]
        if span[0] is None:
            return []
        segments = utc_offset_segments(timezone, int(span[0]), int(span[1]))
        cases = " ".join("WHEN quarter_ms < ? THEN ?" for _ in segments[1:])
        offset_sql = f"CASE {cases} ELSE ? END" if cases else "?"
        offset_params: list[Any] = []
        for (_, previous_offset), (boundary, _) in pairwise(segments):
            offset_params += [boundary, previous_offset]
        offset_params.append(segments[-1][1])
        rows = self._query(
            f"SELECT (quarter_ms + {offset_sql}) / {DAY_MS} AS day, sum(shown), sum(tumour), sum(flagged), "
            "sum(rejected), sum(reviewed), sum(agreed), sum(p), sum(p2) FROM ("
            f"  SELECT created_ms / {QUARTER_MS} * {QUARTER_MS} AS quarter_ms,"
            f"    sum({SHOWN_SQL}) AS shown, sum(is_tumour AND {SHOWN_SQL}) AS tumour,"
            "    sum(gate = 'needs_review') AS flagged, sum(gate = 'rejected') AS rejected,"
            f"    sum({REVIEWED_SQL}) AS reviewed, sum({REVIEWED_SQL} AND final_label = label) AS agreed,"
            f"    sum(CASE WHEN {SHOWN_SQL} THEN tumour_probability ELSE 0 END) AS p,"
            f"    sum(CASE WHEN {SHOWN_SQL} THEN tumour_probability * tumour_probability ELSE 0 END) AS p2"
            f"  FROM scans WHERE {where} GROUP BY created_ms / {QUARTER_MS}"
            ") GROUP BY day ORDER BY day",
            [*offset_params, *params],
        )
        return [
            DayQuality(date(1970, 1, 1) + timedelta(days=int(d)), int(a), int(b), int(c), int(e), int(f), int(g),
                       float(p), float(q))
            for d, a, b, c, e, f, g, p, q in rows
        ]  # fmt: skip

    def confusion(self, filters: Filters) -> dict[tuple[str, str], int]:
        """Reviewed, shown results by (the model's verdict, the final label)."""
        where, params = self._scope(filters)
        rows = self._query(
            f"SELECT label, final_label, count(*) FROM scans WHERE {where} AND {REVIEWED_SQL} "
            "GROUP BY label, final_label",
            params,
        )
        return {(label, final): int(n) for label, final, n in rows}

    def turnaround_hours(self, filters: Filters, cap: int = 720) -> dict[int, int]:
        """Reviewed, shown results by whole hours from the result to its first review (capped at ``cap``)."""
        where, params = self._scope(filters)
        rows = self._query(
            f"SELECT min(CAST((first_reviewed_ms - created_ms) / 3600000 AS INTEGER), {cap}), count(*) FROM scans "
            f"WHERE {where} AND {REVIEWED_SQL} AND first_reviewed_ms IS NOT NULL GROUP BY 1",
            params,
        )
        return {max(0, int(hours)): int(n) for hours, n in rows}
