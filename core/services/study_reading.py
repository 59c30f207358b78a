"""Reading a study: uploaded files (or a path on disk) -> series -> one analysis per series, as the Study page, the
``study`` command and the PACS use them. Never raises for bad input: an outcome carries the code and message instead.

The study's verdict comes first (tumour when any of its series is called tumour); each series keeps its curve
and per-section verdicts (:mod:`core.model.volume`). Saving it is :mod:`core.services.studies`'.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import FileTooLarge, ScanError
from core.imaging.archive import is_zip
from core.imaging.limits import DEFAULT_STUDY_LIMITS, StudyLimits
from core.imaging.raster import encode_png
from core.imaging.scan import is_dicom, is_headerless_dicom
from core.imaging.series import is_nifti, read_upload
from core.imaging.volume import Volume
from core.model.classifier import Classifier
from core.model.volume import SeriesAnalysis, analyse_volume
from core.services.series_views import as_displayed

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
    unread: tuple[str, ...] = ()  # why each series that could not be put together was not (mixed orientations...)

    @property
    def verdict(self) -> str | None:
        """``tumour`` when any series is called tumour; the negative label when every series was analysed and none
        is; None otherwise: no "no tumour" for a study with a series nobody read (a FLAIR series the gate refused
        is where a lesion would be missed)."""
        judged = [s for s in self.series if s.label is not None]
        if any(s.is_tumour for s in judged):
            return "tumour"
        if not judged or len(judged) < len(self.series) or self.unread:
            return None
        return judged[0].negative_label

    @property
    def needs_review(self) -> bool:
        """Whether a series with a verdict goes to review first (few neighbours, or in the review band): said
        with the study verdict everywhere (the report sent to the PACS said it, the screen, the PDF and the
        command line did not)."""
        return any(s.needs_review for s in self.series if s.label is not None)

    @property
    def unanalysed(self) -> int:
        """Series no section of which could be analysed, and series that could not be put together."""
        return sum(s.label is None for s in self.series) + len(self.unread)


SEVERAL_STUDIES = (
    "The upload holds series of more than one study (files of different studies, or files with and without a "
    "study's identity: a prior exam beside today's, or another patient's). Upload each study on its own, so that "
    "each gets its own verdict, report and patient link."
)


def _wanted(data: bytes) -> bool:
    """A file of a folder to read: a DICOM file written without its preamble too (left out as "another file", it
    took a tumour's sections out of a study called "no tumour"; read_upload refuses the study and says why)."""
    return is_zip(data) or is_nifti(data) or is_dicom(data) or is_headerless_dicom(data)


def upload_refusal(sizes: Sequence[int], limits: StudyLimits = DEFAULT_STUDY_LIMITS) -> str | None:
    """Why an upload of files of these ``sizes`` is refused before a byte of it is copied or read (None: it is
    not); the same limits :func:`analyse_study` applies, checked from the sizes the browser sent."""
    if len(sizes) > limits.max_files:
        return f"{len(sizes)} files were chosen; the limit is {limits.max_files} for one study."
    if sum(sizes) > limits.max_total_bytes:
        return (
            f"The files are {sum(sizes) / 2**20:.0f} MB in all; the limit is {limits.max_total_bytes / 2**20:.0f} MB."
        )
    return None


def files_of(path: Path, limits: StudyLimits = DEFAULT_STUDY_LIMITS) -> tuple[list[bytes], int]:
    """The bytes of a file, or of every DICOM / NIfTI / zip file under a folder (any depth, any names; a DICOMDIR
    index and other files are ignored and counted). Sizes are checked on disk before anything is read."""
    if not path.exists():
        raise FileNotFoundError(path)
    folder = path.is_dir()  # anything else is one file: a pipe (``study <(unzip -p ...)``) or a device too
    paths = _files_under(path) if folder else [path]
    total = sum(p.stat().st_size for p in paths)
    if total > limits.max_total_bytes:
        raise FileTooLarge(
            f"The files are {total / 2**20:.0f} MB; the limit is {limits.max_total_bytes / 2**20:.0f} MB."
        )
    if len(paths) > limits.max_zip_members:
        raise FileTooLarge(f"The folder holds {len(paths)} files; the limit is {limits.max_zip_members}.")
    found, ignored, read = [], 0, 0
    for p in paths:
        with open(p, "rb") as handle:  # never past the limit: a pipe or a device has no size (/dev/zero no end)
            data = handle.read(limits.max_total_bytes - read + 1)
        read += len(data)
        if read > limits.max_total_bytes:
            raise FileTooLarge(f"The files are over {limits.max_total_bytes / 2**20:.0f} MB, the limit.")
        if not folder or (p.name.upper() != "DICOMDIR" and _wanted(data)):
            found.append(data)
        else:
            ignored += 1
    return found, ignored


class UnreadablePart(ScanError):
    code = "unreadable"


def _files_under(folder: Path) -> list[Path]:
    """Every file under ``folder``, through linked folders too (each folder once: a link loop ends). A part that
    cannot be read (a folder without permission, a broken link) refuses the whole: skipped, it took a series out
    of the study unsaid, and the rest was called "no tumour"."""
    root = os.path.realpath(folder)
    found, folders_seen, files_seen = [], {root}, set()

    def refuse(error: OSError) -> None:
        why = (error.strerror or type(error).__name__).lower()
        raise UnreadablePart(f"A folder inside it cannot be read ({why}): its series would be missing from the study.")

    for top, folders, names in os.walk(folder, onerror=refuse, followlinks=True):
        kept = []  # each folder once, however many links lead to it: queued once (two links to one folder, or a
        for name in sorted(folders):  # link to a sibling, read its files twice)
            real = os.path.realpath(os.path.join(top, name))
            if root.startswith(real.rstrip(os.sep) + os.sep):  # "up -> ..", "-> /": every file above read as the study
                raise UnreadablePart(
                    f"{_inside(folder, top, name)} inside it links to a folder that holds the study folder itself "
                    "(every file there would be read as part of the study); remove the link."
                )
            if real not in folders_seen:
                folders_seen.add(real)
                kept.append(name)
        folders[:] = kept
        for name in sorted(names):
            file = Path(top, name)
            if not file.is_file():  # named: which of thousands it is, and what it is
                what = "a link to nothing" if file.is_symlink() and not file.exists() else "not a regular file"
                raise UnreadablePart(
                    f"{_inside(folder, top, name)} inside it is {what}: the study is not read (its series could be "
                    "missing from it); remove it or replace it with the file."
                )
            if (real := os.path.realpath(file)) not in files_seen:  # a file linked twice is one file
                files_seen.add(real)
                found.append(file)
    return found


def _inside(folder: Path, top: str, name: str) -> str:
    """An entry's path under the study folder, as a message names it."""
    return str(Path(os.path.relpath(os.path.join(top, name), folder)))


def analyse_study(
    files: Sequence[bytes], classifier: Classifier, source: str = "upload", ignored: int = 0
) -> StudyOutcome:
    """Read every series in ``files`` and analyse each; never raises for a bad upload."""
    started = time.perf_counter()
    try:
        upload = read_upload(files)
    except ScanError as error:
        logger.info("event=study_refused code=%s", error.code)
        return StudyOutcome(source, error_code=error.code, error_message=str(error), ignored=ignored)
    except Exception:
        logger.exception("event=study_failed code=internal_error")
        return StudyOutcome(source, error_code="internal_error", error_message="Unexpected error; try again.")
    read_ms = (time.perf_counter() - started) * 1000
    volumes = upload.volumes
    if len({volume.study for volume in volumes}) > 1:  # one verdict, one report and one patient link per study
        logger.info("event=study_refused code=several_studies")
        return StudyOutcome(source, error_code="several_studies", error_message=SEVERAL_STUDIES, ignored=ignored)
    try:
        analyses = tuple(analyse_volume(volume, classifier) for volume in volumes)
    except Exception:
        logger.exception("event=study_failed code=internal_error")
        return StudyOutcome(source, error_code="internal_error", error_message="Unexpected error; try again.")
    notes = (f"{ignored} file(s) that are not DICOM, NIfTI or zip were ignored",) if ignored else ()
    notes += upload.notes + tuple(f"A series could not be read: {reason}" for reason in upload.unread)
    return StudyOutcome(source, analyses, read_ms=read_ms, ignored=ignored, notes=notes, unread=upload.unread)


def analyse_path(path: Path, classifier: Classifier) -> StudyOutcome:
    """:func:`analyse_study` for a folder, a zip, a multi-frame DICOM or a NIfTI file on disk."""
    try:
        files, ignored = files_of(path)
    except ScanError as error:
        return StudyOutcome(str(path), error_code=error.code, error_message=str(error))
    except FileNotFoundError:
        return StudyOutcome(str(path), error_code="not_found", error_message="No such file or folder.")
    except OSError as error:  # its reason (permission denied, an I/O error, ...), never its own path
        why = error.strerror or type(error).__name__
        return StudyOutcome(str(path), error_code="unreadable", error_message=f"It cannot be read ({why.lower()}).")
    if not files:
        return StudyOutcome(str(path), error_code="series_error", error_message="No DICOM, NIfTI or zip file in it.")
    return analyse_study(files, classifier, str(path), ignored)


# --- what the command line prints of a series ---------------------------------------------------------------


def display_png(volume: Volume) -> tuple[dict[str, str], bytes]:
    """The series' middle section as the viewer displays it (PNG, pixels only: square, 0.5 x 1 mm pixels were
    written squashed 2:1) and the letters at its edges ({"top", "bottom", "left", "right"}: R/L, A/P, H/F; empty
    when the files give no orientation)."""
    middle = len(volume.sections) // 2
    png = encode_png(as_displayed(volume.sections[middle : middle + 1], volume.spacing)[0][0])
    letters = volume.letters
    return {side: letters[side] for side in ("top", "bottom", "left", "right") if side in letters}, png
