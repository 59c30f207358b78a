"""One uploaded file through analysis and saving, as the scan page and batch tools use it.

Bad files become outcomes with a reason (never exceptions), so a batch always finishes; saving reports
"saved", "already saved" or "not saved" with the reason, and never writes half a record.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from core.classifier import Classifier
from core.errors import ScanError, StoreError
from core.gate import NEEDS_REVIEW, REJECTED
from core.pipeline import Analysis, analyse
from core.records import new_record
from core.store import Store

SAVED, ALREADY_SAVED, NOT_SAVED = "saved", "already saved", "not saved"
logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class ScanOutcome:
    """The result for one upload: an analysis, or the code and message of why it was rejected."""

    sha256: str
    analysis: Analysis | None = None
    error_code: str | None = None
    error_message: str | None = None


@dataclass(frozen=True)
class SaveStatus:
    state: str
    message: str = ""
    record_id: str | None = None


def analyse_upload(data: bytes, classifier: Classifier) -> ScanOutcome:
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        return ScanOutcome(sha256=sha256, analysis=analyse(data, classifier))
    except ScanError as error:
        return ScanOutcome(sha256=sha256, error_code=error.code, error_message=str(error))
    except Exception:  # a bug must not stop the batch; the user gets a plain reason, the log the details
        logger.exception("unexpected error while analysing an upload (sha256 %s)", sha256[:12])
        return ScanOutcome(sha256=sha256, error_code="internal_error", error_message="Unexpected error; try again.")


def save(
    analysis: Analysis, store: Store, *, patient_ref: str | None, uploader: str | None, negative_label: str
) -> SaveStatus:
    """Write the record once; a second call for the same upload answers 'already saved'. ``store`` None means
    the database could not be opened: the result is reported as not saved."""
    if store is None:
        return SaveStatus(NOT_SAVED, "the results database is unavailable")
    try:
        gate = analysis.prediction.gate
        record = new_record(
            analysis,
            patient_ref=patient_ref,
            uploader=uploader,
            negative_label=negative_label,
            gate=gate.decision if gate else "accepted",
            gate_score=gate.energy if gate else None,
        )
        created = store.add(record)
    except StoreError as error:
        return SaveStatus(NOT_SAVED, str(error))
    return SaveStatus(SAVED if created else ALREADY_SAVED, record_id=record.id)


def summary_row(index: int, outcome: ScanOutcome, status: SaveStatus | None) -> dict[str, Any]:
    """One row of the batch table and CSV (no file names: they may carry patient identities)."""
    row: dict[str, Any] = {"scan": index, "sha256": outcome.sha256[:12]}
    if outcome.analysis is None:
        return {**row, "result": "rejected", "label": None, "tumour_probability": None, "confidence": None,
                "model_version": None, "saved": None, "reason": outcome.error_message}  # fmt: skip
    prediction = outcome.analysis.prediction
    gate = prediction.gate
    if gate is not None and gate.decision == REJECTED:
        return {**row, "result": "not a brain MRI", "label": None, "tumour_probability": None, "confidence": None,
                "model_version": prediction.model_version, "saved": status.state if status else None,
                "reason": "; ".join(gate.reasons)}  # fmt: skip
    return {
        **row,
        "result": "needs review" if gate is not None and gate.decision == NEEDS_REVIEW else "classified",
        "label": prediction.label,
        "tumour_probability": round(prediction.tumour_probability, 4),
        "confidence": round(max(prediction.probabilities.values()), 4),
        "model_version": prediction.model_version,
        "saved": status.state if status else None,
        "reason": status.message if status else "",
    }
