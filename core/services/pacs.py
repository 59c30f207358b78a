"""Studies from the PACS, analysed exactly as uploads: search (radiologists and admins), pull a study's MR series
into memory and run the same study pipeline (reader, gate, model, series rule) on them.

Supervisors never reach PACS images (checked here, whatever the page shows). Patient names and IDs from the PACS are
returned for the radiologist's screen only; what is stored is the keyed pseudonymous reference of the PACS patient
ID (:func:`patient_reference`). Every pull is an audit event (the study's keyed reference, never its UID).
"""

from __future__ import annotations

import logging

from core.config import PacsSettings
from core.errors import FileTooLarge, PacsError
from core.identity import pseudonymise
from core.model.classifier import Classifier
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


def pull_and_analyse(
    pacs: Pacs, actor: Actor, study_uid: str, classifier: Classifier, store: AuditTrail | None, key: bytes | None
) -> StudyOutcome:
    """Retrieve the study's MR series into memory and analyse them as an upload; never raises for a PACS or scan
    problem (the outcome carries its code and message)."""
    require(actor, PACS)
    source = f"PACS study {study_uid}"
    try:
        files = pacs.retrieve_mr(study_uid)
    except (PacsError, FileTooLarge) as error:
        logger.info("event=pacs_pull_refused code=%s", error.code)
        return StudyOutcome(source, error_code=error.code, error_message=str(error))
    if store is not None:
        target = pseudonymise(study_uid, key) if key else None
        audit.record(store, actor, "pacs_pull", target, instances=len(files))
    return analyse_study(files, classifier, source)


def patient_reference(patient_id: str, key: bytes | None) -> str | None:
    """The keyed reference stored for a PACS patient ID (None without a key or an ID)."""
    return pseudonymise(patient_id, key) if key and patient_id else None
