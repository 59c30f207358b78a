"""A PACS study's report as versions: the chain from the preliminary report through each review, the key images,
and where a new version goes among those the PACS holds (:func:`placed`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from core.errors import PacsReportRefused
from core.pacs import captures, objects

if TYPE_CHECKING:
    from core.services.pacs import Pulled

logger = logging.getLogger("btd.pacs")


def placed(chain: list[Any], head: Any | None, version_after: Callable[[Any, int], Any]) -> tuple[Any, list[Any]]:
    """The report to send and the earlier versions to send with it, given the PACS's current version ``head``.
    The chain is rebuilt from this analysis: sent whole to a PACS without our report; from the head on where the
    head is one of its versions; and where the head comes from an earlier analysis of the study (a series came
    later, another model read it), the report names that head as the version it replaces (rebuilt from scratch, it
    named none: the PACS held two current reports, an old FINAL among them). Sent again, the same version."""
    if head is None:
        return chain[-1], chain[-2::-1]
    uids = [str(version.SOPInstanceUID) for version in chain]
    if str(head.SOPInstanceUID) in uids:
        return chain[-1], chain[uids.index(str(head.SOPInstanceUID)) + 1 : -1][::-1]
    number = int(head.get("InstanceNumber") or 0)
    if str(version_after(_predecessor_of(head), number).SOPInstanceUID) == str(head.SOPInstanceUID):
        return head, []  # this report, placed after an earlier analysis's, is the PACS's current one already
    return version_after(head, number + 1), []


def _predecessor_of(report: Any) -> Any | None:
    """The version a report names as the one it replaces (its study, series, class and instance UIDs), or None."""
    from pydicom.dataset import Dataset

    for study in report.get("PredecessorDocumentsSequence") or []:
        for series in study.get("ReferencedSeriesSequence") or []:
            for sop in series.get("ReferencedSOPSequence") or []:
                before = Dataset()
                before.StudyInstanceUID, before.SeriesInstanceUID = study.StudyInstanceUID, series.SeriesInstanceUID
                before.SOPClassUID, before.SOPInstanceUID = sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID
                return before
    return None


def version_of(
    pulled: Pulled, model: objects.ModelFacts, finals: Sequence[tuple[str, str]], head: Any | None, version: int
) -> Any:
    """This analysis's latest report as version ``version``, naming ``head`` as the one it replaces (and, when
    ``head`` is a reviewed report this version is not, the label it stated)."""
    label, reader = finals[-1] if finals else (None, None)
    outcome = pulled.outcome
    after = str(head.SOPInstanceUID) if head is not None else None
    try:
        return objects.verdict_report(
            pulled.evidence, list(outcome.series), outcome.verdict, model, label, head, version, outcome.unread,
            reader, after, objects.final_label_said(head),
        )  # fmt: skip
    except ValueError as error:
        raise refused(error) from error


def report_objects(
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
        images = [image for series in analysed for image in captures.key_images(pulled.evidence, series)]
    except ValueError as error:
        raise refused(error) from error
    return chain, images


def refused(error: ValueError) -> PacsReportRefused:
    """A report the library refused to make, said without the value it refused (it can be a patient's)."""
    logger.info("event=pacs_report_refused error=%s", type(error).__name__)
    return PacsReportRefused(
        "The report could not be made: the study's headers hold a value the DICOM standard does not allow "
        "(for example a character set the report library does not support)."
    )
