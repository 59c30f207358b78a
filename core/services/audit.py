"""The audit trail as use cases: record an event, read and export it (with permission), verify the chain.

Every action that touches a result, an account or a setting is one event: who (account and role), when (UTC),
what, on which target (a result id, an account name), with a few non-identifying details. Events are append-only
and hash-chained by the store (:mod:`core.domain.people`); :func:`verify` (the command line's full check) finds the
first one that was edited or whose predecessor was deleted, and :func:`verify_new` (the page's) re-hashes only the
events after the last verified one. Events are filtered and paged in the database (:func:`events`, :func:`count`).
"""

from __future__ import annotations

import csv
import hmac
import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from core.domain.people import KEYED, AuditEvent, AuditHead, AuditQuery, VerifiedPoint, event_hash, first_broken
from core.errors import AccessDenied, StoreError
from core.services.access import AUDIT_EXPORT, AUDIT_READ, COMMAND_LINE, OPEN_RESULT, Actor, allowed, require
from core.services.exports import spreadsheet_safe, text_line_safe
from core.storage.protocol import AuditTrail

logger = logging.getLogger("btd.audit")


def record(store: AuditTrail, actor: Actor, event: str, target: str | None = None, **detail: Any) -> AuditEvent:
    """Append one event named ``event`` (raises the store's error when it cannot: what cannot be audited fails).
    The command line's events name the operating-system account that ran it (two administrators of one server
    were both "cli")."""
    if actor == COMMAND_LINE:
        detail = {**detail, "os_user": _os_user()}
    return store.append_audit(AuditEvent(datetime.now(UTC), actor.name, actor.role, event, target, dict(detail)))


def _os_user() -> str:
    """The account the process runs as, by its user id (getpass took LOGNAME or USER first: anyone could name
    someone else); its number where it has no name (a container's)."""
    import os
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


ANOTHER_KEY = (
    "The last event of this database's audit trail is not signed with this command's audit key (BTD_AUDIT_KEY, "
    "[audit] key in the secrets file, else the data folder's audit.key): nothing was read or written. Run it with "
    "the server's settings (an event under another key would read as tampering from then on); if the trail was "
    "edited, `audit verify` says where."
)


WRONG_KEY = (
    "the audit key this command runs with does not sign the chain: run it with the server's BTD_AUDIT_KEY (if that "
    "is the key, the chain was rewritten under another one); nothing was marked"
)
UNCLEAR_KEY = (
    "the audit key this command runs with signs the chain's first keyed event but not its head nor its last event: "
    "either it is not the server's (the first events written under the data folder's key, the rest under the "
    "server's), or events at the end were edited and the head altered; run it with the server's BTD_AUDIT_KEY to "
    "tell; nothing was marked"
)


def key_doubt(store: AuditTrail) -> str | None:
    """Why the store's key may not be the one that keeps the chain (None: it is, and whatever does not hold is an
    edit that verify names and marks). A key that fails the last event while it signs the head, which every
    append signs, is the server's and that event was edited; one that signs neither the head nor the first keyed
    event is another (:data:`WRONG_KEY`); one that signs the first keyed event alone cannot be told from the
    server's key over a tail edited with its head (:data:`UNCLEAR_KEY`). Either of the last two marks nothing: an
    edit of the newest event read as a wrong key, and a wrong key's "broken" mark raised the page's alarm."""
    if signs_the_chain(store):
        return None
    key, head = getattr(store, "audit_key", None), store.audit_head()
    if key is None:
        return WRONG_KEY
    if head is not None and head.mac and hmac.compare_digest(head.mac, head.expected_mac(key)):
        return None
    first = next((e for e in store.audit_events() if e.hash.startswith(KEYED)), None)
    if first is None or not hmac.compare_digest(event_hash(first, key), first.hash):
        return WRONG_KEY
    return UNCLEAR_KEY if head is not None and head.mac else None


def signs_the_chain(store: AuditTrail) -> bool:
    """Whether the store's key signs the chain's last event (a chain not keyed yet, or empty: any key does). What a
    command checks before it writes: one run without the server's BTD_AUDIT_KEY wrote its event under the data
    folder's own key, and the trail read as tampered with, for good. Read from the events, not the head (a head
    written before keying, or lost, would let the wrong key in)."""
    head = store.audit_head()
    tail = store.audit_events(since_seq=max(0, (head.seq if head else 0) - 1))
    if not tail and head is not None:  # the newest events deleted (the head ahead of them): the real last one
        tail = store.audit_events()
    last = max(tail, key=lambda e: e.seq or 0) if tail else None  # a MongoDB event with a text _id reads last, as -1
    if last is None or not last.hash.startswith(KEYED):
        return True
    key = getattr(store, "audit_key", None)
    return key is not None and hmac.compare_digest(event_hash(last, key), last.hash)


@dataclass(frozen=True)
class Verification:
    intact: bool
    events: int
    first_bad: AuditEvent | None = None
    head: AuditHead | None = None  # the chain's end as kept apart from the events
    problem: str | None = None
    keyed: bool = False
    checked: int = 0  # how many events this check re-hashed (a check from the last verified event: the new ones)


def verify(store: AuditTrail, expected_head: tuple[int, str] | None = None, keep_point: bool = True) -> Verification:
    """Re-hash the whole chain in order with the audit key, then compare its end with the head kept apart from the
    events (and with ``expected_head``, one an operator noted earlier): edited, re-hashed or deleted events,
    including the last ones or all of them, are found. An intact chain's end becomes the verified point from which
    :func:`verify_new` goes on (this full check is what re-establishes it after a broken one); ``keep_point``
    False: nothing is written (a check under a key that may not be the server's)."""
    return _verify_all(store, expected_head, keep_point=keep_point)


def _verify_all(store: AuditTrail, expected_head: tuple[int, str] | None, keep_point: bool) -> Verification:
    key = getattr(store, "audit_key", None)
    # the head first, then the events: read the other way round, events the app appended between the two reads
    # (the longer the chain, the wider the gap) put the head past the events read, "events were deleted", and the
    # page's check then said broken until a quiet full check. Events appended after the head was read are
    # re-hashed with the chain; its end is compared at the head read
    head = store.audit_head()
    if head is None and store.audit_events(0, 1):  # the first event written meanwhile, or the head removed: again
        head = store.audit_head()
    started = store.audit_verified() if keep_point else None  # marked over only if still so when the walk ends
    walk = _walk(store, key, head, expected_head)
    apart = bool(getattr(store, "head_written_apart", False))  # MongoDB: the head is a write after its event's
    problem = _problem(walk.upto, walk.unkeyed, walk.bad, head, key, walk.last, apart)
    if problem is None and not walk.count and head is None and _holds_audited(store):
        problem = (
            "the chain is empty, yet the database holds accounts or results, whose creation is audited: the trail "
            "was removed"
        )
    if problem is None and expected_head is not None and not walk.noted:
        problem = f"the noted head {expected_head[0]} is no longer in the chain: the trail was cut or replaced"
    point = store.audit_verified() if keep_point else None
    moved = None  # a chain whole in itself that lost the event verified before: cut back (the newest events deleted,
    # an earlier signed head put back) or, unkeyed, replaced by a re-hashed one; the point stays. A point whose own
    # signature fails is no evidence: the full check re-establishes it (a deleted point is no more)
    if point is not None and point.hash != BROKEN and (key is None or point.mac == point.expected_mac(key)):
        moved = _point_moved(store, point, key)
    problem = problem or moved
    if problem is None and walk.last is not None and keep_point:  # at the head (events past it, appended meanwhile or
        _mark(store, walk.last, key, started)  # a MongoDB head one behind, are the next check's); not over a mark
        # another check made meanwhile (one that found an edit made after this walk read past it: it read whole)
    elif problem is not None and keep_point and moved is None:  # an edit before the point, which still stands:
        _mark(store, (0, BROKEN), key)  # the page's check says broken from now on, until a full check finds it whole
    return Verification(problem is None, walk.count, walk.bad, head, problem, key is not None, walk.count)


CHUNK = 10_000  # events read at a time by a full check: a list of every event held 1.3 GB for a million


@dataclass
class _Walk:
    """What one pass over the whole chain found: how many events, the first broken one, the last one up to the head
    (and how many up to it), the first unkeyed one where the head says the chain is keyed, and whether the noted
    head was among them."""

    count: int = 0
    bad: AuditEvent | None = None
    last: tuple[int, str] | None = None
    upto: int = 0
    unkeyed: AuditEvent | None = None
    noted: bool = False


def _walk(store: AuditTrail, key: bytes | None, head: AuditHead | None, expected: tuple[int, str] | None) -> _Walk:
    """The chain re-hashed in order, :data:`CHUNK` events at a time, each chunk from the last one's end."""
    walk, since, previous = _Walk(), 0, None
    while chunk := store.audit_events(since, CHUNK):
        paged = isinstance(chunk[-1].seq, int) and chunk[-1].seq > since  # not an event with no number (MongoDB
        if len(chunk) == CHUNK and not paged:  # lists them last, as -1, in every read): those cannot be paged by it
            chunk = store.audit_events(since)  # the rest, read whole
        walk.bad = walk.bad or first_broken(chunk, key, after=previous)
        upto = [e for e in chunk if head is None or (e.seq or 0) <= head.seq]  # past the head: the next check's
        if upto:
            walk.last, walk.upto = (upto[-1].seq or 0, upto[-1].hash), walk.upto + len(upto)
            walk.unkeyed = walk.unkeyed or _first_unkeyed(upto, head)
        walk.noted = walk.noted or any((e.seq, e.hash) == expected for e in chunk)
        walk.count += len(chunk)
        previous = (chunk[-1].seq or 0, chunk[-1].hash)
        if len(chunk) < CHUNK or not paged:
            break  # the end, or the events with no number, read once
        since = chunk[-1].seq
    return walk


def _first_unkeyed(events: Sequence[AuditEvent], head: AuditHead | None) -> AuditEvent | None:
    """The first event the head says is keyed (from its ``keyed_since`` on) whose hash is not."""
    if head is None or not head.keyed_since:
        return None
    return next((e for e in events if (e.seq or 0) >= head.keyed_since and not e.hash.startswith(KEYED)), None)


BROKEN = "broken"  # the verified point's hash after a full check found the chain broken (its sequence number: 0)
BROKEN_BEFORE = (
    "a full check found the chain broken (Check every event, or python -m core audit verify, names what changed)"
)


def full_check(store: AuditTrail, actor: Actor) -> Verification:
    """:func:`verify` for a reader of the trail (the Audit page's "check every event")."""
    require(actor, AUDIT_READ)
    return verify(store)


def chain_head(store: AuditTrail, actor: Actor) -> tuple[int, str] | None:
    """The chain's head (sequence number, hash), what the Audit page's cached check is keyed by; readers of the
    trail only (the page read it from the store itself)."""
    require(actor, AUDIT_READ)
    head = store.audit_head()
    return (head.seq, head.hash) if head else None


def verify_new(store: AuditTrail, actor: Actor) -> Verification:
    """The page's check: re-hash only the events after the last verified one (the whole chain the first time), and
    compare the chain's end with its head. A verified point that no longer matches the chain (its event edited or
    deleted, or the point itself rewritten) is a broken chain, reported so; the point is never moved over it. Edits
    before the verified point are :func:`verify`'s to find (``python -m core audit verify``). A chain found broken
    is not re-hashed on every look: the page said so after re-hashing a million events for 20 s on each rerun that
    followed a new event; the full check (the page's "Check every event", the command line) names what changed."""
    require(actor, AUDIT_READ)
    key = getattr(store, "audit_key", None)
    point = store.audit_verified()  # then the head: it is at or after the point, and every event up to it is written
    head = store.audit_head()
    if point is None or (key is not None and not point.mac):  # never checked (or only before the chain was keyed)
        return verify(store)
    moved = _point_moved(store, point, key)
    if moved is None and point.hash == BROKEN:  # a full check found the chain broken: not checked from here
        moved = BROKEN_BEFORE
    if moved is not None:  # broken; the point stays where it was, and the full check names what changed
        return Verification(False, head.seq if head else 0, None, head, moved, key is not None)
    # events past the head: appends whose head write is still under way (MongoDB writes it after its event, and
    # several copies of the app append at once), which follow from the head; one that does not (written behind the
    # application's back: a forged review, listed under a green "the chain holds") breaks the chain there
    beyond = store.audit_events(head.seq) if head is not None else []
    if beyond and (bad := first_broken(beyond, key, after=(head.seq, head.hash))) is not None:  # type: ignore[union-attr]
        problem = _problem(len(beyond), None, bad, head, key, None)
        return Verification(False, head.seq, bad, head, problem, key is not None, len(beyond))  # type: ignore[union-attr]
    pending = head.seq - point.seq if head is not None else 0
    new = store.audit_events(point.seq, pending) if pending > 0 else []
    bad = first_broken(new, key, after=(point.seq, point.hash))
    last = (new[-1].seq or 0, new[-1].hash) if new else (point.seq, point.hash)
    problem = _problem(len(new), _first_unkeyed(new, head), bad, head, key, last)
    if problem is None and new:
        _mark(store, last, key, replacing=point)
    return Verification(problem is None, last[0], bad, head, problem, key is not None, len(new))


def _problem(
    count: int,
    unkeyed: AuditEvent | None,
    bad: AuditEvent | None,
    head: AuditHead | None,
    key: bytes | None,
    last: tuple[int, str] | None,
    apart: bool = False,
) -> str | None:
    """What is wrong with a chain ending at ``last`` whose ``count`` events (all, or those after the verified point)
    were re-hashed and found first broken at ``bad`` (and first ``unkeyed`` where the head says they are keyed),
    given its ``head``; None when nothing is."""
    if bad is not None:
        return f"event {bad.seq} was edited, re-hashed without the key, or an event before it was deleted"
    if head is None and last is not None and apart and last[0] == 1 and count == 1:  # the first event's head
        logger.warning("event=audit_head_behind by=1")  # write cut off after it (MongoDB): the next event moves it
        return None
    if head is None and last is not None:
        return "the chain has no head: it was removed, or the events were written outside the application"
    if head is None:
        return None
    # with a key every event signs the head, its keyed_since included: an unsigned head would let whoever holds
    # the file re-hash the chain without the key, or cut it, and unkey the head to switch the keyed checks off
    if key is not None and not head.mac:
        return (
            "the chain's head is not signed although the trail is keyed: it was altered (on a chain begun before "
            "the key was set, the next event signs it)"
        )
    if key is not None and head.mac != head.expected_mac(key):
        return "the chain's head was altered (its signature does not hold)"
    if unkeyed is not None:
        return f"event {unkeyed.seq} is not keyed where the chain is: it was re-hashed without the key"
    if last != (head.seq, head.hash) and not (last is None and head.seq == 0):
        return f"the chain ends at {last[0] if last else 0} but its head says {head.seq}: events were deleted"
    return None


def _holds_audited(store: AuditTrail) -> bool:
    """Whether the store holds an account, or a result saved since the trail began (it keeps its image; results
    of a database from before the trail, upgraded, have none), whose creation is audited (a store of the audit
    trail alone holds neither)."""
    listed, recent = getattr(store, "accounts", None), getattr(store, "recent", None)
    if callable(listed) and listed():
        return True
    return callable(recent) and any(record.image_key for record in recent(1))


def _point_moved(store: AuditTrail, point: VerifiedPoint, key: bytes | None) -> str | None:
    """Why the verified point no longer stands (None when its event is in the chain as it was verified)."""
    if key is not None and point.mac != point.expected_mac(key):
        return "the record of the last verified event was altered (its signature does not hold)"
    if point.hash == BROKEN:  # no event: the mark a failed full check leaves
        return None
    found = store.audit_events(point.seq - 1, 1)
    if not found or (found[0].seq, found[0].hash) != (point.seq, point.hash):
        return f"event {point.seq}, verified earlier, is no longer in the chain as it was: the trail was changed"
    # its content re-hashed too (one HMAC): the newest event edited after a check (its actor, a label), its hash
    # left, read as holding with nothing re-hashed, and the page showed the forged actor
    if first_broken(found, key, after=(point.seq - 1, found[0].prev_hash)) is not None:
        return f"event {point.seq} was edited, re-hashed without the key, or an event before it was deleted"
    return None


def _mark(store: AuditTrail, last: tuple[int, str], key: bytes | None, replacing: VerifiedPoint | None = None) -> None:
    """Keep ``last`` as the verified point (a store that cannot be written keeps the check's answer all the same);
    ``replacing``: only over that point, the one the check began from (a full check that found the chain broken
    meanwhile, its mark overwritten by the page's, read as whole again)."""
    try:
        store.mark_audit_verified(VerifiedPoint.signed(last[0], last[1], key), replacing)
    except StoreError as error:
        logger.warning("event=audit_verified_not_kept reason=%s", type(error).__name__)


PAGE = 500  # events shown at once; older ones a page at a time


def _query(
    actor: Actor,
    action: str | None = None,
    who: str | None = None,
    target: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    before: tuple[datetime, int] | None = None,
) -> AuditQuery:
    """The filters as a store query (``who``: the account that acted; ``start`` included, ``end`` not). Filtering
    by target is for the roles that see targets: a supervisor seeing which events a result id selects would learn
    who uploaded, opened or reviewed that result."""
    require(actor, AUDIT_READ)
    if target is not None and not sees_targets(actor):
        raise AccessDenied(f"The {actor.role} role may not filter the audit trail by result or patient.")
    return AuditQuery(actor=who, action=action, target=target, start=start, end=end, before=before)


def sees_targets(actor: Actor) -> bool:
    """Whether ``actor`` sees which result or patient an event concerns (supervisors see who did what and when)."""
    return allowed(actor, OPEN_RESULT) or allowed(actor, AUDIT_EXPORT)


def events(
    store: AuditTrail, actor: Actor, before: tuple[datetime, int] | None = None, limit: int = PAGE, **filters: Any
) -> list[AuditEvent]:
    """The events matching ``filters`` (action, who, target, start, end), newest first, at most ``limit``, read in
    the database; ``before`` (the time and sequence number of the last event of a page) reads the next page.
    Supervisors and admins; supervisors see result events redacted."""
    chosen = store.find_audit(_query(actor, before=before, **filters), limit)
    return chosen if sees_targets(actor) else [redacted(e) for e in chosen]


def count(store: AuditTrail, actor: Actor, **filters: Any) -> int:
    """How many events match ``filters`` (as :func:`events`), counted in the database."""
    return store.count_audit(_query(actor, **filters))


# events about one result, patient or study: a supervisor sees who did it and when, not which one (a PACS event's
# target is the study's keyed reference and its detail the report's DICOM UID, which the PACS maps to a patient)
RESULT_ACTIONS = frozenset(
    {
        "upload",
        "open",
        "review",
        "report",
        "history",
        "worklist_patient",
        "patient_reference_set",
        "pacs_search",
        "pacs_pull",
        "pacs_pull_failed",
        "pacs_send",
        "pacs_send_failed",
        "pacs_left_behind",
        "results_export",
    }
)


def redacted(event: AuditEvent) -> AuditEvent:
    """An event as a supervisor sees it: who did what and when, but for results and patients not which one nor
    with what content (a review's labels would be per-result verdicts, which supervisors see only as aggregates)."""
    if event.action not in RESULT_ACTIONS:
        return event
    return replace(event, target=None, detail={})


def export_csv(store: AuditTrail, actor: Actor, filters: Mapping[str, Any]) -> bytes:
    """The filtered events as CSV, oldest first, headed by the filters used (admins); the export is itself an
    event. Read from the database a page at a time."""
    require(actor, AUDIT_EXPORT)
    pages: list[bytes] = []  # each page as its CSV bytes, oldest first within it: the events themselves, all held
    count, before = 0, None  # at once, took six times the CSV's size (531 MB for 300k events); text pages copied
    while page := events(store, actor, **filters, before=before, limit=EXPORT_PAGE):  # into one buffer and encoded,
        pages.append(_csv_rows(reversed(page)).encode("utf-8"))  # three (836 MB for 268 MB): now twice, once joined
        count, before = count + len(page), _after(page)
    shown = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in filters.items() if v is not None}
    heading = f"# audit events; filters: {json.dumps(shown, sort_keys=True) if shown else 'none'}"
    head = f"{text_line_safe(heading)}\nseq,at_utc,actor,role,action,target,detail,prev_hash,hash\n"  # typed filters
    # are text too: no formula a spreadsheet would run
    # which events left, too; the target as a flag only (supervisors read this event: which result or patient an
    # admin looked into is theirs no more than a target filter is); a typed name or action only when events matched
    # it (a patient's name typed in the wrong field matches none, and was kept for good in the trail)
    flagged = ("target", "who", "action") if not count else ("target",)
    kept = {k: v for k, v in shown.items() if k not in flagged} | {f"by_{k}": True for k in flagged if k in shown}
    record(store, actor, "audit_export", None, events=count, filters=kept)
    return b"".join([head.encode("utf-8"), *reversed(pages)])  # read newest first: the oldest page last


def _csv_rows(chosen: Any) -> str:
    """Events as CSV rows (names and details are text users chose: no cell a spreadsheet would run)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for e in chosen:
        cells = [e.actor, e.role, e.action, e.target or "", json.dumps(e.detail, sort_keys=True)]
        writer.writerow([e.seq, e.at.isoformat(), *map(spreadsheet_safe, cells), e.prev_hash, e.hash])
    return buffer.getvalue()


EXPORT_PAGE = 5000


def _after(shown: Sequence[AuditEvent]) -> tuple[datetime, int] | None:
    """Where the page after ``shown`` (newest first) starts."""
    return (shown[-1].at, shown[-1].seq or 0) if shown else None
