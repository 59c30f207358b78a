"""What the stores keep about people and their actions: accounts, reviews of results, audit events.

- :class:`Account`: a local account (name, role, Argon2 password hash or none for single-sign-on accounts,
  disabled flag, failed sign-ins and a lock time for throttling).
- :class:`Review`: one radiologist's reading of one result, append-only; the latest is the final label.
- :class:`AuditEvent`: an append-only event whose ``hash`` covers its fields and the previous event's hash, so an
  edited or deleted event breaks the chain (:func:`event_hash`, checked by :func:`first_broken`);
  :class:`AuditHead` (the chain's end) and :class:`VerifiedPoint` (the last event found intact) are kept apart
  from the events; :class:`AuditQuery` says which events to read.
No patient identity in any of them: targets are result ids (image hashes), accounts are user names.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from core.errors import InvalidRecord

ROLES = ("radiologist", "supervisor", "admin")
REVIEW_ACTIONS = ("agree", "override")
REASON_CODES = ("missed_lesion", "false_alarm", "wrong_type", "image_unsuitable")
GENESIS = "0" * 64


RESERVED_NAMES = ("cli", "unknown")  # the audit trail's actors for the command line and for failed sign-ins


@dataclass(frozen=True)
class Account:
    name: str
    role: str
    password_hash: str | None = None
    disabled: bool = False
    failed_count: int = 0
    locked_until: datetime | None = None
    created_at: datetime | None = None
    sessions_from: datetime | None = None  # sessions signed in up to this time have ended (set when disabled)
    must_change: bool = False  # a password someone else set (a temporary one): its owner chooses another first

    def validate(self) -> Account:
        if not self.name or len(self.name) > 64 or not all(c.isalnum() or c in "._@-" for c in self.name):
            raise InvalidRecord("An account name is 1 to 64 letters, digits or . _ @ -.")
        if self.name.lower() in RESERVED_NAMES:  # an account "cli" mixed a user's actions with the server's
            raise InvalidRecord(
                f"The account name {self.name} is reserved: the audit trail names the command line and failed "
                f"sign-ins {' and '.join(RESERVED_NAMES)}."
            )
        if self.role not in ROLES:
            raise InvalidRecord(f"A role is one of {', '.join(ROLES)}.")
        return self


@dataclass(frozen=True)
class Review:
    result_id: str
    reviewer: str
    created_at: datetime
    action: str
    model_label: str
    final_label: str
    reasons: tuple[str, ...] = ()
    note: str = ""
    seq: int | None = None

    def validate(self, refused: bool = False) -> Review:
        """``refused``: the review is of an image the input gate refused, whose model label is never shown: every
        review of it is an override, the hidden label included (it was refused unless a reason was given)."""
        if self.action not in REVIEW_ACTIONS:
            raise InvalidRecord(f"A review is one of {', '.join(REVIEW_ACTIONS)}.")
        if self.action == "agree" and self.final_label != self.model_label:
            raise InvalidRecord("Agreeing keeps the model's label; an override names another one.")
        if self.action == "override" and self.final_label == self.model_label and not self.reasons and not refused:
            raise InvalidRecord("An override changes the label or gives a reason.")
        unknown = [code for code in self.reasons if code not in REASON_CODES]
        if unknown:
            raise InvalidRecord(f"Unknown reason code(s): {', '.join(unknown)}.")
        if len(self.note) > 2000:
            raise InvalidRecord("A review note is at most 2,000 characters.")
        return self


@dataclass(frozen=True)
class AuditEvent:
    at: datetime
    actor: str
    role: str
    action: str
    target: str | None = None
    detail: dict[str, object] = field(default_factory=dict)
    prev_hash: str = GENESIS
    hash: str = ""
    seq: int | None = None

    def canonical(self) -> str:
        """The text the hash covers (the previous hash included): stable across both stores."""
        body = {
            "at": self.at.isoformat(timespec="milliseconds"),
            "actor": self.actor,
            "role": self.role,
            "action": self.action,
            "target": self.target,
            "detail": self.detail,
            "prev": self.prev_hash,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def to_milliseconds(moment: datetime) -> datetime:
    """``moment`` cut to whole milliseconds: what both stores keep, so an event hashes the same after a round trip."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


KEYED = "hmac:"  # the prefix of a keyed hash: events written before the chain was keyed have plain SHA-256


def event_hash(event: AuditEvent, key: bytes | None = None) -> str:
    """HMAC-SHA256 of the event under the audit key (``hmac:...``): whoever edits the table cannot recompute it
    without the key, which is kept apart from the database. Without a key (events from before), plain SHA-256."""
    text = event.canonical().encode("ascii")
    if key is None:
        return hashlib.sha256(text).hexdigest()
    return KEYED + hmac.new(key, text, hashlib.sha256).hexdigest()


def chained(event: AuditEvent, previous_hash: str, seq: int, key: bytes | None = None) -> AuditEvent:
    """``event`` as the store appends it: its time cut to milliseconds, linked to ``previous_hash``, hashed."""
    linked = replace(event, at=to_milliseconds(event.at), prev_hash=previous_hash, seq=seq, hash="")
    return replace(linked, hash=event_hash(linked, key))


def first_broken(
    events: Sequence[AuditEvent], key: bytes | None = None, after: tuple[int, str] | None = None
) -> AuditEvent | None:
    """The first event (in sequence order) whose hash or link does not hold, or None for an intact chain. A gap in
    the sequence numbers (a deleted event) breaks the link of the event after it. Once one event is keyed, every
    later one must be: an unkeyed hash after it is an edit re-hashed without the key. ``after``: the sequence
    number and hash of the event just before ``events`` (checked earlier), when they do not start the chain."""
    previous = GENESIS if after is None else after[1]
    expected_seq = None if after is None else after[0] + 1
    keyed_seen = previous.startswith(KEYED)
    for event in events:
        if expected_seq is not None and event.seq is not None and event.seq != expected_seq:
            return event
        keyed = event.hash.startswith(KEYED)
        if keyed and key is None:
            return event  # cannot be checked without the key: not proven intact
        if (keyed_seen and not keyed) or event.prev_hash != previous:
            return event
        if event.hash != event_hash(event, key if keyed else None):
            return event
        keyed_seen = keyed_seen or keyed
        previous = event.hash
        expected_seq = None if event.seq is None else event.seq + 1
    return None


@dataclass(frozen=True)
class AuditHead:
    """The chain's end as kept apart from the events: its last sequence number and hash, the first event that had
    to be keyed (0: the chain is not keyed), and an HMAC of all three under the audit key, so that the head
    cannot be moved back (events deleted from the end) or told that keying started later than it did."""

    seq: int
    hash: str
    keyed_since: int = 0
    mac: str = ""

    def expected_mac(self, key: bytes) -> str:
        text = f"{self.seq}|{self.hash}|{self.keyed_since}".encode()
        return hmac.new(key, text, hashlib.sha256).hexdigest()

    def after(self, seq: int, digest: str, key: bytes | None) -> AuditHead:
        """The head once event ``seq`` with hash ``digest`` is appended (keyed from it on when this is the first
        keyed event)."""
        keyed_since = self.keyed_since or (seq if key is not None else 0)
        moved = AuditHead(seq, digest, keyed_since)
        return replace(moved, mac=moved.expected_mac(key)) if key is not None else moved


NO_HEAD = AuditHead(0, GENESIS)


@dataclass(frozen=True)
class VerifiedPoint:
    """The last event a check of the chain found intact (sequence number and hash), kept so that the next check
    re-hashes only the events after it, and signed with the audit key (a text of its own, so a head's signature
    cannot be copied here) so that whoever edits the database cannot move it past an event they changed. Edits
    before it are the full check's to find (``python -m core audit verify``)."""

    seq: int
    hash: str
    mac: str = ""

    def expected_mac(self, key: bytes) -> str:
        return hmac.new(key, f"verified|{self.seq}|{self.hash}".encode(), hashlib.sha256).hexdigest()

    @classmethod
    def signed(cls, seq: int, digest: str, key: bytes | None) -> VerifiedPoint:
        point = cls(seq, digest)
        return replace(point, mac=point.expected_mac(key)) if key is not None else point


@dataclass(frozen=True)
class AuditQuery:
    """Which audit events to read, newest first (time, then sequence number): every filter given narrows. ``start``
    is included, ``end`` is not; ``before`` (the time and sequence number of the last event of the previous page)
    reads the page after it."""

    actor: str | None = None
    action: str | None = None
    target: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    before: tuple[datetime, int] | None = None

    def whole_milliseconds(self) -> AuditQuery:
        """The query with its times cut to whole milliseconds, as events keep theirs (both stores read this one)."""
        return replace(
            self,
            start=None if self.start is None else to_milliseconds(self.start),
            end=None if self.end is None else to_milliseconds(self.end),
            before=None if self.before is None else (to_milliseconds(self.before[0]), self.before[1]),
        )


MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # characters: piped from /dev/zero, a password was read until the command ran out of memory
# passwords this project's pages and README once printed for the first admin: anybody's to sign in with
PUBLISHED_PASSWORDS = frozenset({"a long password"})


def check_password(password: str) -> None:
    """At least :data:`MIN_PASSWORD` characters, not only spaces and not one character repeated (twelve spaces
    made an admin account)."""
    if len(password) < MIN_PASSWORD:
        raise InvalidRecord(f"A password has at least {MIN_PASSWORD} characters.")
    if len(password) > MAX_PASSWORD:
        raise InvalidRecord(f"A password has at most {MAX_PASSWORD:,} characters.")
    if not password.strip() or len(set(password)) == 1:
        raise InvalidRecord("A password is not only spaces or one character repeated.")
    if password.strip().lower() in PUBLISHED_PASSWORDS:
        raise InvalidRecord("That password is printed in this project's documentation: choose your own.")
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in password):  # piped in: nobody could type it at the form
        raise InvalidRecord("A password holds no control character (a tab, a NUL byte): no sign-in form can type one.")
