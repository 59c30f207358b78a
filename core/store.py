"""Results storage: one small interface, two implementations with the same behaviour.

- :class:`SQLiteStore`: the embedded default (standard library; WAL, busy timeout, synchronous=FULL), a file in
  the data directory. Safe to share between threads: each thread gets its own connection.
- :class:`MongoStore`: for several app replicas or sites, through pymongo (``w="majority"``, 2 s server selection,
  3 s operation timeout, indexes for every dashboard query, ``$jsonSchema`` validator).

Every aggregate runs inside the database (SQL ``GROUP BY``, aggregation pipelines). Calendar days in a chosen time
zone are computed in the database with the zone's UTC offsets over the queried range (daylight-saving transitions
included), so both stores bucket identically; weeks and months are roll-ups of those day rows (:mod:`core.stats`).

Failures raise :class:`StoreUnavailable` (unreachable, locked: retry later) or :class:`StoreError` (corrupt file,
refused write) with messages that never contain credentials.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from core.errors import InvalidRecord, StoreError, StoreUnavailable
from core.records import REVIEW_VERDICTS, DayCount, Filters, ModelRow, Record, Summary

DAY_MS = 86_400_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HISTOGRAM_BINS = 20
EVERYTHING = Filters()


class Store(Protocol):
    """What the app needs from a database. ``add`` returns False when the record already existed."""

    def add(self, record: Record) -> bool: ...
    def get(self, record_id: str) -> Record | None: ...
    def recent(self, limit: int, filters: Filters = ...) -> list[Record]: ...
    def summary(self, filters: Filters = ...) -> Summary: ...
    def daily_counts(self, filters: Filters, timezone: str) -> list[DayCount]: ...
    def confidence_histogram(self, filters: Filters = ..., bins: int = ...) -> list[int]: ...
    def by_model(self, filters: Filters = ...) -> list[ModelRow]: ...
    def model_versions(self) -> list[str]: ...
    def review(self, record_id: str, reviewer: str, verdict: str, final_label: str | None, note: str) -> None: ...
    def describe(self) -> str: ...
    def ping(self) -> None: ...


# --- shared helpers -----------------------------------------------------------------------------------------


def to_ms(moment: datetime) -> int:
    return round((moment - EPOCH).total_seconds() * 1000)


def from_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def utc_offset_segments(timezone: str, start_ms: int, end_ms: int) -> list[tuple[int, int]]:
    """[(from_ms, offset_ms), ...]: the zone's UTC offset from each instant on, covering [start_ms, end_ms]."""
    zone = ZoneInfo(timezone)

    def offset(ms: int) -> int:
        return int(from_ms(ms).astimezone(zone).utcoffset().total_seconds() * 1000)

    segments = [(start_ms, offset(start_ms))]
    step = 6 * 3_600_000  # zone transitions are at least months apart; 6 h steps never straddle two
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
    return segments


def record_to_row(record: Record) -> dict[str, Any]:
    """The flat form both stores keep (dates as UTC datetimes; maps as dicts)."""
    return {
        "id": record.id,
        "created_at": record.created_at,
        "patient_ref": record.patient_ref,
        "uploader": record.uploader,
        "image_sha256": record.image_sha256,
        "image_format": record.image_format,
        "image_width": record.image_width,
        "image_height": record.image_height,
        "image_bytes": record.image_bytes,
        "model_name": record.model_name,
        "model_version": record.model_version,
        "label": record.label,
        "is_tumour": bool(record.is_tumour),
        "tumour_probability": float(record.tumour_probability),
        "confidence": record.confidence,
        "probabilities": {k: float(v) for k, v in record.probabilities.items()},
        "roi": [int(v) for v in record.roi],
        "timings_ms": {k: float(v) for k, v in record.timings_ms.items()},
        "gate": record.gate,
        "gate_score": record.gate_score,
        "reviewer": record.reviewer,
        "review_verdict": record.review_verdict,
        "final_label": record.final_label,
        "review_note": record.review_note,
        "reviewed_at": record.reviewed_at,
    }


def row_to_record(row: Mapping[str, Any]) -> Record:
    return Record(
        id=row["id"],
        created_at=_as_utc(row["created_at"]),
        patient_ref=row.get("patient_ref"),
        uploader=row.get("uploader"),
        image_sha256=row["image_sha256"],
        image_format=row["image_format"],
        image_width=int(row["image_width"]),
        image_height=int(row["image_height"]),
        image_bytes=int(row["image_bytes"]),
        model_name=row["model_name"],
        model_version=row["model_version"],
        label=row["label"],
        probabilities=dict(row["probabilities"]),
        tumour_probability=float(row["tumour_probability"]),
        is_tumour=bool(row["is_tumour"]),
        roi=tuple(int(v) for v in row["roi"]),  # type: ignore[arg-type]
        timings_ms=dict(row.get("timings_ms") or {}),
        gate=row.get("gate") or "accepted",
        gate_score=row.get("gate_score"),
        reviewer=row.get("reviewer"),
        review_verdict=row.get("review_verdict"),
        final_label=row.get("final_label"),
        review_note=row.get("review_note"),
        reviewed_at=_as_utc(row["reviewed_at"]) if row.get("reviewed_at") else None,
    )


def _as_utc(value: datetime | int) -> datetime:
    if isinstance(value, int):
        return from_ms(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_SUMMARY_KEYS = ("label", "gate", "n", "tumour", "confidence", "first", "last")


def _summary(rows: Sequence[Mapping[str, Any]]) -> Summary:
    """Fold (label, gate) group rows into a :class:`Summary`; ``first``/``last`` are ms or datetimes."""
    total = sum(row["n"] for row in rows)
    per_class: dict[str, int] = {}
    per_gate: dict[str, int] = {}
    for row in rows:
        per_class[row["label"]] = per_class.get(row["label"], 0) + row["n"]
        per_gate[row["gate"]] = per_gate.get(row["gate"], 0) + row["n"]
    return Summary(
        total=total,
        tumour=sum(row["tumour"] for row in rows),
        per_class=per_class,
        per_gate=per_gate,
        mean_confidence=sum(row["confidence"] for row in rows) / total if total else None,
        first=_as_utc(min(row["first"] for row in rows)) if rows else None,
        last=_as_utc(max(row["last"] for row in rows)) if rows else None,
    )


def _days(rows: Sequence[tuple[int, int, int]]) -> list[DayCount]:
    return [DayCount(day=date(1970, 1, 1) + timedelta(days=int(d)), total=int(n), tumour=int(t)) for d, n, t in rows]


# --- SQLite -------------------------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scans (
    id TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL,
    patient_ref TEXT,
    uploader TEXT,
    image_sha256 TEXT NOT NULL CHECK (length(image_sha256) = 64),
    image_format TEXT NOT NULL CHECK (image_format IN ('png', 'jpeg', 'dicom')),
    image_width INTEGER NOT NULL CHECK (image_width > 0),
    image_height INTEGER NOT NULL CHECK (image_height > 0),
    image_bytes INTEGER NOT NULL CHECK (image_bytes > 0),
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    label TEXT NOT NULL,
    is_tumour INTEGER NOT NULL CHECK (is_tumour IN (0, 1)),
    tumour_probability REAL NOT NULL CHECK (tumour_probability BETWEEN 0 AND 1),
    confidence REAL NOT NULL CHECK (confidence BETWEEN 0 AND 1),
    probabilities TEXT NOT NULL,
    roi TEXT NOT NULL,
    timings_ms TEXT NOT NULL,
    gate TEXT NOT NULL DEFAULT 'accepted',
    gate_score REAL,
    reviewer TEXT,
    review_verdict TEXT,
    final_label TEXT,
    review_note TEXT,
    reviewed_ms INTEGER
);
CREATE INDEX IF NOT EXISTS scans_by_time ON scans (created_ms, model_version, label, gate, is_tumour, confidence);
CREATE INDEX IF NOT EXISTS scans_by_label ON scans (label, gate, is_tumour, confidence, created_ms, model_version);
CREATE INDEX IF NOT EXISTS scans_by_version
    ON scans (model_version, model_name, created_ms, label, gate, is_tumour, confidence);
CREATE INDEX IF NOT EXISTS scans_by_quarter
    ON scans (created_ms / 900000, created_ms, is_tumour, model_version, label, gate);
CREATE INDEX IF NOT EXISTS scans_by_confidence
    ON scans (CAST(confidence * 20 AS INTEGER), created_ms, model_version, label, gate);
"""
# Covering indexes let every dashboard query stream through one index in group order (no sort of a million
# rows): by label for the summary, by model for the version table, by quarter-hour (every time zone's offset is
# a multiple of 15 minutes) for calendar days, by twentieth of confidence for the histogram.
QUARTER_MS = 900_000

_COLUMNS = (
    "id, created_ms, patient_ref, uploader, image_sha256, image_format, image_width, image_height, image_bytes, "
    "model_name, model_version, label, is_tumour, tumour_probability, confidence, probabilities, roi, timings_ms, "
    "gate, gate_score, reviewer, review_verdict, final_label, review_note, reviewed_ms"
)


class SQLiteStore:
    """The embedded store: one SQLite file, WAL journal, 5 s busy timeout, one connection per thread."""

    def __init__(self, path: Path, busy_timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._errors():
            connection = self._connection()
            connection.executescript(_SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None)
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_s * 1000)}")
            self._local.connection = connection
        return connection

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as error:
            text = str(error).lower()
            if "locked" in text or "busy" in text:
                raise StoreUnavailable("The results database is locked by another process; try again.") from error
            if "unable to open" in text or "readonly" in text or "disk i/o" in text:
                raise StoreUnavailable(f"The results database file cannot be opened for writing ({error}).") from error
            raise StoreError(f"The results database failed: {error}.") from error
        except sqlite3.DatabaseError as error:
            raise StoreError(
                "The results database file is corrupt or is not a database; restore it from a backup."
            ) from error

    def describe(self) -> str:
        return f"SQLite file {self.path}"

    def ping(self) -> None:
        with self._errors():
            self._connection().execute("SELECT count(*) FROM sqlite_master").fetchone()

    def add(self, record: Record) -> bool:
        record.validate()
        row = record_to_row(record)
        values = (
            row["id"], to_ms(record.created_at), row["patient_ref"], row["uploader"], row["image_sha256"],
            row["image_format"], row["image_width"], row["image_height"], row["image_bytes"], row["model_name"],
            row["model_version"], row["label"], int(row["is_tumour"]), row["tumour_probability"], row["confidence"],
            json.dumps(row["probabilities"]), json.dumps(row["roi"]), json.dumps(row["timings_ms"]), row["gate"],
            row["gate_score"], row["reviewer"], row["review_verdict"], row["final_label"], row["review_note"],
            to_ms(record.reviewed_at) if record.reviewed_at else None,
        )  # fmt: skip
        with self._errors():
            cursor = self._connection().execute(
                f"INSERT OR IGNORE INTO scans ({_COLUMNS}) VALUES ({', '.join('?' * 25)})", values
            )
        return cursor.rowcount == 1

    def add_many(self, records: Sequence[Record]) -> int:
        """Bulk insert in one transaction (back-fills, benchmarks); returns how many were new."""
        connection = self._connection()
        with self._errors():
            before = connection.total_changes
            connection.execute("BEGIN")
            try:
                for record in records:
                    self.add(record)
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
            return connection.total_changes - before

    @staticmethod
    def _decode(row: sqlite3.Row) -> Record:
        data = dict(row)
        data["created_at"] = from_ms(data.pop("created_ms"))
        reviewed = data.pop("reviewed_ms")
        data["reviewed_at"] = from_ms(reviewed) if reviewed is not None else None
        for key in ("probabilities", "roi", "timings_ms"):
            data[key] = json.loads(data[key])
        return row_to_record(data)

    @staticmethod
    def _where(filters: Filters) -> tuple[str, list[Any]]:
        clauses, params = [], []
        if filters.start is not None:
            clauses.append("created_ms >= ?")
            params.append(to_ms(filters.start))
        if filters.end is not None:
            clauses.append("created_ms < ?")
            params.append(to_ms(filters.end))
        if filters.labels:
            clauses.append(f"label IN ({', '.join('?' * len(filters.labels))})")
            params += list(filters.labels)
        if filters.model_versions:
            clauses.append(f"model_version IN ({', '.join('?' * len(filters.model_versions))})")
            params += list(filters.model_versions)
        if filters.gates:
            clauses.append(f"gate IN ({', '.join('?' * len(filters.gates))})")
            params += list(filters.gates)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._errors():
            return self._connection().execute(sql, params).fetchall()

    def get(self, record_id: str) -> Record | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM scans WHERE id = ?", (record_id,))
        return self._decode(rows[0]) if rows else None

    def recent(self, limit: int, filters: Filters = EVERYTHING) -> list[Record]:
        where, params = self._where(filters)
        rows = self._query(f"SELECT {_COLUMNS} FROM scans{where} ORDER BY created_ms DESC LIMIT ?", [*params, limit])
        return [self._decode(row) for row in rows]

    def summary(self, filters: Filters = EVERYTHING) -> Summary:
        where, params = self._where(filters)
        rows = self._query(
            "SELECT label, gate, count(*), sum(is_tumour), sum(confidence), min(created_ms), max(created_ms) "
            f"FROM scans{where} GROUP BY label, gate",
            params,
        )
        return _summary([dict(zip(_SUMMARY_KEYS, row, strict=True)) for row in rows])

    def _time_range(self, filters: Filters) -> tuple[int, int] | None:
        where, params = self._where(filters)
        first, last = self._query(f"SELECT min(created_ms), max(created_ms) FROM scans{where}", params)[0]
        return None if first is None else (first, last)

    def daily_counts(self, filters: Filters, timezone: str) -> list[DayCount]:
        span = self._time_range(filters)
        if span is None:
            return []
        segments = utc_offset_segments(timezone, *span)
        cases = " ".join("WHEN quarter_ms < ? THEN ?" for _ in segments[1:])
        offset_sql = f"CASE {cases} ELSE ? END" if cases else "?"
        offset_params: list[Any] = []
        for (_, previous_offset), (boundary, _) in pairwise(segments):
            offset_params += [boundary, previous_offset]
        offset_params.append(segments[-1][1])
        where, params = self._where(filters)
        rows = self._query(
            f"SELECT (quarter_ms + {offset_sql}) / {DAY_MS} AS day, sum(n), sum(tumour) FROM ("
            f"  SELECT created_ms / {QUARTER_MS} * {QUARTER_MS} AS quarter_ms, count(*) AS n, sum(is_tumour) AS tumour"
            f"  FROM scans{where} GROUP BY created_ms / {QUARTER_MS}"
            ") GROUP BY day ORDER BY day",
            [*offset_params, *params],
        )
        return _days([tuple(row) for row in rows])

    def confidence_histogram(self, filters: Filters = EVERYTHING, bins: int = HISTOGRAM_BINS) -> list[int]:
        """Counts of the predicted class's confidence in ``bins`` equal bins over [0, 1] (bins divides 20)."""
        if HISTOGRAM_BINS % bins:
            raise ValueError(f"bins must divide {HISTOGRAM_BINS}")
        where, params = self._where(filters)
        rows = self._query(
            f"SELECT CAST(confidence * 20 AS INTEGER), count(*) FROM scans{where} "
            "GROUP BY CAST(confidence * 20 AS INTEGER)",
            params,
        )
        counts = [0] * bins
        for twentieth, count in rows:
            counts[min(int(twentieth), HISTOGRAM_BINS - 1) * bins // HISTOGRAM_BINS] += int(count)
        return counts

    def by_model(self, filters: Filters = EVERYTHING) -> list[ModelRow]:
        where, params = self._where(filters)
        rows = self._query(
            "SELECT model_name, model_version, count(*), sum(is_tumour), avg(confidence), min(created_ms), "
            f"max(created_ms) FROM scans{where} GROUP BY model_version, model_name ORDER BY min(created_ms)",
            params,
        )
        return [
            ModelRow(name, version, int(n), int(t), float(c), from_ms(first), from_ms(last))
            for name, version, n, t, c, first, last in rows
        ]

    def model_versions(self) -> list[str]:
        return [row[0] for row in self._query("SELECT DISTINCT model_version FROM scans ORDER BY model_version")]

    def review(self, record_id: str, reviewer: str, verdict: str, final_label: str | None, note: str) -> None:
        current = self.get(record_id)
        if current is None:
            raise InvalidRecord("No such record to review.")
        _check_review(current, verdict, final_label)
        with self._errors():
            self._connection().execute(
                "UPDATE scans SET reviewer = ?, review_verdict = ?, final_label = ?, review_note = ?, reviewed_ms = ? "
                "WHERE id = ?",
                (reviewer, verdict, final_label, note, to_ms(datetime.now(UTC)), record_id),
            )


def _check_review(record: Record, verdict: str, final_label: str | None) -> None:
    if verdict not in REVIEW_VERDICTS:
        raise InvalidRecord(f"Review verdict must be one of {', '.join(REVIEW_VERDICTS)}.")
    if final_label is not None and final_label not in record.probabilities:
        raise InvalidRecord("The final label must be one of the model's labels.")


# --- MongoDB ------------------------------------------------------------------------------------------------

_VALIDATOR = {
    "$jsonSchema": {
        "bsonType": "object",
        "required": [
            "_id", "created_at", "image_sha256", "image_format", "model_name", "model_version", "label",
            "is_tumour", "tumour_probability", "confidence", "probabilities", "roi",
        ],
        "properties": {
            "created_at": {"bsonType": "date"},
            "image_sha256": {"bsonType": "string", "pattern": "^[0-9a-f]{64}$"},
            "image_format": {"enum": ["png", "jpeg", "dicom"]},
            "label": {"bsonType": "string"},
            "is_tumour": {"bsonType": "bool"},
            "tumour_probability": {"bsonType": "double", "minimum": 0, "maximum": 1},
            "confidence": {"bsonType": "double", "minimum": 0, "maximum": 1},
            "roi": {"bsonType": "array", "minItems": 4, "maxItems": 4},
            "patient_ref": {"bsonType": ["string", "null"], "pattern": "^[0-9a-f]{64}$"},
        },
    }
}  # fmt: skip

_INDEXES = (
    [("created_at", 1), ("model_version", 1), ("label", 1), ("gate", 1)],
    [("model_version", 1), ("created_at", 1)],
    [("label", 1), ("created_at", 1)],
)


class MongoStore:
    """The shared store: one collection, ``_id`` = idempotency key, majority writes, short timeouts."""

    def __init__(self, client: Any, database: str = "brain_mri_triage", collection: str = "scans") -> None:
        from pymongo import WriteConcern

        self._client = client
        self._db = client[database]
        self._name = collection
        self._collection = self._db[collection].with_options(write_concern=WriteConcern("majority", wtimeout=3000))
        self._schema_ready = False

    def _ensure_schema(self) -> None:
        """Create the validated collection and its indexes on first use (not in the constructor: the app builds
        the store once and must start even while the database is down)."""
        if self._schema_ready:
            return
        if self._name not in self._db.list_collection_names():
            # Another replica may create it first; a server may refuse validators to this user: indexes still apply.
            with suppress(Exception):
                self._db.create_collection(self._name, validator=_VALIDATOR)
        for keys in _INDEXES:
            self._collection.create_index(keys)
        self._schema_ready = True

    @classmethod
    def connect(cls, uri: str, database: str = "brain_mri_triage") -> MongoStore:
        """A client with 2 s server selection and 3 s operations instead of pymongo's 30 s defaults."""
        from pymongo import MongoClient

        client = MongoClient(
            uri,
            serverSelectionTimeoutMS=2000,
            connectTimeoutMS=2000,
            timeoutMS=3000,
            w="majority",
            tz_aware=True,
            appname="brain-mri-triage",
        )
        return cls(client, database)

    def describe(self) -> str:
        nodes = getattr(self._client, "nodes", None) or ()
        hosts = ", ".join(f"{host}:{port}" for host, port in sorted(nodes)) or "configured host"
        return f"MongoDB {hosts} / {self._db.name}.{self._name}"

    @contextmanager
    def _errors(self) -> Iterator[None]:
        from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError, ServerSelectionTimeoutError

        try:
            self._ensure_schema()
            yield
        except (ServerSelectionTimeoutError, ConnectionFailure) as error:
            raise StoreUnavailable("MongoDB cannot be reached right now; the result was not saved.") from error
        except OperationFailure as error:
            raise StoreError(f"MongoDB refused the operation (code {error.code}).") from error
        except PyMongoError as error:
            if "timed out" in str(error).lower() or "timeout" in type(error).__name__.lower():
                raise StoreUnavailable("MongoDB did not answer in time; the result was not saved.") from error
            raise StoreError(f"MongoDB failed: {type(error).__name__}.") from error

    def ping(self) -> None:
        with self._errors():
            self._client.admin.command("ping")

    def add(self, record: Record) -> bool:
        from pymongo.errors import DuplicateKeyError

        record.validate()
        document = record_to_row(record)
        document["_id"] = document.pop("id")
        with self._errors():
            try:
                self._collection.insert_one(document)
            except DuplicateKeyError:
                return False
        return True

    def add_many(self, records: Sequence[Record]) -> int:
        from pymongo.errors import BulkWriteError

        documents = []
        for record in records:
            document = record_to_row(record.validate())
            document["_id"] = document.pop("id")
            documents.append(document)
        with self._errors():
            try:
                return len(self._collection.insert_many(documents, ordered=False).inserted_ids)
            except BulkWriteError as error:
                return int(error.details.get("nInserted", 0))

    @staticmethod
    def _decode(document: Mapping[str, Any]) -> Record:
        return row_to_record({**document, "id": document["_id"]})

    @staticmethod
    def _match(filters: Filters) -> dict[str, Any]:
        match: dict[str, Any] = {}
        if filters.start is not None or filters.end is not None:
            match["created_at"] = {}
            if filters.start is not None:
                match["created_at"]["$gte"] = filters.start
            if filters.end is not None:
                match["created_at"]["$lt"] = filters.end
        if filters.labels:
            match["label"] = {"$in": list(filters.labels)}
        if filters.model_versions:
            match["model_version"] = {"$in": list(filters.model_versions)}
        if filters.gates:
            match["gate"] = {"$in": list(filters.gates)}
        return match

    def _aggregate(self, pipeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
        with self._errors():
            return list(self._collection.aggregate(pipeline))

    def get(self, record_id: str) -> Record | None:
        with self._errors():
            document = self._collection.find_one({"_id": record_id})
        return self._decode(document) if document else None

    def recent(self, limit: int, filters: Filters = EVERYTHING) -> list[Record]:
        with self._errors():
            cursor = self._collection.find(self._match(filters)).sort("created_at", -1).limit(limit)
            return [self._decode(document) for document in cursor]

    def summary(self, filters: Filters = EVERYTHING) -> Summary:
        rows = self._aggregate(
            [
                {"$match": self._match(filters)},
                {
                    "$group": {
                        "_id": {"label": "$label", "gate": "$gate"},
                        "n": {"$sum": 1},
                        "tumour": {"$sum": {"$cond": ["$is_tumour", 1, 0]}},
                        "confidence": {"$sum": "$confidence"},
                        "first": {"$min": "$created_at"},
                        "last": {"$max": "$created_at"},
                    }
                },
            ]
        )
        return _summary([{**row, **row["_id"]} for row in rows])

    def daily_counts(self, filters: Filters, timezone: str) -> list[DayCount]:
        summary = self.summary(filters)
        if summary.first is None or summary.last is None:
            return []
        segments = utc_offset_segments(timezone, to_ms(summary.first), to_ms(summary.last))
        ms = {"$subtract": ["$created_at", EPOCH]}
        branches = [
            {"case": {"$lt": [ms, boundary]}, "then": previous_offset}
            for (_, previous_offset), (boundary, _) in pairwise(segments)
        ]
        offset: Any = {"$switch": {"branches": branches, "default": segments[-1][1]}} if branches else segments[0][1]
        day = {"$floor": {"$divide": [{"$add": [ms, offset]}, DAY_MS]}}
        rows = self._aggregate(
            [
                {"$match": self._match(filters)},
                {"$group": {"_id": day, "n": {"$sum": 1}, "tumour": {"$sum": {"$cond": ["$is_tumour", 1, 0]}}}},
                {"$sort": {"_id": 1}},
            ]
        )
        return _days([(row["_id"], row["n"], row["tumour"]) for row in rows])

    def confidence_histogram(self, filters: Filters = EVERYTHING, bins: int = HISTOGRAM_BINS) -> list[int]:
        bucket = {"$min": [{"$floor": {"$multiply": ["$confidence", bins]}}, bins - 1]}
        rows = self._aggregate([{"$match": self._match(filters)}, {"$group": {"_id": bucket, "n": {"$sum": 1}}}])
        counts = [0] * bins
        for row in rows:
            counts[int(row["_id"])] = int(row["n"])
        return counts

    def by_model(self, filters: Filters = EVERYTHING) -> list[ModelRow]:
        rows = self._aggregate(
            [
                {"$match": self._match(filters)},
                {
                    "$group": {
                        "_id": {"name": "$model_name", "version": "$model_version"},
                        "n": {"$sum": 1},
                        "tumour": {"$sum": {"$cond": ["$is_tumour", 1, 0]}},
                        "confidence": {"$avg": "$confidence"},
                        "first": {"$min": "$created_at"},
                        "last": {"$max": "$created_at"},
                    }
                },
                {"$sort": {"first": 1}},
            ]
        )
        return [
            ModelRow(
                row["_id"]["name"], row["_id"]["version"], int(row["n"]), int(row["tumour"]),
                float(row["confidence"]), _as_utc(row["first"]), _as_utc(row["last"]),
            )
            for row in rows
        ]  # fmt: skip

    def model_versions(self) -> list[str]:
        with self._errors():
            return sorted(self._collection.distinct("model_version"))

    def review(self, record_id: str, reviewer: str, verdict: str, final_label: str | None, note: str) -> None:
        current = self.get(record_id)
        if current is None:
            raise InvalidRecord("No such record to review.")
        _check_review(current, verdict, final_label)
        update = {
            "reviewer": reviewer,
            "review_verdict": verdict,
            "final_label": final_label,
            "review_note": note,
            "reviewed_at": datetime.now(UTC),
        }
        with self._errors():
            self._collection.update_one({"_id": record_id}, {"$set": update})


def open_store(mongodb_uri: str | None, data_dir: Path) -> SQLiteStore | MongoStore:
    """MongoDB when a URI is configured, else the embedded SQLite file ``data_dir/results.sqlite3``."""
    if mongodb_uri:
        from pymongo.errors import PyMongoError

        try:
            return MongoStore.connect(mongodb_uri)
        except (PyMongoError, ValueError) as error:  # ConfigurationError, InvalidURI, unresolvable SRV record
            raise StoreError(f"The MongoDB URI cannot be used ({type(error).__name__}).") from error
    return SQLiteStore(data_dir / "results.sqlite3")
