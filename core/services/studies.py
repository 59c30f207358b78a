"""Saving an analysed study (:mod:`core.services.study_reading` reads it): each series as one record with its
sections, its stored pixels and an audit event, under the patient's keyed reference, and linking saved series to a
reference typed later. Each series' save reports its status ("saved", "already saved", "not saved" with the
reason).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from core.domain.results import Record, Section, record_id
from core.errors import InvalidRecord, StoreError
from core.identity import pseudonymise, scan_day
from core.model.classifier import Classifier
from core.model.gate import ACCEPTED, NEEDS_REVIEW
from core.model.volume import SeriesAnalysis
from core.services.access import ANALYSE, OPEN_RESULT, Actor, require
from core.services.series_views import SeriesView, geometry_of, rule_of, series_view
from core.services.study_reading import StudyOutcome, analyse_study
from core.services.triage import (
    ALREADY_SAVED,
    NOT_SAVED,
    NOT_UPDATED,
    SAVED,
    SaveStatus,
    image_not_kept,
    keep_image,
    reference_for_saved,
    refused_record,
    relinked,
    save_record,
)
from core.storage.images import ImageStore
from core.storage.protocol import Store

UNREAD_SERIES = (
    "{} series could not be analysed (no section passed the input checks, or the series could not be put "
    "together), so the study gets no verdict: "
    "the other series' 'no tumour' does not cover it. Read it yourself."
)


def stacked(sections: np.ndarray) -> np.ndarray:
    """A series as one tall 2-D image (sections one under the other): how the image store keeps its pixels."""
    return np.ascontiguousarray(sections.reshape(-1, sections.shape[-1]))


def series_record(
    analysis: SeriesAnalysis,
    *,
    patient_ref: str | None,
    uploader: str | None,
    key: bytes | None,
    image_key: str | None = None,
    study_unread: int = 0,
    series_number: int | None = None,
    unread_named: Sequence[str] = (),
) -> Record:
    """The record of an analysed series (validated). Its study is kept as a keyed hash of the study's UID hash
    (None without a key: each series then counts as its own study); ``study_unread``: series of its study nobody
    could read (never saved themselves), kept so that a report made later gives the study no verdict either;
    ``series_number``: its number on the Study page (series are saved tumour first: History's PDF numbered them in
    that order, and two reports of one study called different series "Series 1")."""
    volume = analysis.volume
    window = analysis.window
    middle = window[len(window) // 2].analysis if window else None
    if middle is None or analysis.score is None:
        raise ValueError("a series without an analysed section has no verdict to save")
    count, height, width = volume.sections.shape
    return Record(
        id=record_id(volume.sha256, analysis.model_name, analysis.model_version),
        created_at=datetime.now(UTC),
        image_sha256=volume.sha256,
        image_format="nifti" if volume.source.startswith("NIfTI") else "dicom",
        image_width=width,
        image_height=height,
        image_bytes=int(volume.sections.nbytes),
        model_name=analysis.model_name,
        model_version=analysis.model_version,
        label=analysis.label or analysis.negative_label,
        probabilities=analysis.probabilities,
        tumour_probability=float(analysis.score),
        is_tumour=analysis.is_tumour,
        roi=tuple(int(v) for v in middle.prediction.roi),  # type: ignore[arg-type]
        timings_ms={k: float(v) for k, v in analysis.timings_ms.items()},
        patient_ref=patient_ref,
        uploader=uploader,
        gate=NEEDS_REVIEW if analysis.needs_review else ACCEPTED,
        image_key=image_key,
        study_ref=pseudonymise(volume.study, key),
        section_count=count,
        geometry=geometry_of(volume)
        | ({"notes": [*volume.warnings, *analysis.unjudged]} if analysis.unjudged else {})  # said again when reopened
        | {"rule": applied_rule(analysis)}
        | ({"study_unread": study_unread} if study_unread else {})
        | ({"study_unread_named": list(unread_named)} if unread_named else {})  # named in its PDF and History
        | ({"series_number": series_number} if series_number else {})
        | ({"scan_day": day} if key and (day := scan_day(volume.scanned, key)) is not None else {})
        | ({"lesion_caveats": analysis.volume_caveats} if analysis.volume_caveats else {})
        | ({"lesion_model": analysis.lesion_model} if analysis.lesion_areas is not None else {}),
        lesion_px=None if analysis.lesion_areas is None else sum(analysis.lesion_areas),
        lesion_ml=analysis.lesion_ml,
    ).validate()


def applied_rule(analysis: SeriesAnalysis) -> dict[str, Any]:
    """The series rule as the record keeps it: the rule's threshold and neighbours, and the neighbours the verdict
    rested on with the threshold it was judged by (higher when fewer than the rule's could be analysed: History and
    the report stated the rule's own beside such a verdict)."""
    return rule_of(analysis.rule) | {"used": analysis.neighbours_used, "applied": analysis.applied_threshold}


def section_rows(analysis: SeriesAnalysis) -> list[Section]:
    return [
        Section(
            s.index,
            float(s.position),
            s.tumour_probability,
            None if s.analysis is None else s.analysis.prediction.label,
            s.skipped,
        )
        for s in analysis.sections
    ]


def save_series(
    analysis: SeriesAnalysis,
    store: Store | None,
    *,
    actor: Actor,
    patient_ref: str | None,
    images: ImageStore | None = None,
    key: bytes | None = None,
    study_unread: int = 0,
    series_number: int | None = None,
    unread_named: Sequence[str] = (),
) -> SaveStatus:
    """Keep the series' de-identified pixels, write its record and sections once (both or neither), and audit the
    upload. A series with no analysed section is not saved (it has no verdict); ``study_unread``: how many series
    of its study are such (kept in the record, see :func:`series_record`)."""
    require(actor, ANALYSE)
    if analysis.label is None:
        return SaveStatus(NOT_SAVED, "no section of this series could be analysed, so there is no verdict to save")
    try:  # checked before its pixels are kept, as a single scan's: a refused record left an image no result names,
        record = series_record(  # and its error stopped the whole study's save
            analysis,
            patient_ref=patient_ref,
            uploader=actor.name,
            key=key,
            study_unread=study_unread,
            series_number=series_number,
            unread_named=unread_named,
        )
        sections = [section.validate() for section in section_rows(analysis)]  # a section the store would refuse
    except InvalidRecord as error:  # that series not saved; the study's save goes on as after any failed series
        return SaveStatus(NOT_SAVED, refused_record(error))
    try:
        record = replace(record, image_key=keep_image(images, stacked(analysis.volume.sections)))
    except StoreError as error:
        return image_not_kept(error)
    status = save_record(record, store, actor, write=lambda r: store.add_series(r, sections))
    if status.state == ALREADY_SAVED and store is not None:  # uploaded before: link the reference typed now
        status = reference_for_saved(store, actor, record.id, patient_ref, status)[0]
    return status


@dataclass(frozen=True, eq=False)
class StudyResult:
    """One upload of a study as a session keeps it: the views of its series, or why there are none."""

    views: tuple[SeriesView, ...] = ()
    verdict: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    notes: tuple[str, ...] = ()
    unread: int = 0  # series of the study nobody could read (no section analysed, or not put together)


def study_as_it_stands(store: Store, actor: Actor, study: StudyResult) -> StudyResult:
    """``study`` with each saved series' record as it stands now: a colleague may have reviewed one since the page
    analysed it (the page led with the model's verdict, and offered the PDF made before the review). No audit
    event: the analysis that saved them was one."""
    require(actor, OPEN_RESULT)
    views = []
    for view in study.views:
        record = store.get(view.record.id) if view.record is not None else None
        reviewed = record is not None and bool(record.review_count)
        views.append(
            view if record is None else replace(view, record=record, needs_review=view.needs_review and not reviewed)
        )
    return replace(study, views=tuple(views))


def triage_study(
    files: Sequence[bytes],
    classifier: Classifier,
    store: Store | None,
    *,
    actor: Actor,
    patient_ref: str | None,
    images: ImageStore | None,
    key: bytes | None,
    recheck: Callable[[], Actor | None] | None = None,
) -> StudyResult:
    """Read, analyse and save every series of an upload; the study's verdict first. Never raises for bad input.
    ``recheck``: the actor as the session stands once the study is read (the page's sign-in check); None saves
    nothing (an account disabled or demoted during the seconds of reading saved the study all the same)."""
    require(actor, ANALYSE)
    outcome = analyse_study(files, classifier)
    if recheck is not None and (actor := recheck()) is None:  # type: ignore[assignment]
        return StudyResult(error_code=SIGNED_OUT_CODE, error_message=SIGNED_OUT)
    return save_study(outcome, store, actor=actor, patient_ref=patient_ref, images=images, key=key)


SIGNED_OUT_CODE = "signed_out"
SIGNED_OUT = "Not saved: your session ended, or your account was changed, while the study was being read."


NOT_TRIED = "not tried: a series of this study that decides its verdict could not be saved; retry"


def save_study_statuses(
    outcome: StudyOutcome,
    store: Store | None,
    *,
    actor: Actor,
    patient_ref: str | None,
    images: ImageStore | None,
    key: bytes | None,
) -> list[SaveStatus]:
    """Save every series of ``outcome`` (one status each, in its order): tumour series first, and none after one
    that could not be saved. Each series is its own unit of work, so a failure part-way left a stored study whose
    saved series read another verdict (its tumour series lost, the no-tumour ones counted a tumour-free study);
    now what is stored of a study is its most decisive series, or nothing, until a retry saves the rest."""
    statuses: dict[int, SaveStatus] = {}
    failed = False
    for index in sorted(range(len(outcome.series)), key=lambda i: not outcome.series[i].is_tumour):
        analysis = outcome.series[index]
        if failed and analysis.label is not None:
            statuses[index] = SaveStatus(NOT_SAVED, NOT_TRIED)
            continue
        statuses[index] = save_series(  # with how many series of its study nobody could read: a report made
            analysis,  # later from it gives no verdict the study did not have
            store,
            actor=actor,
            patient_ref=patient_ref,
            images=images,
            key=key,
            study_unread=outcome.unanalysed,
            series_number=index + 1,  # its number on the Study page
            unread_named=outcome.unread,
        )
        failed = failed or (statuses[index].state == NOT_SAVED and analysis.label is not None)
    return [statuses[i] for i in range(len(outcome.series))]


def _saved_record(store: Store | None, status: SaveStatus) -> Record | None:
    """The stored record a status names, None when unsaved or when it cannot be read now (the store that just
    failed a save: the view goes on, with its retry)."""
    if store is None or status.state == NOT_SAVED or status.record_id is None:
        return None
    try:
        return store.get(status.record_id)
    except StoreError:
        return None


def save_study(
    outcome: StudyOutcome,
    store: Store | None,
    *,
    actor: Actor,
    patient_ref: str | None,
    images: ImageStore | None,
    key: bytes | None,
) -> StudyResult:
    """Save every series of an analysed study once (an upload's or a PACS study's) and keep its views."""
    require(actor, ANALYSE)
    if outcome.error_code:
        return StudyResult(error_code=outcome.error_code, error_message=outcome.error_message)
    statuses = save_study_statuses(outcome, store, actor=actor, patient_ref=patient_ref, images=images, key=key)
    views = [
        series_view(analysis, status, _saved_record(store, status))
        for analysis, status in zip(outcome.series, statuses, strict=True)
    ]
    notes = outcome.notes
    if outcome.unanalysed and outcome.verdict is None and any(s.label is not None for s in outcome.series):
        notes = (*notes, UNREAD_SERIES.format(outcome.unanalysed))
    return StudyResult(tuple(views), outcome.verdict, notes=notes, unread=outcome.unanalysed)


def _unlinked(view: SeriesView, patient_ref: str | None, moving: bool = False) -> bool:
    """A saved series this session may link to ``patient_ref``: one under no reference, or (``moving``) one under
    the reference this session gave it; never one kept under another patient's (its status says so)."""
    saved = view.record is not None and view.status is not None and not view.status.others
    if not saved or view.record.patient_ref == patient_ref:  # type: ignore[union-attr]
        return False
    return moving or view.record.patient_ref is None  # type: ignore[union-attr]


def needs_link(study: StudyResult, patient_ref: str | None, moving: bool = False) -> bool:
    """Whether a saved series of the study has no reference yet; ``moving``: whether one is under another reference
    this session gave it (to be moved only by the reader's correction)."""
    return any(
        _unlinked(view, patient_ref, moving) and (view.record.patient_ref is not None) == moving  # type: ignore[union-attr]
        for view in study.views
    )


def link_study(
    store: Store, actor: Actor, study: StudyResult, patient_ref: str | None, moving: bool = False
) -> StudyResult:
    """The study with the reference typed after it was analysed applied to each saved series that has none and,
    ``moving`` (the reader's correction of a typing mistake, a button of its own), to each this session saved
    under the reference typed before; an audited change each. A series saved earlier under another patient's
    reference (its status says so) is never relinked from here."""
    require(actor, ANALYSE)
    views = []
    for view in study.views:
        record, status = view.record, view.status
        if record is None or status is None or not _unlinked(view, patient_ref, moving):
            views.append(view)
            continue
        if status.state == NOT_UPDATED:  # an earlier link failed: once applied, it is simply saved
            status = SaveStatus(SAVED, record_id=record.id)
        if record.patient_ref is None:
            status, kept = reference_for_saved(store, actor, record.id, patient_ref, status)
        else:  # failing, this series stays where it was, said; the others still move
            status, kept = relinked(store, actor, record.id, patient_ref, record.patient_ref, status.state)
        views.append(replace(view, record=replace(record, patient_ref=kept), status=status))
    return replace(study, views=tuple(views))
