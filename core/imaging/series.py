"""Whole series and volumes: DICOM files of one or more series (any names), a ``.zip`` of a study, a multi-frame
DICOM, or a NIfTI volume (:mod:`core.imaging.nifti`), each turned into :class:`Volume` objects of ordered sections.

- DICOM files are grouped by StudyInstanceUID and SeriesInstanceUID and ordered by their position along the normal
  of the displayed view (ImagePositionPatient projected on the cross product of the row and column directions as
  shown), never by file name or InstanceNumber: the first section is the same end of the head however the files
  encode their orientation (axial: feet first, as NIfTI volumes). Enhanced multi-frame files give orientation,
  spacing and position per frame or shared. Pixel spacing, slice thickness and orientation are kept. Mixed
  orientations in one series, two different sections at one position, and gaps are named; duplicate sections are
  dropped, a series holding another's images is read once (said). Stacks at the same positions whose files say
  which is which (diffusion b-values, multi-echo echoes) are one volume each, named so. Localizer images (the
  scanner's positioning, three planes in one series) are left out and counted, as are DICOM objects without an
  image (a DICOMDIR, a report) and a zip's files that are neither DICOM nor NIfTI.
- A series that cannot be put together (mixed orientations, two different sections at one place) does not stop the
  study: :func:`read_upload` reads the others and names it (the study then gets no "no tumour" verdict).
- A zip is checked before anything is read from it (:mod:`core.imaging.archive`); the DICOM files' pixels are
  counted from their headers against the upload's budget before any is decoded.
- Every volume is shown in the radiological view of its plane (:mod:`core.imaging.geometry`): pixels, spacing and
  orientation are transformed together, so orientation letters always describe the pixels shown.
Identifiers are not kept: a study and a series are named by a SHA-256 of their UIDs; files without a
StudyInstanceUID (NIfTI volumes among them) take the upload's identity as their study.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date
from functools import partial

import numpy as np

from core.errors import CorruptImage, EmptyFile, FileTooLarge, ScanError, UnsupportedFormat
from core.imaging import dicom
from core.imaging.archive import declared_size, is_zip, unzip
from core.imaging.dicom_display import display, frame_view
from core.imaging.geometry import (
    dicom_floats,
    dicom_length,
    dicom_spacing,
    display_transform,
    frame_orientation,
    functional_groups,
    gap_notes,
    place_text,
    stack_line,
    transformed_orientation,
)
from core.imaging.limits import DEFAULT_LIMITS, DEFAULT_STUDY_LIMITS, Limits, StudyLimits
from core.imaging.nifti import read_nifti
from core.imaging.nifti_header import check_nifti_budget, is_nifti
from core.imaging.scan import EMPTY_PART, HEADERLESS_DICOM, NEITHER, is_dicom, is_headerless_dicom
from core.imaging.series_headers import (
    SeveralPatients,
    frame_stack,
    kind_of,
    scan_date,
    series_number,
    several_patients,
    stack_of,
    uid_key_of,
)
from core.imaging.volume import (
    NO_STUDY_UID,
    OnlyLocalizers,
    SeriesError,
    Volume,
    each_once,
    hash_parts,
    one_per_position,
    radiological,
)

__all__ = ["SeriesError", "Upload", "Volume", "is_nifti", "read_study", "read_upload"]


@dataclass(frozen=True)
class Upload:
    """What an upload holds: its series, why each series that could not be put together was not (``unread``), and
    what was left out on purpose (``notes``: the scanner's localizer images)."""

    volumes: tuple[Volume, ...]
    unread: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def read_study(
    files: Sequence[bytes], limits: Limits = DEFAULT_LIMITS, study_limits: StudyLimits = DEFAULT_STUDY_LIMITS
) -> list[Volume]:
    """Every series in the uploaded files, or the reason the first that cannot be read is not (a strict
    :func:`read_upload`)."""
    upload = read_upload(files, limits, study_limits)
    if upload.unread:
        raise SeriesError(upload.unread[0])
    return list(upload.volumes)


def read_upload(
    files: Sequence[bytes], limits: Limits = DEFAULT_LIMITS, study_limits: StudyLimits = DEFAULT_STUDY_LIMITS
) -> Upload:
    """Every series in the uploaded files (DICOM files, zips of them, multi-frame DICOM, NIfTI); a series that
    cannot be put together is named in ``unread`` while the others are read. Raises for an upload nothing of which
    can be used, and for one over a limit."""
    declared = sum(declared_size(data) if is_zip(data) else len(data) for data in files)
    if declared > study_limits.max_total_bytes:  # from the zips' directories: refused before any is unpacked
        raise FileTooLarge(f"The upload is over {study_limits.max_total_bytes / 2**20:.0f} MB in all.")
    expanded: list[bytes] = []
    others = empty_zips = 0  # a zip's files that are neither DICOM nor NIfTI (a CD's viewer program, macOS's "._")
    for data in files:
        if not is_zip(data):
            expanded.append(data)
            continue
        members = unzip(data, study_limits)
        empty_zips += not members
        if any(is_headerless_dicom(m) for m in members):  # an older export: said, never left out as "other files"
            raise UnsupportedFormat(f"A file in the zip: {HEADERLESS_DICOM}")
        readable = [m for m in members if is_nifti(m) or is_dicom(m)]
        others += len(members) - len(readable)
        expanded += readable
    check_nifti_budget([d for d in expanded if is_nifti(d)], study_limits)
    volumes, slices = [], []
    for data in expanded:
        if is_nifti(data):
            volumes.append(read_nifti(data, study_limits))
        elif is_dicom(data):
            slices.append(data)
        elif is_headerless_dicom(data):  # refused as in a zip: never read short of its sections
            raise UnsupportedFormat(f"A file of the study: {HEADERLESS_DICOM}")
        else:  # what to do, not only what is wrong: the page names no file
            raise UnsupportedFormat(NEITHER) if data else EmptyFile(EMPTY_PART)
    if len(slices) > study_limits.max_files:
        raise FileTooLarge(
            f"The upload holds {len(slices)} DICOM files; the limit is {study_limits.max_files} "
            "(refused before reading them)."
        )
    found, unread, localizers, non_images = _dicom_series(slices, limits, study_limits)
    volumes += found
    # a study is its StudyInstanceUID, else the upload (NIfTI and UID-less DICOM files that came together are one)
    upload = hash_parts("upload", *sorted(hashlib.sha256(d).hexdigest() for d in expanded))
    volumes, twice = each_once([replace(v, study=upload) if v.study in (NO_STUDY_UID, "") else v for v in volumes])
    if len(volumes) + len(unread) > study_limits.max_series:
        raise FileTooLarge(
            f"The upload holds {len(volumes) + len(unread)} series; the limit is {study_limits.max_series}."
        )
    if not volumes and unread:
        raise SeriesError(unread[0])
    if not volumes:
        if localizers:
            raise OnlyLocalizers()
        if non_images:
            raise SeriesError("The upload holds no image: only DICOM objects without one (an index, reports).")
        if empty_zips and not others:
            raise EmptyFile("The zip holds no file.")
        raise SeriesError("The zip holds no DICOM or NIfTI file." if others else "No series found in the upload.")
    left_out = (
        (localizers, "localizer image(s) (the scanner's positioning images)"),
        (non_images, "DICOM object(s) without an image (a DICOMDIR index, reports, presentation states)"),
        (others, "file(s) in the zip that are neither DICOM nor NIfTI (a viewer program, an index, a read-me)"),
    )
    notes = (*twice, *(f"{n} {what} were left out." for n, what in left_out if n))
    return Upload(tuple(volumes), tuple(unread), notes)


@dataclass(frozen=True)
class _Section:
    study: str
    series: str
    position: np.ndarray | None
    orientation: np.ndarray | None
    instance: int
    pixels: np.ndarray
    spacing: tuple[float, float] | None
    thickness: float | None
    modality: str
    multi_frame: bool = False
    uid_key: str = ""  # the hash of the study's and series' UIDs alone (a multi-frame file's series adds its own)
    stack: str = ""  # which of a series' stacks at the same positions (a b-value, an echo): "b = 1000 s/mm2"
    source: tuple[str, str, int | None] = ("", "", None)  # its image's SOP class and instance UIDs, frame number
    scanned: date | None = None  # the day its study was scanned (:func:`scan_date`)
    number: int | None = None  # its series' SeriesNumber


def _measures(group: object, spacing, thickness) -> tuple:
    """Pixel spacing and thickness from a functional group (shared or one frame's), else as given."""
    if group is None or not group.get("PixelMeasuresSequence"):  # type: ignore[attr-defined]
        return spacing, thickness
    measures = group.PixelMeasuresSequence[0]  # type: ignore[attr-defined]
    spacing = dicom_spacing(measures.get("PixelSpacing")) or spacing
    thickness = (
        dicom_length(measures.get("SpacingBetweenSlices")) or dicom_length(measures.get("SliceThickness")) or thickness
    )
    return spacing, thickness


def _orientation(ds: object, frame: int | None) -> np.ndarray | None:
    """A frame's row and column directions as the Scan page reads them (one rule: :func:`frame_orientation`)."""
    found = frame_orientation(ds, frame)
    return np.array(found) if found is not None else None


def _plane_position(group: object) -> np.ndarray | None:
    """The ImagePositionPatient of a functional group's PlanePositionSequence, or None."""
    if not group.get("PlanePositionSequence"):  # type: ignore[attr-defined]
        return None
    return dicom_floats(group.PlanePositionSequence[0].get("ImagePositionPatient"), 3)  # type: ignore[attr-defined]


def _sections_of(data: bytes, header: object, limits: Limits) -> list[_Section]:
    ds = dicom.checked_dataset(data, limits, header)[0]
    study = hash_parts(str(ds.get("StudyInstanceUID", ""))) if ds.get("StudyInstanceUID") else NO_STUDY_UID
    series = uid_key_of(ds)  # the key a series that cannot be read is named under too
    spacing = dicom_spacing(ds.get("PixelSpacing"))
    # the declared distance between sections, for a series whose files give no positions: the spacing between
    # them where given (sections can have gaps or overlap), else their thickness
    thickness = dicom_length(ds.get("SpacingBetweenSlices")) or dicom_length(ds.get("SliceThickness"))
    modality = str(ds.get("Modality", "") or "")
    frames = dicom.frames_of(ds)
    if frames == 1:  # a one-frame enhanced file keeps its position and measures in its functional groups
        own, shared = functional_groups(ds, 0)
        spacing, thickness = _measures(own, *_measures(shared, spacing, thickness))
        position = dicom_floats(ds.get("ImagePositionPatient"), 3)
        for group in (own, shared):  # the frame's own group first
            if position is None and group is not None:
                position = _plane_position(group)
        orientation = _orientation(ds, None)
        pixels = display(dicom.decode_frame(ds, None), frame_view(ds, 0))
        instance = int(ds.get("InstanceNumber", 0) or 0)
        source = (str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", "")), None)
        return [
            _Section(
                study, series, position, orientation, instance, pixels, spacing, thickness, modality,
                stack=stack_of(ds), source=source, scanned=scan_date(ds), number=series_number(ds),
            )
        ]  # fmt: skip
    uid_key, series = series, hash_parts(series, hashlib.sha256(data).hexdigest())  # each multi-frame file: a series
    shared = functional_groups(ds, None)[1]
    spacing, thickness = _measures(shared, spacing, thickness)
    # frames without a position of their own (a classic multi-frame file; an enhanced one without plane positions)
    # are numbered in stored order, not placed: which way they run along the normal is not in the file (placed
    # along it, a file stored the other way came out mirrored head to foot), and frames with no position given
    # are not invented a stack; the declared distance still measures the step between them (volumes in mL)
    sections = []
    for k in range(frames):
        group = functional_groups(ds, k)[0]
        own_orientation = _orientation(ds, k)
        frame_spacing, frame_thickness = _measures(group, spacing, thickness)
        position = _plane_position(group) if group is not None else None
        if position is None and shared is not None:
            position = _plane_position(shared)  # shared by every frame: one place (a dynamic or multi-echo file)
        pixels = display(dicom.decode_frame(ds, k), frame_view(ds, k))
        sections.append(
            _Section(
                study,
                series,
                position,
                own_orientation,
                k + 1,  # numbered from 1, as the viewer counts
                pixels,
                frame_spacing,
                frame_thickness,
                modality,
                True,
                uid_key,
                source=(str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", "")), k + 1),
                scanned=scan_date(ds),
                stack=frame_stack(group, shared),
                number=series_number(ds),
            )
        )
    return sections


def _dicom_series(
    files: Sequence[bytes], limits: Limits, study_limits: StudyLimits
) -> tuple[list[Volume], list[str], int, int]:
    """Every DICOM series of the upload, after checking from the headers alone that their pixels fit the budget;
    the reasons of those that cannot be put together; how many localizer images and objects without an image (a
    DICOMDIR, a report, a presentation state: not a series nobody could read) were left out."""
    headers, pixels, oversized = [], 0, {}
    for index, data in enumerate(files):
        header = dicom.header_of(data)
        try:  # a file whose sizes are not counts gives no pixels here: its series is named unread below
            frames = dicom.frames_of(header)
            size = int(header.get("Rows") or 0) * int(header.get("Columns") or 0) * frames
        except (ScanError, *dicom.invalid_values()):
            frames, size = 0, 0
        if frames > study_limits.max_sections:  # never decoded; its series named unread, the others read (it
            oversized[index] = f"A file holds {frames} frames; the limit is {study_limits.max_sections} sections."
        else:  # refused the whole study)
            pixels += size
        headers.append(header)
    if several_patients(headers):  # before any pixel is decoded: filed under one, the other's series went into
        # that patient's history and report
        raise SeveralPatients()
    if pixels > study_limits.max_dicom_pixels:
        raise FileTooLarge(
            f"The DICOM files hold {pixels / 2**20:.0f} M pixels in all; the limit is "
            f"{study_limits.max_dicom_pixels / 2**20:.0f} M for one upload (refused before decoding them)."
        )
    groups: dict[tuple[str, str, str], list[_Section]] = {}
    names: dict[str, str] = {}  # a series' UID key: how a reader finds it in the study (its number)
    failed: dict[str, ScanError] = {}  # a series with a file that cannot be read: not read short, named unread
    localizers = non_images = 0
    for index, (data, header) in enumerate(zip(files, headers, strict=True)):
        kind, key, name = kind_of(header, index)
        non_images, localizers = non_images + (kind == "no image"), localizers + (kind == "localizer")
        if kind in ("no image", "localizer"):
            continue
        names.setdefault(key, name)
        if kind == "unreadable":  # a malformed value where its series is told (a flipped bit in its number's VR):
            failed.setdefault(key, CorruptImage(dicom.INVALID_HEADER))  # that series unread, not the study failed
            continue
        if index in oversized:
            failed.setdefault(key, FileTooLarge(oversized[index]))
            continue
        try:
            sections = _sections_of(data, header, limits)
        except FileTooLarge:
            raise
        except ScanError as error:  # a colour map, a spectroscopy object, a file cut off: that series only
            failed.setdefault(key, error)
            continue
        except dicom.invalid_values():  # a malformed value pydicom converts where it is first read (an empty window)
            failed.setdefault(key, CorruptImage(dicom.INVALID_HEADER))
            continue
        for section in sections:
            groups.setdefault((section.study, section.series, section.stack), []).append(section)
    volumes, unread = [], [f"{names[key]}: {error}" for key, error in failed.items()]
    stacks = Counter((study, series) for study, series, _ in groups)
    for (study, series, stack), sections in groups.items():
        key = sections[0].uid_key or sections[0].series
        if key in failed:
            continue
        try:
            volume = _volume(sections, study_limits)
        except SeriesError as error:
            unread.append(f"{names[key]}: {error}")
            continue
        if stacks[study, series] > 1:  # a diffusion or multi-echo series: each stack a series of its own, said so
            note = f"{names[key]}, its images at {stack or 'no b-value or echo given'}"
            note += f" (one of its {stacks[study, series]} stacks at the same positions)."
            if stack.startswith("b = ") and not stack.startswith("b = 0 "):  # what the model never saw
                note += " Diffusion images: the model was trained on T1, T2 and FLAIR sections, not on these."
            volume = replace(
                volume, series=hash_parts(series, stack), warnings=(note, *volume.warnings), stack=stack or "none given"
            )
        volumes.append(volume)
    if not volumes and len(failed) == len(unread) and len({type(e) for e in failed.values()}) == 1:
        raise _refusal(failed, names)  # nothing read, every series for one kind of reason: that refusal
    return volumes, unread, localizers, non_images


def _refusal(failed: dict[str, ScanError], names: dict[str, str]) -> ScanError:
    """The one reason no series could be read, naming them (a study refused, none named; then the first alone, and
    a reader who mended it learnt of the next only by uploading again): four, then how many more."""
    error = next(iter(failed.values()))
    named = [names[key] for key in failed]
    more = f" and {len(named) - 4} more" if len(named) > 4 else ""
    refusal = type(error)(f"{', '.join(named[:4])}{more}: {error}")
    refusal.__cause__ = error
    return refusal


# the note for files with positions and no orientation, by whether they are more than one section
NO_ORIENTATION = {
    True: "The files give no orientation (ImageOrientationPatient): sections are ordered by their positions, and "
    "which way they run (head or foot, left or right) is not known.",
    False: "The file gives no orientation (ImageOrientationPatient): left and right are unknown.",
}


def _volume(sections: list[_Section], limits: StudyLimits) -> Volume:
    if len(sections) > limits.max_sections:
        raise FileTooLarge(f"A series holds {len(sections)} sections; the limit is {limits.max_sections}.")
    shapes = {s.pixels.shape for s in sections}
    if len(shapes) > 1:
        raise SeriesError("The sections of one series differ in size; a series holds sections of one size.")
    notes: list[str] = []  # an OT or SC series, one without a modality: said once, as for a single scan
    for modality in sorted({s.modality.strip().upper() for s in sections}):
        notes += dicom.check_modality(modality)  # each file passed it: a note, never a refusal here
    orientations = [s.orientation for s in sections if s.orientation is not None]
    reference = orientations[0] if orientations else None
    if reference is not None and any(np.abs(o - reference).max() > 1e-3 for o in orientations):
        raise SeriesError("One series mixes section orientations (e.g. axial and sagittal): it is not read as one.")
    placed = [s for s in sections if s.position is not None]
    if len(sections) > len(placed) and 2 * len(placed) > len(sections):  # with or without an orientation
        # a file without a position (a derived or captured image) put every section in instance-number order,
        # which need not be the order in the head: the others are placed, it is left out and said
        left = len(sections) - len(placed)
        notes.append(f"{left} file{'s' if left > 1 else ''} without a position in the head left out.")
        sections = placed
    positions = [s.position for s in sections]
    everywhere = all(p is not None for p in positions)  # an export or anonymiser may drop the orientation alone:
    line = stack_line(positions) if reference is None and everywhere else None  # ordered by instance number, an
    in_mm, shown = (reference is not None and everywhere) or line is not None, None  # interleaved series scrambled
    if in_mm:  # along the normal of the view as shown, so the stack runs the same way whatever the encoding
        if line is None:
            shown = transformed_orientation(reference, display_transform(reference))  # type: ignore[arg-type]
        normal = line if line is not None else np.cross(shown[:3], shown[3:])
        keyed = sorted(((float(s.position @ normal), s) for s in sections), key=lambda pair: pair[0])
    elif sections[0].multi_frame:
        notes.append(
            "The file gives no position for each frame: frames are shown in stored order, and which way they run "
            "(head or foot, left or right) is not known."
        )
        keyed = sorted(((float(s.instance), s) for s in sections), key=lambda pair: pair[0])
    else:
        some = any(p is not None for p in positions)
        notes.append(f"{'Some' if some else 'The'} files give no positions: sections are ordered by instance number.")
        keyed = sorted(((float(s.instance), s) for s in sections), key=lambda pair: pair[0])
    if in_mm and sections[0].multi_frame and len(sections) > 1 and np.ptp([p for p, _ in keyed]) < 1e-3:
        raise SeriesError(
            f"All {len(sections)} images of one series lie at one position (a dynamic, cine or multi-echo series): "
            "it is not a stack of sections to triage."
        )
    kept = one_per_position(keyed, partial(place_text, shown) if in_mm else "number {:.0f}".format, notes)
    if line is not None:
        notes.append(NO_ORIENTATION[len(kept) > 1])  # one section alone is not ordered
    notes += gap_notes([p for p, _ in kept], in_mm, limits.max_gap_ratio)
    positions = [p for p, _ in kept]
    first = kept[0][1]
    spacing = first.spacing
    spacings = {None if s.spacing is None else tuple(round(v, 3) for v in s.spacing) for _, s in kept}
    if len(spacings) > 1:  # the first one's for all: distances off by their ratio elsewhere
        notes.append("Its sections give different pixel spacings: no distance, area or volume is measured.")
        spacing = None
    sections, spacing, orientation = radiological(
        np.stack([s.pixels for _, s in kept]),
        spacing,
        tuple(float(v) for v in reference) if reference is not None else None,
    )
    return Volume(
        source="multi-frame DICOM" if first.multi_frame else "DICOM series",
        study=first.study,
        series=first.series,
        sections=sections,
        positions=tuple(round(p, 3) for p in positions),
        spacing=spacing,
        thickness=first.thickness,
        orientation=orientation,
        modality=first.modality,
        positions_in_mm=in_mm,
        warnings=tuple(notes),
        uid_key=first.uid_key or first.series,
        sources=tuple(s.source for _, s in kept),
        scanned=min((s.scanned for _, s in kept if s.scanned is not None), default=None),
        number=first.number,
    )
