"""The SQLite store's review aggregates (a mixin of :class:`core.storage.sqlite.SQLiteStore`): the confusion of
verdicts against final labels and review turnaround, computed by SQL over a covering index (``scans_quality``).
The per-day quality counts come from the roll-ups (:mod:`core.storage.sqlite_aggregates`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from core.storage.records import Filters
from core.storage.sqlite_aggregates import where_sql

SHOWN_SQL = "gate != 'rejected'"
REVIEWED_SQL = f"review_count > 0 AND {SHOWN_SQL}"


class SQLiteQuality:
    """Requires ``_query()`` from the store."""

    _query: Any

    @staticmethod
    def _scope(filters: Filters) -> tuple[str, list[Any]]:
        """Dates and model versions only (every verdict and gate decision counts): a condition and its parameters."""
        where, params = where_sql(replace(filters, labels=(), gates=()))
        return where.removeprefix(" WHERE ") or "1", params

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
