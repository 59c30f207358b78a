"""Uploads through analysis and saving, as the Scan page and the CLI use them.

Bad files become outcomes with a reason (never exceptions), so a batch always finishes. A result is saved once
under its identity (image + model + frame); the patient reference is an attribute set or corrected later
(:func:`set_patient_reference`) without making a second record. Saving reports "saved", "already saved" or "not
saved" with the reason, and never writes half a record. Every refusal and save failure is one log line with its
code (never a file name or an identity).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from core.domain.results import Record, record_id
from core.errors import InvalidRecord, MultiFrameImage, ScanError, StoreError
from core.imaging import frames_in
from core.imaging.geometry import pixel_spacing
from core.imaging.series_headers import patient_named as patient_named  # the Scan page's, beside patients_differ
from core.imaging.series_headers import several_patients
from core.model.analysis import Analysis, analyse
from core.model.classifier import Classifier
from core.model.explain import Explainer
from core.services import audit
from core.services.access import ANALYSE, Actor, require
from core.services.exports import spreadsheet_safe
from core.services.views import ScanView, scan_view
from core.storage.images import ImageStore
from core.storage.protocol import Store

SAVED, ALREADY_SAVED, NOT_SAVED, NOT_UPDATED = "saved", "already saved", "not saved", "reference not updated"
logger = logging.getLogger("btd.triage")


@dataclass(frozen=True, eq=False)
class ScanOutcome:
    """The result for one upload (one frame of it): an analysis, or the code and message of why there is none.

    ``frames`` is how many frames the file holds; a multi-frame file analysed without a chosen frame has the
    error code ``multi_frame`` and a frame must be picked.
    """

    sha256: str
    analysis: Analysis | None = None
    error_code: str | None = None
    error_message: str | None = None
    frames: int = 1
    frame: int | None = None

    @property
    def needs_frame(self) -> bool:
        return self.error_code == MultiFrameImage.code and self.frames > 1 and self.frame is None


OTHER_REFERENCE = (
    "it is saved under another patient reference, which was kept: the same pixels under two patients usually mean a "
    "mix-up; check which patient it belongs to before reading it as this one's"
)


@dataclass(frozen=True)
class SaveStatus:
    state: str
    message: str = ""
    record_id: str | None = None
    others: bool = False  # saved before under another patient's reference: this session never relinks it

    @property
    def another_patient(self) -> bool:
        """Saved before under another patient's reference than the one typed now: a likely mix-up, said as a
        warning wherever the result comes back (not when nothing was typed: it keeps its own)."""
        return self.others and self.message == OTHER_REFERENCE


def analyse_upload(data: bytes, classifier: Classifier, frame: int | None = None) -> ScanOutcome:
    """Analyse one upload (``frame`` of a multi-frame DICOM); never raises for a bad file."""
    sha256 = hashlib.sha256(data).hexdigest()
    frames = 1
    try:
        frames = frames_in(data)
        return ScanOutcome(sha256=sha256, analysis=analyse(data, classifier, frame=frame), frames=frames, frame=frame)
    except ScanError as error:
        frames = getattr(error, "frames", None) or frames
        if not (isinstance(error, MultiFrameImage) and frame is None):  # a frame to pick is not a refusal
            logger.info("event=upload_refused code=%s", error.code)
        return ScanOutcome(sha256, None, error.code, str(error), frames=frames, frame=frame)
    except Exception:  # a bug must not stop the batch; the user gets a plain reason, the log the details
        logger.exception("event=analysis_failed code=internal_error")
        return ScanOutcome(sha256, None, "internal_error", "Unexpected error; try again.", frames=frames, frame=frame)


def new_record(
    analysis: Analysis,
    *,
    patient_ref: str | None,
    uploader: str | None,
) -> Record:
    """The record of one analysis (validated). ``patient_ref`` must already be pseudonymised."""
    prediction, scan = analysis.prediction, analysis.scan
    return Record(
        id=record_id(scan.sha256, prediction.model_name, prediction.model_version, scan.frame),
        created_at=datetime.now(UTC),
        image_sha256=scan.sha256,
        image_format=scan.format,
        image_width=scan.width,
        image_height=scan.height,
        image_bytes=scan.size_bytes,
        frame=scan.frame,
        model_name=prediction.model_name,
        model_version=prediction.model_version,
        label=prediction.label,
        probabilities=dict(prediction.probabilities),
        tumour_probability=prediction.tumour_probability,
        is_tumour=prediction.is_tumour,
        roi=tuple(int(v) for v in prediction.roi),  # type: ignore[arg-type]
        timings_ms=dict(prediction.timings_ms),
        patient_ref=patient_ref,
        uploader=uploader,
        gate=prediction.gate.decision,
        gate_score=prediction.gate.energy,
        lesion_px=None if analysis.lesion is None else analysis.lesion.area_px,
        lesion_mm2=None if analysis.lesion is None else analysis.lesion.area_mm2,
        # the directions and the pixel spacing of the stored (displayed) pixels: the kept PNG has neither, and a
        # reopened DICOM slice said "left and right unknown", and was drawn squashed, where the upload had not been
        geometry=({"orientation": list(scan.orientation)} if scan.orientation else {})
        | ({"spacing": list(spacing)} if (spacing := pixel_spacing(scan)) else {}),
    ).validate()


def save(
    analysis: Analysis,
    store: Store | None,
    *,
    actor: Actor,
    patient_ref: str | None,
    images: ImageStore | None = None,
) -> SaveStatus:
    """Keep the de-identified pixels (when an image store is given), write the record once (a second call for the
    same upload and model answers 'already saved'), and record the upload as an audit event. ``store`` None means
    the database could not be opened: the result is reported as not saved."""
    require(actor, ANALYSE)
    try:  # checked before its image is kept: a refused record leaves no image behind
        record = new_record(analysis, patient_ref=patient_ref, uploader=actor.name)
    except InvalidRecord as error:  # one result that fails its own checks: that file not saved, the batch goes on
        return SaveStatus(NOT_SAVED, refused_record(error))
    return _kept_and_saved(record, analysis, store, actor, images)[1]


def refused_record(error: InvalidRecord) -> str:
    """What a result its own checks refused says, logged once: one wording for a scan and a series, on the page and
    the command line (they read "Record refused: ... (nothing was saved)" and "The result cannot be recorded
    (Record refused: ...); nothing was saved.")."""
    logger.warning("event=save_failed code=%s", error.code)
    return f"{error} (nothing was saved)"


def _kept_and_saved(
    record: Record, analysis: Analysis, store: Store | None, actor: Actor, images: ImageStore | None
) -> tuple[Record, SaveStatus]:
    """The record with its kept image's key, and the status of writing it (the image first: a record never names
    pixels that were not kept; an image that cannot be kept saves nothing)."""
    try:
        record = replace(record, image_key=keep_image(images, analysis.scan.pixels))
    except StoreError as error:
        return record, image_not_kept(error, record.id)
    return record, save_record(record, store, actor)


def keep_image(images: ImageStore | None, pixels: Any) -> str | None:
    """The image store's key for the decoded pixels (None without an image store). Raises the store's error when
    it cannot be written: a result is never saved without the image its review needs."""
    return None if images is None else images.put(pixels)


def image_not_kept(error: StoreError, record_id: str | None = None) -> SaveStatus:
    logger.warning("event=image_not_kept code=%s", error.code)
    return SaveStatus(NOT_SAVED, f"the image could not be kept ({error}); nothing was saved", record_id)


def save_record(
    record: Record, store: Store | None, actor: Actor, write: Callable[[Record], bool] | None = None
) -> SaveStatus:
    """Write ``record`` once (``write``: ``store.add`` unless given, e.g. a series with its sections) and its
    upload audit event as one unit of work: both or neither, so nothing touches a result unaudited. Every failure
    is a status with its reason and one log line; a second call for the same upload answers 'already saved'."""
    require(actor, ANALYSE)  # checked here too: every writer of a result goes through it (its callers check first)
    if store is None:
        logger.warning("event=save_failed code=store_unavailable")
        return SaveStatus(NOT_SAVED, "the results database is unavailable", record.id)
    created = False
    try:
        with store.atomic():
            created = (write or store.add)(record)
            state = SAVED if created else ALREADY_SAVED
            audit.record(store, actor, "upload", record.id, state=state, gate=record.gate)
    except StoreError as error:
        logger.warning("event=save_failed code=%s", error.code)
        if created and not getattr(store, "rolls_back", True):  # MongoDB: the result stood without its event; a
            # retry answers "already saved" and writes the event ("not saved" was untrue, and nothing said so)
            note = f"{error} (the result was saved, its audit event was not: retry to record it)"
            return SaveStatus(NOT_SAVED, note, record.id)
        return SaveStatus(NOT_SAVED, f"{error} (the result was not saved)", record.id)
    return SaveStatus(state, record_id=record.id)


def _record_or_undo(store: Store, actor: Actor, record_id: str, new: str | None, old: str | None) -> None:
    """The event of a patient reference just set, with the keyed references before and after (a result linked to
    the wrong patient is traced and undone from the trail); the reference set back when the event cannot be
    written (SQLite rolls the unit back; MongoDB has no transaction, and the link stood unaudited)."""
    try:
        audit.record(store, actor, "patient_reference_set", record_id, cleared=new is None, previous=old, new=new)
    except StoreError:
        with suppress(StoreError):
            store.set_patient_ref(record_id, old, was=new)
        raise


def apply_patient_reference(triaged: Triaged, store: Store | None, patient_ref: str | None, actor: Actor) -> Triaged:
    """Set or correct the patient reference of a result in place (one record, never a second). A result not yet
    saved just takes the new reference for its next save; one saved before under another patient's reference is
    never relinked from here (typing over the field moved that patient's result to another History). Only roles
    that may analyse scans."""
    require(actor, ANALYSE)
    if triaged.record is None or triaged.record.patient_ref == patient_ref:
        return triaged
    if triaged.status is not None and triaged.status.others:
        return triaged  # its status already says the other reference was kept
    record = replace(triaged.record, patient_ref=patient_ref)
    if triaged.status is None or triaged.status.state == NOT_SAVED or store is None:
        return replace(triaged, record=record)
    status, kept = relinked(store, actor, record.id, patient_ref, triaged.record.patient_ref, triaged.status.state)
    return replace(triaged, record=replace(record, patient_ref=kept), status=status)


def relinked(
    store: Store, actor: Actor, record_id: str, new: str | None, old: str | None, state: str
) -> tuple[SaveStatus, str | None]:
    """(its status, the reference it keeps) for a saved result's reference moved from ``old`` to ``new``
    (:func:`move_reference`): not updated, keeping ``old``, when the database failed; another patient's kept when
    another session linked it meanwhile."""
    try:
        kept = move_reference(store, actor, record_id, new, old)
    except StoreError as error:
        logger.warning("event=reference_update_failed code=%s", error.code)
        return SaveStatus(NOT_UPDATED, f"the patient reference was not updated: {error}", record_id), old
    if kept != new:
        return SaveStatus(state, OTHER_REFERENCE, record_id, others=True), kept
    return SaveStatus(state, record_id=record_id), new


def move_reference(store: Store, actor: Actor, record_id: str, new: str | None, old: str | None) -> str | None:
    """A saved result's patient reference set from ``old`` to ``new`` (compare and set) with its audit event, both
    or neither; the reference it has afterwards (another session's, when one linked it meanwhile). Only roles that
    may analyse scans."""
    require(actor, ANALYSE)
    with store.atomic():
        if store.set_patient_ref(record_id, new, was=old):
            _record_or_undo(store, actor, record_id, new, old)
            return new
        stored = store.get(record_id)  # read again only when another session won
    return stored.patient_ref if stored is not None else new  # gone: nothing of another patient's to keep


@dataclass(frozen=True, eq=False)
class Triaged:
    """One upload (one frame of it) after analysis and saving, as a session keeps it: display-size images
    (:class:`core.services.views.ScanView`) and the small record; the decoded scan only while its result is not
    saved (a retry keeps the image with the result, as the first save would have)."""

    sha256: str
    frames: int
    frame: int | None
    view: ScanView | None = None
    error_code: str | None = None
    error_message: str | None = None
    record: Record | None = None
    status: SaveStatus | None = None
    unsaved_pixels: Any = field(default=None, repr=False)

    @property
    def needs_frame(self) -> bool:
        return self.outcome().needs_frame

    def outcome(self) -> ScanOutcome:
        """The fields the batch table needs, without the analysis."""
        return ScanOutcome(self.sha256, None, self.error_code, self.error_message, self.frames, self.frame)


def patients_differ(named: Sequence[Mapping[str, str] | None]) -> bool:
    """Whether files that named these patients (:func:`patient_named`; None: no evidence) belong to more than one:
    one reference typed for a batch filed slices of three patients under one, with no word (the Study page refuses
    such an upload)."""
    return several_patients([patient for patient in named if patient])


def triage(
    data: bytes,
    classifier: Classifier,
    explainer: Explainer | None,
    store: Store | None,
    *,
    actor: Actor,
    patient_ref: str | None,
    images: ImageStore | None = None,
    frame: int | None = None,
) -> Triaged:
    """Analyse one upload (or one frame), keep its de-identified pixels, save its result once (an audit event), and
    keep only what the screen needs. Only roles that may analyse scans get here."""
    require(actor, ANALYSE)
    outcome = analyse_upload(data, classifier, frame)
    if outcome.analysis is None:
        return Triaged(outcome.sha256, outcome.frames, frame, None, outcome.error_code, outcome.error_message)
    analysis = outcome.analysis
    try:  # checked before its image is kept: a refused record leaves no image behind
        record = new_record(analysis, patient_ref=patient_ref, uploader=actor.name)
    except InvalidRecord as error:  # the page's batch goes on past it (it stopped there, a traceback on screen)
        return Triaged(outcome.sha256, outcome.frames, frame, None, error.code, refused_record(error))
    record, status = _kept_and_saved(record, analysis, store, actor, images)
    view = scan_view(analysis, explainer)
    triaged = Triaged(outcome.sha256, outcome.frames, analysis.scan.frame, view, record=record, status=status)
    if status.state == ALREADY_SAVED and store is not None:  # uploaded before: link the reference typed now
        triaged = linked_to_saved(triaged, store, patient_ref, actor)
    unsaved = triaged.status is not None and triaged.status.state == NOT_SAVED
    return replace(triaged, unsaved_pixels=analysis.scan.pixels if unsaved else None)


def linked_to_saved(triaged: Triaged, store: Store, patient_ref: str | None, actor: Actor) -> Triaged:
    """A result uploaded again (``already saved``) as it stands in the store, with the reference typed now applied
    when it had none (:func:`reference_for_saved`), and its reviews since: a radiologist's final label was not
    shown where the result came back, only the model's verdict it had overridden."""
    status, kept = reference_for_saved(store, actor, triaged.record.id, patient_ref, triaged.status)  # type: ignore
    record = replace(triaged.record, patient_ref=kept)  # type: ignore[type-var]
    with suppress(StoreError):  # unread, the model's verdict stands alone, as before
        if (saved := store.get(record.id)) is not None and saved.review_count:
            record = record.reviewed_as(
                saved.reviewer, saved.review_verdict, saved.final_label, saved.reviewed_at, saved.review_count
            )
    return replace(triaged, record=record, status=status)


def reference_for_saved(
    store: Store, actor: Actor, record_id: str, patient_ref: str | None, status: SaveStatus
) -> tuple[SaveStatus, str | None]:
    """(the status, the reference the stored result keeps) for a result uploaded again: the reference typed now is
    applied when it had none (an audit event; it used to be dropped, so the patient's History stayed empty); one
    saved under another patient's reference keeps it and the status says so, never relinked silently. Those who
    analyse scans only (checked here too: it writes a patient's reference, whoever calls it)."""
    require(actor, ANALYSE)
    try:
        saved = store.get(record_id)
        if saved is None or saved.patient_ref == patient_ref:
            return status, saved.patient_ref if saved is not None else patient_ref
        if patient_ref is None:  # typed nothing: it keeps its patient's, and typing one later never moves it
            note = "it is saved under a patient reference, which was kept"
            return SaveStatus(status.state, note, record_id, others=True), saved.patient_ref
        if saved.patient_ref is None:  # linked, with its audit event; or another session's link kept
            if (kept := move_reference(store, actor, record_id, patient_ref, None)) == patient_ref:
                return status, patient_ref
            return SaveStatus(ALREADY_SAVED, OTHER_REFERENCE, record_id, others=True), kept
    except StoreError as error:  # the stored reference is unknown: keep none, so a retry applies the typed one
        logger.warning("event=reference_update_failed code=%s", error.code)
        return SaveStatus(NOT_UPDATED, f"the patient reference was not updated: {error}", record_id), None
    return SaveStatus(ALREADY_SAVED, OTHER_REFERENCE, record_id, others=True), saved.patient_ref


def retry_save(
    triaged: Triaged, store: Store | None, images: ImageStore | None, patient_ref: str | None, actor: Actor
) -> Triaged:
    """Save again a result that was not saved (or whose reference was not updated), keeping its image first when
    the first try could not: never a result without the image its review needs. A result not saved keeps the
    reference it was analysed under (the next patient's, typed meanwhile, must not take it); one without a
    reference takes ``patient_ref``. Only roles that may analyse scans."""
    require(actor, ANALYSE)
    if triaged.record is None or triaged.status is None:
        return triaged
    if triaged.status.state == NOT_UPDATED:
        previous = replace(triaged, status=SaveStatus(SAVED, record_id=triaged.record.id))
        return apply_patient_reference(previous, store, patient_ref, actor)
    if triaged.status.state != NOT_SAVED:
        return triaged
    patient_ref = triaged.record.patient_ref or patient_ref
    record = replace(triaged.record, patient_ref=patient_ref)
    if record.image_key is None:
        if store is None or images is None or triaged.unsaved_pixels is None:
            reason = "the results database is unavailable" if store is None else "the image store is unavailable"
            return replace(triaged, status=SaveStatus(NOT_SAVED, f"{reason}; nothing was saved", record.id))
        try:
            record = replace(record, image_key=keep_image(images, triaged.unsaved_pixels))
        except StoreError as error:
            return replace(triaged, status=image_not_kept(error, record.id))
    status = save_record(record, store, actor)
    if status.state == ALREADY_SAVED:  # saved meanwhile (another replica): make sure it has this reference
        return apply_patient_reference(replace(triaged, status=status, unsaved_pixels=None), store, patient_ref, actor)
    kept = triaged.unsaved_pixels if status.state == NOT_SAVED else None
    return replace(triaged, record=record, status=status, unsaved_pixels=kept)


def record_batch_export(store: Store, actor: Actor, result_ids: Sequence[str], with_names: bool) -> None:
    """A download of the batch's verdicts is an audit event naming the results it carries and whether file names
    went with them (they can carry identities); those who may analyse scans."""
    require(actor, ANALYSE)
    audit.record(store, actor, "results_export", None, results=list(result_ids), file_names=with_names)


def batch_csv(rows: Sequence[Mapping[str, Any]], with_names: bool) -> bytes:
    """The batch table as CSV: file names only when asked for (they can carry identities), every text cell made
    safe for spreadsheets."""
    import csv
    import io

    every = dict.fromkeys(column for row in rows for column in row)  # each row's, in order (a first row without
    columns = [c for c in every if with_names or c != "file"]  # one of them dropped that column for all)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else spreadsheet_safe(row.get(c)) for c in columns])
    return buffer.getvalue().encode("utf-8")
