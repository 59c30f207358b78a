"""What callers need from a database, as small typed protocols, and the helpers both stores share.

A store keeps :class:`~core.domain.results.Record` rows under their identity (image + model + frame) and answers
the dashboard's aggregates inside the database. Callers name the part they use: :class:`Results` (save and read
results), :class:`Reviews`, :class:`AuditTrail`, :class:`Accounts`, :class:`Dashboards` (the read-side aggregates)
and :class:`UnitOfWork` (several writes as one); :class:`Store` is all of them, what ``open_store`` returns.
Failures raise :class:`~core.errors.StoreUnavailable` (unreachable, locked: retry later),
:class:`~core.errors.InvalidRecord` (a row the database refuses) or :class:`~core.errors.StoreError` (corrupt file,
refused operation), with messages that never contain credentials.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import date, datetime, timedelta
from typing import Any, Protocol

from core.domain.people import Account, AuditEvent, AuditHead, AuditQuery, Review, VerifiedPoint
from core.domain.results import (
    LESION_QUANTILES,
    REJECTED,
    DayCount,
    DayQuality,
    Filters,
    LesionPeriod,
    ModelRow,
    Record,
    Section,
    Summary,
    WorklistQuery,
    is_patient_ref,
)
from core.domain.times import as_utc
from core.errors import InvalidRecord, ReviewedMeanwhile
from core.model.decision import UNKNOWN_TYPE

HISTOGRAM_BINS = 20
EVERYTHING = Filters()
SCHEMA_VERSION = 13  # 1: round 1 (id had the patient reference); 2: id = image + model + frame; 3: people; 4: series;
# 5: whole-day roll-ups; 6: days shifted by whole hours (both SQLite only); 7: NIfTI series' orientation corrected;
# 8: audit filters indexed, the last verified audit event kept; 9: lesion area and volume; 10: MongoDB results
# written before version 4 given the fields its validator requires (SQLite: no change); 11: a series' count of its
# study's unread series as a column of its own, for the studies' chart (SQLite; MongoDB reads it from the geometry);
# 12: an account's sessions_from (disabling an account ends the sessions signed in before it, idle ones too);
# 13: an account's must_change (a temporary password an administrator set: its owner chooses another first)


class UnitOfWork(Protocol):
    """Writes inside ``atomic()`` commit together or not at all (SQLite; MongoDB writes one after another)."""

    def atomic(self) -> AbstractContextManager[None]: ...


class Results(Protocol):
    """Save and read results. ``add`` returns False when the record already existed."""

    def add(self, record: Record) -> bool: ...
    def add_series(self, record: Record, sections: Sequence[Section]) -> bool: ...
    def sections_of(self, record_id: str) -> list[Section]: ...
    def get(self, record_id: str) -> Record | None: ...
    def set_patient_ref(self, record_id: str, patient_ref: str | None, was: str | None) -> bool: ...
    def recent(self, limit: int, filters: Filters = ...) -> list[Record]: ...
    def of_patient(self, patient_ref: str, limit: int) -> list[Record]: ...
    def worklist(self, query: WorklistQuery, limit: int = ...) -> list[Record]: ...
    def unread_image_keys(self) -> set[str]: ...


class Reviews(Protocol):
    """The append-only review history of a result; the latest review is summarised on the result. ``add_review``
    with ``seen_reviews`` is a compare-and-set: :class:`InvalidRecord` and nothing written when the result has
    another number of reviews by then."""

    def add_review(self, review: Review, seen_reviews: int | None = None) -> Record: ...
    def reviews_of(self, record_id: str) -> list[Review]: ...


class AuditTrail(Protocol):
    """The keyed, append-only audit chain, its head, its indexed filters and the page's last verified point."""

    def append_audit(self, event: AuditEvent) -> AuditEvent: ...
    def audit_events(self, since_seq: int = 0, limit: int | None = None) -> list[AuditEvent]: ...
    def audit_head(self) -> AuditHead | None: ...
    def find_audit(self, query: AuditQuery, limit: int) -> list[AuditEvent]: ...
    def count_audit(self, query: AuditQuery) -> int: ...
    def audit_verified(self) -> VerifiedPoint | None: ...
    def mark_audit_verified(self, point: VerifiedPoint, replacing: VerifiedPoint | None = None) -> bool: ...


# the account fields ``update_account`` may set or compare (the name is the key; the creation time never changes)
ACCOUNT_FIELDS = ("role", "password_hash", "disabled", "failed_count", "locked_until", "sessions_from", "must_change")


def check_account_fields(*fields: Mapping[str, Any]) -> None:
    """Refuse a field ``update_account`` does not know (both stores, the same rule)."""
    unknown = sorted({key for mapping in fields for key in mapping} - set(ACCOUNT_FIELDS))
    if unknown:
        raise InvalidRecord(f"Not an account field: {unknown[0]}.")


class Accounts(Protocol):
    """Local accounts and the atomic sign-in claims that bound password guessing."""

    def get_account(self, name: str) -> Account | None: ...
    def insert_account(self, account: Account) -> bool: ...
    def uncreate_account(self, account: Account) -> bool: ...
    def update_account(self, name: str, changes: Mapping[str, Any], expected: Mapping[str, Any]) -> bool: ...
    def accounts(self) -> list[Account]: ...
    def begin_sign_in(self, name: str, now: datetime) -> int | None: ...
    def end_sign_in(self, name: str, succeeded: bool, locked_until: datetime | None = None) -> None: ...


class Dashboards(Protocol):
    """The read-side aggregates of the Statistics page, computed inside the database."""

    def summary(self, filters: Filters = ...) -> Summary: ...
    def daily_counts(self, filters: Filters, timezone: str) -> list[DayCount]: ...
    def daily_studies(self, filters: Filters, timezone: str) -> list[DayCount]: ...
    def confidence_histogram(self, filters: Filters = ...) -> list[int]: ...
    def daily_quality(self, filters: Filters, timezone: str) -> list[DayQuality]: ...
    def confusion(self, filters: Filters) -> dict[tuple[str, str], int]: ...
    def turnaround_hours(self, filters: Filters) -> dict[int, int]: ...
    def by_model(self, filters: Filters = ...) -> list[ModelRow]: ...
    def model_versions(self) -> list[str]: ...
    def lesion_volumes(self, filters: Filters, timezone: str, period: str) -> list[LesionPeriod]: ...


class Store(UnitOfWork, Results, Reviews, AuditTrail, Accounts, Dashboards, Protocol):
    """A whole database, what ``open_store`` returns: every part above, and its own health and description."""

    def schema_version(self) -> int: ...
    def describe(self) -> str: ...
    def ping(self) -> None: ...
    def key_check(self, name: str, digest: str, replace: bool = False) -> str: ...


def fold_summary(rows: Sequence[Mapping[str, Any]]) -> Summary:
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
        first=as_utc(min(row["first"] for row in rows)) if rows else None,
        last=as_utc(max(row["last"] for row in rows)) if rows else None,
    )


def day_rows(rows: Sequence[tuple[int, int, int]]) -> list[DayCount]:
    return [DayCount(day=date(1970, 1, 1) + timedelta(days=int(d)), total=int(n), tumour=int(t)) for d, n, t in rows]


def check_series(record: Record, sections: Sequence[Any]) -> None:
    """Refuses a series record without exactly its sections (both stores write them with it)."""
    if record.kind != "series" or record.section_count != len(sections):
        raise InvalidRecord("A series record needs its section count and exactly that many sections.")


def check_patient_ref(patient_ref: str | None) -> None:
    """Refuses a patient reference that is no keyed hash (None: the reference cleared)."""
    if patient_ref is not None and not is_patient_ref(patient_ref):
        raise InvalidRecord("A patient reference is a keyed hash (64 hexadecimal characters).")


def check_review(record: Record, review: Review, seen_reviews: int | None = None) -> None:
    """A review must be of this result's verdict and name one of the model's labels (or tumour, type unknown); a
    refused image's is an override; ``seen_reviews`` (when given) must still be the result's number of reviews."""
    review.validate(refused=record.gate == REJECTED)
    if review.model_label != record.label:
        raise InvalidRecord("The review is not of this result's verdict.")
    if record.gate == REJECTED and review.action == "agree":
        raise InvalidRecord("The input gate refused this image: there is no verdict to agree with; override it.")
    if seen_reviews is not None and record.review_count != seen_reviews:
        raise ReviewedMeanwhile()
    if review.final_label not in record.probabilities and review.final_label != UNKNOWN_TYPE:
        raise InvalidRecord("The final label must be one of the model's labels.")


def quantile_ranks(n: int, q: float) -> tuple[int, int, float]:
    """The two ranks (0-based, in ascending order of value) between which the ``q`` quantile of ``n`` values lies,
    and the weight of the upper one (linear interpolation; both stores compute ``(n - 1) * q`` the same way)."""
    position = (n - 1) * q
    low = int(position)
    return low, low + (position > low), position - low


def lesion_period(start: date, n: int, at_rank: Mapping[int, float]) -> LesionPeriod:
    """A period's :class:`LesionPeriod` from its study count and the volumes at the ranks :func:`quantile_ranks`
    names (the only values a store reads out of the database)."""
    quantiles = []
    for q in LESION_QUANTILES:
        low, high, weight = quantile_ranks(n, q)
        quantiles.append(float(at_rank[low] + (at_rank[high] - at_rank[low]) * weight))
    return LesionPeriod(start, n, tuple(quantiles))
