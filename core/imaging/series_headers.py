"""What a DICOM series' headers say about its files, read before any pixel: whether a file is the scanner's
localizer, which stack of its series it belongs to, when it was scanned, and how a reader finds the series
(:mod:`core.imaging.series`)."""

from __future__ import annotations

import math
import re
from datetime import date

from core.imaging import dicom
from core.imaging.volume import SeriesError, hash_parts

# a series description the main vendors give their positioning images (ImageType says LOCALIZER on most)
# (a word of its own between any marks, an underscore too: "AAHead_Scout_64ch", "Survey_32ch_HeadCoil", "SmartSurvey")
LOCALIZER = re.compile(
    r"locali[sz]er|(?<![a-z])scout(?![a-z])|survey(?![a-z])|3[\s_-]*pl(ane)?[\s_-]*loc|tri[\s_-]*pilot", re.IGNORECASE
)


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def stack_of(ds: object) -> str:
    """Which stack of its series a file's image belongs to where a series holds several at the same positions: its
    diffusion b-value and echo number as the standard tags give them ("" when neither is given)."""
    parts = []
    b_value = _number(ds.get("DiffusionBValue"))  # type: ignore[attr-defined]
    if b_value is not None and b_value >= 0:
        parts.append(f"b = {b_value:g} s/mm2")
    echo = _number(ds.get("EchoNumbers"))  # type: ignore[attr-defined]
    if echo is not None:
        parts.append(f"echo {echo:g}")
    return ", ".join(parts)


def frame_stack(*groups: object) -> str:
    """:func:`stack_of` for a frame of an enhanced file, from its functional groups (its own first, then the
    shared one): the diffusion b-value and the effective echo time the standard sequences give ("" when none).
    Without them a multi-echo file's frames at each position were "two different sections at one position ...
    whose files do not say which image is which", though they did."""
    parts: list[str] = []
    for group in (g for g in groups if g is not None):
        diffusion = (group.get("MRDiffusionSequence") or [None])[0]  # type: ignore[attr-defined]
        echo = (group.get("MREchoSequence") or [None])[0]  # type: ignore[attr-defined]
        b_value = _number(diffusion.get("DiffusionBValue")) if diffusion is not None else None
        time = _number(echo.get("EffectiveEchoTime")) if echo is not None else None
        if b_value is not None and b_value >= 0 and not any(p.startswith("b = ") for p in parts):
            parts.append(f"b = {b_value:g} s/mm2")
        if time is not None and not any(p.startswith("echo") for p in parts):
            parts.append(f"echo time {time:g} ms")
    return ", ".join(parts)


SCAN_DATES = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")  # the study's own first


def scan_date(header: object) -> date | None:
    """The day the file's study was scanned: the first of :data:`SCAN_DATES` that is a valid DICOM date (DA,
    YYYYMMDD, or the old YYYY.MM.DD) from 1900 on; None when none is (an anonymiser may blank them)."""
    for keyword in SCAN_DATES:
        digits = str(header.get(keyword, "") or "").strip().replace(".", "")  # type: ignore[attr-defined]
        if len(digits) == 8 and digits.isdigit():
            try:
                day = date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
            except ValueError:
                continue
            if day.year >= 1900:
                return day
    return None


def is_localizer(header: object) -> bool:
    """A positioning image: ImageType says LOCALIZER, or the series description is a vendor's name for one."""
    return "LOCALIZER" in dicom.image_type(header) or bool(
        LOCALIZER.search(str(header.get("SeriesDescription", "") or ""))
    )  # type: ignore[attr-defined]


SEVERAL_PATIENTS = (
    "The files belong to more than one patient (their patient IDs differ, even under one Study Instance UID): they "
    "are not read as one study, whose verdict, report and history would be filed under one of them. Upload each "
    "patient's study on its own."
)


class SeveralPatients(SeriesError):
    code = "several_patients"

    def __init__(self, message: str = SEVERAL_PATIENTS) -> None:
        super().__init__(message)


def several_patients(headers: list) -> bool:
    """Whether the files belong to more than one patient: two patient IDs, or one ID from two issuers (files
    without an ID are no evidence either way). Compared in memory only, never kept."""
    issuers: dict[str, set[str]] = {}
    for header in headers:
        try:
            patient = str(header.get("PatientID", "") or "").strip()
            issuer = str(header.get("IssuerOfPatientID", "") or "").strip()
        except Exception:  # a malformed value: no evidence (its series is named unread where its pixels are read)
            continue
        if patient:
            issuers.setdefault(patient, set()).update({issuer} if issuer else set())
    return len(issuers) > 1 or any(len(named) > 1 for named in issuers.values())


def patient_named(data: bytes) -> dict[str, str] | None:
    """Who a DICOM file names as its patient, as :func:`several_patients` compares files: its Patient ID and issuer,
    each hashed (files uploaded one by one are compared in memory; never stored, shown or logged). None for another
    format, a file naming no patient, or one whose header cannot be read (no evidence either way)."""
    import hashlib

    from core.errors import ScanError
    from core.imaging.scan import is_dicom

    if not is_dicom(data):
        return None
    try:
        header = dicom.header_of(data)
        patient = str(header.get("PatientID", "") or "").strip()
        issuer = str(header.get("IssuerOfPatientID", "") or "").strip()
    except (ScanError, *dicom.invalid_values()):
        return None
    hashed = {name: hashlib.sha256(value.encode()).hexdigest() if value else "" for name, value in
              (("PatientID", patient), ("IssuerOfPatientID", issuer))}  # fmt: skip
    return hashed if patient else None


def uid_key_of(header: object) -> str:
    """The hash of a file's study and series UIDs (a :class:`_Section`'s ``uid_key``)."""
    return hash_parts(str(header.get("StudyInstanceUID", "")), str(header.get("SeriesInstanceUID", "")))  # type: ignore[attr-defined]


def series_number(header: object) -> int | None:
    """The series' SeriesNumber, as the reader's viewer lists it (None: none, or not a number)."""
    try:
        return int(header.get("SeriesNumber"))  # type: ignore[attr-defined]
    except (TypeError, ValueError, OverflowError):
        return None


def series_name(header: object) -> str:
    """How a reader finds a series in the study: "DICOM series 5" from its SeriesNumber, as their viewer lists it
    (never its free-text description; "DICOM": the page numbers the series it shows in upload order, "Series 1")."""
    number = series_number(header)
    return "A DICOM series without a number" if number is None else f"DICOM series {number}"


def kind_of(header: object, index: int) -> tuple[str, str, str]:
    """A file's kind ("image", "no image", "localizer", or "unreadable" when the values that tell it are
    malformed), its series' UID key and its series' name."""
    try:
        key = uid_key_of(header)
    except dicom.invalid_values():
        key = hash_parts("a file whose series cannot be told", str(index))
    try:
        if dicom.is_non_image(header):
            return "no image", key, ""
        if is_localizer(header):
            return "localizer", key, ""
        return "image", key, series_name(header)
    except dicom.invalid_values():
        return "unreadable", key, "A DICOM series whose header cannot be read"
