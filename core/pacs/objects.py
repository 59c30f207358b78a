"""What goes back to the PACS (highdicom): a Comprehensive SR with the study's verdict and the key images.

- The **Structured Report** (one series per study, "BTD decision aid"): once reviewed, first the radiologist's
  final label and the account that gave it; the model's study verdict (named so), each series' verdict, series
  score and rule, followed by its key sections' source images (IMAGE items), the lesion volume when segmented,
  the model's name, version and weights hash, the statement that this is a decision aid that needs a
  radiologist's review. ``PreliminaryFlag`` is PRELIMINARY and
  ``CompletionFlag`` PARTIAL until a review makes it FINAL and COMPLETE (PARTIAL still when a series could not be
  read or analysed); a reviewed report is a new
  instance in the same series that lists the version before it as its predecessor (the preliminary report, or the
  previous review's when the study is reviewed again), so that the PACS holds one chain of versions, never two
  final reports that both claim to replace the preliminary one; a study read again (a series came later, another
  model) gets a version that names the PACS's current one (:func:`core.services.pacs.send_results`).
- The **key images** (:mod:`core.pacs.captures`): a Secondary Capture series per analysed series with its sections
  at or above the rule's threshold (the 12 most likely tumour when there are more), the lesion outline burned in.
- Identity: every UID is derived, under the site's root (``BTD_UID_ROOT``, else pydicom's), from the study, the
  series and the result's content (a key image's from its pixels too), so sending the same result twice stores the
  same instances again (the PACS keeps one), while a new version gets new instances.

Patient and study attributes are copied from the source images (this object belongs to that patient's study in the
PACS); nothing of it is stored by the app.
"""

from __future__ import annotations

import datetime
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.imaging.dicom import quiet_pydicom
from core.model.decision import SERIES_SCORE, UNKNOWN_TYPE, bounded, label_name, ml_text, review_reason
from core.model.volume import SeriesAnalysis, sections_to_see

MANUFACTURER = "BTD brain MRI triage (decision aid)"


def quiet_highdicom() -> None:
    """highdicom quotes a value it finds doubtful (a one-part patient name such as "SMITHJOHN", a referring
    physician's) in a warning and a log line, new for every patient: the server's log then held patients' names.
    Its warnings are not shown and its logger says errors only (set once, process-wide: a ``catch_warnings`` per
    call is not thread-safe under Streamlit)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", module=r"highdicom(\..*)?")
    logging.getLogger("highdicom").setLevel(logging.ERROR)


STATEMENT = "Decision aid: this result needs a radiologist's review before any clinical use."


@dataclass(frozen=True)
class ModelFacts:
    name: str
    version: str
    weights_sha256: str

    @classmethod
    def of(cls, card: Any) -> ModelFacts:
        """The facts a report names of the model ``card`` describes (the one place they are taken from a card)."""
        return cls(card.name, card.version, card.weights_sha256)


# Type 2 attributes of the patient and study modules a report copies from its evidence: present, maybe empty.
_TYPE_2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber",
)  # fmt: skip


def headers(files: Sequence[bytes]) -> list[Any]:
    """The source images' headers (no pixels), the evidence the report refers to; type 2 patient and study
    attributes a PACS left out are added empty, as the standard allows."""
    from pydicom import dcmread
    from pydicom.valuerep import DA, TM

    quiet_pydicom()
    found = [dcmread(io.BytesIO(data), stop_before_pixels=True) for data in files]
    for header in found:
        for keyword in _TYPE_2:
            if keyword not in header:
                setattr(header, keyword, "")
        for keyword, kind in (("PatientBirthDate", DA), ("StudyDate", DA), ("StudyTime", TM)):
            try:
                kind(str(header.get(keyword) or ""))
            except ValueError:  # a date the standard does not allow: copied into our objects, it broke them
                setattr(header, keyword, "")  # type 2: empty is allowed
        _standard_values(header)
    return found


_SEXES = {"M": "M", "F": "F", "O": "O", "MALE": "M", "FEMALE": "F"}


def _standard_values(header: Any) -> None:
    """Values real scanners write that the standard does not allow, and highdicom refuses in the report (the
    report was never made for them): a patient sex of "U" or "male" (type 2: written as M / F, else empty); and
    character sets: every text value is read with the source's own, then the header says UTF-8, as our objects are
    written (a Korean or Japanese set written with its first value empty, or one the report library does not
    know, stopped the report)."""
    header.PatientSex = _SEXES.get(str(header.get("PatientSex") or "").strip().upper(), "")
    if "SpecificCharacterSet" in header:
        header.decode()
        header.SpecificCharacterSet = UTF8


def uid(*parts: object) -> str:
    """A UID derived from ``parts`` under the site's root (:func:`uid_root`): the same parts, the same UID."""
    from pydicom.uid import generate_uid

    return str(generate_uid(prefix=uid_root(), entropy_srcs=["btd-decision-aid", *(str(p) for p in parts)]))


PYDICOM_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's, given free for software: the default


def uid_root() -> str:
    """The organisation root the objects' UIDs are made under: ``BTD_UID_ROOT`` (the hospital's own, as DICOM asks
    of whoever makes objects), else pydicom's; :class:`PacsError` for one that is not a UID root of at most 54
    characters ending in "." (pydicom refuses it as the report is made, after the audit event)."""
    import os

    from core.errors import PacsError

    root = os.environ.get("BTD_UID_ROOT", "").strip() or PYDICOM_ROOT
    if len(root) > 54 or not re.fullmatch(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\.", root, re.ASCII):
        raise PacsError("BTD_UID_ROOT is not a UID root: digits in dot-separated parts ending in '.', 54 at most.")
    return root


MAX_KEY_IMAGES = 12  # a reader opens a few key sections, not every section over the threshold


def key_sections(series: SeriesAnalysis) -> list[int]:
    """The sections sent as key images and named by the report: up to :data:`MAX_KEY_IMAGES` at or above the
    threshold the verdict was judged by, in order: those it rested on first, then the most likely tumour
    (:func:`core.model.volume.sections_to_see`)."""
    marked = series.tumour_sections
    deciding = [s.index for s in series.window if s.index in marked]
    return sections_to_see(series.curve, deciding, MAX_KEY_IMAGES, among=marked)


def _series_items(evidence: Sequence[Any], series: SeriesAnalysis, reviewed: bool, codes: dict) -> list[Any]:
    """The series' line, then the source images of its key sections, each an IMAGE item: a PACS viewer opens them
    from the report (it named the series and its score, and no image to look at)."""
    import highdicom as hd

    line = hd.sr.TextContentItem(codes["finding"], _series_lines(evidence, series, reviewed), "CONTAINS")
    sources = series.volume.sources if series.label is not None else ()  # nothing analysed: nothing to name
    return [line] + [
        hd.sr.ImageContentItem(
            codes["illustration"],
            sources[k][0],
            sources[k][1],
            referenced_frame_numbers=sources[k][2],
            relationship_type="CONTAINS",
        )
        for k in key_sections(series)
        if k < len(sources) and sources[k][0] and sources[k][1]
    ]


def _codes() -> dict[str, Any]:
    from highdicom.sr import CodedConcept

    return {
        "report": CodedConcept("18748-4", "LN", "Diagnostic imaging report"),
        "finding": CodedConcept("121071", "DCM", "Finding"),
        "algorithm": CodedConcept("111001", "DCM", "Algorithm Name"),
        "version": CodedConcept("111003", "DCM", "Algorithm Version"),
        "comment": CodedConcept("121106", "DCM", "Comment"),
        "volume": CodedConcept("118565006", "SCT", "Volume"),
        "ml": CodedConcept("mL", "UCUM", "milliliter"),
        "probability": CodedConcept("{probability}", "UCUM", "probability"),
        "tumour": CodedConcept("108369006", "SCT", "Neoplasm"),
        "illustration": CodedConcept("121200", "DCM", "Illustration of Finding"),
    }


def series_name(evidence: Sequence[Any], series: SeriesAnalysis) -> str:
    """How a reader finds the series in the PACS: its number and description, and its Series Instance UID (the
    report writes "DICOM series 3 AX FLAIR (UID ...)", as the app and the PDF name it beside their own number)."""
    source = source_series(evidence, series)
    header = next((e for e in evidence if str(e.SeriesInstanceUID) == source), None)
    number = header.get("SeriesNumber") if header is not None else None
    description = str(header.get("SeriesDescription", "") or "").strip() if header is not None else ""
    shown = " ".join(part for part in (f"{number}" if number not in (None, "") else "", description) if part)
    if series.volume.stack:  # one of several stacks of the series (a b-value, an echo): two lines told apart
        shown = f"{shown}, images at {series.volume.stack}" if shown else f"images at {series.volume.stack}"
    return f"{shown} (UID {source})" if shown else f"UID {source}"


def _words(label: str | None, study: bool = False) -> str | None:
    """A verdict in the words the screen and the PDF use ("No tumour", "Glioma"); a study's "tumour" is any
    tumour, a series' one whose type is uncertain (the report wrote the raw codes, "notumor")."""
    if label is None:
        return None
    return "Tumour" if study and label == UNKNOWN_TYPE else label_name(label)


def _series_lines(evidence: Sequence[Any], series: SeriesAnalysis, reviewed: bool = False) -> str:
    """The series' verdict as the app states it: the threshold it was judged by (the single-scan one when it rests
    on fewer neighbours than the rule asks for), whether it goes to review first and why (or went, once the study
    is reviewed: a FINAL report said NEEDS REVIEW), why nothing was analysed."""
    name = series_name(evidence, series)
    if series.label is None:
        reasons = "; ".join(sorted({s.skipped for s in series.refused if s.skipped}))[:300]
        return f"DICOM series {name}: not analysed ({reasons or 'no section could be analysed'}): read it yourself"
    used, rule = series.neighbours_used, series.rule
    fewer = f", fewer than the rule's {rule.neighbours}" if used < rule.neighbours else ""
    line = (
        f"DICOM series {name}: {_words(series.label)}; series score {bounded(series.score, 3)} ({SERIES_SCORE}: {used} "
        f"sections{fewer}; tumour at >= {series.applied_threshold:.2f})"
    )
    if series.needs_review:
        why = review_reason(used, rule.neighbours)
        line += f"; flagged for review ({why}), since reviewed" if reviewed else f"; NEEDS REVIEW ({why})"
    if series.lesion_ml is not None:
        line += f"; lesion volume {ml_text(series.lesion_ml)} mL"
    return line


def content_fingerprint(
    series: Sequence[SeriesAnalysis],
    model: ModelFacts,
    final_label: str | None,
    version: int = 1,
    unread: Sequence[str] = (),
    reader: str | None = None,
    supersedes: str | None = None,
) -> str:
    """What makes a report version: the verdicts, the series that could not be read (they withhold the study's
    verdict: a report with them once took the UID of the one without, and the PACS kept the old verdict), the
    model, the review and which review it is (not the time it was made)."""
    facts = [(s.volume.series, s.label, None if s.score is None else round(s.score, 4), s.lesion_ml) for s in series]
    reviewed = [final_label, version] if version > 2 else [final_label]  # the first review's identity as before
    reviewed += [reader] if reader else []  # who gave it is part of what it says: a new instance, not the old one
    # which series were unread ("Series 7", the part before the reason), not the reasons' wording: a message
    # reworded later must not make an unchanged report a new instance (nor the names' later "DICOM series 7");
    # none keeps the identity it always had
    names = (reason.split(":", 1)[0].replace("A DICOM series", "A series") for reason in unread)
    unread_facts = [sorted(name.replace("DICOM series", "Series") for name in names)] if unread else []
    # a version placed after another reading's current report names it: never the UID of this reading's own
    # version of the same number (the PACS held two instances under one UID, or two of one number)
    after = [["after", supersedes]] if supersedes else []
    return json.dumps([facts, model.name, model.version, model.weights_sha256, *reviewed, *unread_facts, *after])


UTF8 = "ISO_IR 192"  # the first image's set wrote text outside it (another series' description, a name) as "?"


def report_series(study_uid: str) -> str:
    """The Series Instance UID of our reports in a study (one series, every version)."""
    return uid(study_uid, "report series")


REPLACED = "The final report this version replaces (a series added since, or the study read again): "
NOT_REVIEWED_YET = ". This reading is not reviewed yet."


def final_label_said(report: Any | None) -> str | None:
    """The radiologist's final label a report of ours states, as it states it ("Radiologist's final label: Glioma
    (given by ...)"): a FINAL report's own, or the one an unreviewed version carried from the FINAL report it
    replaced (a second late series dropped it again); None for another report."""
    if report is None:
        return None
    texts = [str(item.get("TextValue", "")) for item in report.get("ContentSequence") or []]
    if report.get("PreliminaryFlag") == "FINAL":
        return next((text for text in texts if text.startswith("Radiologist's final label:")), None)
    carried = next((text for text in texts if text.startswith(REPLACED) and text.endswith(NOT_REVIEWED_YET)), None)
    return None if carried is None else carried[len(REPLACED) : -len(NOT_REVIEWED_YET)]


def same_reading(report: Any, ours: Any) -> bool:
    """Whether a report in the PACS reads the same images (its evidence) with the same model, to the same series
    scores and unread series, as ``ours`` (this reading's report): the same images and model read otherwise (a
    series unread before, read now) are another reading."""

    def reading(sr: Any) -> tuple:
        referenced = {
            str(sop.ReferencedSOPInstanceUID)
            for study in sr.get("CurrentRequestedProcedureEvidenceSequence") or []
            for series in study.get("ReferencedSeriesSequence") or []
            for sop in series.get("ReferencedSOPSequence") or []
        }
        texts = [str(item.get("TextValue", "")) for item in sr.get("ContentSequence") or []]
        said = " ".join(texts)
        scores = sorted(re.findall(r"(?:series score|P\(tumour\)) ([<>]?\d\.\d{3})", said))  # "P(tumour)":
        # the reports of earlier versions, already in the PACS
        unread = sum(t.startswith("A series could not be read") or ": not analysed (" in t for t in texts)
        return referenced, scores, unread, texts[-3:]  # the algorithm, its version and the statement close it

    return reading(report) == reading(ours)


def _leading_findings(
    series: Sequence[SeriesAnalysis],
    verdict: str | None,
    final_label: str | None,
    reader: str | None,
    replaces_final: str | None,
) -> list[str]:
    """The report's first findings: the reader's label (or the one the FINAL report this version replaces gave),
    then the model's verdict."""
    stated = _words(verdict, study=True) or "none: a series could not be analysed (read it yourself)"
    if any(s.needs_review for s in series):
        stated += (
            " (flagged for review; reviewed: the radiologist's final label above)"
            if final_label is not None
            else " (flagged for review: read the series marked NEEDS REVIEW first)"
        )
    texts = []
    if replaces_final is not None and final_label is None:
        texts.append(f"{REPLACED}{replaces_final}{NOT_REVIEWED_YET}")
    if final_label is not None:  # a final report leads with the reader's label: its first finding, the one a
        by = f" (given by {reader} in the triage dashboard)" if reader else ""  # viewer's preview shows, was the
        texts.append(f"Radiologist's final label: {_words(final_label)}{by}")  # model's verdict, unnamed as such
    return [*texts, f"Model verdict (decision aid): {stated}"]


def verdict_report(
    evidence: Sequence[Any],
    series: Sequence[SeriesAnalysis],
    verdict: str | None,
    model: ModelFacts,
    final_label: str | None = None,
    predecessor: Any | None = None,
    version: int | None = None,
    unread: Sequence[str] = (),
    reader: str | None = None,
    supersedes: str | None = None,
    replaces_final: str | None = None,
) -> Any:
    """The Comprehensive SR for one study (see the module docstring); ``version`` is its instance number: 1 the
    preliminary report, 2 the first review's, 3 the next review's (default: 2 with a final label, else 1);
    ``reader``: the account that gave ``final_label``, named beside it (a final report named nobody);
    ``supersedes``: the UID of another reading's report this version replaces (part of its identity);
    ``replaces_final``: the radiologist's label that report stated (:func:`final_label_said`), said first in an
    unreviewed version (it dropped the review without a word). A report listing a series nobody could read is
    never COMPLETE."""
    import highdicom as hd

    quiet_highdicom()
    codes = _codes()
    study_uid = str(evidence[0].StudyInstanceUID)
    reviewed = final_label is not None
    items = [
        hd.sr.TextContentItem(codes["finding"], text, "CONTAINS")
        for text in _leading_findings(series, verdict, final_label, reader, replaces_final)
    ]
    items += [item for s in series for item in _series_items(evidence, s, reviewed, codes)]
    items += [
        hd.sr.TextContentItem(
            codes["finding"], f"A series could not be read, read it yourself: {reason[:200]}", "CONTAINS"
        )
        for reason in unread
    ]
    # the coded volume is a tumour's: the largest of the tumour series' (a "no tumour" study's segmenter output
    # read by software as a lesion volume); each series' line states its own
    volumes = [s.lesion_ml for s in series if s.lesion_ml is not None and s.is_tumour]
    if volumes:
        items.append(
            hd.sr.NumContentItem(codes["volume"], float(max(volumes)), codes["ml"], relationship_type="CONTAINS")
        )
    items += [
        hd.sr.TextContentItem(codes["algorithm"], model.name, "CONTAINS"),
        hd.sr.TextContentItem(
            codes["version"], f"{model.version} (weights SHA-256 {model.weights_sha256[:16]})", "CONTAINS"
        ),
        hd.sr.TextContentItem(codes["comment"], STATEMENT, "CONTAINS"),
    ]
    # separate statements, each shown with its concept name ("Finding: ..."): CONTINUOUS, the default, ran them into
    # one paragraph in a PACS's SR viewer, the labels dropped and the model's name run into the text around it
    root = hd.sr.ContainerContentItem(codes["report"], is_content_continuous=False)
    root.ContentSequence = hd.sr.ContentSequence(items, is_root=False)
    version = version or (2 if final_label is not None else 1)
    fingerprint = content_fingerprint(series, model, final_label, version, unread, reader, supersedes)
    report = hd.sr.ComprehensiveSR(
        evidence=list(evidence),
        content=root,
        series_instance_uid=report_series(study_uid),
        series_number=9901,
        sop_instance_uid=uid(study_uid, "report", fingerprint),
        instance_number=version,
        manufacturer=MANUFACTURER,
        # never COMPLETE while a series could not be read, or was not analysed ("read it yourself")
        is_complete=final_label is not None and not unread and all(s.label is not None for s in series),
        is_final=final_label is not None,
        previous_versions=[predecessor] if predecessor is not None else None,
    )
    report.SpecificCharacterSet = UTF8  # texts from several series' headers and the reader's name: one set for all
    dated_as(report, evidence[0])
    report.PreliminaryFlag = "FINAL" if final_label is not None else "PRELIMINARY"
    report.SeriesDescription = "BTD decision aid report"
    return report


def utc_offset() -> str:
    """The server's offset from UTC ("+0100"), which the objects' dates and times are in (the library writes local
    time): without it a PACS in another zone, or a server kept on UTC, showed the report at the wrong hour."""
    return datetime.datetime.now().astimezone().strftime("%z")


MADE_AT = (  # the dates and times highdicom writes an object's making at, in the server's zone
    ("InstanceCreationDate", "InstanceCreationTime"),
    ("ContentDate", "ContentTime"),
    ("DateOfSecondaryCapture", "TimeOfSecondaryCapture"),  # key images
)


def dated_as(made: Any, source: Any) -> None:
    """The offset from UTC of an object made from ``source`` (one of the study's images): the source's, when it
    gives one, with the object's own creation and content times written in it (the study's date and time are
    copied as they are: said to be at the server's offset, a study made at +0900 moved nine hours), else the
    server's."""
    offset = str(source.get("TimezoneOffsetFromUTC", "") or "")
    if not re.fullmatch(r"[+-](0\d|1[0-4])[0-5]\d", offset):
        made.TimezoneOffsetFromUTC = utc_offset()
        return
    delta = datetime.timedelta(hours=int(offset[1:3]), minutes=int(offset[3:]))
    now = datetime.datetime.now(datetime.timezone(-delta if offset[0] == "-" else delta))
    for day, time in MADE_AT:  # the times the library writes, in the server's zone
        if day in made:
            setattr(made, day, now.strftime("%Y%m%d"))
            setattr(made, time, now.strftime("%H%M%S.%f"))
    for equipment in made.get("ContributingEquipmentSequence") or []:  # a DT without a suffix is in the offset's
        if "ContributionDateTime" in equipment:  # zone: written in the server's, it read nine hours early at +0900
            equipment.ContributionDateTime = now.strftime("%Y%m%d%H%M%S.%f")
    made.TimezoneOffsetFromUTC = offset


def source_series(evidence: Sequence[Any], series: SeriesAnalysis) -> str:
    """The source Series Instance UID of an analysed series (its volume keeps a hash of it: match by hash; a
    multi-frame file's volume by the hash of its UIDs alone). "unknown" when none matches, never another's."""
    from core.imaging.volume import series_key

    wanted = series.volume.uid_key or series.volume.series
    for header in evidence:
        if series_key(str(header.StudyInstanceUID), str(header.SeriesInstanceUID)) == wanted:
            return str(header.SeriesInstanceUID)
    return "unknown"
