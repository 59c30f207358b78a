"""The embedded store: one SQLite file (standard library), WAL journal, ``synchronous=FULL``, busy timeout.

Safe to share between threads: each thread has its own connection. The file is created with mode 0600. Before
each use a connection checks that its file is still the one it opened: a file replaced while the app runs (a backup
restored) is reconnected to and migrated; a deleted one is refused (``StoreVanished``) until it is restored, never
created again empty. :meth:`SQLiteStore.ping` checks what a save needs (the table, a write lock).

Schema versions live in ``PRAGMA user_version``; :mod:`core.storage.migrations` upgrades an older file in place
(after a backup copy beside it) the first time it is opened.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from core.domain.results import (
    FIELDS,
    DayCount,
    Field,
    Filters,
    Record,
    Section,
    WorklistQuery,
    from_row,
    to_row,
)
from core.domain.times import from_ms, to_ms
from core.errors import InvalidRecord
from core.storage.protocol import EVERYTHING, check_patient_ref, check_series, day_rows
from core.storage.sqlite_aggregates import SQLiteAggregates, day_sql
from core.storage.sqlite_people import SQLitePeople
from core.storage.sqlite_quality import SQLiteQuality, studies_in_range

STUDY_WITH_VERDICT = "(tumour = 1 OR unread = 0)"  # the study rule (StudyOutcome.verdict): no "no tumour" unread
_COLUMNS = ", ".join(spec.sql_column for spec in FIELDS)  # the results table's columns, from the one field table
_TO_SQL = {"time": to_ms, "bool": int, "scores": json.dumps, "map": json.dumps, "box": json.dumps}
_FROM_SQL = {"time": from_ms, "scores": json.loads, "map": json.loads, "box": json.loads}


class SQLiteStore(SQLiteAggregates, SQLitePeople, SQLiteQuality):
    """The embedded store: one SQLite file, WAL journal, 5 s busy timeout, one connection per thread."""

    def describe(self) -> str:
        return f"SQLite file {self.path}"

    def schema_version(self) -> int:
        with self._errors():
            return int(self._connection().execute("PRAGMA user_version").fetchone()[0])

    def ping(self) -> None:
        """Succeeds only when a save would: the file opens, the table exists, and a real write commits (a write
        lock alone passed on a read-only or full disk while saves failed)."""
        with self._errors(), self._transaction() as connection:
            connection.execute("SELECT 1 FROM scans LIMIT 0").fetchall()
            connection.execute(
                "CREATE TABLE IF NOT EXISTS health (id INTEGER PRIMARY KEY CHECK (id = 1), at_ms INTEGER)"
            )
            connection.execute(
                "INSERT INTO health (id, at_ms) VALUES (1, ?) ON CONFLICT(id) DO UPDATE SET at_ms = excluded.at_ms",
                (int(time.time() * 1000),),
            )

    def key_check(self, name: str, digest: str, replace: bool = False) -> str:
        """The fingerprint of key ``name`` this database's data was made with: ``digest`` recorded when it has
        none yet, or with ``replace`` (a table of its own, made when first needed, as ``health`` is: no schema
        version)."""
        with self._errors(), self._transaction() as connection:
            connection.execute("CREATE TABLE IF NOT EXISTS key_checks (name TEXT PRIMARY KEY, digest TEXT NOT NULL)")
            connection.execute(
                f"INSERT OR {'REPLACE' if replace else 'IGNORE'} INTO key_checks (name, digest) VALUES (?, ?)",
                (name, digest),
            )
            return str(connection.execute("SELECT digest FROM key_checks WHERE name = ?", (name,)).fetchone()[0])

    # --- writes -------------------------------------------------------------------------------------------

    @staticmethod
    def _values(record: Record) -> tuple[Any, ...]:
        row = to_row(record)
        return tuple(_convert(_TO_SQL, spec, row[spec.name]) for spec in FIELDS)

    _INSERT = f"INSERT INTO scans ({_COLUMNS}) VALUES ({', '.join('?' * len(FIELDS))}) ON CONFLICT(id) DO NOTHING"

    def add(self, record: Record) -> bool:
        """Insert once: False when a record with this identity exists. A row the schema refuses raises
        :class:`InvalidRecord` (``ON CONFLICT(id)`` ignores only the identity, never a broken row)."""
        record.validate()
        with self._errors():
            cursor = self._connection().execute(self._INSERT, self._values(record))
        return cursor.rowcount == 1

    def add_many(self, records: Sequence[Record]) -> int:
        """Bulk insert in one transaction (back-fills, benchmarks); returns how many were new."""
        with self._errors(), self._transaction("DEFERRED") as connection:  # rowcount: rows inserted, not the
            rows = [self._values(record.validate()) for record in records]  # roll-up triggers' writes (counted 16x)
            return max(connection.executemany(self._INSERT, rows).rowcount, 0)

    def add_series(self, record: Record, sections: Sequence[Section]) -> bool:
        """A series and its sections in one transaction: both or neither. False when it was already saved."""
        check_series(record, sections)
        rows = [
            (record.id, s.index, s.position, s.tumour_probability, s.label, s.skipped)
            for s in (section.validate() for section in sections)
        ]
        record.validate()
        with self._errors(), self._transaction() as connection:
            added = connection.execute(self._INSERT, self._values(record)).rowcount == 1
            if added:
                connection.executemany(
                    "INSERT INTO sections (record_id, idx, position, tumour_probability, label, skipped) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
        return added

    def sections_of(self, record_id: str) -> list[Section]:
        rows = self._query(
            "SELECT idx, position, tumour_probability, label, skipped FROM sections WHERE record_id = ? ORDER BY idx",
            (record_id,),
        )
        return [Section(int(i), float(p), None if t is None else float(t), lab, sk) for i, p, t, lab, sk in rows]

    def daily_studies(self, filters: Filters, timezone: str) -> list[DayCount]:
        """Studies whose first series falls in ``filters``' time range (the other filters apply to every series),
        per local day of that first series in ``timezone``: how many, and how many with any series called tumour.
        A study's series are grouped before the range applies, so a study is counted once, on its own first day,
        with one verdict (the study rule: tumour when a series is; none, and so not counted, when no series is and
        a series of it could not be read), whatever range is asked (grouping the series in range counted a study
        saved across midnight on both days' boards). Grouped in SQL through the covering partial index
        ``scans_studies`` (its condition is written as a literal so that the planner can use it), which keeps
        grouping every series cheap. A study read by two model versions counts once for each, as a single scan
        does (their verdicts were merged: tumour when either model said so, a scan re-read counted twice)."""
        span = self._time_range(filters)  # dates only
        if span is None:
            return []
        day, day_params = day_sql(timezone, *span, instant="first_ms")
        where, params = self._where(replace(filters, kinds=(), start=None, end=None))  # every series of a study
        series = f"{where} AND kind = 'series'" if where else " WHERE kind = 'series'"
        touching, touching_params = studies_in_range(filters, self._query)
        studies = (
            f"SELECT min(created_ms) AS first_ms, max(is_tumour) AS tumour, max(COALESCE(study_unread, 0)) AS unread "
            f"FROM scans{series}{touching} GROUP BY COALESCE(study_ref, id), model_version"
        )
        params = [*params, *touching_params]
        bounds = (("first_ms >= ?", filters.start), ("first_ms < ?", filters.end))
        known = [(sql, to_ms(when)) for sql, when in bounds if when is not None]
        within = " WHERE " + " AND ".join([STUDY_WITH_VERDICT, *(sql for sql, _ in known)])
        rows = self._query(
            f"SELECT {day} AS day, count(*), sum(tumour) FROM ({studies}){within} GROUP BY day ORDER BY day",
            [*day_params, *params, *(ms for _, ms in known)],
        )
        return day_rows([tuple(row) for row in rows])

    def set_patient_ref(self, record_id: str, patient_ref: str | None, was: str | None) -> bool:
        """Set or correct the pseudonymous reference of a saved result from ``was`` (a compare-and-set); False when
        it already had this one or had another than ``was`` (another session linked it meanwhile)."""
        check_patient_ref(patient_ref)
        with self._errors():
            cursor = self._connection().execute(
                "UPDATE scans SET patient_ref = ? WHERE id = ? AND patient_ref IS ? AND patient_ref IS NOT ?",
                (patient_ref, record_id, was, patient_ref),
            )
        if cursor.rowcount == 0 and self.get(record_id) is None:
            raise InvalidRecord("No such record.")
        return cursor.rowcount == 1

    # --- reads --------------------------------------------------------------------------------------------

    @staticmethod
    def _decode(row: sqlite3.Row) -> Record:
        return from_row({spec.name: _convert(_FROM_SQL, spec, row[spec.sql_column]) for spec in FIELDS})

    def get(self, record_id: str) -> Record | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM scans WHERE id = ?", (record_id,))
        return self._decode(rows[0]) if rows else None

    def recent(self, limit: int, filters: Filters = EVERYTHING) -> list[Record]:
        where, params = self._where(filters)
        rows = self._query(
            f"SELECT {_COLUMNS} FROM scans{where} ORDER BY created_ms DESC LIMIT ?", [*params, max(limit, 0)]
        )
        return [self._decode(row) for row in rows]

    def unread_image_keys(self) -> set[str]:
        """The image keys of results nobody has reviewed yet (the purge keeps them: a reader still has to see them)."""
        rows = self._query("SELECT DISTINCT image_key FROM scans WHERE review_count = 0 AND image_key IS NOT NULL")
        return {row["image_key"] for row in rows}

    def of_patient(self, patient_ref: str, limit: int) -> list[Record]:
        """One patient's results, newest first (the ``scans_by_patient`` index)."""
        rows = self._query(
            f"SELECT {_COLUMNS} FROM scans WHERE patient_ref = ? ORDER BY created_ms DESC LIMIT ?",
            (patient_ref, max(limit, 0)),  # none or fewer: no result, as on MongoDB (SQLite's LIMIT -1 is "all")
        )
        return [self._decode(row) for row in rows]

    def worklist(self, query: WorklistQuery, limit: int = 200) -> list[Record]:
        """Results to read: not yet reviewed first, then flagged, then rejected, newest first within each. One
        small query per (reviewed, gate) group, in that order, each served by the ``scans_unreviewed`` index."""
        clauses, params = [], []
        if query.labels:
            clauses.append(f"label IN ({', '.join('?' * len(query.labels))})")
            params += list(query.labels)
        if query.patient_ref is not None:
            clauses.append("patient_ref = ?")
            params.append(query.patient_ref)
        if query.since is not None:
            clauses.append("created_ms >= ?")
            params.append(to_ms(query.since))
        if query.before is not None:
            clauses.append("created_ms < ?")
            params.append(to_ms(query.before))
        if query.disagreements:
            clauses.append("final_label IS NOT NULL AND final_label != label")
        extra = "".join(f" AND {clause}" for clause in clauses)
        reviewed = [False, True] if query.reviewed is None else [query.reviewed]
        gates = query.gates_listed()
        ids: list[str] = []
        for done in reviewed:
            for gate in gates:
                if len(ids) >= limit:
                    break
                rows = self._query(
                    f"SELECT id FROM scans WHERE review_count {'>' if done else '='} 0 AND gate = ?{extra} "
                    "ORDER BY created_ms DESC LIMIT ?",
                    [gate, *params, limit - len(ids)],
                )
                ids += [row[0] for row in rows]
        if not ids:
            return []
        rows = self._query(f"SELECT {_COLUMNS} FROM scans WHERE id IN ({', '.join('?' * len(ids))})", ids)
        by_id = {row["id"]: self._decode(row) for row in rows}
        return [by_id[i] for i in ids]

    def model_versions(self) -> list[str]:
        return [row[0] for row in self._query("SELECT DISTINCT model_version FROM scans ORDER BY model_version")]


def _convert(converters: dict[str, Any], spec: Field, value: Any) -> Any:
    """A value in or out of its SQLite column: times as integer ms, maps and boxes as JSON, booleans as 0/1."""
    return value if value is None or spec.kind not in converters else converters[spec.kind](value)
