"""Studies from the PACS, analysed exactly as uploads: search (radiologists and admins), pull a study's MR series
into memory and run the same study pipeline (reader, gate, model, series rule) on them.

Supervisors never reach PACS images (checked here, whatever the page shows). Patient names and IDs from the PACS are
returned for the radiologist's screen only; what is stored is the keyed pseudonymous reference of the PACS patient
ID (:func:`patient_reference`). Every pull is an audit event (the study's keyed reference, never its UID).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config import PacsSettings
from core.domain.people import Review
from core.errors import (
    FileTooLarge,
    InvalidRecord,
    PacsError,
    PacsRefused,
    PacsReportRefused,
    PacsUnreachable,
    ReviewedMeanwhile,
    StoreError,
)
from core.identity import pseudonymise
from core.model.classifier import Classifier
from core.pacs import objects
from core.pacs.client import OrthancChanges, Pacs, StudyHit
from core.services import audit, reviews
from core.services.access import ANALYSE, PACS, REVIEW, Actor, require
from core.services.studies import (
    NOT_SAVED,
    StudyOutcome,
    StudyResult,
    analyse_study,
    save_study,
    save_study_statuses,
)
from core.storage.images import ImageStore
from core.storage.protocol import AuditTrail, Store

logger = logging.getLogger("btd.pacs")


def connect(settings: PacsSettings, timeout_s: float = 10.0) -> Pacs:
    return Pacs(settings.url, settings.user, settings.password, settings.verify_tls, timeout_s)


def search(pacs: Pacs, actor: Actor, store: AuditTrail | None = None, **filters: str | None) -> list[StudyHit]:
    """MR studies matching ``filters`` (patient_id, start, end, description); radiologists only. The search shows
    patients' names, so it is an audit event (how many studies, whether by patient ID; never the filters)."""
    require(actor, PACS)
    hits = pacs.search(**filters)
    if store is not None:
        audit.record(
            store, actor, "pacs_search", None, studies=len(hits), by_patient_id=bool(filters.get("patient_id"))
        )
    return hits


@dataclass(frozen=True, eq=False)
class Pulled:
    """A study pulled from the PACS: its analysis, and the source images' headers (what a report refers to)."""

    study_uid: str
    outcome: StudyOutcome
    evidence: tuple[Any, ...] = ()


SEVERAL_PATIENTS = (
    "The images of this PACS study belong to more than one patient (their patient IDs differ under one Study "
    "Instance UID): it is not analysed as one study. Ask the PACS administrator to correct the study."
)


def pull_and_analyse(
    pacs: Pacs, actor: Actor, study_uid: str, classifier: Classifier, store: AuditTrail | None, key: bytes | None
) -> Pulled:
    """Retrieve the study's MR series into memory and analyse them as an upload; never raises for a PACS or scan
    problem (the outcome carries its code and message). Those who may search the PACS and analyse scans only."""
    require(actor, PACS)
    require(actor, ANALYSE)
    source = f"PACS study {study_uid}"
    try:
        files = pacs.retrieve_mr(study_uid)
    except (PacsError, FileTooLarge) as error:
        logger.info("event=pacs_pull_refused code=%s", error.code)
        return Pulled(study_uid, StudyOutcome(source, error_code=error.code, error_message=str(error)))
    evidence = tuple(objects.headers(files))
    patients = {(str(h.get("PatientID", "") or ""), str(h.get("IssuerOfPatientID", "") or "")) for h in evidence}
    if len(patients) > 1:  # one Study Instance UID, two patients: analysed as one and filed under the first
        logger.warning("event=pacs_pull_refused code=several_patients")
        return Pulled(study_uid, StudyOutcome(source, error_code="several_patients", error_message=SEVERAL_PATIENTS))
    if store is not None:
        audit.record(store, actor, "pacs_pull", _target(study_uid, key), instances=len(files))
    return Pulled(study_uid, analyse_study(files, classifier, source), evidence)


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
    store: AuditTrail | None,
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
    finals = [*earlier_finals, (final_label, actor.name)] if final_label is not None else []
    chain, images = _report_objects(pulled, model, finals)
    report, earlier = chain[-1], chain[-2::-1]
    target = _target(pulled.study_uid, key)
    if store is not None:  # audited before anything leaves: a send the trail cannot record is not made
        audit.record(store, actor, "pacs_send", target, report=str(report.SOPInstanceUID), key_images=len(images))
    try:  # the versions it replaces go along (the PACS keeps one copy of each): never a predecessor it lacks
        stored = pacs.store([report, *earlier, *images])
    except PacsError as error:
        if store is not None:
            audit.record(store, actor, "pacs_send_failed", target, code=error.code)
        raise
    replaced = {str(version.SOPInstanceUID) for version in earlier}
    return [uid for uid in stored if uid not in replaced]


def _report_objects(
    pulled: Pulled, model: objects.ModelFacts, finals: Sequence[tuple[str, str]]
) -> tuple[list[Any], list[Any]]:
    """The study's report versions (the chain from the preliminary one through each review in ``finals``, its
    final label and reader, oldest first) and its key images, or :class:`PacsError` when the source headers hold a
    value the report library refuses (never quoted: it can be a patient's)."""
    every = list(pulled.outcome.series)  # the report names a series nobody could read too ("not analysed")
    unread = pulled.outcome.unread
    try:
        chain = [objects.verdict_report(pulled.evidence, every, pulled.outcome.verdict, model, unread=unread)]
        # each reviewed version names the one it replaces (one chain, one current) and the reader who gave it
        for version, (label, reader) in enumerate(finals, start=2):
            chain.append(
                objects.verdict_report(
                    pulled.evidence, every, pulled.outcome.verdict, model, label, chain[-1], version, unread, reader
                )
            )
        analysed = [s for s in every if s.label is not None]
        images = [image for series in analysed for image in objects.key_images(pulled.evidence, series)]
    except ValueError as error:
        logger.info("event=pacs_report_refused error=%s", type(error).__name__)
        raise PacsReportRefused(
            "The report could not be made: the study's headers hold a value the DICOM standard does not allow "
            "(for example a character set the report library does not support)."
        ) from error
    return chain, images


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
    history = store.reviews_of(result_ids[0])
    # pressed again (a retry after the PACS failed, or a second press): the same review is not recorded twice and
    # the same report version goes again (the same instance: the PACS stores nothing new)
    again = _reviewed_so(history, final_label, actor)
    earlier = [(r.final_label, r.reviewer) for r in (history[:-1] if again else history)]
    due = [rid for rid in result_ids if not _reviewed_so(store.reviews_of(rid), final_label, actor)]
    seen = seen or {}
    if any(seen.get(rid, record.review_count) != record.review_count for rid, record in _records(store, due)):
        raise ReviewedMeanwhile()  # checked for every series before any is reviewed
    with store.atomic():  # every series' review or none (SQLite; MongoDB writes one after the other)
        for result_id in due:
            reviews.review_result(store, actor, result_id, final_label, seen_reviews=seen.get(result_id))
    return send_results(pacs, actor, pulled, model, store, key, final_label=final_label, earlier_finals=earlier)


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


def study_reference(study_uid: str, key: bytes | None) -> str | None:
    """A PACS study's keyed reference, as its audit events and the watch's log name it (never the UID itself;
    None without a key)."""
    return pseudonymise(study_uid, key) if key else None


_target = study_reference  # the audit target of a PACS study


def patient_reference(patient_id: str, key: bytes | None) -> str | None:
    """The keyed reference stored for a PACS patient ID (None without a key or an ID)."""
    return pseudonymise(patient_id, key) if key and patient_id else None


@dataclass
class WatchState:
    """The last change of the PACS's feed already handled and, for each study analysed (SHA-256 of its UID, newest
    last), a fingerprint of its MR series and their image counts when it was; kept in a small JSON file so that a
    restart goes on from there. A study stable again with the same MR images (our own report added to it, say) is
    not analysed again; one with MR images added since is."""

    path: Path
    last: int = 0
    handled: dict[str, str] = field(default_factory=dict)
    tries: dict[str, int] = field(default_factory=dict)  # failed tries of a study the PACS keeps failing

    @classmethod
    def load(cls, path: Path) -> WatchState:
        """The state kept at ``path``; a fresh one when there is none (a first start). A file that is there but
        cannot be read is refused, never taken for a first start: the watch would go back to the beginning of the
        PACS's history and analyse (and, sending, write reports into) every study it ever held."""
        if not path.exists():
            return cls(path)
        try:
            saved = json.loads(path.read_text())
            handled = saved.get("handled", {})
            if isinstance(handled, list):  # written before fingerprints: handled, images unknown (never redone)
                handled = dict.fromkeys(handled, LEGACY)
            tries = {str(k): int(v) for k, v in saved.get("tries", {}).items()}
            return cls(path, int(saved["last"]), {str(k): str(v) for k, v in handled.items()}, tries)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise PacsError(
                f"The watch's state file ({path.name} in the data folder) cannot be read: restore it from a backup, "
                "or move it away to start again from the beginning of the PACS's history."
            ) from error

    def seen(self, study_uid: str) -> bool:
        return self.fingerprint(study_uid) is not None

    def fingerprint(self, study_uid: str) -> str | None:
        """The study's MR fingerprint when it was analysed; None if it never was."""
        return self.handled.get(hashlib.sha256(study_uid.encode()).hexdigest())

    def failed(self, study_uid: str) -> int:
        """Count one more failed try of a study; returns how many there have been."""
        key = hashlib.sha256(study_uid.encode()).hexdigest()
        self.tries[key] = self.tries.get(key, 0) + 1
        return self.tries[key]

    def save(self, last: int, handled: dict[str, str] | None = None) -> None:
        self.last = last
        for uid, fingerprint in (handled or {}).items():
            key = hashlib.sha256(uid.encode()).hexdigest()
            self.handled.pop(key, None)  # newest last
            self.tries.pop(key, None)
            self.handled[key] = fingerprint
        self.handled = dict(list(self.handled.items())[-10_000:])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".tmp")
        with partial.open("w") as out:
            out.write(json.dumps({"last": last, "handled": self.handled, "tries": self.tries}))
            out.flush()
            os.fsync(out.fileno())  # on disk before it replaces the old state: a crash leaves one or the other
        os.replace(partial, self.path)


LEGACY = "handled"  # a study handled before fingerprints were kept


def mr_fingerprint(pacs: Pacs, study_uid: str) -> str:
    """What decides whether a study changed since it was analysed: its MR series and how many images each holds
    (one series search; objects of other modalities, our own report among them, do not count)."""
    series = sorted(f"{s.series_uid}:{s.instances}" for s in pacs.series_of(study_uid) if s.modality.upper() == "MR")
    return hashlib.sha256("\n".join(series).encode()).hexdigest()


@dataclass(frozen=True)
class Watcher:
    """What a watch needs: the PACS, its change feed, the model, the database and what to do with a result."""

    pacs: Pacs
    changes: OrthancChanges
    classifier: Classifier
    store: Store
    images: ImageStore | None
    key: bytes | None
    send: bool = False


# the PACS did not answer, or failed (HTTP 5xx): the study is tried again by the next watch, never dropped
STORE_DOWN = "store_unavailable"
# a refused user name or password is waited out as an outage is (it left every study behind for good)
RETRIED = frozenset({PacsUnreachable.code, PacsRefused.code, PacsError.code, STORE_DOWN})
# a study the PACS answers with an error (not an outage) this many watches in a row is left behind, so that it
# does not hold back every study after it in the feed
MAX_TRIES = 5


def watch_once(watcher: Watcher, state: WatchState, actor: Actor) -> list[dict[str, Any]]:
    """Handle every study that became stable since the last change handled: analyse it as an upload, save each
    series to the worklist (the patient's keyed reference from the PACS patient ID) and send the report when asked;
    a study without brain MR is skipped with its reason. A study analysed before is analysed again only when its
    MR images changed (a series sent later: its earlier series are already saved, the new ones are added and the
    report is sent again with the study's new verdict). A study the PACS failed to give (:data:`RETRIED`) is not
    marked handled and the feed is not moved past it: the others of that page are handled, this watch stops there
    and the next one tries it again (a moment's outage must not drop a study from triage). Returns one line per
    study."""
    require(actor, PACS)
    require(actor, ANALYSE)
    lines: list[dict[str, Any]] = []
    done = False
    while not done:
        studies, last, done = watcher.changes.stable_studies(state.last)
        handled: dict[str, str] = {}
        failed = False
        for study_uid in dict.fromkeys(uid for _, uid in studies):
            line, fingerprint = _handled_once(watcher, state, study_uid, actor)
            if line is None:
                continue  # stable again with the same MR images: analysed already
            if line.get("skipped") in RETRIED and not _given_up(state, study_uid, line):
                line["retry"] = failed = True
            else:
                handled[study_uid] = fingerprint or f"left behind ({line.get('skipped')})"
            lines.append(line)
        state.save(state.last if failed else last, handled)
        done = done or failed
    return lines


def _given_up(state: WatchState, study_uid: str, line: dict[str, Any]) -> bool:
    """Whether a study the PACS failed (``line``) is now left behind: after :data:`MAX_TRIES` watches that got
    an error answer for it (an outage, or our own database down, is waited out however long it lasts)."""
    if line["skipped"] != PacsError.code:
        return False
    tries = state.failed(study_uid)
    if tries < MAX_TRIES:
        return False
    logger.warning("event=pacs_study_left_behind tries=%d", tries)
    line["left_behind"] = f"the PACS failed this study {tries} watches in a row; it is left behind (see the log)"
    return True


def _handled_once(watcher: Watcher, state: WatchState, study_uid: str, actor: Actor) -> tuple[dict | None, str]:
    """The line for a study that is new, or whose MR images changed since it was analysed (then marked
    ``again``), with the fingerprint to keep; no line for one already analysed as it is."""
    before = state.fingerprint(study_uid)
    try:
        fingerprint = mr_fingerprint(watcher.pacs, study_uid)
    except PacsError as error:
        if error.code in RETRIED:
            return {"study_uid": study_uid, "skipped": error.code, "reason": str(error)}, ""
        fingerprint = f"unknown ({error.code})"  # analysed (and its error reported) as any study would be
    if before is not None and before in (fingerprint, LEGACY):
        return None, fingerprint
    line = _handled_safely(watcher, study_uid, actor)
    if before is not None:
        line["again"] = "MR images were added to the study after it was analysed"
    return line, fingerprint


def _handled_safely(watcher: Watcher, study_uid: str, actor: Actor) -> dict[str, Any]:
    """:func:`_handle`, never raising: the database unavailable is tried again; anything else that one study
    raises is logged and reported for that study, which is then left behind (an exception used to stop the watch,
    and the restarted watch met the same study first and stopped again: triage stopped for every later study)."""
    try:
        return _handle(watcher, study_uid, actor)
    except StoreError as error:
        return {"study_uid": study_uid, "skipped": STORE_DOWN, "reason": str(error)}
    except Exception:
        logger.exception("event=pacs_study_failed code=internal_error")
        return {
            "study_uid": study_uid,
            "skipped": "internal_error",
            "reason": "the study could not be handled; see log",
        }


def _handle(watcher: Watcher, study_uid: str, actor: Actor) -> dict[str, Any]:
    pulled = pull_and_analyse(watcher.pacs, actor, study_uid, watcher.classifier, watcher.store, watcher.key)
    if pulled.outcome.error_code:
        logger.info("event=pacs_study_skipped code=%s", pulled.outcome.error_code)
        return {"study_uid": study_uid, "skipped": pulled.outcome.error_code, "reason": pulled.outcome.error_message}
    reference = patient_reference(pacs_patient_id(pulled), watcher.key)
    statuses = save_study_statuses(
        pulled.outcome, watcher.store, actor=actor, patient_ref=reference, images=watcher.images, key=watcher.key
    )
    saved = [status.state for status in statuses]
    unsaved = [state for s, state in zip(pulled.outcome.series, saved, strict=True) if s.label is not None]
    if NOT_SAVED in unsaved:  # not on the worklist: tried again, no report for a study nobody can review (a series
        # nobody could read is never saved: that one is reported, not retried)
        reason = "a series could not be saved; the study is tried again"
        return {"study_uid": study_uid, "skipped": STORE_DOWN, "reason": reason, "saved": saved}
    line: dict[str, Any] = {"study_uid": study_uid, "verdict": pulled.outcome.verdict, "saved": saved}
    if pulled.outcome.unanalysed:
        line["unanalysed_series"] = pulled.outcome.unanalysed  # why there is no verdict: the report says so too
    if watcher.send and any(s.label is not None for s in pulled.outcome.series):
        card = watcher.classifier.card
        model = objects.ModelFacts(card.name, card.version, card.weights_sha256)
        try:
            line["stored"] = send_results(watcher.pacs, actor, pulled, model, watcher.store, watcher.key)
        except PacsError as error:
            line["send_error"] = {"code": error.code, "message": str(error)}
            if error.code in RETRIED:  # the report is sent by a later watch (its series answer "already saved")
                line["skipped"] = error.code
    return line
