"""Studies from the PACS, analysed exactly as uploads: search (radiologists), pull a study's MR series
into memory and run the same study pipeline (reader, gate, model, series rule) on them.

Supervisors never reach PACS images (checked here, whatever the page shows). Patient names and IDs from the PACS are
returned for the radiologist's screen only; what is stored is the keyed pseudonymous reference of the PACS patient
ID (:func:`patient_reference`). Every pull is an audit event (the study's keyed reference, never its UID).
"""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from core.config import PacsSettings
from core.domain.people import Review
from core.domain.results import record_id
from core.errors import (
    InvalidRecord,
    PacsAnotherPatient,
    PacsAnotherStudy,
    PacsError,
    PacsMalformed,
    PacsStudyChanged,
    PacsUnreachable,
    ReviewedMeanwhile,
    ScanError,
)
from core.identity import pseudonymise
from core.imaging.series_headers import several_patients
from core.model.classifier import Classifier
from core.pacs import objects
from core.pacs.client import ANOTHER_SERIES, Pacs, StudyHit
from core.services import audit, reviews
from core.services.access import ANALYSE, PACS, REVIEW, Actor, require
from core.services.pacs_report import placed, report_objects, version_of
from core.services.studies import StudyResult, save_study
from core.services.study_reading import StudyOutcome, analyse_study
from core.storage.images import ImageStore
from core.storage.protocol import AuditTrail, Store

logger = logging.getLogger("btd.pacs")
_WARNED_UNENCRYPTED: set[str] = set()


def connect(settings: PacsSettings, timeout_s: float = 10.0) -> Pacs:
    """The PACS of ``settings``; :class:`PacsError` for an address that is no http(s) URL, or a certificate
    authority file that cannot be read (every request then failed as "the PACS does not answer")."""
    if settings.verify_tls and settings.ca_file and not os.access(settings.ca_file, os.R_OK):
        raise PacsError("The PACS's certificate authority file (ca_file) cannot be read; check its path.")
    if settings.verify_tls and settings.ca_file and not os.path.isdir(settings.ca_file):  # a file not PEM: every
        try:  # request failed as "is the port one for https?" (a folder of certificates is requests' ca_cert_dir)
            ssl.create_default_context(cafile=settings.ca_file)
        except (ssl.SSLError, ValueError, OSError) as error:
            raise PacsError("The PACS's certificate authority file (ca_file) holds no PEM certificate.") from error
    if settings.unencrypted and settings.url not in _WARNED_UNENCRYPTED:  # once per address in a process (the watch
        _WARNED_UNENCRYPTED.add(settings.url)  # connects once; the page on every action)
        logger.warning(
            "event=pacs_unencrypted password=%s hint=give the PACS's https address (images, names%s cross the "
            "network in clear)",
            "yes" if settings.password else "no",
            " and the password" if settings.password else "",
        )
    return Pacs(settings.url, settings.user, settings.password, settings.verify, timeout_s)


def search(pacs: Pacs, actor: Actor, store: AuditTrail, key: bytes | None, **filters: str | None) -> list[StudyHit]:
    """MR studies matching ``filters`` (patient_id, start, end, description); radiologists only. The search shows
    patients' names, so it is an audit event naming whose: the keyed reference of the patient ID searched for (its
    target) and of each patient listed, as History's read names its patient (never the filters, an ID or a name)."""
    require(actor, PACS)
    hits = pacs.search(**filters)
    searched = patient_reference(filters.get("patient_id") or "", key)
    listed = sorted({ref for hit in hits if (ref := patient_reference(hit.patient_id, key)) is not None})
    audit.record(
        store,
        actor,
        "pacs_search",
        searched,
        studies=len(hits),
        by_patient_id=bool(filters.get("patient_id")),
        **({"patients": listed} if key is not None else {}),
    )
    return hits


@dataclass(frozen=True, eq=False)
class Pulled:
    """A study pulled from the PACS: its analysis, and the source images' headers (what a report refers to)."""

    study_uid: str
    outcome: StudyOutcome
    evidence: tuple[Any, ...] = ()
    fingerprint: str | None = None  # the study's MR series as the PACS listed them when pulled (:func:`mr_fingerprint`)


def mr_fingerprint(pacs: Pacs, study_uid: str) -> str:
    """What decides whether a study changed since it was analysed: its MR series and how many images each holds
    (one series search; objects of other modalities, our own report among them, do not count), and the patient and
    accession number the PACS files it under (one study search: corrected since, a report went to the old ones)."""
    identity = repr((_mr_series(pacs, study_uid), pacs.patient_of(study_uid)))
    return FINGERPRINT + hashlib.sha256(identity.encode()).hexdigest()


FINGERPRINT = "v2:"  # a fingerprint with the patient in it; one kept before is 64 hex digits (:func:`series_only`)


def series_only(pacs: Pacs, study_uid: str) -> str:
    """The fingerprint as kept before the patient was in it, to compare a watch's kept one with once (without it,
    every study handled before an upgrade was analysed, and its report sent, again when it became stable again)."""
    return hashlib.sha256("\n".join(_mr_series(pacs, study_uid)).encode()).hexdigest()


def _mr_series(pacs: Pacs, study_uid: str) -> list[str]:
    return sorted(f"{s.series_uid}:{s.instances}" for s in pacs.series_of(study_uid) if s.modality.upper() == "MR")


SEVERAL_PATIENTS = (
    "The images of this PACS study belong to more than one patient (their patient IDs differ under one Study "
    "Instance UID): it is not analysed as one study. Ask the PACS administrator to correct the study."
)


def pull_and_analyse(
    pacs: Pacs,
    actor: Actor,
    study_uid: str,
    classifier: Classifier,
    store: AuditTrail,
    key: bytes | None,
    fingerprint: str | None = None,
) -> Pulled:
    """Retrieve the study's MR series into memory and analyse them as an upload; never raises for a PACS or scan
    problem (the outcome carries its code and message). ``fingerprint``: the study's :func:`mr_fingerprint` when
    the caller has just taken it (the watch), else taken here. Those who may search the PACS and analyse scans
    only."""
    require(actor, PACS)
    require(actor, ANALYSE)
    source = f"PACS study {study_uid}"
    try:
        fingerprint = fingerprint or mr_fingerprint(pacs, study_uid)  # before the images: a series added meanwhile
        # is told at send
        files, left_out = pacs.retrieve_mr(study_uid)
    except (PacsError, ScanError) as error:
        logger.info("event=pacs_pull_refused code=%s", error.code)
        received = getattr(error, "received", 0)  # images that crossed before a retrieval failed: an access too
        if received:
            audit.record(store, actor, "pacs_pull_failed", _target(study_uid, key), instances=received, code=error.code)
        return Pulled(study_uid, StudyOutcome(source, error_code=error.code, error_message=str(error)))
    evidence = tuple(objects.headers(files))
    # one Study Instance UID, two patients (as an upload is judged); and, the report going back to the PACS under the
    # patient its first file names, a file without a patient ID beside ones with it (saved and sent without one)
    named = {bool(str(h.get("PatientID", "") or "").strip()) for h in evidence}
    several = several_patients(list(evidence)) or len(named) > 1
    refused = {"refused": "several_patients"} if several else {}  # every pull is an event, a refused one too (its
    audit.record(store, actor, "pacs_pull", _target(study_uid, key), instances=len(files), **refused)  # images came)
    if several:  # analysed as one, it was filed under the first patient
        logger.warning("event=pacs_pull_refused code=several_patients")
        return Pulled(study_uid, StudyOutcome(source, error_code="several_patients", error_message=SEVERAL_PATIENTS))
    outcome = analyse_study(files, classifier, source)
    if left_out and outcome.error_code is None:  # named as unread: the study then has no "no tumour" verdict
        notes = (*outcome.notes, *(f"A series could not be read: {reason}" for reason in left_out))
        outcome = replace(outcome, unread=(*outcome.unread, *left_out), notes=notes)
    return Pulled(study_uid, outcome, evidence, fingerprint)


def pacs_patient_id(pulled: Pulled) -> str:
    """The PACS patient ID of a pulled study (from its images; empty when they carry none). For the keyed reference
    only: never stored or logged."""
    return str(pulled.evidence[0].get("PatientID", "") or "") if pulled.evidence else ""


def save_pulled(
    pulled: Pulled, store: Store | None, *, actor: Actor, images: ImageStore | None, key: bytes | None
) -> StudyResult:
    """Save each series of a pulled study as an upload's is saved (once), under the keyed reference of its PACS
    patient ID, and keep its views for the screen."""
    require(actor, PACS)
    reference = patient_reference(pacs_patient_id(pulled), key)
    return save_study(pulled.outcome, store, actor=actor, patient_ref=reference, images=images, key=key)


def send_results(
    pacs: Pacs,
    actor: Actor,
    pulled: Pulled,
    model: objects.ModelFacts,
    store: AuditTrail,
    key: bytes | None,
    final_label: str | None = None,
    earlier_finals: Sequence[tuple[str, str]] = (),
) -> list[str]:
    """Send the study's report and key images to the PACS; returns the SOP Instance UIDs it stored. The same result
    sent again stores the same instances (no duplicate); a failure raises :class:`PacsError` with its reason and
    is audited, and the send can simply be retried. ``earlier_finals``: the (final label, reviewer) of the study's
    earlier reviews, oldest first, so that a reviewed report names the version before it (see
    :mod:`core.pacs.objects`); ``final_label`` is the acting reader's, named in the report.
    Those who may use the PACS and analyse scans only (an admin manages the connection, not reports)."""
    require(actor, PACS)
    require(actor, ANALYSE)
    analysed = [s for s in pulled.outcome.series if s.label is not None]
    if not pulled.evidence or not analysed:
        raise PacsError("There is no analysed series to report on.")
    if any(str(header.StudyInstanceUID) != pulled.study_uid for header in pulled.evidence):  # never into another study
        raise PacsMalformed(ANOTHER_SERIES)
    if elsewhere := filed_elsewhere(store, pulled, key):  # its result is on the other's worklist: never final here
        raise elsewhere
    finals = [*earlier_finals, (final_label, actor.name)] if final_label is not None else []
    chain, images = report_objects(pulled, model, finals)
    target = _target(pulled.study_uid, key)
    with _failure_audited(store, actor, target):  # the PACS's current report, which ours replaces (asked before
        _unchanged_since_pulled(pacs, pulled)  # anything leaves)
        head = pacs.report_head(pulled.study_uid, objects.report_series(pulled.study_uid))
    if head is not None and not finals and objects.same_reading(head, chain[0]):
        chain = [head]  # the same reading sent again without a label (the watch, the command line): the PACS's
        # current version stands (a preliminary rebuilt from scratch would replace the reader's FINAL report)
    report, earlier = placed(chain, head, lambda before, version: version_of(pulled, model, finals, before, version))
    report_ref = study_reference(str(report.SOPInstanceUID), key)  # keyed: the PACS maps the UID to the patient
    audit.record(store, actor, SENT, target, report=report_ref, key_images=len(images))  # audited before anything
    # leaves: a send the trail cannot record is not made
    with _failure_audited(store, actor, target):  # the versions it replaces go along (the PACS keeps one copy of
        stored = _stored(pacs, pulled.study_uid, [report, *earlier, *images])  # each): never a predecessor it lacks
        _holds(pacs, pulled.study_uid, report)
    replaced = {str(version.SOPInstanceUID) for version in earlier}
    return [uid for uid in stored if uid not in replaced]


@contextmanager
def _failure_audited(store: AuditTrail, actor: Actor, target: str | None) -> Iterator[None]:
    """A send's step whose :class:`PacsError` is audited (``pacs_send_failed`` with its code) and raised on."""
    try:
        yield
    except PacsError as error:
        audit.record(store, actor, "pacs_send_failed", target, code=error.code)
        raise


def _stored(pacs: Pacs, study_uid: str, datasets: list[Any]) -> list[str]:
    """STOW ``datasets``; when the PACS gave no answer in time, what it lists of them: a PACS slow to answer a
    store it made (3 MB of key images) failed every watch on that study, which pulled and sent it again and never
    reached the studies after it."""
    try:
        return pacs.store(datasets)
    except PacsUnreachable:
        if not all(pacs.holds(study_uid, str(d.SeriesInstanceUID), str(d.SOPInstanceUID)) for d in datasets):
            raise
        logger.info("event=pacs_store_unanswered_but_held objects=%d", len(datasets))
        return [str(d.SOPInstanceUID) for d in datasets]


def _holds(pacs: Pacs, study_uid: str, report: Any) -> None:
    """:class:`PacsError` unless the PACS now lists ``report``: a PACS that drops what it is sent (a filter on what
    it accepts) still answered the STOW with every instance stored, and the page said "Sent". (Whether it is the
    current version is not asked: another copy of the app may have sent a newer one meanwhile.)"""
    if not pacs.holds(study_uid, objects.report_series(study_uid), str(report.SOPInstanceUID)):
        raise PacsError(
            "The PACS answered that it stored the report but does not list it: it may have refused it after "
            "answering (ask the PACS administrator); it was not sent."
        )


def _unchanged_since_pulled(pacs: Pacs, pulled: Pulled) -> None:
    """:class:`PacsStudyChanged` when the study's MR series in the PACS are not those pulled: an analysis kept on a
    page (or a pull sent late) replaced, FINAL, the report of a later reading that covered a series added since."""
    if pulled.fingerprint is not None and mr_fingerprint(pacs, pulled.study_uid) != pulled.fingerprint:
        raise PacsStudyChanged(
            "The study in the PACS changed since it was analysed (a series was added or removed, or its patient or "
            "accession number corrected): analyse it again before sending; nothing was sent."
        )


def review_and_send(
    pacs: Pacs,
    actor: Actor,
    pulled: Pulled,
    model: objects.ModelFacts,
    store: Store,
    key: bytes | None,
    final_label: str,
    result_ids: Sequence[str],
    seen: Mapping[str, int] | None = None,
) -> list[str]:
    """The radiologist's review of a pulled study: ``final_label`` recorded as the review of each of its saved
    series (audited, as on the Worklist), then the report sent again as its reviewed version (a new instance in the
    same series, FINAL and COMPLETE, naming the preliminary one). Radiologists only (reviewing is theirs).
    ``seen``: each result's number of reviews the reader had on screen when choosing the label; when another reader
    has reviewed one since, no series is reviewed, nothing is sent and :class:`InvalidRecord` says so (the same
    compare-and-set as the Worklist's)."""
    require(actor, REVIEW)
    require(actor, PACS)
    if not result_ids:
        raise PacsError("The study's series were not saved, so there is no result to review.")
    if elsewhere := filed_elsewhere(store, pulled, key):  # before any review is recorded (it went onto the other's)
        raise elsewhere
    histories = [store.reviews_of(rid) for rid in result_ids]
    history = histories[0]
    # pressed again (a retry after the PACS failed, or a second press): the same review is not recorded twice and
    # the same report version goes again (the same instance: the PACS stores nothing new)
    again = _reviewed_so(history, final_label, actor)
    # the earlier versions are the study's reviews: a label its reader gave every series (a Worklist review of one
    # series of several became a FINAL study report "given by" a reader who never labelled the study)
    earlier = [
        (r.final_label, r.reviewer)
        for r in (history[:-1] if again else history)
        if all(any((o.final_label, o.reviewer) == (r.final_label, r.reviewer) for o in other) for other in histories)
    ]
    due = [rid for rid, past in zip(result_ids, histories, strict=True) if not _reviewed_so(past, final_label, actor)]
    seen = seen or {}
    if any(seen.get(rid, record.review_count) != record.review_count for rid, record in _records(store, due)):
        raise ReviewedMeanwhile()  # checked for every series before any is reviewed
    with _failure_audited(store, actor, _target(pulled.study_uid, key)):  # before any review: a label recorded
        _unchanged_since_pulled(pacs, pulled)  # against an analysis the PACS no longer matches could never be sent
    with store.atomic():  # every series' review or none (SQLite; MongoDB writes one after the other)
        for result_id in due:
            reviews.review_result(store, actor, result_id, final_label, seen_reviews=seen.get(result_id))
    return send_results(pacs, actor, pulled, model, store, key, final_label=final_label, earlier_finals=earlier)


ANOTHER_PATIENTS = (
    "The same images are saved for another patient (a study filed twice, or under the wrong patient?): this study "
    "is not reviewed or reported from here. Check the PACS, and the other patient's results on the Worklist."
)
ANOTHER_STUDY = (
    "The same images are saved from another study (a study filed twice?): their reviews are that study's, and this "
    "one is not reviewed or reported from here. Check the PACS; review the study they were first saved from."
)


def filed_elsewhere(store: AuditTrail, pulled: Pulled, key: bytes | None) -> PacsAnotherPatient | None:
    """Why the study is neither reviewed nor reported from here (raised by the caller): an analysed series is saved
    as another patient's result, or another study's (a result is its images' and model's: reviewed from here, this
    study got FINAL reports of the other's labels "given by" readers who never opened it); None when it may be. A
    store of the audit trail alone holds no result to tell."""
    get = getattr(store, "get", None)
    if key is None or not callable(get):  # without the key neither can be told (every study read as another's)
        return None
    ours = patient_reference(pacs_patient_id(pulled), key)
    analysed = [s for s in pulled.outcome.series if s.label is not None]
    pairs = [(get(record_id(s.volume.sha256, s.model_name, s.model_version)), s) for s in analysed]
    pairs = [(record, series) for record, series in pairs if record is not None]
    if any(record.patient_ref not in (None, ours) for record, _ in pairs):  # the graver first
        return PacsAnotherPatient(ANOTHER_PATIENTS)
    if any(record.study_ref not in (None, pseudonymise(series.volume.study, key)) for record, series in pairs):
        return PacsAnotherStudy(ANOTHER_STUDY)
    return None


def not_sendable(store: Store, actor: Actor, pulled: Pulled, key: bytes | None) -> str | None:
    """What the send panel says before a label is chosen when :func:`filed_elsewhere` would refuse the study."""
    require(actor, PACS)
    refusal = filed_elsewhere(store, pulled, key)
    return None if refusal is None else str(refusal)


def _reviewed_so(history: Sequence[Review], final_label: str, actor: Actor) -> bool:
    return bool(history) and (history[-1].final_label, history[-1].reviewer) == (final_label, actor.name)


def _records(store: Store, result_ids: Sequence[str]) -> list[tuple[str, Any]]:
    found = [(rid, store.get(rid)) for rid in result_ids]
    if any(record is None for _, record in found):
        raise InvalidRecord("A series of this study is no longer in the results database; analyse it again.")
    return found


def study_reviews(store: Store, actor: Actor, result_ids: Sequence[str]) -> dict[str, tuple[int, list[Review]]]:
    """Each saved series of a pulled study: its number of reviews as its result counts them (what a review is
    compared against, as on the Worklist) and its reviews, oldest first (what the send panel shows)."""
    require(actor, REVIEW)
    return {rid: (record.review_count, store.reviews_of(rid)) for rid, record in _records(store, result_ids)}


SENT = "pacs_send"  # the audit action of a report and its key images stored in the PACS (the watch asks for it)


def study_reference(study_uid: str, key: bytes | None) -> str | None:
    """A PACS study's keyed reference, as its audit events and the watch's log name it (never the UID itself;
    None without a key)."""
    return pseudonymise(study_uid, key)


_target = study_reference  # the audit target of a PACS study


def patient_reference(patient_id: str, key: bytes | None) -> str | None:
    """The keyed reference stored for a PACS patient ID (None without a key or an ID)."""
    return pseudonymise(patient_id, key)
