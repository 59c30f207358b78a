"""A patient's history: every result and series saved under one pseudonymous reference, in time order, and a
series set beside an earlier one of the same patient at the matching position.

Two studies of one head are rarely in the same coordinates (another day, another scanner, another position in the
bore), so sections are matched by their relative place along the analysed part of each series (from the first to
the last section with a verdict), not by millimetres. Reading a history is an audit event.

The lesion's course (:func:`lesion_course`): each result's size as the segmenter measured it (a series' volume in
mL; a single scan's area in mm^2, or in pixels when its pixel spacing is unknown) and, for a series, its change from
the same lesion measured before: the one series in the same plane of the patient's previous study (another study
UID) before it. A change is only computed between two known volumes in mL: never across an unknown one (not
measured, or no voxel size), never between two series of one study (two sequences of one day are not a course),
never when the previous study, or the current one, has several series in that plane (which one is the same
sequence is not known: History's comparison lets the reader choose), never in percent of a prior volume under
1 mL (about two false lesions' worth: any change is hundreds of per cent), never between single scans (two slices
are not known to be the same section), never when either volume is a lower bound or approximate (its caveats),
when one series' sections are much thicker than the other's, or when the two were measured by different
segmenters (the step says why). "Previous" is in the order of scanning when every series
of the patient has its scan day (:func:`dated`: kept as days between scans, :func:`core.identity.scan_day`), and in
the order of saving otherwise (series saved before scan days were kept, a NIfTI volume): a prior study pulled from
the PACS after a later one was then read as the later, its change the other way round; the page says which order
holds.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from core.domain.results import Record
from core.services import audit
from core.services.access import HISTORY, Actor, require
from core.services.series_views import SECTION_ORDER, SeriesView
from core.storage.protocol import Store

LIMIT = 500


@dataclass(frozen=True)
class PatientHistory:
    """The patient's newest :data:`LIMIT` results, oldest first; ``earlier_left_out`` when older ones exist (the
    page says so: a lesion's change is then against the oldest shown, never a silently wrong prior)."""

    records: list[Record]
    earlier_left_out: bool = False


def patient_history(
    store: Store, actor: Actor, patient_ref: str, seen: Collection[str] | None = None
) -> PatientHistory:
    """The patient's results (scans and series), newest :data:`LIMIT` in time order, read as they stand now; the
    read is an audit event unless every result it shows is among ``seen`` (those the page's earlier audited reads of
    this patient showed in this session: its reruns; a study saved meanwhile is a new read). Read in time order: the
    worklist's order (unreviewed first) once cut the history's middle."""
    require(actor, HISTORY)
    records = store.of_patient(patient_ref, LIMIT + 1)
    shown = {record.id for record in records[:LIMIT]}
    if seen is None or not shown.issubset(seen):  # the keyed reference only
        audit.record(store, actor, "history", patient_ref, results=len(shown))
    return PatientHistory(sorted(records[:LIMIT], key=lambda r: r.created_at), len(records) > LIMIT)


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


def order_caveat(current: SeriesView, prior: SeriesView) -> str | None:
    """A warning when either series was saved before sections were ordered along the displayed view's normal:
    files encoding a mirrored orientation were stacked the other way then, so section k may be the other end."""
    if all(view.geometry.get("section_order") == SECTION_ORDER for view in (current, prior)):
        return None
    return (
        "One of these series was saved before the section order was made independent of how the files encode "
        "their orientation: if its files mirrored it, its sections run the other way. Check the levels by eye."
    )


def model_caveat(current: SeriesView, prior: SeriesView) -> str | None:
    """A warning when another model read the prior: its probabilities are on another scale (another calibration,
    another series rule), so no change in them is given (the same series read again by an older model read as a
    change "since the prior")."""
    return _another_model(current, prior.model, prior.record)


def _another_model(current: SeriesView, model: str, prior: Record | None) -> str | None:
    """:func:`model_caveat` for a prior read by ``model`` (its record ``prior``, when known)."""
    if current.model == model:
        return None
    same_images = current.record is not None and prior is not None and current.record.image_sha256 == prior.image_sha256
    what = "This is the same series read by another model" if same_images else "The prior was read by another model"
    return f"{what} ({model}): its probabilities are on another scale, so no change in them is given."


def _plane(view: SeriesView) -> str | None:
    return view.geometry.get("plane")


def _runs_known(view: SeriesView) -> bool:
    """Whether the series' sections have positions (files that gave none are numbered in an order that may run
    head to foot or foot to head)."""
    return bool(view.geometry.get("positions_in_mm", True))


def sections_correspond(current: SeriesView, prior: SeriesView) -> bool:
    """Whether a section of one series matches a section of the other: both cut in one known plane (an axial
    section's relative place is not a sagittal one's) and both with positions along it (without them, section k of
    one could be the other end of the head from section k of the other)."""
    return (
        _plane(current) is not None and _plane(current) == _plane(prior) and _runs_known(current) and _runs_known(prior)
    )


def plane_caveat(current: SeriesView, prior: SeriesView) -> str | None:
    """A warning when no section of the two series can be matched: no change is given at a section."""
    if sections_correspond(current, prior):
        return None
    if _plane(current) is not None and _plane(current) == _plane(prior):
        unplaced = [name for name, view in (("this series", current), ("the prior", prior)) if not _runs_known(view)]
        which = " and ".join(unplaced)
        return (
            f"The files of {which} gave no section positions, so which way the sections run (head or foot) is not "
            "known: the prior is shown at its own deciding section and no change is given at this section."
        )
    planes = [_plane(view) or "unknown plane" for view in (current, prior)]
    return (
        f"This series is {planes[0]}, the prior {planes[1]}: their sections do not correspond, so the prior is shown "
        "at its own deciding section and no change is given at this section."
    )


def change(current: SeriesView, index: int, prior: SeriesView) -> tuple[int, Change]:
    """The matching prior section and the change in tumour probability, for the series and at this section. Two
    series whose sections do not correspond (:func:`sections_correspond`: an axial section was paired with a
    sagittal one by its index, and a series without positions with one that may run the other way) match no
    section: the prior's deciding section is given, and no change at the section; series of two planes get no
    change of the series either."""
    # another model's probabilities, or another plane's series (a sagittal series' score is no earlier state of an
    # axial one's: "+0.09" in red read as progression): no change in them
    comparable = model_caveat(current, prior) is None and _plane(current) == _plane(prior)
    before = prior.score if comparable else None
    if not sections_correspond(current, prior):
        shown = prior.window[len(prior.window) // 2] if prior.window else len(prior.sections) // 2
        return shown, Change(before, current.score, None, current.curve[index])
    matched = matching_section(current, index, prior)
    at_section = prior.curve[matched] if comparable else None
    return matched, Change(before, current.score, at_section, current.curve[index])


def kept_caveat(current: SeriesView, prior: Record) -> str | None:
    """Why the series score of a prior whose images are no longer kept is not compared (another model, another
    plane, as :func:`change` judges), or None."""
    if caveat := _another_model(current, f"{prior.model_name} {prior.model_version}", prior):
        return caveat
    planes = [_plane(current) or "unknown plane", (prior.geometry or {}).get("plane") or "unknown plane"]
    if planes[0] != planes[1]:
        return (
            f"This series is {planes[0]}, the prior {planes[1]}: its series score is no earlier state of this "
            "one's, so no change is given."
        )
    return None


def kept_change(current: SeriesView, index: int, prior: Record) -> Change:
    """The change since a prior whose images are no longer kept: of the series score alone, from its record, where
    the two compare (:func:`kept_caveat`); none at the section, which needs its curve shown."""
    before = prior.tumour_probability if kept_caveat(current, prior) is None else None
    return Change(before, current.score, None, current.curve[index])


@dataclass(frozen=True)
class LesionStep:
    """One result's lesion size and its change from the same lesion measured before (None: unknown or not
    comparable). ``unit`` is "mL" (a series' volume), "mm2" or "px" (a single scan's area), or None when nothing was
    measured; ``prior`` is the series it was compared with."""

    record: Record
    size: float | None
    unit: str | None
    change: float | None = None
    change_percent: float | None = None
    prior: Record | None = None
    not_compared: str | None = None  # why a prior was found but no change is given


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


def scan_day_of(record: Record) -> int | None:
    """A series' scan day as kept (days, moved by the installation's offset), None when it has none."""
    day = (record.geometry or {}).get("scan_day")
    return day if isinstance(day, int) and not isinstance(day, bool) else None


def dated(records: Sequence[Record]) -> bool:
    """Whether every series among ``records`` has its scan day: then they are compared in the order of scanning."""
    series = [r for r in records if r.kind == "series"]
    return bool(series) and all(scan_day_of(r) is not None for r in series)


def days_from_first(records: Sequence[Record]) -> dict[str, int]:
    """Each dated series' day counted from the patient's first scan (day 0), by result id: what the page shows of a
    scan's date (the day kept is moved by the installation's offset, so that it is no date)."""
    days = {r.id: day for r in records if (day := scan_day_of(r)) is not None}
    first = min(days.values(), default=0)
    return {record_id: day - first for record_id, day in days.items()}


def scanned_days(records: Sequence[Record]) -> dict[str, int] | None:
    """Each result's day from the patient's first scan (:func:`days_from_first`) when every one of ``records`` has
    its scan day, else None: then they are shown in the order of scanning (drawn by their saving, a study scanned
    first and saved last stood after the later ones, its "No tumour" reading as a regression)."""
    days = days_from_first(records)
    return days if records and all(r.id in days for r in records) else None


def course_order(records: Sequence[Record]) -> list[Record]:
    """The series of ``records``, oldest first: in the order of scanning when all are :func:`dated`, else of saving."""
    series = [r for r in records if r.kind == "series"]
    if dated(series):
        return sorted(series, key=lambda r: (scan_day_of(r), r.created_at))
    return sorted(series, key=lambda r: r.created_at)


def series_before(records: Sequence[Record], record: Record) -> list[Record]:
    """The series of ``records`` that came before ``record``, oldest first: scanned on an earlier day when all are
    :func:`dated` (one scanned the same day is not before it), else saved earlier."""
    return _before(course_order(records), dated(records), record)


def _before(ordered: Sequence[Record], by_day: bool, record: Record) -> list[Record]:
    """:func:`series_before` from the series already in :func:`course_order` (whether they are :func:`dated`): the
    part of that order before ``record``'s day (or time saved)."""
    key: Callable[[Record], Any] = scan_day_of if by_day else attrgetter("created_at")
    return list(ordered[: bisect_left(ordered, key(record), key=key)])


def prior_candidates(earlier: Sequence[Record], record: Record) -> list[Record]:
    """The series in ``record``'s plane of the latest earlier study (another study UID) that has one, ``earlier``
    oldest first: one is the prior; several are sequences nobody can tell apart here (the sequence is not kept)."""
    plane = (record.geometry or {}).get("plane")
    if record.kind != "series" or not plane or record.study_ref is None:
        return []

    def candidate(r: Record, study: str | None = None) -> bool:
        in_study = r.study_ref not in (None, record.study_ref) if study is None else r.study_ref == study
        return in_study and r.kind == "series" and (r.geometry or {}).get("plane") == plane

    latest = next((r.study_ref for r in reversed(earlier) if candidate(r)), None)  # from the newest: a long
    return [r for r in earlier if candidate(r, latest)] if latest is not None else []  # history's search stops soon


def default_prior(earlier: Sequence[Record], record: Record) -> Record | None:
    """The prior History's comparison offers first for ``record``: the table's (:func:`prior_series`); none where
    the latest earlier study has several series in its plane (a FLAIR and a T1 with contrast: the sequence is not
    kept; the latest was chosen, and a T1c prior beside today's FLAIR read "+0.11 in score since the prior", in red,
    where the table said no change is measured); where no earlier study has one, the latest earlier series in its
    plane from another study (one without a study UID too) before another sequence of its own, else any."""
    candidates = prior_candidates(earlier, record)
    if candidates:
        return candidates[0] if len(candidates) == 1 else None
    plane = (record.geometry or {}).get("plane")
    same_plane = [r for r in earlier if (r.geometry or {}).get("plane") == plane]
    other_study = [r for r in same_plane if r.study_ref is None or r.study_ref != record.study_ref]
    found = other_study or same_plane or list(earlier)
    return found[-1] if found else None


def prior_series(earlier: Sequence[Record], record: Record) -> Record | None:
    """The series ``record``'s lesion is compared with: the only one of :func:`prior_candidates`; None when there
    is none, or several (see the module)."""
    candidates = prior_candidates(earlier, record)
    return candidates[0] if len(candidates) == 1 else None


# a prior volume below this gets a change in mL, never in per cent: one false lesion as the segmenter's card counts
# them (100 px on a section) is about 0.4 mL at 0.8 mm pixels and 5 mm sections, and a percentage of such a prior
# said "+317 %" of nothing (it was 0.1 mL)
MIN_PRIOR_ML = 1.0
THICKNESS_RATIO = 1.5  # sections thicker than the other series' by more: another partial volume, not compared


def _plane_of_study(record: Record) -> tuple[str | None, str | None]:
    return record.study_ref, (record.geometry or {}).get("plane")


def _not_comparable(prior: Record, record: Record) -> str | None:
    """Why two volumes in mL are still not a change: one is a lower bound or approximate (sections inside the
    lesion not analysed, a gap, uneven steps: a lower bound read as the lesion shrinking), the sections of one are
    much thicker than the other's (:data:`THICKNESS_RATIO`: the partial volume differs), or another segmenter
    measured the prior (each record names its own; of two saved before they did, one model's readings only)."""
    before, now = prior.geometry or {}, record.geometry or {}
    if before.get("lesion_caveats") or now.get("lesion_caveats"):
        return "not compared: a volume is a lower bound or approximate"
    thick = [float(g["thickness"]) for g in (before, now) if isinstance(g.get("thickness"), int | float)]
    if len(thick) == 2 and min(thick) > 0 and max(thick) > THICKNESS_RATIO * min(thick):  # 1 mm 3D against 5 mm 2D
        return f"not compared: sections {thick[0]:g} mm thick then {thick[1]:g} mm (another partial volume)"
    if before.get("lesion_model") != now.get("lesion_model"):
        return f"not compared: measured by another segmenter ({before.get('lesion_model') or 'not recorded'})"
    same_model = (prior.model_name, prior.model_version) == (record.model_name, record.model_version)
    if before.get("lesion_model") is None and not same_model:  # neither names its segmenter: one model's only
        return f"not compared: read by another model ({prior.model_name} {prior.model_version})"
    return None


def lesion_course(records: Sequence[Record]) -> list[LesionStep]:
    """Each result (in the order given, oldest saved first) with its lesion size and, for a series, the change from
    its prior series (:func:`prior_series` among :func:`series_before` it: scanned before it where every series has
    its scan day): in mL and in percent of the prior volume (None under :data:`MIN_PRIOR_ML`). A series whose own
    study has another in its plane has no prior: a T1 and a FLAIR of one day were each set against the same earlier
    series, one as growth and one as shrinkage."""
    in_plane = Counter(_plane_of_study(r) for r in records if r.kind == "series")
    ordered, by_day = course_order(records), dated(records)  # once: per record, 500 series took 0.4 s a rerun
    steps = []
    for record in records:
        size, unit = lesion_size(record)
        alone = record.kind == "series" and in_plane[_plane_of_study(record)] == 1
        prior = prior_series(_before(ordered, by_day, record), record) if alone else None
        if prior is not None and in_plane[_plane_of_study(prior)] != 1:  # that study has another series in the
            prior = None  # plane, saved after this one (sent later by the PACS): which to set it against is unknown
        before, before_unit = lesion_size(prior) if prior is not None else (None, None)
        if size is None or before is None or unit != "mL" or before_unit != "mL":
            steps.append(LesionStep(record, size, unit, prior=prior))
            continue
        why = _not_comparable(prior, record)  # type: ignore[arg-type]
        if why is not None:
            steps.append(LesionStep(record, size, unit, prior=prior, not_compared=why))
            continue
        percent = (size - before) / before * 100 if before >= MIN_PRIOR_ML else None
        steps.append(LesionStep(record, size, unit, size - before, percent, prior))
    return steps
