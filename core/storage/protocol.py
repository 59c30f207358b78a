"""The one storage interface both stores implement, and the row conversions they share.

A store keeps :class:`~core.storage.records.Record` rows under their identity (image + model + frame) and answers
the dashboard's aggregates inside the database. Failures raise :class:`~core.errors.StoreUnavailable` (unreachable,
locked: retry later), :class:`~core.errors.InvalidRecord` (a row the database refuses) or
:class:`~core.errors.StoreError` (corrupt file, refused operation), with messages that never contain credentials.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import date, datetime, timedelta
from typing import Any, Protocol

from core.errors import InvalidRecord
from core.storage.people import Account, AuditEvent, AuditHead, AuditQuery, Review, VerifiedPoint
from core.storage.records import (
    UNKNOWN_TYPE,
    DayCount,
    DayQuality,
    Filters,
    ModelRow,
    Record,
    Section,
    Summary,
    WorklistQuery,
)
from core.storage.timebuckets import as_utc

HISTOGRAM_BINS = 20
EVERYTHING = Filters()
SCHEMA_VERSION = 8  # 1: round 1 (id had the patient reference); 2: id = image + model + frame; 3: people; 4: series;
# 5: whole-day roll-ups; 6: days shifted by whole hours (both SQLite only); 7: NIfTI series' orientation corrected;
# 8: audit filters indexed, the last verified audit event kept


class Store(Protocol):
    """What the app needs from a database. ``add`` returns False when the record already existed."""

    def add(self, record: Record) -> bool: ...
    def add_series(self, record: Record, sections: Sequence[Section]) -> bool: ...
    def sections_of(self, record_id: str) -> list[Section]: ...
    def daily_studies(self, filters: Filters, timezone: str) -> list[DayCount]: ...
    def get(self, record_id: str) -> Record | None: ...
    def set_patient_ref(self, record_id: str, patient_ref: str | None) -> bool: ...
    def recent(self, limit: int, filters: Filters = ...) -> list[Record]: ...
    def worklist(self, query: WorklistQuery, limit: int = ...) -> list[Record]: ...
    def summary(self, filters: Filters = ...) -> Summary: ...
    def daily_counts(self, filters: Filters, timezone: str) -> list[DayCount]: ...
    def confidence_histogram(self, filters: Filters = ..., bins: int = ...) -> list[int]: ...
    def daily_quality(self, filters: Filters, timezone: str) -> list[DayQuality]: ...
    def confusion(self, filters: Filters) -> dict[tuple[str, str], int]: ...
    def turnaround_hours(self, filters: Filters, cap: int = ...) -> dict[int, int]: ...
    def by_model(self, filters: Filters = ...) -> list[ModelRow]: ...
    def model_versions(self) -> list[str]: ...
    def add_review(self, review: Review) -> Record: ...
    def reviews_of(self, record_id: str) -> list[Review]: ...
    def get_account(self, name: str) -> Account | None: ...
    def put_account(self, account: Account) -> None: ...
    def atomic(self) -> AbstractContextManager[None]: ...
    def audit_head(self) -> AuditHead | None: ...
    def begin_sign_in(self, name: str, now: datetime) -> int | None: ...
    def end_sign_in(self, name: str, succeeded: bool, locked_until: datetime | None = None) -> None: ...
    def accounts(self) -> list[Account]: ...
    def append_audit(self, event: AuditEvent) -> AuditEvent: ...
    def audit_events(self, since_seq: int = 0, limit: int | None = None) -> list[AuditEvent]: ...
    def find_audit(self, query: AuditQuery, limit: int) -> list[AuditEvent]: ...
    def count_audit(self, query: AuditQuery) -> int: ...
    def audit_verified(self) -> VerifiedPoint | None: ...
    def mark_audit_verified(self, point: VerifiedPoint) -> None: ...
    def schema_version(self) -> int: ...
    def describe(self) -> str: ...
    def ping(self) -> None: ...


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
        "frame": record.frame,
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
        "reviewed_at": record.reviewed_at,
        "review_count": record.review_count,
        "image_key": record.image_key,
        "kind": record.kind,
        "study_ref": record.study_ref,
        "section_count": record.section_count,
        "geometry": dict(record.geometry),
    }


def row_to_record(row: Mapping[str, Any]) -> Record:
    return Record(
        id=row["id"],
        created_at=as_utc(row["created_at"]),
        patient_ref=row.get("patient_ref"),
        uploader=row.get("uploader"),
        image_sha256=row["image_sha256"],
        image_format=row["image_format"],
        image_width=int(row["image_width"]),
        image_height=int(row["image_height"]),
        image_bytes=int(row["image_bytes"]),
        frame=None if row.get("frame") is None else int(row["frame"]),
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
        reviewed_at=as_utc(row["reviewed_at"]) if row.get("reviewed_at") else None,
        review_count=int(row.get("review_count") or 0),
        image_key=row.get("image_key"),
        study_ref=row.get("study_ref"),
        section_count=None if row.get("section_count") is None else int(row["section_count"]),
        geometry=dict(row.get("geometry") or {}),
    )


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


def check_review(record: Record, review: Review) -> None:
    """A review must be of this result's verdict and name one of the model's labels (or tumour, type unknown)."""
    review.validate()
    if review.model_label != record.label:
        raise InvalidRecord("The review is not of this result's verdict.")
    if review.final_label not in record.probabilities and review.final_label != UNKNOWN_TYPE:
        raise InvalidRecord("The final label must be one of the model's labels.")
