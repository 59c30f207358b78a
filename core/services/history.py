"""A patient's history: every result and series saved under one pseudonymous reference, in time order, and a
series set beside an earlier one of the same patient at the matching position.

Two studies of one head are rarely in the same coordinates (another day, another scanner, another position in the
bore), so sections are matched by their relative place along the analysed part of each series (from the first to
the last section with a verdict), not by millimetres. Reading a history is an audit event.

The lesion's course (:func:`lesion_course`): each result's size as the segmenter measured it (a series' volume in
mL; a single scan's area in mm^2, or in pixels when its pixel spacing is unknown) and its change from the previous
result of the same kind. A change is only computed between two known sizes in the same physical unit: never across
an unknown one (not measured, or no spacing), never between a volume and an area, never in pixels (pixels of two
images are not the same size).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from core.domain.results import Record, WorklistQuery
from core.services import audit
from core.services.access import HISTORY, Actor, require
from core.services.studies import SeriesView
from core.storage.protocol import Store

LIMIT = 500


def patient_history(store: Store, actor: Actor, patient_ref: str) -> list[Record]:
    """The patient's results (scans and series), oldest first."""
    require(actor, HISTORY)
    records = store.worklist(WorklistQuery(reviewed=None, patient_ref=patient_ref), LIMIT)
    audit.record(store, actor, "history", patient_ref, results=len(records))  # the keyed reference, never as typed
    return sorted(records, key=lambda r: r.created_at)


def _extent(view: SeriesView) -> tuple[int, int]:
    analysed = [i for i, p in enumerate(view.curve) if p is not None]
    return (analysed[0], analysed[-1]) if analysed else (0, len(view.curve) - 1)


def matching_section(current: SeriesView, index: int, prior: SeriesView) -> int:
    """The prior's section at the same relative place along the analysed head as ``index`` in ``current``."""
    start, end = _extent(current)
    share = 0.5 if end == start else min(max((index - start) / (end - start), 0.0), 1.0)
    prior_start, prior_end = _extent(prior)
    return round(prior_start + share * (prior_end - prior_start))


@dataclass(frozen=True)
class Change:
    """How the tumour probability moved between a prior series and the current one."""

    series_before: float | None
    series_now: float | None
    section_before: float | None
    section_now: float | None

    @property
    def series_change(self) -> float | None:
        if self.series_before is None or self.series_now is None:
            return None
        return self.series_now - self.series_before

    @property
    def section_change(self) -> float | None:
        if self.section_before is None or self.section_now is None:
            return None
        return self.section_now - self.section_before


def change(current: SeriesView, index: int, prior: SeriesView) -> tuple[int, Change]:
    """The matching prior section and the change in tumour probability, for the series and at this section."""
    matched = matching_section(current, index, prior)
    return matched, Change(prior.score, current.score, prior.curve[matched], current.curve[index])


@dataclass(frozen=True)
class LesionStep:
    """One result's lesion size and its change from the previous result of the same kind (None: unknown).
    ``unit`` is "mL" (a series' volume), "mm2" or "px" (a single scan's area), or None when nothing was measured."""

    record: Record
    size: float | None
    unit: str | None
    change: float | None = None
    change_percent: float | None = None


def lesion_size(record: Record) -> tuple[float | None, str | None]:
    """A series' volume in mL; a single scan's area in mm^2, else in pixels; (None, None) when not measured. A
    series measured in pixels only (no voxel size) reports its pixels, which :func:`lesion_course` never compares."""
    if record.kind == "series" and record.lesion_ml is not None:
        return float(record.lesion_ml), "mL"
    if record.kind == "scan" and record.lesion_mm2 is not None:
        return float(record.lesion_mm2), "mm2"
    if record.lesion_px is not None:
        return float(record.lesion_px), "px"
    return None, None


def lesion_course(records: Sequence[Record]) -> list[LesionStep]:
    """Each result (in the order given, oldest first) with its lesion size and the change from the previous result
    of the same kind: in that unit and in percent of the previous size (None when it was 0)."""
    previous: dict[str, tuple[float | None, str | None]] = {}
    steps = []
    for record in records:
        size, unit = lesion_size(record)
        before, before_unit = previous.get(record.kind, (None, None))
        previous[record.kind] = (size, unit)
        if size is None or before is None or unit != before_unit or unit == "px":
            steps.append(LesionStep(record, size, unit))
            continue
        percent = (size - before) / before * 100 if before > 0 else None
        steps.append(LesionStep(record, size, unit, size - before, percent))
    return steps
