"""The radiologist's review loop: the worklist, opening a result with its image, agreeing or overriding.

Reviews are append-only (the store keeps the history; the latest is the final label). Opening a result and
reviewing it are audit events; the image shown is the de-identified copy from the image store, analysed again by
the same model for its crop and heat map (the model is deterministic, so the verdict is the one stored).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from core.domain.people import REASON_CODES, Review
from core.domain.results import REFUSED, Record, WorklistQuery
from core.errors import InvalidRecord, ScanError
from core.imaging import read_scan
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
    verdict (``record``), every one but the verdict itself (a refused image has none: every label)."""
    every = [*labels, UNKNOWN_TYPE]
    if record is None or record.gate == REFUSED:
        return every
    return [label for label in every if label != record.label]


def worklist(
    store: Store, actor: Actor, query: WorklistQuery, limit: int = LISTED, audited: bool = True
) -> list[Record]:
    """The results to read. Filtered to one patient, the read is an audit event under the keyed reference, as
    History's is (it listed a patient's results unaudited), unless ``audited`` is False (the page's later reruns of
    a list it already audited in this session)."""
    require(actor, WORKLIST)
    results = store.worklist(query, limit)
    if query.patient_ref is not None and audited:
        audit.record(store, actor, "worklist_patient", query.patient_ref, results=min(len(results), LISTED))
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
        analysis = analyse_scan(scan, classifier)
    except ScanError:
        return OpenedResult(record, None, store.reviews_of(result_id), "The stored image cannot be read.")
    if record.gate == REJECTED:  # the gate's decision as saved: the kept grey copy passes a colour check it failed
        gate = replace(analysis.prediction.gate, decision=REJECTED)
        analysis = replace(analysis, prediction=replace(analysis.prediction, gate=gate))
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
    with store.atomic():  # the review and its audit event: both or neither
        updated = store.add_review(review, seen_reviews)
        audit.record(
            store,
            actor,
            "review",
            result_id,
            action=action,
            model_label=record.label,
            final_label=final_label,
            reasons=list(reasons),
        )
    return updated
