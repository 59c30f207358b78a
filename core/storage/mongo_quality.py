"""The MongoDB store's monitoring aggregates (a mixin of :class:`core.storage.mongo.MongoStore`), the same
contract as :mod:`core.storage.sqlite_quality`, as aggregation pipelines (the per-study ones included: studies per
day and the lesion volumes of tumour studies per period)."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta
from typing import Any

from core.domain.results import LESION_QUANTILES, TURNAROUND_CAP_H, DayCount, DayQuality, Filters, LesionPeriod
from core.domain.times import as_utc, from_ms, period_bounds, to_ms
from core.storage.protocol import day_rows, lesion_period, quantile_ranks

SHOWN = {"$ne": ["$gate", "rejected"]}
MAX_LISTED_STUDIES = 50_000  # study references (64 hex characters) a narrow-range board lists: about 4 MB
REVIEWED = {"$and": [{"$gt": [{"$ifNull": ["$review_count", 0]}, 0]}, SHOWN]}


def _count(condition: Any) -> dict[str, Any]:
    return {"$sum": {"$cond": [condition, 1, 0]}}


class MongoQuality:
    """Requires ``_aggregate()`` and ``_match()`` from the store."""

    _aggregate: Any
    _match: Any
    _local_day: Any
    _collection: Any
    _errors: Any
    summary: Any

    def _studies_in_range(self, filters: Filters) -> dict[str, Any]:
        """The series of the studies with a series in ``filters``' time range, as SQLite's
        :func:`core.storage.sqlite_quality.studies_in_range` keeps them (and for as narrow a range only)."""
        if filters.start is None:
            return {}
        with self._errors():
            ends = [self._collection.find_one({}, {"created_at": 1}, sort=[("created_at", way)]) for way in (1, -1)]
        if ends[0] is None or ends[1] is None:
            return {}
        first, last = (to_ms(as_utc(end["created_at"])) for end in ends)
        start, end = to_ms(filters.start), to_ms(filters.end) if filters.end is not None else last
        if (min(end, last) - max(start, first)) * 4 > last - first:
            return {}
        within = {"$gte": filters.start} | ({"$lt": filters.end} if filters.end is not None else {})
        with self._errors():
            studies = self._collection.distinct("study_ref", {"kind": "series", "created_at": within})
        if len(studies) > MAX_LISTED_STUDIES:  # a list that long nears MongoDB's 16 MB command: the full grouping
            return {}
        return {"$or": [{"study_ref": {"$in": [s for s in studies if s]}}, {"study_ref": None, "created_at": within}]}

    def _scope(self, filters: Filters) -> dict[str, Any]:
        """Dates and model versions only: every verdict and gate decision counts."""
        return self._match(replace(filters, labels=(), gates=()))

    def daily_quality(self, filters: Filters, timezone: str) -> list[DayQuality]:
        match = self._scope(filters)
        span = self._aggregate(
            [
                {"$match": match},
                {"$group": {"_id": None, "first": {"$min": "$created_at"}, "last": {"$max": "$created_at"}}},
            ]
        )
        if not span or span[0]["first"] is None:  # nothing in range (mongomock answers one empty group)
            return []
        day = self._local_day("$created_at", timezone, to_ms(span[0]["first"]), to_ms(span[0]["last"]))
        shown_p = {"$cond": [SHOWN, "$tumour_probability", 0]}
        rows = self._aggregate(
            [
                {"$match": match},
                {
                    "$group": {
                        "_id": day,  # the dashboard's own local day: one definition
                        "shown": _count(SHOWN),
                        "tumour": _count({"$and": [SHOWN, "$is_tumour"]}),
                        "flagged": _count({"$eq": ["$gate", "needs_review"]}),
                        "rejected": _count({"$eq": ["$gate", "rejected"]}),
                        "reviewed": _count(REVIEWED),
                        "agreed": _count({"$and": [REVIEWED, {"$eq": ["$final_label", "$label"]}]}),
                        "p": {"$sum": shown_p},
                        "p2": {"$sum": {"$multiply": [shown_p, shown_p]}},
                    }
                },
                {"$sort": {"_id": 1}},
            ]
        )
        return [
            DayQuality(
                date(1970, 1, 1) + timedelta(days=int(r["_id"])),
                int(r["shown"]),
                int(r["tumour"]),
                int(r["flagged"]),
                int(r["rejected"]),
                int(r["reviewed"]),
                int(r["agreed"]),
                float(r["p"]),
                float(r["p2"]),
            )
            for r in rows
        ]

    def confusion(self, filters: Filters) -> dict[tuple[str, str], int]:
        rows = self._aggregate(
            [
                {"$match": self._scope(filters)},
                {"$match": {"$expr": REVIEWED}},
                {"$group": {"_id": {"label": "$label", "final": "$final_label"}, "n": {"$sum": 1}}},
            ]
        )
        return {(r["_id"]["label"], r["_id"]["final"]): int(r["n"]) for r in rows}

    def turnaround_hours(self, filters: Filters) -> dict[int, int]:
        hours = {  # capped as the SQLite store's roll-up keeps them
            "$min": [
                {"$floor": {"$divide": [{"$subtract": ["$first_reviewed_at", "$created_at"]}, 3_600_000]}},
                TURNAROUND_CAP_H,
            ]
        }
        rows = self._aggregate(
            [
                {"$match": self._scope(filters)},
                {"$match": {"$expr": REVIEWED, "first_reviewed_at": {"$ne": None}}},
                {"$group": {"_id": hours, "n": {"$sum": 1}}},
            ]
        )
        merged: dict[int, int] = {}
        for row in rows:  # a review stamped before its result (clock skew) counts as hour 0
            hour = max(0, int(row["_id"]))
            merged[hour] = merged.get(hour, 0) + int(row["n"])
        return merged

    def daily_studies(self, filters: Filters, timezone: str) -> list[DayCount]:
        """Studies whose first series falls in the range, per local day of that first series, once per model version
        (see SQLite)."""
        series = replace(filters, kinds=("series",))
        summary = self.summary(series)
        if summary.first is None or summary.last is None:
            return []
        day = self._local_day("$first", timezone, to_ms(summary.first), to_ms(summary.last))
        bounds = {op: when for op, when in (("$gte", filters.start), ("$lt", filters.end)) if when is not None}
        rows = self._aggregate(
            [
                {
                    "$match": {
                        "$and": [self._match(replace(series, start=None, end=None)), self._studies_in_range(series)]
                    }
                },
                {
                    "$group": {
                        "_id": {"study": {"$ifNull": ["$study_ref", "$_id"]}, "version": "$model_version"},
                        "first": {"$min": "$created_at"},
                        "tumour": {"$max": {"$cond": ["$is_tumour", 1, 0]}},
                        "unread": {"$max": {"$ifNull": ["$geometry.study_unread", 0]}},
                    }
                },
                # the study rule: no verdict (not counted) without a tumour series and with a series unread
                {"$match": {"$or": [{"tumour": 1}, {"unread": 0}]} | ({"first": bounds} if bounds else {})},
                {"$group": {"_id": day, "n": {"$sum": 1}, "tumour": {"$sum": "$tumour"}}},
                {"$sort": {"_id": 1}},
            ]
        )
        return day_rows([(row["_id"], row["n"], row["tumour"]) for row in rows])

    def lesion_volumes(self, filters: Filters, timezone: str, period: str) -> list[LesionPeriod]:
        """Tumour studies with a lesion volume per local period of their first series, with the quantiles of their
        volumes (see SQLite): grouped per study before the range applies, placed in their period, sorted and picked
        at the quantiles' ranks in the pipeline."""
        bounds = {op: when for op, when in (("$gte", filters.start), ("$lt", filters.end)) if when is not None}
        tumour_ml = {"$cond": [{"$and": ["$is_tumour", {"$ne": ["$lesion_ml", None]}]}, "$lesion_ml", None]}
        per_study = [
            {
                "$match": {
                    "$and": [
                        self._match(replace(filters, kinds=("series",), start=None, end=None)),
                        self._studies_in_range(filters),
                    ]
                }
            },
            {
                "$group": {
                    "_id": {"study": {"$ifNull": ["$study_ref", "$_id"]}, "version": "$model_version"},
                    "at": {"$min": "$created_at"},
                    "ml": {"$avg": tumour_ml},  # nulls are left out of the mean
                }
            },
            {"$match": {"ml": {"$ne": None}} | ({"at": bounds} if bounds else {})},
        ]
        span = self._aggregate(
            [*per_study, {"$group": {"_id": None, "first": {"$min": "$at"}, "last": {"$max": "$at"}}}]
        )
        if not span or span[0]["first"] is None:  # no study (mongomock groups nothing into one empty row)
            return []
        bounds = period_bounds(to_ms(as_utc(span[0]["first"])), to_ms(as_utc(span[0]["last"])), timezone, period)
        branches = [{"case": {"$lt": ["$at", from_ms(ms)]}, "then": k} for k, (_, ms) in enumerate(bounds[1:])]
        place: Any = {"$switch": {"branches": branches, "default": len(bounds) - 1}} if branches else 0
        picked = {  # the values at the two ranks around each quantile: (n - 1) * q rounded down and up
            f"{rounding[1:]}{k}": {
                "$arrayElemAt": ["$values", {rounding: {"$multiply": [{"$subtract": ["$n", 1]}, q]}}]
            }
            for k, q in enumerate(LESION_QUANTILES)
            for rounding in ("$floor", "$ceil")
        }
        rows = self._aggregate(
            [
                *per_study,
                {"$addFields": {"period": place}},
                {"$sort": {"ml": 1}},  # $push below keeps this order: each period's volumes, ascending
                {"$group": {"_id": "$period", "n": {"$sum": 1}, "values": {"$push": "$ml"}}},
                {"$project": {"n": 1, **picked}},
                {"$sort": {"_id": 1}},
            ]
        )
        periods = []
        for row in rows:
            n, at_rank = int(row["n"]), {}
            for k, q in enumerate(LESION_QUANTILES):
                low, high, _ = quantile_ranks(n, q)
                at_rank[low], at_rank[high] = float(row[f"floor{k}"]), float(row[f"ceil{k}"])
            periods.append(lesion_period(bounds[int(row["_id"])][0], n, at_rank))
        return periods
