"""What the database keeps about one analysed scan, and the filters and aggregates the dashboard asks for.

A :class:`Record` holds no direct patient identity: a pseudonymous reference (keyed HMAC), the uploader's user
name, UTC time, the image's SHA-256, format and size, the frame read from a multi-frame file, the model, the
verdict, the crop box, timings, the input gate's decision, and review fields that stay empty until a radiologist
reviews it (the latest review; the append-only history is :class:`core.storage.people.Review`), and the key of its
de-identified pixels in the image store while they are kept. No pixels, no file names, no DICOM header text.

Identity: ``id`` = SHA-256 over image hash, model name and version, and frame (:func:`record_id`). The same
upload analysed by the same model is always the same record, so saving twice keeps one. The patient reference
is an attribute of that record: typing or correcting it later updates the record in place.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from core.errors import InvalidRecord

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
IMAGE_FORMATS = ("png", "jpeg", "dicom", "nifti")
KINDS = ("scan", "series")  # one image (or frame), or a whole series with its sections
GATE_DECISIONS = ("accepted", "needs_review", "rejected")
SHOWN = ("accepted", "needs_review")  # gate decisions whose verdict was shown to the user
REVIEW_VERDICTS = ("agree", "override")  # the latest review's action (the history is in the reviews table)
UNKNOWN_TYPE = "tumour"  # a tumour verdict whose type is uncertain


def record_id(image_sha256: str, model_name: str, model_version: str, frame: int | None = None) -> str:
    """The identity of a result: SHA-256 over image hash, model, version and frame (None: a single-frame file)."""
    text = "\x1f".join((image_sha256, model_name, model_version, "" if frame is None else str(int(frame))))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_patient_ref(value: str | None) -> bool:
    return value is None or bool(_HEX64.match(value))


@dataclass(frozen=True)
class Record:
    id: str
    created_at: datetime
    image_sha256: str
    image_format: str
    image_width: int
    image_height: int
    image_bytes: int
    model_name: str
    model_version: str
    label: str
    probabilities: Mapping[str, float]
    tumour_probability: float
    is_tumour: bool
    roi: tuple[int, int, int, int]
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    frame: int | None = None
    patient_ref: str | None = None
    uploader: str | None = None
    gate: str = "accepted"
    gate_score: float | None = None
    reviewer: str | None = None  # the latest review (the whole history: Store.reviews_of)
    review_verdict: str | None = None
    final_label: str | None = None
    reviewed_at: datetime | None = None
    review_count: int = 0
    image_key: str | None = None  # the de-identified pixels in the image store, while they are kept
    study_ref: str | None = None  # a series: SHA-256 of its study's UID (never the UID itself)
    section_count: int | None = None  # a series: how many sections it has (None: a single scan)
    geometry: Mapping[str, object] = field(default_factory=dict)  # a series: spacing, thickness, orientation, plane

    @property
    def kind(self) -> str:
        return "scan" if self.section_count is None else "series"

    @property
    def disagrees(self) -> bool:
        """The radiologist's final label differs from the model's verdict."""
        return self.final_label is not None and self.final_label != self.label

    @property
    def confidence(self) -> float:
        """The probability that the tumour / no-tumour call is right (:mod:`core.model.decision`)."""
        return float(self.tumour_probability if self.is_tumour else 1.0 - self.tumour_probability)

    def validate(self) -> Record:
        """Raise :class:`InvalidRecord` unless every field is well-formed; returns self for chaining."""
        problems = []
        if not _HEX64.match(self.image_sha256):
            problems.append("image_sha256 is not a SHA-256 hex digest")
        if self.frame is not None and (not isinstance(self.frame, int) or self.frame < 0):
            problems.append("frame must be a non-negative integer")
        elif self.id != record_id(self.image_sha256, self.model_name, self.model_version, self.frame):
            problems.append("id is not the identity of this image, model and frame")
        if not is_patient_ref(self.patient_ref):
            problems.append("patient_ref is not a keyed hash")
        if self.created_at.tzinfo is None or self.created_at.utcoffset() != UTC.utcoffset(None):
            problems.append("created_at must be a UTC datetime")
        if self.image_format not in IMAGE_FORMATS:
            problems.append("image_format is unknown")
        if min(self.image_width, self.image_height, self.image_bytes) <= 0:
            problems.append("image size must be positive")
        if not self.model_name or not self.model_version:
            problems.append("model name and version are required")
        probabilities = dict(self.probabilities)
        values = list(probabilities.values())
        if self.label not in probabilities and not (self.label == UNKNOWN_TYPE and self.is_tumour):
            problems.append("label is not one of the probabilities' labels")
        if not values or not all(isinstance(p, float | int) and math.isfinite(p) and 0 <= p <= 1 for p in values):
            problems.append("probabilities must be finite numbers in [0, 1]")
        elif abs(sum(values) - 1.0) > 1e-3:
            problems.append("probabilities must sum to 1")
        if not (math.isfinite(self.tumour_probability) and 0 <= self.tumour_probability <= 1):
            problems.append("tumour_probability must be in [0, 1]")
        if len(self.roi) != 4 or not all(isinstance(v, int) and v >= 0 for v in self.roi):
            problems.append("roi must be four non-negative integers")
        elif not (self.roi[0] < self.roi[2] and self.roi[1] < self.roi[3]):
            problems.append("roi must have positive width and height")
        if self.gate not in GATE_DECISIONS:
            problems.append("gate decision is unknown")
        if self.review_verdict is not None and self.review_verdict not in REVIEW_VERDICTS:
            problems.append("review verdict is unknown")
        if self.study_ref is not None and not _HEX64.match(self.study_ref):
            problems.append("study_ref is not a SHA-256 hex digest")
        if self.section_count is not None and (not isinstance(self.section_count, int) or self.section_count < 1):
            problems.append("section_count must be a positive integer")
        if problems:
            raise InvalidRecord("Record refused: " + "; ".join(problems) + ".")
        return self


@dataclass(frozen=True)
class Filters:
    """Which records an aggregate covers: ``start`` inclusive, ``end`` exclusive (UTC); empty tuples mean all.

    Dashboards of diagnoses use ``gates=SHOWN`` so scans the input gate rejected never count as verdicts."""

    start: datetime | None = None
    end: datetime | None = None
    labels: tuple[str, ...] = ()
    model_versions: tuple[str, ...] = ()
    gates: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()  # "scan", "series" (:data:`KINDS`)


@dataclass(frozen=True)
class Section:
    """One section of a stored series: its place, and its tumour probability and verdict or why it was skipped."""

    index: int
    position: float
    tumour_probability: float | None = None
    label: str | None = None
    skipped: str | None = None

    def validate(self) -> Section:
        fine = isinstance(self.index, int) and self.index >= 0 and math.isfinite(self.position)
        if self.skipped is None:
            p = self.tumour_probability
            fine = fine and self.label is not None and p is not None and math.isfinite(p) and 0 <= p <= 1
        else:
            fine = fine and self.tumour_probability is None and self.label is None
        if not fine:
            raise InvalidRecord("Section refused: an index, a position, and a verdict or a reason it was skipped.")
        return self


@dataclass(frozen=True)
class Summary:
    total: int
    tumour: int
    per_class: Mapping[str, int]
    per_gate: Mapping[str, int]
    mean_confidence: float | None
    first: datetime | None
    last: datetime | None

    @property
    def tumour_rate(self) -> float | None:
        return self.tumour / self.total if self.total else None


@dataclass(frozen=True)
class DayCount:
    """Scans and tumour verdicts on one local calendar day (in the time zone the query asked for)."""

    day: date
    total: int
    tumour: int


@dataclass(frozen=True)
class ModelRow:
    model_name: str
    model_version: str
    total: int
    tumour: int
    mean_confidence: float
    first: datetime
    last: datetime


@dataclass(frozen=True)
class WorklistQuery:
    """Which results a radiologist's worklist shows: ``reviewed`` False = not yet reviewed, True = reviewed, None =
    both; verdicts (``labels``), gate decisions, one patient's results, results since a time, disagreements only."""

    reviewed: bool | None = False
    labels: tuple[str, ...] = ()
    gates: tuple[str, ...] = ()
    patient_ref: str | None = None
    since: datetime | None = None
    disagreements: bool = False


@dataclass(frozen=True)
class DayQuality:
    """What a supervisor monitors, per local calendar day: verdicts shown (accepted or flagged), tumour verdicts,
    flagged and refused scans, shown results reviewed and agreed with (final label = verdict), and the sum and
    sum of squares of the tumour probability of shown verdicts (for a mean and its control limits)."""

    day: date
    shown: int
    tumour: int
    flagged: int
    rejected: int
    reviewed: int
    agreed: int
    probability_sum: float
    probability_squares: float
