"""The SQLite store's review aggregates (a mixin of :class:`core.storage.sqlite.SQLiteStore`): the confusion of
verdicts against final labels, review turnaround and the confidence histogram, summed from the whole-day roll-ups
(``confusion_day``, ``turnaround_day``, ``confidence_day``) and from the results themselves on the partial days at
either end of the range; the lesion volumes of tumour studies per period, from the results themselves. The per-day
quality counts come from :mod:`core.storage.sqlite_aggregates`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from core.domain.results import LESION_QUANTILES, TURNAROUND_CAP_H, Filters, LesionPeriod
from core.domain.times import period_bounds, to_ms
from core.storage.protocol import EVERYTHING, HISTOGRAM_BINS, lesion_period
from core.storage.sqlite_aggregates import REVIEWED_SQL, where_sql, whole_days_and_edges
from core.storage.sqlite_base import SQLiteBase


class SQLiteQuality(SQLiteBase):
    """What a supervisor monitors: agreement, confusion, turnaround, drift."""

    @staticmethod
    def _raw_where(condition: str) -> Any:
        """Conditions on the results (``filters`` and ``condition``) for the partial days of a range."""

        def where(filters: Filters) -> tuple[str, list[Any]]:
            clause, params = where_sql(filters)
            return f"{clause} AND {condition}" if clause else f" WHERE {condition}", params

        return where

    def confusion(self, filters: Filters) -> dict[tuple[str, str], int]:
        """Reviewed, shown results by (the model's verdict, the final label); dates, versions and kinds filter."""
        rows, params = whole_days_and_edges(
            replace(filters, labels=(), gates=()),
            "label, final_label, n",
            "confusion_day",
            "label, COALESCE(final_label, '') AS final_label, 1 AS n",
            "scans",
            self._raw_where(REVIEWED_SQL),
        )
        totals = self._query(f"SELECT label, final_label, sum(n) FROM ({rows}) GROUP BY 1, 2 HAVING sum(n) > 0", params)
        return {(label, final or None): int(n) for label, final, n in totals}

    def turnaround_hours(self, filters: Filters) -> dict[int, int]:
        """Reviewed, shown results by whole hours from the result to its first review (capped at
        :data:`TURNAROUND_CAP_H`, as the roll-up is); dates, versions and kinds filter."""
        cap = TURNAROUND_CAP_H
        hours = f"min(CAST((first_reviewed_ms - created_ms) / 3600000 AS INTEGER), {cap})"
        rows, params = whole_days_and_edges(
            replace(filters, labels=(), gates=()),
            f"min(hours, {cap}) AS hours, n",
            "turnaround_day",
            f"{hours} AS hours, 1 AS n",
            "scans",
            self._raw_where(f"{REVIEWED_SQL} AND first_reviewed_ms IS NOT NULL"),
        )
        totals = self._query(f"SELECT hours, sum(n) FROM ({rows}) GROUP BY 1 HAVING sum(n) > 0", params)
        merged: dict[int, int] = {}
        for hour, n in totals:  # a review stamped before its result (clock skew) counts as hour 0
            hour = max(0, int(hour))
            merged[hour] = merged.get(hour, 0) + int(n)
        return merged

    def confidence_histogram(self, filters: Filters = EVERYTHING) -> list[int]:
        """Counts of the decision's confidence in :data:`HISTOGRAM_BINS` equal bins over [0, 1]."""
        bins = HISTOGRAM_BINS
        rows, params = whole_days_and_edges(
            filters,
            "twentieth, n",
            "confidence_day",
            "CAST(confidence * 20 AS INTEGER) AS twentieth, 1 AS n",
            "scans",
            where_sql,
        )
        counts = [0] * bins
        for twentieth, count in self._query(f"SELECT twentieth, sum(n) FROM ({rows}) GROUP BY 1", params):
            counts[min(int(twentieth), HISTOGRAM_BINS - 1) * bins // HISTOGRAM_BINS] += int(count)
        return counts

    def lesion_volumes(self, filters: Filters, timezone: str, period: str) -> list[LesionPeriod]:
        """Tumour studies with a lesion volume per local period (day, week, month) of their first series, as the
        studies per day count them (a study's series grouped before the range applies), with the quantiles of their
        volumes (the mean of its tumour series' volumes; per model version, as studies are counted, never a blend of
        two models' measures): grouped, ranked (window functions) and picked in SQL; only
        the values at the quantiles' ranks leave the database. Periods without such a study are not listed."""
        where, params = where_sql(replace(filters, kinds=(), start=None, end=None))
        # the kind written out, as the studies per day write it: bound as a parameter ("kind IN (?)") it kept SQLite
        # off the partial index of series (WHERE kind = 'series'), and both statements read every result
        where = f"{where} AND kind = 'series'" if where else " WHERE kind = 'series'"
        touching, touching_params = studies_in_range(filters, self._query)
        where, params = where + touching, [*params, *touching_params]
        bounds = (("at_ms >= ?", filters.start), ("at_ms < ?", filters.end))
        known = [(sql, to_ms(when)) for sql, when in bounds if when is not None]
        params = [*params, *(ms for _, ms in known)]
        studies = (
            f"SELECT min(created_ms) AS at_ms, avg(CASE WHEN is_tumour = 1 THEN lesion_ml END) AS ml FROM scans{where} "
            f"GROUP BY COALESCE(study_ref, id), model_version "  # a study read by two models: two, as it is counted
            f"HAVING {' AND '.join(['ml IS NOT NULL', *(sql for sql, _ in known)])}"
        )
        first, last = self._query(f"SELECT min(at_ms), max(at_ms) FROM ({studies})", params)[0]
        if first is None:
            return []
        bounds = period_bounds(int(first), int(last), timezone, period)
        cases = " ".join(f"WHEN at_ms < {int(ms)} THEN {k}" for k, (_, ms) in enumerate(bounds[1:]))
        place = f"CASE {cases} ELSE {len(bounds) - 1} END" if cases else "0"
        position = [f"(n - 1) * {q!r}" for q in LESION_QUANTILES]
        ranks = [f"CAST({p} AS INTEGER)" for p in position]
        ranks += [f"CAST({p} AS INTEGER) + ({p} > CAST({p} AS INTEGER))" for p in position]
        rows = self._query(
            f"SELECT period, n, i, ml FROM (SELECT period, ml, row_number() OVER (PARTITION BY period ORDER BY ml) - 1 "
            f"AS i, count(*) OVER (PARTITION BY period) AS n FROM (SELECT {place} AS period, ml FROM ({studies}))) "
            f"WHERE i IN ({', '.join(ranks)}) ORDER BY period, i",
            params,
        )
        found: dict[int, tuple[int, dict[int, float]]] = {}
        for k, n, i, ml in rows:
            found.setdefault(int(k), (int(n), {}))[1][int(i)] = float(ml)
        return [lesion_period(bounds[k][0], n, at_rank) for k, (n, at_rank) in sorted(found.items())]


def studies_in_range(filters: Filters, query: Callable[..., list[Any]]) -> tuple[str, list[Any]]:
    """A condition keeping the series of the studies with a series in ``filters``' time range (a study whose first
    series is in it is among them), and its parameters. Every series of those studies is grouped, and no other:
    grouping every series ever saved made each board's cost grow with the whole history, whatever its range. None
    for a range over a quarter of the history or more, which the restriction makes slower, not faster."""
    if filters.start is None:
        return "", []
    # the time index's two ends, each found in one step (together in one SELECT, SQLite read the whole index)
    first, last = query("SELECT (SELECT min(created_ms) FROM scans), (SELECT max(created_ms) FROM scans)")[0]
    start, end = to_ms(filters.start), to_ms(filters.end) if filters.end is not None else None
    if first is None or (min(end or last, last) - max(start, first)) * 4 > last - first:
        return "", []
    chosen = "SELECT COALESCE(study_ref, id) FROM scans WHERE kind = 'series' AND created_ms >= ?"
    if end is None:
        return f" AND COALESCE(study_ref, id) IN ({chosen})", [start]
    return f" AND COALESCE(study_ref, id) IN ({chosen} AND created_ms < ?)", [start, end]
