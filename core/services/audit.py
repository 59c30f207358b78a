"""The audit trail as use cases: record an event, read and export it (with permission), verify the chain.

Every action that touches a result, an account or a setting is one event: who (account and role), when (UTC),
what, on which target (a result id, an account name), with a few non-identifying details. Events are append-only
and hash-chained by the store (:mod:`core.storage.people`); :func:`verify` finds the first one that was edited or
whose predecessor was deleted.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from core.services.access import AUDIT_EXPORT, AUDIT_READ, OPEN_RESULT, Actor, allowed, require
from core.storage.people import KEYED, AuditEvent, AuditHead, first_broken
from core.storage.protocol import Store


def record(store: Store, actor: Actor, event: str, target: str | None = None, **detail: Any) -> AuditEvent:
    """Append one event named ``event`` (raises the store's error when it cannot: what cannot be audited fails)."""
    return store.append_audit(AuditEvent(datetime.now(UTC), actor.name, actor.role, event, target, dict(detail)))


@dataclass(frozen=True)
class Verification:
    intact: bool
    events: int
    first_bad: AuditEvent | None = None
    head: AuditHead | None = None  # the chain's end as kept apart from the events
    problem: str | None = None
    keyed: bool = False


def verify(store: Store, expected_head: tuple[int, str] | None = None) -> Verification:
    """Re-hash the whole chain in order with the audit key, then compare its end with the head kept apart from the
    events (and with ``expected_head``, one an operator noted earlier): edited, re-hashed or deleted events,
    including the last ones or all of them, are found."""
    events = store.audit_events()
    key = getattr(store, "audit_key", None)
    head = store.audit_head()
    bad = first_broken(events, key)
    last = (events[-1].seq or 0, events[-1].hash) if events else None
    unkeyed = [
        e
        for e in events
        if head and head.keyed_since and (e.seq or 0) >= head.keyed_since and not e.hash.startswith(KEYED)
    ]
    problem = None
    if bad is not None:
        problem = f"event {bad.seq} was edited, re-hashed without the key, or an event before it was deleted"
    elif head is None and events:
        problem = "the chain has no head: it was removed, or the events were written outside the application"
    elif head is not None and key is not None and head.keyed_since and head.mac != head.expected_mac(key):
        problem = "the chain's head was altered (its signature does not hold)"
    elif unkeyed:
        problem = f"event {unkeyed[0].seq} is not keyed where the chain is: it was re-hashed without the key"
    elif head is not None and last != (head.seq, head.hash) and not (last is None and head.seq == 0):
        problem = f"the chain ends at {last[0] if last else 0} but its head says {head.seq}: events were deleted"
    elif expected_head is not None and not any(
        e.seq == expected_head[0] and e.hash == expected_head[1] for e in events
    ):
        problem = f"the noted head {expected_head[0]} is no longer in the chain: the trail was cut or replaced"
    return Verification(problem is None, len(events), bad, head, problem, key is not None)


def events(
    store: Store,
    actor: Actor,
    action: str | None = None,
    who: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> list[AuditEvent]:
    """The events matching the filters, oldest first (supervisors and admins)."""
    require(actor, AUDIT_READ)
    chosen = [
        e
        for e in store.audit_events()
        if (action is None or e.action == action)
        and (who is None or e.actor == who)
        and (start is None or e.at >= start)
        and (end is None or e.at < end)
    ]
    if allowed(actor, OPEN_RESULT) or allowed(actor, AUDIT_EXPORT):
        return chosen
    return [redacted(e) for e in chosen]


RESULT_ACTIONS = frozenset({"upload", "open", "review", "report", "history", "patient_reference_set"})


def redacted(event: AuditEvent) -> AuditEvent:
    """An event as a supervisor sees it: who did what and when, but for results and patients not which one nor
    with what content (a review's labels would be per-result verdicts, which supervisors see only as aggregates)."""
    if event.action not in RESULT_ACTIONS:
        return event
    return replace(event, target=None, detail={})


def export_csv(store: Store, actor: Actor, filters: Mapping[str, Any]) -> bytes:
    """The filtered events as CSV, headed by the filters used (admins); the export is itself an event."""
    require(actor, AUDIT_EXPORT)
    chosen = events(store, actor, **filters)
    buffer = io.StringIO()
    shown = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in filters.items() if v is not None}
    buffer.write(f"# audit events; filters: {json.dumps(shown, sort_keys=True) if shown else 'none'}\n")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["seq", "at_utc", "actor", "role", "action", "target", "detail", "prev_hash", "hash"])
    for e in chosen:
        writer.writerow(
            [
                e.seq,
                e.at.isoformat(),
                e.actor,
                e.role,
                e.action,
                e.target or "",
                json.dumps(e.detail, sort_keys=True),
                e.prev_hash,
                e.hash,
            ]
        )
    record(store, actor, "audit_export", None, events=len(chosen))
    return buffer.getvalue().encode("utf-8")
