"""The shared store: MongoDB through pymongo, for several app replicas or sites on one history.

One collection, ``_id`` = the result's identity, ``w="majority"`` writes, 2 s server selection and 3 s operation
timeouts instead of pymongo's 30 s, a ``$jsonSchema`` validator, indexes for every dashboard query, UTC datetimes.
The collection, its indexes and any schema upgrade (:mod:`core.storage.migrations`) are set up on first use, not
in the constructor, so the app starts while the database is down. Same contract as the SQLite store.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import pairwise
from typing import Any

from core.domain.results import (
    DayCount,
    Filters,
    ModelRow,
    Record,
    Section,
    Summary,
    WorklistQuery,
    from_row,
    to_row,
)
from core.domain.times import DAY_MS, EPOCH, as_utc, to_ms, utc_offset_segments
from core.errors import InvalidRecord, StoreError, StoreUnavailable
from core.storage.mongo_migrations import migrate_mongo, validator_not_installed
from core.storage.mongo_people import MongoPeople
from core.storage.mongo_quality import MongoQuality
from core.storage.mongo_schema import VALIDATOR
from core.storage.protocol import (
    EVERYTHING,
    HISTOGRAM_BINS,
    SCHEMA_VERSION,
    check_patient_ref,
    check_series,
    day_rows,
    fold_summary,
)

_INDEXES = (
    [("created_at", 1), ("model_version", 1), ("label", 1), ("gate", 1)],
    [("kind", 1), ("created_at", 1), ("study_ref", 1)],
    [("model_version", 1), ("created_at", 1)],
    [("label", 1), ("created_at", 1)],
    [("patient_ref", 1), ("created_at", 1)],
    [("review_count", 1), ("gate", 1), ("created_at", -1)],  # the worklist: unreviewed first, newest first
)


DEFAULT_DATABASE = "brain_mri_triage"


class MongoStore(MongoPeople, MongoQuality):
    """The shared store: one collection, ``_id`` = idempotency key, majority writes, short timeouts."""

    def __init__(self, client: Any, database: str = DEFAULT_DATABASE, collection: str = "scans") -> None:
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
            self._refuse_a_split()
            try:  # a server may refuse validators to this user (indexes still apply); another replica may be first
                self._db.create_collection(self._name, validator=VALIDATOR)
            except Exception as error:  # said in the log, unless another replica created it (CollectionInvalid)
                validator_not_installed(error)
        migrate_mongo(self._db, self._collection, VALIDATOR, self.audit_key)
        for keys in _INDEXES:
            self._collection.create_index(keys)
        self._schema_ready = True

    def _refuse_a_split(self) -> None:
        """A placeholder database a hosted service's URI carries (``/test``, ``/myFirstDatabase``), empty, while
        the one earlier releases used (they ignored the URI's name) holds results: refused, never a second, empty
        history beside the first. A site's own name (``/site_b``) is its choice."""
        if self._db.name not in ("test", "myFirstDatabase"):
            return
        earlier = self._client[DEFAULT_DATABASE]
        if self._name in earlier.list_collection_names() and earlier[self._name].estimated_document_count():
            raise StoreError(
                f"The MongoDB URI names the database {self._db.name!r}, which holds no results, while "
                f"{DEFAULT_DATABASE!r} holds those written before: put {DEFAULT_DATABASE!r} in the URI (or move the "
                "results) so that one history is kept."
            )

    @classmethod
    def connect(cls, uri: str, database: str | None = None) -> MongoStore:
        """A client with 2 s server selection and 3 s operations instead of pymongo's 30 s defaults, on
        ``database``, else the one the URI names (``mongodb://host/site_a``), else ``brain_mri_triage``: two sites
        configured with their own database in the URI shared one history and one account table."""
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
        named = client.get_default_database(default=DEFAULT_DATABASE).name
        if named in ("admin", "local", "config"):  # the server's own: in a URI, where to authenticate, not our data
            named = DEFAULT_DATABASE
        return cls(client, database or named)

    def describe(self) -> str:
        nodes = getattr(self._client, "nodes", None) or ()
        hosts = ", ".join(f"{host}:{port}" for host, port in sorted(nodes)) or "configured host"
        return f"MongoDB {hosts} / {self._db.name}.{self._name}"

    @contextmanager
    def _errors(self) -> Iterator[None]:
        from pymongo.errors import (
            ConnectionFailure,
            ExecutionTimeout,
            OperationFailure,
            PyMongoError,
            ServerSelectionTimeoutError,
            WriteError,
            WTimeoutError,
        )

        try:
            self._ensure_schema()
            yield
        except (ServerSelectionTimeoutError, ConnectionFailure) as error:
            raise StoreUnavailable("MongoDB cannot be reached right now.") from error
        except (ExecutionTimeout, WTimeoutError) as error:  # the server's time limit, a majority write's wait
            raise StoreUnavailable("MongoDB did not answer in time; the write may have landed: try again.") from error
        except WriteError as error:
            if error.code == 121:  # DocumentValidationFailure
                raise InvalidRecord("MongoDB's schema validator refused the record.") from error
            raise StoreError(f"MongoDB refused the write (code {error.code}).") from error
        except OperationFailure as error:
            raise StoreError(f"MongoDB refused the operation (code {error.code}).") from error
        except PyMongoError as error:
            if "timed out" in str(error).lower() or "timeout" in type(error).__name__.lower():
                raise StoreUnavailable("MongoDB did not answer in time.") from error
            raise StoreError(f"MongoDB failed: {type(error).__name__}.") from error

    def schema_version(self) -> int:
        with self._errors():
            state = self._db["meta"].find_one({"_id": "schema"})
        return int(state["version"]) if state else SCHEMA_VERSION

    def ping(self) -> None:
        """A real write with the clinical write concern (a reachable but read-only or full server fails it)."""
        import time

        with self._errors():
            self._people("meta").update_one(
                {"_id": "health"}, {"$set": {"at_ms": int(time.time() * 1000)}}, upsert=True
            )

    def key_check(self, name: str, digest: str, replace: bool = False) -> str:
        """As SQLite's: one upsert that keeps a recorded fingerprint unless ``replace`` (``meta``,
        ``_id: "key:<name>"``)."""
        from pymongo import ReturnDocument

        with self._errors():
            document = self._people("meta").find_one_and_update(
                {"_id": f"key:{name}"},
                {"$set" if replace else "$setOnInsert": {"digest": digest}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        return str(document["digest"])

    def add(self, record: Record) -> bool:
        return self._insert(self._document(record))

    @staticmethod
    def _document(record: Record) -> dict[str, Any]:
        document = to_row(record.validate())
        document["_id"] = document.pop("id")
        return document

    def _insert(self, document: dict[str, Any]) -> bool:
        """Insert one document; False when its id is already there (the record was saved before)."""
        from pymongo.errors import DuplicateKeyError

        with self._errors():
            try:
                self._collection.insert_one(document)
            except DuplicateKeyError:
                return False
        return True

    def add_series(self, record: Record, sections: Sequence[Section]) -> bool:
        """A series with its sections inside its one document: a single write, so both or neither."""
        check_series(record, sections)
        if len({s.index for s in sections}) != len(sections):  # SQLite's key (record, index) refuses them too
            raise InvalidRecord("Two sections of one series have the same index.")
        sections = sorted(sections, key=lambda s: s.index)  # kept in series order, as SQLite returns them
        document = self._document(record)
        document["sections"] = [
            {
                "index": s.index,
                "position": float(s.position),
                "tumour_probability": s.tumour_probability,
                "label": s.label,
                "skipped": s.skipped,
            }
            for s in (section.validate() for section in sections)
        ]
        return self._insert(document)

    def sections_of(self, record_id: str) -> list[Section]:
        with self._errors():
            document = self._collection.find_one({"_id": record_id}, {"sections": 1})
        return [
            Section(
                int(s["index"]), float(s["position"]), s.get("tumour_probability"), s.get("label"), s.get("skipped")
            )
            for s in (document or {}).get("sections", [])
        ]

    def set_patient_ref(self, record_id: str, patient_ref: str | None, was: str | None) -> bool:
        """As SQLite's: a compare-and-set from ``was``; False when unchanged (this one already, or not ``was``)."""
        check_patient_ref(patient_ref)
        with self._errors():
            still = {"_id": record_id, "patient_ref": {"$eq": was, "$ne": patient_ref}}
            result = self._collection.update_one(still, {"$set": {"patient_ref": patient_ref}})
        if result.matched_count == 0 and self.get(record_id) is None:
            raise InvalidRecord("No such record.")
        return result.modified_count == 1

    def add_many(self, records: Sequence[Record]) -> int:
        from pymongo.errors import BulkWriteError

        documents = [self._document(record) for record in records]
        with self._errors():
            try:
                return len(self._collection.insert_many(documents, ordered=False).inserted_ids)
            except BulkWriteError as error:
                refused = [e for e in error.details.get("writeErrors", []) if e.get("code") != 11000]
                if refused:  # only duplicates are "already saved"; anything else is a refused record
                    message = f"MongoDB refused {len(refused)} record(s) (code {refused[0]['code']})."
                    raise InvalidRecord(message) from error
                return int(error.details.get("nInserted", 0))

    @staticmethod
    def _decode(document: Mapping[str, Any]) -> Record:
        return from_row({**document, "id": document["_id"]})

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
        if filters.kinds:
            match["kind"] = {"$in": list(filters.kinds)}
        return match

    def _aggregate(self, pipeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
        with self._errors():
            return list(self._collection.aggregate(pipeline))

    def get(self, record_id: str) -> Record | None:
        with self._errors():
            document = self._collection.find_one({"_id": record_id}, {"sections": 0})
        return self._decode(document) if document else None

    def recent(self, limit: int, filters: Filters = EVERYTHING) -> list[Record]:
        return self._newest(self._match(filters), limit)

    def _newest(self, match: dict[str, Any], limit: int) -> list[Record]:
        if limit <= 0:  # MongoDB reads limit(0) as "no limit"
            return []
        with self._errors():
            cursor = self._collection.find(match, {"sections": 0}).sort("created_at", -1).limit(limit)
            return [self._decode(document) for document in cursor]

    def of_patient(self, patient_ref: str, limit: int) -> list[Record]:
        return self._newest({"patient_ref": patient_ref}, limit)

    def unread_image_keys(self) -> set[str]:
        """The image keys of results nobody has reviewed yet (the purge keeps them: a reader still has to see them)."""
        with self._errors():
            keys = self._collection.distinct(
                "image_key", {"review_count": {"$in": [0, None]}, "image_key": {"$ne": None}}
            )
        return set(keys)

    def worklist(self, query: WorklistQuery, limit: int = 200) -> list[Record]:
        """Results to read: not yet reviewed first, then flagged, then rejected, newest first within each."""
        if limit <= 0:  # a real server refuses $limit 0
            return []
        match: dict[str, Any] = {}
        if query.reviewed is not None:
            match["review_count"] = {"$gt": 0} if query.reviewed else {"$in": [0, None]}
        if query.labels:
            match["label"] = {"$in": list(query.labels)}
        match["gate"] = {"$in": list(query.gates_listed())}
        if query.patient_ref is not None:
            match["patient_ref"] = query.patient_ref
        times = {"$gte": query.since, "$lt": query.before}
        if any(value is not None for value in times.values()):
            match["created_at"] = {op: value for op, value in times.items() if value is not None}
        if query.disagreements:
            match["final_label"] = {"$ne": None}
            match["$expr"] = {"$ne": ["$final_label", "$label"]}
        rank = {
            "$switch": {
                "branches": [
                    {"case": {"$eq": ["$gate", "needs_review"]}, "then": 0},
                    {"case": {"$eq": ["$gate", "accepted"]}, "then": 1},
                ],
                "default": 2,
            }
        }
        reviewed = {"$cond": [{"$gt": [{"$ifNull": ["$review_count", 0]}, 0]}, 1, 0]}
        documents = self._aggregate(
            [
                {"$match": match},
                {"$addFields": {"_reviewed": reviewed, "_rank": rank}},
                {"$sort": {"_reviewed": 1, "_rank": 1, "created_at": -1}},
                {"$limit": limit},
                {"$project": {"_reviewed": 0, "_rank": 0, "sections": 0}},  # as recent: a list needs no sections
            ]
        )
        return [self._decode(document) for document in documents]

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
        return fold_summary([{**row, **row["_id"]} for row in rows])

    @staticmethod
    def _local_day(field: str, timezone: str, first_ms: int, last_ms: int) -> dict[str, Any]:
        """The local calendar day (days since 1970-01-01) in ``timezone`` of the date ``field``."""
        segments = utc_offset_segments(timezone, first_ms, last_ms)
        ms = {"$subtract": [field, EPOCH]}
        branches = [
            {"case": {"$lt": [ms, boundary]}, "then": previous_offset}
            for (_, previous_offset), (boundary, _) in pairwise(segments)
        ]
        offset: Any = {"$switch": {"branches": branches, "default": segments[-1][1]}} if branches else segments[0][1]
        return {"$floor": {"$divide": [{"$add": [ms, offset]}, DAY_MS]}}

    def daily_counts(self, filters: Filters, timezone: str) -> list[DayCount]:
        summary = self.summary(filters)
        if summary.first is None or summary.last is None:
            return []
        day = self._local_day("$created_at", timezone, to_ms(summary.first), to_ms(summary.last))
        rows = self._aggregate(
            [
                {"$match": self._match(filters)},
                {"$group": {"_id": day, "n": {"$sum": 1}, "tumour": {"$sum": {"$cond": ["$is_tumour", 1, 0]}}}},
                {"$sort": {"_id": 1}},
            ]
        )
        return day_rows([(row["_id"], row["n"], row["tumour"]) for row in rows])

    def confidence_histogram(self, filters: Filters = EVERYTHING) -> list[int]:
        bins = HISTOGRAM_BINS
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
                row["_id"]["name"],
                row["_id"]["version"],
                int(row["n"]),
                int(row["tumour"]),
                float(row["confidence"]),
                as_utc(row["first"]),
                as_utc(row["last"]),
            )
            for row in rows
        ]

    def model_versions(self) -> list[str]:
        with self._errors():
            return sorted(self._collection.distinct("model_version"))
