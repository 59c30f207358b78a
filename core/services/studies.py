"""Studies: uploaded files (or a path on disk) -> series -> one analysis per series, as the Study page and the
``study`` command use them. Never raises for bad input: an outcome carries the code and message instead.

The study's verdict comes first (tumour when any of its series is called tumour); each series keeps its curve
and per-section verdicts (:mod:`core.model.volume`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import FileTooLarge, ScanError
from core.imaging.scan import DICOM_MAGIC_OFFSET
from core.imaging.series import DEFAULT_STUDY_LIMITS, StudyLimits, is_nifti, is_zip, read_study
from core.model.classifier import Classifier
from core.model.volume import SeriesAnalysis, analyse_volume

logger = logging.getLogger("btd.studies")


@dataclass(frozen=True, eq=False)
class StudyOutcome:
    """The analyses of every series in one source, or why there are none (``error_code`` and its message)."""

    source: str
    series: tuple[SeriesAnalysis, ...] = ()
    error_code: str | None = None
    error_message: str | None = None
    read_ms: float = 0.0
    ignored: int = 0  # files in a folder that were neither DICOM, NIfTI nor a zip
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def verdict(self) -> str | None:
        """``tumour`` when any series is called tumour; the negative label when all analysed series are not;
        None when no series could be analysed."""
        labels = [s.label for s in self.series if s.label is not None]
        if not labels:
            return None
        return "tumour" if "tumour" in labels else labels[0]


def _wanted(data: bytes) -> bool:
    return is_zip(data) or is_nifti(data) or data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM"


def files_of(path: Path, limits: StudyLimits = DEFAULT_STUDY_LIMITS) -> tuple[list[bytes], int]:
    """The bytes of a file, or of every DICOM / NIfTI / zip file under a folder (any depth, any names; a DICOMDIR
    index and other files are ignored and counted). Sizes are checked on disk before anything is read."""
    if not path.exists():
        raise FileNotFoundError(path)
    paths = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in paths)
    if total > limits.max_total_bytes:
        raise FileTooLarge(
            f"The files are {total / 2**20:.0f} MB; the limit is {limits.max_total_bytes / 2**20:.0f} MB."
        )
    if len(paths) > limits.max_zip_members:
        raise FileTooLarge(f"The folder holds {len(paths)} files; the limit is {limits.max_zip_members}.")
    found, ignored = [], 0
    for p in paths:
        data = p.read_bytes()
        if path.is_file() or (p.name.upper() != "DICOMDIR" and _wanted(data)):
            found.append(data)
        else:
            ignored += 1
    return found, ignored


def analyse_study(
    files: Sequence[bytes], classifier: Classifier, source: str = "upload", ignored: int = 0
) -> StudyOutcome:
    """Read every series in ``files`` and analyse each; never raises for a bad upload."""
    started = time.perf_counter()
    try:
        volumes = read_study(files)
    except ScanError as error:
        logger.info("event=study_refused code=%s", error.code)
        return StudyOutcome(source, error_code=error.code, error_message=str(error), ignored=ignored)
    except Exception:
        logger.exception("event=study_failed code=internal_error")
        return StudyOutcome(source, error_code="internal_error", error_message="Unexpected error; try again.")
    read_ms = (time.perf_counter() - started) * 1000
    try:
        analyses = tuple(analyse_volume(volume, classifier) for volume in volumes)
    except Exception:
        logger.exception("event=study_failed code=internal_error")
        return StudyOutcome(source, error_code="internal_error", error_message="Unexpected error; try again.")
    notes = (f"{ignored} file(s) that are not DICOM, NIfTI or zip were ignored",) if ignored else ()
    return StudyOutcome(source, analyses, read_ms=read_ms, ignored=ignored, notes=notes)


def analyse_path(path: Path, classifier: Classifier) -> StudyOutcome:
    """:func:`analyse_study` for a folder, a zip, a multi-frame DICOM or a NIfTI file on disk."""
    try:
        files, ignored = files_of(path)
    except ScanError as error:
        return StudyOutcome(str(path), error_code=error.code, error_message=str(error))
    except FileNotFoundError:
        return StudyOutcome(str(path), error_code="not_found", error_message="No such file or folder.")
    except OSError:
        return StudyOutcome(str(path), error_code="unreadable", error_message="It cannot be read (permission denied).")
    if not files:
        return StudyOutcome(str(path), error_code="series_error", error_message="No DICOM, NIfTI or zip file in it.")
    return analyse_study(files, classifier, str(path), ignored)
