"""Studies from the PACS, analysed exactly as uploads: search (radiologists and admins), pull a study's MR series
into memory and run the same study pipeline (reader, gate, model, series rule) on them.

Supervisors never reach PACS images (checked here, whatever the page shows). Patient names and IDs from the PACS are
returned for the radiologist's screen only; what is stored is the keyed pseudonymous reference of the PACS patient
ID (:func:`patient_reference`). Every pull is an audit event (the study's keyed reference, never its UID).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from core.config import PacsSettings
from core.errors import FileTooLarge, PacsError
from core.identity import pseudonymise
from core.model.classifier import Classifier
from core.pacs import objects
from core.pacs.client import Pacs, StudyHit
from core.services import audit
from core.services.access import PACS, Actor, require
from core.services.studies import StudyOutcome, analyse_study
from core.storage.protocol import AuditTrail

logger = logging.getLogger("btd.pacs")


def connect(settings: PacsSettings, timeout_s: float = 10.0) -> Pacs:
    return Pacs(settings.url, settings.user, settings.password, settings.verify_tls, timeout_s)


def search(pacs: Pacs, actor: Actor, **filters: str | None) -> list[StudyHit]:
    """MR studies matching ``filters`` (patient_id, start, end, description); radiologists and admins only."""
    require(actor, PACS)
    return pacs.search(**filters)


@dataclass(frozen=True, eq=False)
class Pulled:
    """A study pulled from the PACS: its analysis, and the source images' headers (what a report refers to)."""

    study_uid: str
    outcome: StudyOutcome
    evidence: tuple[Any, ...] = ()


def pull_and_analyse(
    pacs: Pacs, actor: Actor, study_uid: str, classifier: Classifier, store: AuditTrail | None, key: bytes | None
) -> Pulled:
    """Retrieve the study's MR series into memory and analyse them as an upload; never raises for a PACS or scan
    problem (the outcome carries its code and message)."""
    require(actor, PACS)
    source = f"PACS study {study_uid}"
    try:
        files = pacs.retrieve_mr(study_uid)
    except (PacsError, FileTooLarge) as error:
        logger.info("event=pacs_pull_refused code=%s", error.code)
        return Pulled(study_uid, StudyOutcome(source, error_code=error.code, error_message=str(error)))
    if store is not None:
        audit.record(store, actor, "pacs_pull", _target(study_uid, key), instances=len(files))
    return Pulled(study_uid, analyse_study(files, classifier, source), tuple(objects.headers(files)))


def send_results(
    pacs: Pacs,
    actor: Actor,
    pulled: Pulled,
    model: objects.ModelFacts,
    store: AuditTrail | None,
    key: bytes | None,
    final_label: str | None = None,
) -> list[str]:
    """Send the study's report and key images to the PACS; returns the SOP Instance UIDs it stored. The same result
    sent again stores the same instances (no duplicate); a failure raises :class:`PacsError` with its reason and
    is audited, and the send can simply be retried."""
    require(actor, PACS)
    analysed = [s for s in pulled.outcome.series if s.label is not None]
    if not pulled.evidence or not analysed:
        raise PacsError("There is no analysed series to report on.")
    report = objects.verdict_report(pulled.evidence, analysed, pulled.outcome.verdict, model, final_label)
    images = [image for series in analysed for image in objects.key_images(pulled.evidence, series)]
    target = _target(pulled.study_uid, key)
    try:
        stored = pacs.store([report, *images])
    except PacsError as error:
        if store is not None:
            audit.record(store, actor, "pacs_send_failed", target, code=error.code)
        raise
    if store is not None:
        audit.record(store, actor, "pacs_send", target, report=str(report.SOPInstanceUID), key_images=len(images))
    return stored


def _target(study_uid: str, key: bytes | None) -> str | None:
    """The audit target for a PACS study: its keyed reference (never the UID itself)."""
    return pseudonymise(study_uid, key) if key else None


def patient_reference(patient_id: str, key: bytes | None) -> str | None:
    """The keyed reference stored for a PACS patient ID (None without a key or an ID)."""
    return pseudonymise(patient_id, key) if key and patient_id else None
