"""What the database keeps about one analysed scan, and the filters and aggregates the dashboard asks for.

A :class:`Record` holds no direct patient identity: a pseudonymous reference (keyed HMAC), the uploader's user
name, UTC time, the image's SHA-256, format and size, the frame read from a multi-frame file, the model, the
verdict, the crop box, timings, the input gate's decision, and review fields that stay empty until a radiologist
reviews it (the latest review; the append-only history is :class:`core.domain.people.Review`), and the key of its
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
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from numbers import Integral, Real
from typing import Any

from core.domain.times import as_utc
from core.errors import InvalidRecord
from core.model.decision import ACCEPTED, NEEDS_REVIEW, REJECTED, UNKNOWN_TYPE, decision_confidence

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
IMAGE_FORMATS = ("png", "jpeg", "dicom", "nifti")
KINDS = ("scan", "series")  # one image (or frame), or a whole series with its sections
GATE_DECISIONS = (ACCEPTED, NEEDS_REVIEW, REJECTED)  # REJECTED: the input gate refused the image, no verdict
SHOWN = (ACCEPTED, NEEDS_REVIEW)  # gate decisions whose verdict was shown to the user
WORKLIST_GATES = (NEEDS_REVIEW, ACCEPTED, REJECTED)  # the worklist's order: flagged first, refused last
REVIEW_VERDICTS = ("agree", "override")  # the latest review's action (the history is in the reviews table)
TURNAROUND_CAP_H = 720  # review turnaround in whole hours, the stores' last bin: 720 hours (30 days) or more


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
    gate: str = ACCEPTED
    gate_score: float | None = None
    reviewer: str | None = None  # the latest review (the whole history: Store.reviews_of)
    review_verdict: str | None = None
    final_label: str | None = None
    reviewed_at: datetime | None = None
    review_count: int = 0
    image_key: str | None = None  # the de-identified pixels in the image store, while they are kept
    study_ref: str | None = None  # a series: SHA-256 of its study's UID (never the UID itself)
    section_count: int | None = None  # a series: how many sections it has (None: a single scan)
    # a series: spacing, thickness, orientation, plane, its rule, and study_unread (its study's series nobody read)
    geometry: Mapping[str, object] = field(default_factory=dict)
    lesion_px: int | None = None  # the segmenter's lesion area in pixels (a series: over all its sections)
    lesion_mm2: float | None = None  # that area in mm^2 when the pixel spacing is known (single scans)
    lesion_ml: float | None = None  # a series' lesion volume in mL when its voxel size is known

    @property
    def kind(self) -> str:
        return "scan" if self.section_count is None else "series"

    @property
    def disagrees(self) -> bool:
        """The radiologist's final label differs from the model's verdict. A refused image has no verdict to differ
        from (the class the model picked for it is never shown, and the statistics leave it out of agreement)."""
        return self.final_label is not None and self.final_label != self.label and self.gate != REJECTED

    @property
    def study_unread(self) -> int:
        """Series of this series' study that nobody could read when it was saved (kept in its geometry; 0 for a
        scan): a study without a tumour series and with one of these has no verdict (the study rule)."""
        return int((self.geometry or {}).get("study_unread", 0) or 0)

    @property
    def study_unread_named(self) -> tuple[str, ...]:
        """Which of those series could not be put together, and why ("DICOM series 9: ..."), as the analysing page
        said it (none for a series saved before they were kept, or one none of whose sections could be read)."""
        return tuple(str(name) for name in (self.geometry or {}).get("study_unread_named") or ())

    @property
    def confidence(self) -> float:
        """The probability that the tumour / no-tumour call is right (:mod:`core.model.decision`)."""
        return float(decision_confidence(self.tumour_probability, self.is_tumour))

    def reviewed_as(
        self, reviewer: str | None, verdict: str | None, final_label: str | None, at: datetime | None, count: int
    ) -> Record:
        """This result with a review summary given since it was read (the latest review, and how many there are)."""
        return replace(
            self, reviewer=reviewer, review_verdict=verdict, final_label=final_label, reviewed_at=at, review_count=count
        )

    def validate(self) -> Record:
        """Raise :class:`InvalidRecord` unless every field obeys its rule in :data:`FIELDS` and the fields agree
        with each other (identity, label, probabilities, crop box); returns self for chaining."""
        problems = [problem for spec in FIELDS if (problem := spec.problem(getattr(self, spec.name)))]
        problems += self._cross_field_problems()
        if problems:
            raise InvalidRecord("Record refused: " + "; ".join(problems) + ".")
        return self

    def _cross_field_problems(self) -> list[str]:
        problems = []
        if isinstance(self.frame, int | None) and self.id != record_id(
            self.image_sha256, self.model_name, self.model_version, self.frame
        ):
            problems.append("id is not the identity of this image, model and frame")
        if isinstance(self.created_at, datetime) and self.created_at.utcoffset() != UTC.utcoffset(None):
            problems.append("created_at must be a UTC datetime")
        values = list(dict(self.probabilities).values())
        if self.label not in self.probabilities and not (self.label == UNKNOWN_TYPE and self.is_tumour):
            problems.append("label is not one of the probabilities' labels")
        if not values or not all(isinstance(p, Real) and math.isfinite(p) and 0 <= p <= 1 for p in values):
            problems.append("probabilities must be finite numbers in [0, 1]")
        elif abs(sum(values) - 1.0) > 1e-3:
            problems.append("probabilities must sum to 1")
        if len(self.roi) == 4 and not (self.roi[0] < self.roi[2] and self.roi[1] < self.roi[3]):
            problems.append("roi must have positive width and height")
        return problems


@dataclass(frozen=True)
class Field:
    """One stored field of a result, the single place its kind and rules are written. The stores derive from the
    table their row mapping (:func:`to_row`, :func:`from_row`), SQLite's column list and MongoDB's ``$jsonSchema``;
    :meth:`Record.validate` checks each value against its rule. Kinds: ``text``, ``int``, ``float``, ``bool``,
    ``time`` (UTC datetime; integer ms in SQLite's ``column``), ``scores`` (label -> number), ``map`` (JSON
    object), ``box`` (four non-negative integers). ``derived`` fields are computed from the others and stored for
    the database's own queries."""

    name: str
    kind: str
    required: bool = True
    pattern: str | None = None
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    derived: bool = False
    column: str | None = None

    @property
    def sql_column(self) -> str:
        return self.column or self.name

    def problem(self, value: object) -> str | None:
        """Why ``value`` breaks this field's rule, or None."""
        if value is None:
            return f"{self.name} is required" if self.required else None
        if not _KIND_CHECKS[self.kind](value):
            return f"{self.name} is not {_KIND_WORDS[self.kind]}"
        if self.pattern is not None and not re.fullmatch(self.pattern, str(value)):
            return f"{self.name} does not have the expected form"
        if self.choices and value not in self.choices:
            return f"{self.name} is unknown"
        too_low = self.minimum is not None and value < self.minimum  # type: ignore[operator]
        if too_low or (self.maximum is not None and value > self.maximum):  # type: ignore[operator]
            return f"{self.name} is out of range"
        if self.kind == "text" and self.required and not value:
            return f"{self.name} is empty"
        return None


_KIND_CHECKS = {
    "text": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, Integral) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, Real) and math.isfinite(v),
    "bool": lambda v: v in (True, False),
    "time": lambda v: isinstance(v, datetime) and v.tzinfo is not None,
    "scores": lambda v: isinstance(v, Mapping),
    "map": lambda v: isinstance(v, Mapping),
    "box": lambda v: len(v) == 4 and all(isinstance(x, Integral) and x >= 0 for x in v),
}
_KIND_WORDS = {
    "text": "text",
    "int": "an integer",
    "float": "a finite number",
    "bool": "true or false",
    "time": "a time with a zone",
    "scores": "a map of labels to numbers",
    "map": "a map",
    "box": "four non-negative integers",
}
_HEX = _HEX64.pattern.strip("^$")

FIELDS: tuple[Field, ...] = (
    Field("id", "text", pattern=_HEX),
    Field("created_at", "time", column="created_ms"),
    Field("patient_ref", "text", required=False, pattern=_HEX),
    Field("uploader", "text", required=False),
    Field("image_sha256", "text", pattern=_HEX),
    Field("image_format", "text", choices=IMAGE_FORMATS),
    Field("image_width", "int", minimum=1),
    Field("image_height", "int", minimum=1),
    Field("image_bytes", "int", minimum=1),
    Field("frame", "int", required=False, minimum=0),
    Field("model_name", "text"),
    Field("model_version", "text"),
    Field("label", "text"),
    Field("is_tumour", "bool"),
    Field("tumour_probability", "float", minimum=0, maximum=1),
    Field("confidence", "float", minimum=0, maximum=1, derived=True),
    Field("probabilities", "scores"),
    Field("roi", "box"),
    Field("timings_ms", "scores"),
    Field("gate", "text", choices=GATE_DECISIONS),
    Field("gate_score", "float", required=False),
    Field("reviewer", "text", required=False),
    Field("review_verdict", "text", required=False, choices=REVIEW_VERDICTS),
    Field("final_label", "text", required=False),
    Field("reviewed_at", "time", required=False, column="reviewed_ms"),
    Field("review_count", "int", minimum=0),
    Field("image_key", "text", required=False),
    Field("kind", "text", choices=KINDS, derived=True),
    Field("study_ref", "text", required=False, pattern=_HEX),
    Field("section_count", "int", required=False, minimum=1),
    Field("geometry", "map"),
    Field("lesion_px", "int", required=False, minimum=0),
    Field("lesion_mm2", "float", required=False, minimum=0),
    Field("lesion_ml", "float", required=False, minimum=0),
    Field("study_unread", "int", required=False, minimum=0, derived=True),  # version 11: studies' charts read it
)

_TO_PLAIN = {
    "int": int,
    "float": float,
    "bool": bool,
    "scores": lambda v: {str(k): float(x) for k, x in v.items()},
    "map": dict,
    "box": lambda v: [int(x) for x in v],
}
_FROM_PLAIN = {
    "int": int,
    "float": float,
    "bool": bool,
    "time": as_utc,
    "scores": dict,
    "map": dict,
    "box": lambda v: tuple(int(x) for x in v),
}


def to_row(record: Record) -> dict[str, Any]:
    """The flat form both stores keep, one key per :data:`FIELDS` entry (times as UTC datetimes, maps as dicts)."""
    row = {}
    for spec in FIELDS:
        value = getattr(record, spec.name)
        row[spec.name] = value if value is None else _TO_PLAIN.get(spec.kind, _same)(value)
    return row


def from_row(row: Mapping[str, Any]) -> Record:
    """The record of a stored row; a field missing or null in an older row takes the record's default."""
    values = {
        spec.name: _FROM_PLAIN.get(spec.kind, _same)(row[spec.name])
        for spec in FIELDS
        if not spec.derived and row.get(spec.name) is not None
    }
    return Record(**values)


def _same(value: Any) -> Any:
    return value


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
    both; verdicts (``labels``), gate decisions, one patient's results, results saved since a time (and before
    another: what an age filter leaves out), disagreements only."""

    reviewed: bool | None = False
    labels: tuple[str, ...] = ()
    gates: tuple[str, ...] = ()
    patient_ref: str | None = None
    since: datetime | None = None
    disagreements: bool = False
    before: datetime | None = None

    def gates_listed(self) -> tuple[str, ...]:
        """The gate decisions listed, in the worklist's order (flagged, accepted, refused): a refused image has no
        verdict, so it is never listed under a verdict or as a disagreement (both stores read this)."""
        without_verdict = bool(self.labels) or self.disagreements
        return tuple(
            gate
            for gate in WORKLIST_GATES
            if (not self.gates or gate in self.gates) and not (gate == REJECTED and without_verdict)
        )


@dataclass(frozen=True)
class DayQuality:
    """What a supervisor monitors, per local calendar day: verdicts shown (accepted or flagged), tumour verdicts,
    flagged and refused scans, shown results reviewed and agreed with (final label = verdict), and the sum and
    sum of squares of the tumour probability of shown verdicts (for a mean and its control limits) over
    ``scored`` of them (None: all shown; the quality board gives single scans only: a series' score is the lowest
    of its best window under its own threshold, not a probability on their scale)."""

    day: date
    shown: int
    tumour: int
    flagged: int
    rejected: int
    reviewed: int
    agreed: int
    probability_sum: float
    probability_squares: float
    scored: int | None = None

    @property
    def scored_n(self) -> int:
        return self.shown if self.scored is None else self.scored


LESION_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)  # what a period's lesion volumes are summarised by (a box plot)


@dataclass(frozen=True)
class LesionPeriod:
    """Tumour studies with a lesion volume whose first series falls in the local period starting on ``start``: how
    many, and the :data:`LESION_QUANTILES` of their volumes in mL (a study's volume: the mean of its tumour series'
    volumes), linearly interpolated between ranks."""

    start: date
    studies: int
    quantiles: tuple[float, ...]
