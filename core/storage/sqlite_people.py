"""The SQLite store's accounts, reviews and audit trail (a mixin of :class:`core.storage.sqlite.SQLiteStore`).

Reviews and audit events are append-only: the schema's triggers refuse UPDATE and DELETE on both tables. A review
is inserted and its result's summary (latest action, final label, reviewer, count) updated in one transaction; an
audit event takes the write lock, reads the last hash and appends its own in one transaction, so concurrent
writers (threads or processes) keep one unbroken chain.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from core.domain.people import NO_HEAD, Account, AuditEvent, AuditHead, AuditQuery, Review, VerifiedPoint, chained
from core.domain.results import Record
from core.domain.times import from_ms, to_ms
from core.errors import InvalidRecord, ReviewedMeanwhile
from core.storage.protocol import check_account_fields, check_review
from core.storage.sqlite_base import SQLiteBase

_COLUMN_OF = {"locked_until": "locked_until_ms", "sessions_from": "sessions_from_ms"}  # where names differ
_VALUE_OF = {
    "disabled": lambda v: int(bool(v)),
    "locked_until": lambda v: to_ms(v) if v is not None else None,
    "sessions_from": lambda v: to_ms(v) if v is not None else None,
    "must_change": lambda v: int(bool(v)),
}


def _columns(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Account fields as the accounts table's columns and values."""
    check_account_fields(fields)
    return {_COLUMN_OF.get(k, k): _VALUE_OF.get(k, lambda v: v)(v) for k, v in fields.items()}


class SQLitePeople(SQLiteBase):
    """Accounts, sign-in claims, reviews and the audit chain."""

    # --- accounts -----------------------------------------------------------------------------------------

    @staticmethod
    def _account(row: Any) -> Account:
        return Account(
            name=row["name"],
            role=row["role"],
            password_hash=row["password_hash"],
            disabled=bool(row["disabled"]),
            failed_count=int(row["failed_count"]),
            locked_until=from_ms(row["locked_until_ms"]) if row["locked_until_ms"] is not None else None,
            created_at=from_ms(row["created_ms"]),
            sessions_from=from_ms(row["sessions_from_ms"]) if row["sessions_from_ms"] is not None else None,
            must_change=bool(row["must_change"]),
        )

    def get_account(self, name: str) -> Account | None:
        rows = self._query("SELECT * FROM accounts WHERE name = ?", (name,))
        return self._account(rows[0]) if rows else None

    def accounts(self) -> list[Account]:
        return [self._account(row) for row in self._query("SELECT * FROM accounts ORDER BY name")]

    def insert_account(self, account: Account) -> bool:
        """Create an account; False (nothing written) when one of that name exists."""
        account.validate()
        created = account.created_at or from_ms(0)
        locked = to_ms(account.locked_until) if account.locked_until else None
        ended = to_ms(account.sessions_from) if account.sessions_from else None
        with self._errors():
            cursor = self._connection().execute(
                "INSERT INTO accounts (name, role, password_hash, disabled, failed_count, locked_until_ms, created_ms, "
                "sessions_from_ms, must_change) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO NOTHING",
                (
                    account.name,
                    account.role,
                    account.password_hash,
                    int(account.disabled),
                    account.failed_count,
                    locked,
                    to_ms(created),
                    ended,
                    int(account.must_change),
                ),
            )
        return cursor.rowcount == 1

    def uncreate_account(self, account: Account) -> bool:
        """As MongoDB's (SQLite rolls a failed creation back with its unit of work; this is for symmetry)."""
        with self._errors():
            cursor = self._connection().execute(
                "DELETE FROM accounts WHERE name = ? AND created_ms = ?",
                (account.name, to_ms(account.created_at or from_ms(0))),
            )
        return cursor.rowcount == 1

    def update_account(self, name: str, changes: Mapping[str, Any], expected: Mapping[str, Any]) -> bool:
        """Set ``changes`` on the account ``name`` only while its fields still hold ``expected`` (compare and set:
        a change made from a stale copy never overwrites another); False when they do not, or it does not exist."""
        sets, wheres = _columns(changes), _columns(expected)
        assignments = ", ".join(f"{column} = ?" for column in sets)
        conditions = "".join(f" AND {column} IS ?" for column in wheres)
        with self._errors():
            cursor = self._connection().execute(
                f"UPDATE accounts SET {assignments} WHERE name = ?{conditions}",  # columns from a fixed map
                (*sets.values(), name, *wheres.values()),
            )
        return cursor.rowcount == 1

    def begin_sign_in(self, name: str, now: datetime) -> int | None:
        """Claim a password check for ``name``, atomically: its failure count goes up by one and the new count is
        returned; None when the account is locked at ``now`` (or does not exist). Parallel sign-ins each get their
        own number, so no more than the allowed number of passwords is ever checked."""
        with self._errors():
            row = (
                self._connection()
                .execute(
                    "UPDATE accounts SET failed_count = failed_count + 1 WHERE name = ? "
                    "AND (locked_until_ms IS NULL OR locked_until_ms <= ?) RETURNING failed_count",
                    (name, to_ms(now)),
                )
                .fetchone()
            )
        return int(row[0]) if row else None

    def end_sign_in(self, name: str, succeeded: bool, locked_until: datetime | None = None) -> None:
        """After a claimed check: a success clears the count and any lock; a failure that locks sets the lock and
        starts the count again (a failure that does not lock leaves the count as claimed)."""
        if not succeeded and locked_until is None:
            return
        locked = to_ms(locked_until) if locked_until else None
        with self._errors():
            self._connection().execute(
                "UPDATE accounts SET failed_count = 0, locked_until_ms = ? WHERE name = ?", (locked, name)
            )

    # --- reviews ------------------------------------------------------------------------------------------

    def add_review(self, review: Review, seen_reviews: int | None = None) -> Record:
        """Append ``review`` and make it the result's latest, in one transaction; returns the updated result."""
        current = self.get(review.result_id)
        if current is None:
            raise InvalidRecord("No such result to review.")
        check_review(current, review, seen_reviews)
        with self._errors(), self._transaction() as connection:
            connection.execute(
                "INSERT INTO reviews (result_id, reviewer, created_ms, action, model_label, final_label, reasons, "
                "note) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    review.result_id,
                    review.reviewer,
                    to_ms(review.created_at),
                    review.action,
                    review.model_label,
                    review.final_label,
                    json.dumps(list(review.reasons)),
                    review.note,
                ),
            )
            changed = connection.execute(
                "UPDATE scans SET reviewer = ?, review_verdict = ?, final_label = ?, reviewed_ms = ?, "
                "first_reviewed_ms = COALESCE(first_reviewed_ms, ?), review_count = review_count + 1 "
                "WHERE id = ? AND review_count = ?",
                (
                    review.reviewer,
                    review.action,
                    review.final_label,
                    to_ms(review.created_at),
                    to_ms(review.created_at),
                    review.result_id,
                    current.review_count if seen_reviews is None else seen_reviews,
                ),
            )
            if changed.rowcount != 1:  # reviewed (or deleted) since it was read: the insert above is rolled back
                raise ReviewedMeanwhile()
        updated = self.get(review.result_id)
        assert updated is not None
        return updated

    def reviews_of(self, record_id: str) -> list[Review]:
        rows = self._query("SELECT * FROM reviews WHERE result_id = ? ORDER BY seq", (record_id,))
        return [
            Review(
                result_id=row["result_id"],
                reviewer=row["reviewer"],
                created_at=from_ms(row["created_ms"]),
                action=row["action"],
                model_label=row["model_label"],
                final_label=row["final_label"],
                reasons=tuple(json.loads(row["reasons"])),
                note=row["note"],
                seq=int(row["seq"]),
            )
            for row in rows
        ]

    # --- audit --------------------------------------------------------------------------------------------

    def append_audit(self, event: AuditEvent) -> AuditEvent:
        """Link ``event`` to the last one and append it (one writer at a time); returns it with its hash."""
        with self._errors(), self._transaction() as connection:
            last = connection.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            seq, previous = (1, event.prev_hash) if last is None else (int(last[0]) + 1, last[1])
            linked = chained(event, previous, seq, self.audit_key)
            connection.execute(
                "INSERT INTO audit (seq, at_ms, actor, role, action, target, detail, prev_hash, hash) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    seq,
                    to_ms(linked.at),
                    linked.actor,
                    linked.role,
                    linked.action,
                    linked.target,
                    json.dumps(linked.detail, sort_keys=True),
                    linked.prev_hash,
                    linked.hash,
                ),
            )
            row = connection.execute("SELECT seq, hash, keyed_since, mac FROM audit_head WHERE id = 1").fetchone()
            head = (AuditHead(int(row[0]), row[1], int(row[2]), row[3]) if row else NO_HEAD).after(
                seq, linked.hash, self.audit_key
            )
            connection.execute(  # the chain's head, outside the events table: deleting events cannot hide
                "INSERT INTO audit_head (id, seq, hash, keyed_since, mac) VALUES (1, ?, ?, ?, ?) ON CONFLICT(id) "
                "DO UPDATE SET seq = excluded.seq, hash = excluded.hash, keyed_since = excluded.keyed_since, "
                "mac = excluded.mac",
                (head.seq, head.hash, head.keyed_since, head.mac),
            )
        return linked

    def audit_head(self) -> AuditHead | None:
        """The chain's head as kept apart from the events (None before the first event)."""
        rows = self._query("SELECT seq, hash, keyed_since, mac FROM audit_head WHERE id = 1")
        return AuditHead(int(rows[0][0]), str(rows[0][1]), int(rows[0][2]), str(rows[0][3])) if rows else None

    def audit_events(self, since_seq: int = 0, limit: int | None = None) -> list[AuditEvent]:
        rows = self._query(
            "SELECT * FROM audit WHERE seq > ? ORDER BY seq" + (" LIMIT ?" if limit else ""),
            (since_seq, limit) if limit else (since_seq,),
        )
        return [self._audit_event(row) for row in rows]

    @staticmethod
    def _audit_event(row: Any) -> AuditEvent:
        return AuditEvent(
            at=from_ms(row["at_ms"]),
            actor=row["actor"],
            role=row["role"],
            action=row["action"],
            target=row["target"],
            detail=json.loads(row["detail"]),
            prev_hash=row["prev_hash"],
            hash=row["hash"],
            seq=int(row["seq"]),
        )

    @staticmethod
    def _audit_where(query: AuditQuery) -> tuple[str, list[Any]]:
        """The SQL condition of ``query``: each filter is a column of one of the audit indexes, so the planner reads
        one index range in the order shown (``at_ms <= ?`` bounds the range of a page; the sequence number orders
        events of the same millisecond)."""
        query = query.whole_milliseconds()
        clauses: list[str] = []
        values: list[Any] = []
        for column, value in (("actor", query.actor), ("action", query.action), ("target", query.target)):
            if value is not None:
                clauses.append(f"{column} = ?")
                values.append(value)
        if query.start is not None:
            clauses.append("at_ms >= ?")
            values.append(to_ms(query.start))
        # one upper bound on the time: given the range's end and a page's, the planner bounded the index range by
        # the end and walked every newer event to reach each page (a full export slowed with every page: 46 s)
        uppers = ([to_ms(query.end) - 1] if query.end is not None else []) + (
            [to_ms(query.before[0])] if query.before is not None else []
        )
        if uppers:
            clauses.append("at_ms <= ?")
            values.append(min(uppers))
        if query.before is not None:
            at = to_ms(query.before[0])
            clauses.append("(at_ms < ? OR seq < ?)")
            values.extend((at, query.before[1]))
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), values

    def find_audit(self, query: AuditQuery, limit: int) -> list[AuditEvent]:
        """The events ``query`` selects, newest first (time, then sequence number), at most ``limit``."""
        where, values = self._audit_where(query)
        rows = self._query(
            f"SELECT * FROM audit{where} ORDER BY at_ms DESC, seq DESC LIMIT ?", [*values, max(limit, 0)]
        )
        return [self._audit_event(row) for row in rows]

    def count_audit(self, query: AuditQuery) -> int:
        where, values = self._audit_where(query)
        return int(self._query(f"SELECT count(*) FROM audit{where}", values)[0][0])

    def audit_verified(self) -> VerifiedPoint | None:
        """The last event a check found intact (None before the first check)."""
        rows = self._query("SELECT seq, hash, mac FROM audit_verified WHERE id = 1")
        return VerifiedPoint(int(rows[0][0]), str(rows[0][1]), str(rows[0][2])) if rows else None

    def mark_audit_verified(self, point: VerifiedPoint, replacing: VerifiedPoint | None = None) -> bool:
        """Keep ``point``; with ``replacing``, only over that point (a check that read it before its seconds of
        re-hashing must not overwrite what a full check marked meanwhile). Whether it was kept."""
        with self._errors():
            if replacing is None:
                self._connection().execute(
                    "INSERT INTO audit_verified (id, seq, hash, mac) VALUES (1, ?, ?, ?) ON CONFLICT(id) DO UPDATE "
                    "SET seq = excluded.seq, hash = excluded.hash, mac = excluded.mac",
                    (point.seq, point.hash, point.mac),
                )
                return True
            return bool(
                self._connection()
                .execute(
                    "UPDATE audit_verified SET seq = ?, hash = ?, mac = ? WHERE id = 1 AND seq = ? AND hash = ? "
                    "AND mac = ?",
                    (point.seq, point.hash, point.mac, replacing.seq, replacing.hash, replacing.mac),
                )
                .rowcount
            )
