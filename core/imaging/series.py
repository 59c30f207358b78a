"""Whole series and volumes: DICOM files of one or more series (any names), a ``.zip`` of a study, a multi-frame
DICOM, or a NIfTI volume (``.nii`` / ``.nii.gz``), each turned into :class:`Volume` objects of ordered sections.

- DICOM files are grouped by StudyInstanceUID and SeriesInstanceUID and ordered by their position along the normal
  of the displayed view (ImagePositionPatient projected on the cross product of the row and column directions as
  shown), never by file name or InstanceNumber: the first section is the same end of the head however the files
  encode their orientation (axial: feet first, as NIfTI volumes). Enhanced multi-frame files give orientation,
  spacing and position per frame or shared. Pixel spacing, slice thickness and orientation are kept. Mixed
  orientations in one series, two different sections at one position, and gaps are named; identical duplicates are
  dropped.
- A zip is checked before anything is read from it (:mod:`core.imaging.archive`); the DICOM files' pixels are
  counted from their headers against the upload's budget before any is decoded.
- NIfTI volumes (nibabel) are brought to the closest RAS+ orientation (``as_closest_canonical``) and cut into
  axial sections; their row and column directions come from the affine.
- Every volume is shown in the radiological view of its plane (:mod:`core.imaging.geometry`): pixels, spacing and
  orientation are transformed together, so orientation letters always describe the pixels shown.
Identifiers are not kept: a study and a series are named by a SHA-256 of their UIDs; files without a
StudyInstanceUID (NIfTI volumes among them) take the upload's identity as their study.
"""

from __future__ import annotations

import gzip
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from core.errors import CorruptImage, FileTooLarge, ScanError, UnsupportedFormat
from core.imaging import dicom
from core.imaging.archive import is_zip, unzip
from core.imaging.geometry import (
    apply_transform,
    display_transform,
    gap_notes,
    gap_starts,
    nifti_orientation,
    orientation_letters,
    plane_of,
    transformed_orientation,
    transformed_spacing,
)
from core.imaging.limits import (
    DEFAULT_LIMITS,
    DEFAULT_STUDY_LIMITS,
    Limits,
    StudyLimits,
    apply_stretch,
    stretch_bounds,
)
from core.imaging.nifti_header import check_nifti_budget, is_nifti, nifti_bytes, nifti_head
from core.imaging.scan import is_dicom


class SeriesError(ScanError):
    code = "series_error"


@dataclass(frozen=True, eq=False)
class Volume:
    """One series, sections ordered along its normal: ``sections`` (N, H, W) uint8 as displayed."""

    source: str
    study: str
    series: str
    sections: np.ndarray
    positions: tuple[float, ...]
    spacing: tuple[float, float] | None = None  # (row, column) in mm
    thickness: float | None = None  # declared distance between sections: SpacingBetweenSlices, else SliceThickness
    orientation: tuple[float, ...] | None = None  # row and column direction cosines (6)
    modality: str = ""
    warnings: tuple[str, ...] = field(default_factory=tuple)
    positions_in_mm: bool = True  # False: the files gave no positions and the sections are numbered instead
    uid_key: str = ""  # :func:`series_key` of its source series (``series`` adds a multi-frame file's own hash)

    @property
    def step_mm(self) -> float | None:
        """The distance between sections along the normal (the median step of the positions; the slice
        thickness when there are no positions in mm or a single section); None when neither is known."""
        steps = np.diff(self.positions) if self.positions_in_mm and len(self.positions) > 1 else np.array([])
        if steps.size and float(np.median(steps)) > 0:
            return float(np.median(steps))
        return self.thickness if self.thickness and self.thickness > 0 else None

    @property
    def plane(self) -> str | None:
        return plane_of(self.orientation)

    @property
    def letters(self) -> dict[str, str]:
        """The patient directions at the displayed sections' edges ({} when the files give no orientation)."""
        return orientation_letters(self.orientation)

    @cached_property
    def gap_starts(self) -> tuple[int, ...]:
        """The sections that follow a gap in the positions (:func:`gap_starts`): the series rule's runs stop there."""
        return tuple(gap_starts(self.positions))

    @cached_property
    def sha256(self) -> str:
        """The identity of the series' content (its display pixels, in order), computed once."""
        return hashlib.sha256(self.sections.tobytes()).hexdigest()


NO_STUDY_UID = "no-study-uid"  # replaced by the upload's own identity in read_study


def series_key(study_uid: str, series_uid: str) -> str:
    """The key a volume keeps for its series (:attr:`Volume.series`): a hash of the two UIDs, never the UIDs."""
    return _hash(study_uid, series_uid)


def _hash(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def read_study(
    files: Sequence[bytes], limits: Limits = DEFAULT_LIMITS, study_limits: StudyLimits = DEFAULT_STUDY_LIMITS
) -> list[Volume]:
    """Every series in the uploaded files (DICOM files, zips of them, multi-frame DICOM, NIfTI)."""
    expanded: list[bytes] = []
    for data in files:
        expanded += unzip(data, study_limits) if is_zip(data) else [data]
    if sum(len(d) for d in expanded) > study_limits.max_total_bytes:
        raise FileTooLarge(f"The upload is over {study_limits.max_total_bytes / 2**20:.0f} MB in all.")
    check_nifti_budget([d for d in expanded if is_nifti(d)], study_limits)
    volumes, slices = [], []
    for data in expanded:
        if is_nifti(data):
            volumes.append(read_nifti(data, study_limits))
        elif is_dicom(data):
            slices.append(data)
        else:
            raise UnsupportedFormat(
                "A file is neither DICOM nor NIfTI; a series holds DICOM files or one NIfTI volume."
            )
    if len(slices) > study_limits.max_files:
        raise FileTooLarge(
            f"The upload holds {len(slices)} DICOM files; the limit is {study_limits.max_files} "
            "(refused before reading them)."
        )
    volumes += _dicom_series(slices, limits, study_limits)
    # one definition of a study: its StudyInstanceUID, else the upload itself (NIfTI files and DICOM files without
    # the UID that came together are one study, as the page and the report show them)
    upload = _hash("upload", *sorted(hashlib.sha256(d).hexdigest() for d in expanded))
    volumes = [replace(v, study=upload) if v.study in (NO_STUDY_UID, "") else v for v in volumes]
    if len(volumes) > study_limits.max_series:
        raise FileTooLarge(f"The upload holds {len(volumes)} series; the limit is {study_limits.max_series}.")
    if not volumes:
        raise SeriesError("No series found in the upload.")
    return volumes


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


def _floats(value: object, n: int) -> np.ndarray | None:
    try:
        array = np.array([float(v) for v in value][:n])  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return array if array.size == n and np.isfinite(array).all() else None


def _spacing(value: object) -> tuple[float, float] | None:
    """A (row, column) PixelSpacing in mm, or None when missing, malformed, zero or negative (never a 0 mm claim)."""
    found = _floats(value, 2)
    return (float(found[0]), float(found[1])) if found is not None and (found > 0).all() else None


def _positive(value: object) -> float | None:
    """A positive length in mm (SliceThickness), or None."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def _geometry(group: object, orientation, spacing, thickness) -> tuple:
    """Orientation, pixel spacing and thickness from a functional group (shared or one frame's), else as given."""
    if group is None:
        return orientation, spacing, thickness
    if group.get("PlaneOrientationSequence"):  # type: ignore[attr-defined]
        found = _floats(group.PlaneOrientationSequence[0].get("ImageOrientationPatient"), 6)  # type: ignore[attr-defined]
        orientation = found if found is not None else orientation
    if group.get("PixelMeasuresSequence"):  # type: ignore[attr-defined]
        measures = group.PixelMeasuresSequence[0]  # type: ignore[attr-defined]
        spacing = _spacing(measures.get("PixelSpacing")) or spacing
        thickness = (
            _positive(measures.get("SpacingBetweenSlices")) or _positive(measures.get("SliceThickness")) or thickness
        )
    return orientation, spacing, thickness


def _plane_position(group: object) -> np.ndarray | None:
    """The ImagePositionPatient of a functional group's PlanePositionSequence, or None."""
    if not group.get("PlanePositionSequence"):  # type: ignore[attr-defined]
        return None
    return _floats(group.PlanePositionSequence[0].get("ImagePositionPatient"), 3)  # type: ignore[attr-defined]


def _sections_of(data: bytes, header: object, limits: Limits) -> list[_Section]:
    ds = dicom.checked_dataset(data, limits, header)[0]
    study = _hash(str(ds.get("StudyInstanceUID", ""))) if ds.get("StudyInstanceUID") else NO_STUDY_UID
    series = _hash(str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", "")))
    spacing = _spacing(ds.get("PixelSpacing"))
    # the declared distance between sections, for a series whose files give no positions: the spacing between
    # them where given (sections can have gaps or overlap), else their thickness
    thickness = _positive(ds.get("SpacingBetweenSlices")) or _positive(ds.get("SliceThickness"))
    modality = str(ds.get("Modality", "") or "")
    orientation = _floats(ds.get("ImageOrientationPatient"), 6)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames == 1:
        pixels = dicom.display(dicom.decode_frame(ds, None), ds)
        position, instance = _floats(ds.get("ImagePositionPatient"), 3), int(ds.get("InstanceNumber", 0) or 0)
        return [_Section(study, series, position, orientation, instance, pixels, spacing, thickness, modality)]
    uid_key, series = series, _hash(series, hashlib.sha256(data).hexdigest())  # each multi-frame file: a series
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    orientation, spacing, thickness = _geometry(shared, orientation, spacing, thickness)
    # frames without a position of their own (a classic multi-frame file; an enhanced one without plane positions)
    # are numbered in stored order, not placed: which way they run along the normal is not in the file (placed
    # along it, a file stored the other way came out mirrored head to foot), and frames with no position given
    # are not invented a stack; the declared distance still measures the step between them (volumes in mL)
    sections = []
    for k in range(frames):
        group = per_frame[k] if k < len(per_frame) else None
        frame_orientation, frame_spacing, frame_thickness = _geometry(group, orientation, spacing, thickness)
        position = _plane_position(group) if group is not None else None
        if position is None and shared is not None:
            position = _plane_position(shared)  # shared by every frame: one place (a dynamic or multi-echo file)
        pixels = dicom.display(dicom.decode_frame(ds, k), ds)
        sections.append(
            _Section(
                study,
                series,
                position,
                frame_orientation,
                k + 1,  # numbered from 1, as the viewer counts
                pixels,
                frame_spacing,
                frame_thickness,
                modality,
                True,
                uid_key,
            )
        )
    return sections


def _dicom_series(files: Sequence[bytes], limits: Limits, study_limits: StudyLimits) -> list[Volume]:
    """Every DICOM series of the upload, after checking from the headers alone that their pixels fit the budget."""
    headers, pixels = [], 0
    for data in files:
        header = dicom.header_of(data)
        frames = int(header.get("NumberOfFrames", 1) or 1)
        if frames > study_limits.max_sections:
            raise FileTooLarge(f"A file holds {frames} frames; the limit is {study_limits.max_sections} sections.")
        pixels += int(header.get("Rows") or 0) * int(header.get("Columns") or 0) * frames
        headers.append(header)
    if pixels > study_limits.max_dicom_pixels:
        raise FileTooLarge(
            f"The DICOM files hold {pixels / 2**20:.0f} M pixels in all; the limit is "
            f"{study_limits.max_dicom_pixels / 2**20:.0f} M for one upload (refused before decoding them)."
        )
    groups: dict[tuple[str, str], list[_Section]] = {}
    for data, header in zip(files, headers, strict=True):
        for section in _sections_of(data, header, limits):
            groups.setdefault((section.study, section.series), []).append(section)
    return [_volume(sections, study_limits) for sections in groups.values()]


def _volume(sections: list[_Section], limits: StudyLimits) -> Volume:
    if len(sections) > limits.max_sections:
        raise FileTooLarge(f"A series holds {len(sections)} sections; the limit is {limits.max_sections}.")
    shapes = {s.pixels.shape for s in sections}
    if len(shapes) > 1:
        raise SeriesError("The sections of one series differ in size; a series holds sections of one size.")
    notes: list[str] = []
    orientations = [s.orientation for s in sections if s.orientation is not None]
    reference = orientations[0] if orientations else None
    if reference is not None and any(np.abs(o - reference).max() > 1e-3 for o in orientations):
        raise SeriesError("One series mixes section orientations (e.g. axial and sagittal); upload them apart.")
    in_mm = reference is not None and all(s.position is not None for s in sections)
    if in_mm:  # along the normal of the view as shown, so the stack runs the same way whatever the encoding
        shown = transformed_orientation(reference, display_transform(reference))  # type: ignore[arg-type]
        normal = np.cross(shown[:3], shown[3:])
        keyed = sorted(((float(s.position @ normal), s) for s in sections), key=lambda pair: pair[0])
    elif sections[0].multi_frame:
        notes.append(
            "The file gives no position for each frame: frames are shown in stored order, and which way they run "
            "(head or foot, left or right) is not known."
        )
        keyed = sorted(((float(s.instance), s) for s in sections), key=lambda pair: pair[0])
    else:
        notes.append("The files give no positions: sections are ordered by instance number.")
        keyed = sorted(((float(s.instance), s) for s in sections), key=lambda pair: pair[0])
    if in_mm and sections[0].multi_frame and len(sections) > 1 and np.ptp([p for p, _ in keyed]) < 1e-3:
        raise SeriesError(
            f"All {len(sections)} images of one series lie at one position (a dynamic, cine or multi-echo series): "
            "it is not a stack of sections to triage."
        )
    where = "{:.1f} mm" if in_mm else "number {:.0f}"
    kept: list[tuple[float, _Section]] = []
    for position, section in keyed:
        if kept and abs(position - kept[-1][0]) < 1e-3:
            if np.array_equal(section.pixels, kept[-1][1].pixels):
                notes.append(f"A duplicate of the section at {where.format(position)} was left out.")
                continue
            raise SeriesError(
                f"Two different sections lie at the same position ({where.format(position)}) in one series."
            )
        kept.append((position, section))
    notes += gap_notes([p for p, _ in kept], in_mm, limits.max_gap_ratio)
    positions = [p for p, _ in kept]
    first = kept[0][1]
    sections, spacing, orientation = _radiological(
        np.stack([s.pixels for _, s in kept]),
        first.spacing,
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
    )


def _radiological(
    sections: np.ndarray, spacing: tuple[float, float] | None, orientation: tuple[float, ...] | None
) -> tuple[np.ndarray, tuple[float, float] | None, tuple[float, ...] | None]:
    """Sections, spacing and orientation moved together into the radiological view of their plane."""
    if orientation is None:
        return sections, spacing, None
    transform = display_transform(orientation)
    return (
        apply_transform(sections, transform),
        transformed_spacing(spacing, transform),
        transformed_orientation(orientation, transform),
    )


def _nifti_placement(header: object) -> tuple[bool, tuple[str, ...]]:
    """Whether the header says where the voxels lie in the patient, and what the reader must know about it. With
    both codes 0, the affine is a reader's guess (nibabel's assumes radiological storage, the NIfTI standard's
    method 1 the opposite): left and right are unknown, not shown. A qform and an sform that disagree (one of them
    mirrored or turned) put the sform's directions on the screen, with a warning."""
    qform, q_code = header.get_qform(coded=True)
    sform, s_code = header.get_sform(coded=True)
    if not q_code and not s_code:
        return False, ("The NIfTI file does not say how its voxels lie in the patient: left and right are unknown.",)
    if q_code and s_code:
        q_axes, s_axes = (np.asarray(m, float)[:3, :3] for m in (qform, sform))
        q_axes, s_axes = q_axes / np.linalg.norm(q_axes, axis=0), s_axes / np.linalg.norm(s_axes, axis=0)
        if np.abs(q_axes - s_axes).max() > 1e-3:
            return True, ("The NIfTI file's two orientations (qform and sform) disagree: the sform's is shown.",)
    return True, ()


def _nifti_normal_steps(affine: np.ndarray, shown: tuple[float, ...]) -> tuple[float, float]:
    """The first section's position and the step between sections along the normal of the sections as shown (in
    LPS, as DICOM positions are): the third voxel axis projected on it. A sheared affine (a gantry tilt) moves each
    section sideways as well: its zoom along that axis is longer than the step, and positions, steps and volumes
    taken from it came out a few per cent too large."""
    ras_to_lps = np.array([-1.0, -1.0, 1.0])
    normal = np.cross(shown[:3], shown[3:])
    normal = normal / np.linalg.norm(normal)
    origin = float((np.asarray(affine, float)[:3, 3] * ras_to_lps) @ normal)
    return origin, float((np.asarray(affine, float)[:3, 2] * ras_to_lps) @ normal)


def read_nifti(data: bytes, limits: StudyLimits = DEFAULT_STUDY_LIMITS) -> Volume:
    """A NIfTI volume (optionally gzipped) as axial sections in RAS+ orientation, intensities stretched over the
    whole volume (0.5th-99.5th percentile)."""
    import nibabel

    compressed = data[:2] == b"\x1f\x8b"
    try:
        needed = nifti_bytes(nifti_head(data), limits)
        if compressed:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
                data = stream.read(needed + 1)
    except (OSError, EOFError) as error:
        raise CorruptImage("The .nii.gz file is damaged.") from error
    try:
        stored = nibabel.Nifti1Image.from_bytes(data)
        image = nibabel.as_closest_canonical(stored)
        volume = np.asanyarray(image.dataobj)  # as stored (at most max_volume_bytes), never converted whole
    except Exception as error:  # nibabel raises many types for a damaged file; all mean "cannot use it"
        raise CorruptImage("The NIfTI file is damaged or is not a NIfTI-1 volume.") from error
    placed, notes = _nifti_placement(stored.header)
    if volume.ndim == 4 and volume.shape[3] == 1:
        volume = volume[..., 0]
    if volume.ndim != 3:
        raise SeriesError(f"The NIfTI image has {volume.ndim} dimensions; a single 3-D volume is needed.")
    if volume.shape[2] > limits.max_sections:
        raise FileTooLarge(f"The volume holds {volume.shape[2]} sections; the limit is {limits.max_sections}.")
    low, high = stretch_bounds(volume)
    # the spacing comes from the same matrix as the directions (pixdim can disagree with the sform it is under)
    zooms = np.linalg.norm(np.asarray(image.affine, float)[:3, :3], axis=0)
    # section k as stored: rows follow the second voxel axis (j), columns the first (i); the affine says where
    # each points in the patient, and _radiological turns them into the radiological view; one section at a time
    sections, spacing, orientation = _radiological(
        np.stack([apply_stretch(volume[:, :, k].T, low, high) for k in range(volume.shape[2])]),
        (float(zooms[1]), float(zooms[0])),
        nifti_orientation(image.affine) if placed else None,
    )
    digest = hashlib.sha256(data).hexdigest()
    origin, step = _nifti_normal_steps(image.affine, orientation) if orientation else (0.0, float(zooms[2]))
    return Volume(
        source="NIfTI volume",
        study=NO_STUDY_UID,  # the upload names the study (read_study)
        series=_hash("nifti-series", digest),
        sections=sections,
        positions=tuple(round(origin + k * step, 3) for k in range(volume.shape[2])),
        spacing=spacing,
        thickness=step,
        orientation=orientation,
        modality="MR",
        warnings=notes,
    )
