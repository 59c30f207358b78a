"""The radiologist's review loop: the worklist, opening a result with its image, agreeing or overriding.

Reviews are append-only (the store keeps the history; the latest is the final label). Opening a result and
reviewing it are audit events; the image shown is the de-identified copy from the image store, analysed again by
the same model for its crop and heat map (the model is deterministic, so the verdict is the one stored).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from core.domain.people import REASON_CODES, Review
from core.domain.results import Record, WorklistQuery
from core.errors import InvalidRecord, ReviewedMeanwhile, ScanError, StoreError, UnauditedChange
from core.imaging import read_scan
from core.imaging.geometry import spacing_text
from core.model.analysis import analyse_scan
from core.model.classifier import Classifier
from core.model.decision import UNKNOWN_TYPE
from core.model.explain import Explainer
from core.model.gate import REJECTED
from core.services import audit
from core.services.access import OPEN_RESULT, REVIEW, WORKLIST, Actor, require
from core.services.series_views import SeriesView, stored_series_view
from core.services.views import ScanView, scan_view
from core.storage.images import ImageStore
from core.storage.protocol import Store

__all__ = [
    "LISTED",
    "REASON_CODES",
    "OpenedResult",
    "WorklistQuery",
    "open_result",
    "review_labels",
    "review_result",
    "worklist",
]


LISTED = 200  # the worklist's length on the page (it reads one more, to say when there are more)


def review_labels(labels: Sequence[str], record: Record | None = None) -> list[str]:
    """The final labels a reader may choose: the model's classes and "tumour, type uncertain"; for an override of a
    verdict (``record``), every one but the verdict itself (a refused image has none: every label). Each once: a
    binary card's own "tumour" is that label (it was offered twice)."""
    every = list(dict.fromkeys([*labels, UNKNOWN_TYPE]))
    if record is None or record.gate == REJECTED:
        return every
    return [label for label in every if label != record.label]


def worklist(
    store: Store,
    actor: Actor,
    query: WorklistQuery,
    limit: int = LISTED,
    audited: bool = True,
    seen: Collection[str] | None = None,
) -> list[Record]:
    """The results to read. Filtered to one patient, the read is an audit event under the keyed reference, as
    History's is (it listed a patient's results unaudited), unless every result listed is among ``seen`` (those the
    page's earlier audited reads of this patient listed in this session: its reruns; a filter changed to list
    others was a new read, unaudited) or ``audited`` is False (a probe that shows no result)."""
    require(actor, WORKLIST)
    results = store.worklist(query, limit)
    shown = {record.id for record in results[:LISTED]}
    if query.patient_ref is not None and audited and (seen is None or not shown.issubset(seen)):
        audit.record(store, actor, "worklist_patient", query.patient_ref, results=len(shown))
    return results


@dataclass(frozen=True, eq=False)
class OpenedResult:
    record: Record
    view: ScanView | None  # None when the image is no longer kept (retention) or the model is another version
    reviews: Sequence[Review]
    note: str = ""
    series: SeriesView | None = None  # a series result, with its sections and curve, while its pixels are kept


def open_result(
    store: Store,
    images: ImageStore | None,
    actor: Actor,
    result_id: str,
    classifier: Classifier,
    explainer: Explainer | None,
) -> OpenedResult:
    """The result, its reviews and, while its image is kept, the image with crop and heat map (an audit event)."""
    require(actor, OPEN_RESULT)
    record = store.get(result_id)
    if record is None:
        raise InvalidRecord("No such result.")
    audit.record(store, actor, "open", result_id)
    if record.kind == "series":
        series = stored_series_view(record, store, images, classifier.card, actor)
        note = "" if series is not None else "The series' images are no longer kept (retention period)."
        return OpenedResult(record, None, store.reviews_of(result_id), note, series)
    data = images.get(record.image_key) if images is not None and record.image_key else None
    if data is None:
        return OpenedResult(
            record, None, store.reviews_of(result_id), "The image is no longer kept (retention period)."
        )
    card = classifier.card
    if (card.name, card.version) != (record.model_name, record.model_version):
        note = f"The image is shown without a heat map: it was read by {record.model_name} {record.model_version}."
        return OpenedResult(record, None, store.reviews_of(result_id), note)
    try:
        scan = read_scan(data)
        if orientation := (record.geometry or {}).get("orientation"):  # the kept copy's directions, as uploaded
            scan = replace(scan, orientation=tuple(float(v) for v in orientation))  # type: ignore[attr-defined]
        if spacing := (record.geometry or {}).get("spacing"):  # and its pixel spacing: drawn true, areas in mm²
            facts = {**scan.acquisition, "PixelSpacing": spacing_text(spacing)}
            scan = replace(scan, acquisition=facts)  # type: ignore[attr-defined]
        analysis = analyse_scan(scan, classifier)
    except ScanError:
        return OpenedResult(record, None, store.reviews_of(result_id), "The stored image cannot be read.")
    if record.gate == REJECTED:  # the gate's decision as saved: the kept grey copy passes a colour check it failed
        # (and then its reasons are no refusal's: "review band" was given as why it was refused)
        reread = analysis.prediction.gate
        gate = replace(reread, decision=REJECTED, reasons=reread.reasons if reread.decision == REJECTED else ())
        analysis = replace(analysis, prediction=replace(analysis.prediction, gate=gate))
    # the upload's format and frame, not the kept copy's: a DICOM frame read "PNG 256x256", its frame dropped
    analysis = replace(analysis, scan=replace(analysis.scan, format=record.image_format, frame=record.frame))
    return OpenedResult(record, scan_view(analysis, explainer), store.reviews_of(result_id))


def as_it_stands(store: Store, actor: Actor, opened: OpenedResult) -> OpenedResult:
    """An opened result with its record and reviews as they stand now (another reader may have reviewed it since
    this session opened it: its panel said "Not reviewed yet" beside a worklist row that said it disagreed); the
    images are kept as opened. No audit event: the opening was one. Raises :class:`InvalidRecord` once the result is
    gone."""
    require(actor, OPEN_RESULT)
    record = store.get(opened.record.id)
    if record is None:
        raise InvalidRecord("No such result.")
    return replace(opened, record=record, reviews=store.reviews_of(record.id))


def review_result(
    store: Store,
    actor: Actor,
    result_id: str,
    final_label: str,
    reasons: Sequence[str] = (),
    note: str = "",
    now: datetime | None = None,
    seen_reviews: int | None = None,
) -> Record:
    """Agree (``final_label`` is the model's) or override; returns the result with its new final label. A refused
    image has no verdict to agree with: its review is an override. ``seen_reviews``: the number of reviews the
    reader saw on screen; when another reader has saved one since, nothing is saved and :class:`InvalidRecord`
    says so (a stale panel's Agree replaced a colleague's correction silently)."""
    require(actor, REVIEW)
    record = store.get(result_id)
    if record is None:
        raise InvalidRecord("No such result.")
    agrees = final_label == record.label and not reasons and record.gate != REJECTED
    action = "agree" if agrees else "override"
    review = Review(
        result_id, actor.name, now or datetime.now(UTC), action, record.label, final_label, tuple(reasons), note.strip()
    )
    try:
        with store.atomic():  # the review and its audit event: both or neither (SQLite)
            updated = store.add_review(review, seen_reviews)
            audit.record(
                store,
                actor,
                "review",
                result_id,
                action=action,
                model_label=None if record.gate == REJECTED else record.label,  # a refused image has no class
                final_label=final_label,
                reasons=list(reasons),
                previous_final_label=record.final_label,  # what it replaced, and by whom (None: the first)
                previous_reviewer=record.reviewer,
                review_number=updated.review_count,
            )
    except ReviewedMeanwhile:
        if seen_reviews is not None and _pressed_twice(store.reviews_of(result_id), review, seen_reviews):
            return store.get(result_id) or record  # the reader's own review, saved by the first press
        raise
    except StoreError as error:
        if not getattr(store, "rolls_back", True) and not isinstance(error, InvalidRecord) and _stands(store, review):
            raise UnauditedChange(  # MongoDB writes the two one after the other: the review stood without its event
                f"The review was saved, but its audit event could not be written ({error}); do not press again: "
                "tell an administrator."
            ) from error
        raise
    return updated


def _pressed_twice(reviews: Sequence[Review], review: Review, seen: int) -> bool:
    """Whether the one review saved since the reader's panel was drawn is this reader's same review (a second
    press that landed while the first one's rerun was under way): nothing to refuse, nobody else to blame."""
    if len(reviews) != seen + 1:
        return False
    latest = reviews[-1]
    same = (latest.final_label, latest.reasons, latest.note) == (review.final_label, review.reasons, review.note)
    return latest.reviewer == review.reviewer and same


def _stands(store: Store, review: Review) -> bool:
    """Whether ``review`` is the result's latest review after a failure (it was written before the failure)."""
    try:
        reviews = store.reviews_of(review.result_id)
    except StoreError:
        return False
    latest = reviews[-1] if reviews else None
    return (
        latest is not None
        and latest.reviewer == review.reviewer
        and latest.final_label == review.final_label
        and abs(latest.created_at - review.created_at) < timedelta(milliseconds=1)
    )
