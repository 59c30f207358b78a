"""The MongoDB store's accounts, reviews and audit trail (a mixin of :class:`core.storage.mongo.MongoStore`).

Collections ``accounts`` (``_id`` = name), ``reviews`` (append-only by use: the app never updates or deletes
them; a deployment can enforce it with a role that may only insert) and ``audit`` (``_id`` = sequence number).
An audit event is appended optimistically: read the last event, insert ``seq + 1`` linked to its hash; a
concurrent writer that took the number first makes the insert fail on the unique ``_id`` and the append retries,
so replicas sharing one database keep one unbroken chain. A review is inserted, then its result's summary updated.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import Any

from core.domain.people import NO_HEAD, Account, AuditEvent, AuditHead, AuditQuery, Review, VerifiedPoint, chained
from core.domain.results import Record
from core.domain.times import as_utc
from core.errors import InvalidRecord, ReviewedMeanwhile, StoreError, StoreUnavailable
from core.storage.protocol import check_account_fields, check_review

logger = logging.getLogger("btd.storage")

# The audit page's filters, newest first (time, then sequence number): created by the schema set-up
# (:func:`core.storage.mongo_migrations.migrate_mongo`) on every start.
AUDIT_INDEXES = (
    [("at", -1), ("_id", -1)],
    [("actor", 1), ("at", -1), ("_id", -1)],
    [("action", 1), ("at", -1), ("_id", -1)],
    [("target", 1), ("at", -1), ("_id", -1)],
)


class MongoPeople:
    """Requires ``_db``, ``_collection``, ``_errors()`` and ``get()`` from the store."""

    _db: Any
    audit_key: bytes | None = None
    head_written_apart = True  # the chain's head is a document of its own, written after each event
    rolls_back = False  # atomic() writes one document after another: a failure inside undoes nothing
    _collection: Any
    _errors: Any
    get: Any

    def _people(self, name: str) -> Any:
        from pymongo import WriteConcern

        return self._db[name].with_options(write_concern=WriteConcern("majority", wtimeout=3000))

    # --- accounts -----------------------------------------------------------------------------------------

    @staticmethod
    def _account(document: dict[str, Any]) -> Account:
        return Account(
            name=document["_id"],
            role=document["role"],
            password_hash=document.get("password_hash"),
            disabled=bool(document.get("disabled")),
            failed_count=int(document.get("failed_count") or 0),
            locked_until=as_utc(document["locked_until"]) if document.get("locked_until") else None,
            created_at=as_utc(document["created_at"]) if document.get("created_at") else None,
            sessions_from=as_utc(document["sessions_from"]) if document.get("sessions_from") else None,
            must_change=bool(document.get("must_change")),  # absent before version 13: no
        )

    def get_account(self, name: str) -> Account | None:
        with self._errors():
            document = self._people("accounts").find_one({"_id": name})
        return self._account(document) if document else None

    def accounts(self) -> list[Account]:
        with self._errors():
            return [self._account(d) for d in self._people("accounts").find().sort("_id", 1)]

    def begin_sign_in(self, name: str, now: datetime) -> int | None:
        """As SQLite's: one atomic ``$inc`` of the failure count unless the account is locked at ``now``."""
        from pymongo import ReturnDocument

        with self._errors():
            document = self._people("accounts").find_one_and_update(
                {"_id": name, "$or": [{"locked_until": None}, {"locked_until": {"$lte": now}}]},
                {"$inc": {"failed_count": 1}},
                return_document=ReturnDocument.AFTER,
            )
        return int(document["failed_count"]) if document else None

    def end_sign_in(self, name: str, succeeded: bool, locked_until: datetime | None = None) -> None:
        if not succeeded and locked_until is None:
            return
        with self._errors():
            self._people("accounts").update_one(
                {"_id": name}, {"$set": {"failed_count": 0, "locked_until": locked_until}}
            )

    def insert_account(self, account: Account) -> bool:
        """As SQLite's: one insert, False when an account of that name exists (the unique ``_id``)."""
        from pymongo.errors import DuplicateKeyError

        document = {"_id": account.name, **_account_fields(account), "created_at": account.created_at}
        with self._errors():
            try:
                self._people("accounts").insert_one(document)
            except DuplicateKeyError:  # before the store's own error mapping reads it as a refused write
                return False
        return True

    def uncreate_account(self, account: Account) -> bool:
        """Remove ``account`` as :meth:`insert_account` wrote it (its name and creation time), the undo of a
        creation whose audit event could not be written; whether it was there."""
        with self._errors():
            found = self._people("accounts").delete_one({"_id": account.name, "created_at": account.created_at})
        return found.deleted_count == 1

    def update_account(self, name: str, changes: Mapping[str, Any], expected: Mapping[str, Any]) -> bool:
        """As SQLite's: one ``update_one`` whose filter holds the expected fields (atomic on the document)."""
        check_account_fields(changes, expected)
        with self._errors():
            found = self._people("accounts").update_one({"_id": name, **expected}, {"$set": dict(changes)})
        return found.matched_count == 1

    # --- reviews ------------------------------------------------------------------------------------------

    def add_review(self, review: Review, seen_reviews: int | None = None) -> Record:
        """Append ``review`` and make it the result's latest. A review document's ``_id`` is its result's and its
        number (``<result id>:<n>``), so the insert is the compare-and-set: a second review saved against the same
        count is refused by the unique ``_id`` with nothing written (the reviews stay insert-only). The result's
        summary follows from the review and is written only forward (never over a later review's): a summary a
        timeout left unwritten is written by the next review's attempt, which then says the result was reviewed."""
        from pymongo.errors import DuplicateKeyError

        current = self.get(review.result_id)
        if current is None:
            raise InvalidRecord("No such result to review.")
        check_review(current, review, seen_reviews)
        number = (current.review_count if seen_reviews is None else seen_reviews) + 1
        document = {
            "_id": f"{review.result_id}:{number}",
            "n": number,
            "result_id": review.result_id,
            "reviewer": review.reviewer,
            "created_at": review.created_at,
            "action": review.action,
            "model_label": review.model_label,
            "final_label": review.final_label,
            "reasons": list(review.reasons),
            "note": review.note,
        }
        with self._errors():
            try:
                self._people("reviews").insert_one(document)
            except DuplicateKeyError as error:  # that number was taken meanwhile: its summary written, then said
                taken = self._people("reviews").find_one({"_id": document["_id"]})
                if taken is not None:
                    self._summarise(taken)
                raise ReviewedMeanwhile() from error
            self._summarise(document)
        updated = self.get(review.result_id)
        assert updated is not None
        return updated

    def _summarise(self, document: dict[str, Any]) -> None:
        """The result's summary from its review number ``n``, unless a later review's is there already."""
        number = int(document.get("n") or str(document["_id"]).rsplit(":", 1)[1])
        # the first review saved is the first, as SQLite keeps it (the earliest clock was another figure), written
        # with the summary: a second write failing left a reviewed result out of the turnaround for good
        first = {"first_reviewed_at": document["created_at"]} if number == 1 else {}
        summary = {
            "reviewer": document["reviewer"],
            "review_verdict": document["action"],
            "final_label": document["final_label"],
            "reviewed_at": document["created_at"],
            "review_count": number,
        }
        written = self._collection.update_one(
            {"_id": document["result_id"], "$or": [{"review_count": {"$lt": number}}, {"review_count": None}]},
            {"$set": summary | first},
        )
        if first and not written.matched_count:  # a later review's summary got there first: the time alone
            self._collection.update_one({"_id": document["result_id"]}, {"$set": first})

    def reviews_of(self, record_id: str) -> list[Review]:
        """In the order they were saved: by number, never by their clocks (a replica's skewed clock put a later
        review first, read as the latest); those saved before reviews were numbered come first, by time."""
        order = [("n", 1), ("created_at", 1), ("_id", 1)]
        with self._errors():
            documents = list(self._people("reviews").find({"result_id": record_id}).sort(order))
        return [
            Review(
                result_id=d["result_id"],
                reviewer=d["reviewer"],
                created_at=as_utc(d["created_at"]),
                action=d["action"],
                model_label=d["model_label"],
                final_label=d["final_label"],
                reasons=tuple(d.get("reasons") or ()),
                note=d.get("note") or "",
                seq=k + 1,
            )
            for k, d in enumerate(documents)
        ]

    # --- audit --------------------------------------------------------------------------------------------

    def append_audit(self, event: AuditEvent, attempts: int = 20) -> AuditEvent:
        from pymongo.errors import DuplicateKeyError

        audit = self._people("audit")
        for _ in range(attempts):
            with self._errors():
                last = audit.find_one({"_id": {"$type": "number"}}, sort=[("_id", -1)])  # text sorts above
                seq, previous = (1, event.prev_hash) if last is None else (int(last["_id"]) + 1, last["hash"])
                linked = chained(event, previous, seq, self.audit_key)
                try:
                    audit.insert_one(
                        {
                            "_id": seq,
                            "at": linked.at,
                            "actor": linked.actor,
                            "role": linked.role,
                            "action": linked.action,
                            "target": linked.target,
                            "detail": linked.detail,
                            "prev_hash": linked.prev_hash,
                            "hash": linked.hash,
                        }
                    )
                except DuplicateKeyError:
                    continue  # another replica appended first: link to its event instead
            try:
                self._move_audit_head(seq, linked.hash)
            except StoreError:  # the event is written: the change it records is audited, and a head one
                logger.warning("the audit head was not moved after event %d; it lags one event", seq)  # behind
            return linked  # reads intact (a crash's window); a caller told "failed" undid a change its event kept
        raise StoreUnavailable("The audit trail is too busy to append to; try again.")

    def _move_audit_head(self, seq: int, digest: str) -> None:
        """Move the chain's head, kept outside the events, to event ``seq`` (a later event's may lead already)."""
        from pymongo.errors import DuplicateKeyError

        with self._errors():
            head = (self.audit_head() or NO_HEAD).after(seq, digest, self.audit_key)
            with suppress(DuplicateKeyError):
                self._db["meta"].update_one(
                    {"_id": "audit_head", "$or": [{"seq": {"$lt": seq}}, {"seq": {"$exists": False}}]},
                    {"$set": {"seq": head.seq, "hash": head.hash, "keyed_since": head.keyed_since, "mac": head.mac}},
                    upsert=True,
                )

    def audit_head(self) -> AuditHead | None:
        with self._errors():
            head = self._db["meta"].find_one({"_id": "audit_head"})
        if not head:
            return None
        return AuditHead(int(head["seq"]), str(head["hash"]), int(head.get("keyed_since") or 0), head.get("mac", ""))

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """MongoDB writes are atomic per document; a result and its audit event are two documents, written one
        after the other (multi-document transactions need a replica set and are not used yet: a documented
        limit). On a failure inside, nothing is undone here."""
        yield

    def audit_events(self, since_seq: int = 0, limit: int | None = None) -> list[AuditEvent]:
        with self._errors():
            # an event whose _id is no number (written behind the app's back) is read too, after the others, and
            # breaks the chain there: `$gt` skipped it, and the Audit page listed it under "chain intact"
            query = {"$or": [{"_id": {"$gt": since_seq}}, {"_id": {"$not": {"$type": "number"}}}]}
            cursor = self._people("audit").find(query).sort("_id", 1)
            documents = list(cursor.limit(limit) if limit else cursor)
        return [self._audit_event(d) for d in documents]

    @staticmethod
    def _audit_event(document: dict[str, Any]) -> AuditEvent:
        return AuditEvent(
            at=as_utc(document["at"]),
            actor=document["actor"],
            role=document["role"],
            action=document["action"],
            target=document.get("target"),
            detail=dict(document.get("detail") or {}),
            prev_hash=document["prev_hash"],
            hash=document["hash"],
            seq=_sequence_number(document["_id"]),
        )

    @staticmethod
    def _audit_filter(query: AuditQuery) -> dict[str, Any]:
        """The filter of ``query``, as SQLite's: each field is the first key of one of :data:`AUDIT_INDEXES`."""
        query = query.whole_milliseconds()
        clauses: list[dict[str, Any]] = [
            {field: value}
            for field, value in (("actor", query.actor), ("action", query.action), ("target", query.target))
            if value is not None
        ]
        if query.start is not None:
            clauses.append({"at": {"$gte": query.start}})
        if query.end is not None:
            clauses.append({"at": {"$lt": query.end}})
        if query.before is not None:
            at, seq = query.before
            clauses.append({"at": {"$lte": at}})
            clauses.append({"$or": [{"at": {"$lt": at}}, {"_id": {"$lt": seq}}]})
        return {"$and": clauses} if clauses else {}

    def find_audit(self, query: AuditQuery, limit: int) -> list[AuditEvent]:
        with self._errors():
            cursor = self._people("audit").find(self._audit_filter(query)).sort([("at", -1), ("_id", -1)])
            documents = list(cursor.limit(limit)) if limit > 0 else []  # limit(0) would mean "all"
        return [self._audit_event(d) for d in documents]

    def count_audit(self, query: AuditQuery) -> int:
        with self._errors():
            return int(self._people("audit").count_documents(self._audit_filter(query)))

    def audit_verified(self) -> VerifiedPoint | None:
        with self._errors():
            point = self._db["meta"].find_one({"_id": "audit_verified"})
        return VerifiedPoint(int(point["seq"]), str(point["hash"]), str(point.get("mac") or "")) if point else None

    def mark_audit_verified(self, point: VerifiedPoint, replacing: VerifiedPoint | None = None) -> bool:
        """As :meth:`SQLiteStore.mark_audit_verified`: with ``replacing``, only over that point."""
        found = {"_id": "audit_verified"}
        if replacing is not None:
            found |= {"seq": replacing.seq, "hash": replacing.hash, "mac": replacing.mac}
        with self._errors():
            written = self._people("meta").update_one(
                found,
                {"$set": {"seq": point.seq, "hash": point.hash, "mac": point.mac}},
                upsert=replacing is None,
            )
        return replacing is None or bool(written.matched_count)


def _account_fields(account: Account) -> dict[str, Any]:
    """An account's fields as its document holds them (name and creation time apart), once it is validated."""
    account.validate()
    return {
        "role": account.role,
        "password_hash": account.password_hash,
        "disabled": account.disabled,
        "failed_count": account.failed_count,
        "locked_until": account.locked_until,
        "sessions_from": account.sessions_from,
        "must_change": account.must_change,
    }


def _sequence_number(identity: Any) -> int:
    """An event's sequence number from its ``_id``: a whole number (5.0 from a JSON import or the legacy shell too);
    anything else, text written behind the app's back, reads as -1, a break in the chain."""
    whole = isinstance(identity, int | float) and not isinstance(identity, bool) and float(identity).is_integer()
    return int(identity) if whole else -1
