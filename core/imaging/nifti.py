"""NIfTI volumes (``.nii`` / ``.nii.gz``, nibabel): brought to the closest RAS+ orientation
(``as_closest_canonical``) and cut into sections in the plane it was acquired in (axial unless its voxels are thick
along another axis), their directions, spacing and steps from one matrix (the affine nibabel chose: sform, else
qform); a header that gives no orientation is shown without left and right."""

from __future__ import annotations

import gzip
import hashlib
import io
import zlib
from typing import Any

import numpy as np

from core.errors import CorruptImage, FileTooLarge
from core.imaging.geometry import PLAUSIBLE_MM, nifti_orientation, plausible_mm
from core.imaging.limits import DEFAULT_STUDY_LIMITS, StudyLimits, apply_stretch, stretch_bounds
from core.imaging.nifti_header import declared_zooms, nifti_head, nifti_layout
from core.imaging.volume import NO_STUDY_UID, SeriesError, Volume, hash_parts, radiological


def _nifti_placement(header: object) -> tuple[bool, tuple[str, ...]]:
    """Whether the header says where the voxels lie in the patient, and what the reader must know about it. With
    both codes 0, the affine is a reader's guess (nibabel's assumes radiological storage, the NIfTI standard's
    method 1 the opposite): left and right are unknown, not shown. A qform and an sform that disagree (one of them
    mirrored or turned) are the same: readers differ on which one they take (nibabel and FSL the sform, ITK the
    qform), so the directions are unknown too (the sform's letters, shown with a warning, were lost with the warning
    on every page that reopens a saved series, and in its report)."""
    qform, q_code = header.get_qform(coded=True)
    sform, s_code = header.get_sform(coded=True)
    if not q_code and not s_code:
        return False, ("The NIfTI file does not say how its voxels lie in the patient: left and right are unknown.",)
    if q_code and s_code:
        q_axes, s_axes = (np.asarray(m, float)[:3, :3] for m in (qform, sform))
        q_axes, s_axes = q_axes / np.linalg.norm(q_axes, axis=0), s_axes / np.linalg.norm(s_axes, axis=0)
        if np.abs(q_axes - s_axes).max() > 1e-3:
            return False, (
                "The NIfTI file's two orientations (qform and sform) disagree: left and right are unknown, not shown.",
            )
    return True, ()


HEAD_MM = 300.0  # no head is longer than this along any axis: a stack of thick sections longer is no acquisition


def _cut_axis(zooms: np.ndarray, shape: tuple[int, ...]) -> int:
    """The voxel axis (RAS+) the volume is cut across: one whose voxels are thick, the slice axis of a 2-D
    acquisition (5 mm along x: a sagittal one), else the third (axial sections). Cut axially, a sagittal volume
    became thick-slab reformats, stretched five times in the viewer and read so by the classifier, where its DICOM
    twin is read in its own plane. Not when the thick sections would span more than a head (128 of 5 mm: 640 mm, a
    header whose spacing is not the volume's), which is cut axially and said to be coarse. A slab, few sections of
    voxels no thinner than those within them (a one-section sagittal file; 30 sagittal sections of 1.8 mm), is cut
    across them whatever their thickness: cut axially, it became hundreds of strips a few pixels wide."""
    for axis in (0, 1):
        others = [a for a in range(3) if a != axis]
        thick = zooms[axis] >= 2.0 and zooms[axis] > 1.5 * max(zooms[a] for a in others)
        if thick and zooms[axis] * shape[axis] <= HEAD_MM:
            return axis
        few = 4 * shape[axis] <= min(shape[a] for a in others)
        slab = shape[axis] == 1 or (few and zooms[axis] >= max(zooms[a] for a in others))
        if slab and not 4 * shape[2] <= min(shape[0], shape[1]):  # an axial slab stays axial
            return axis
    return 2


def _nifti_normal_steps(affine: np.ndarray, shown: tuple[float, ...], axis: int) -> tuple[float, float]:
    """The first section's position and the step between sections along the normal of the sections as shown (in
    LPS, as DICOM positions are): the voxel axis ``axis`` the sections are cut across, projected on it. A sheared
    affine (a gantry tilt) moves each section sideways as well: its zoom along that axis is longer than the step,
    and positions, steps and volumes taken from it came out a few per cent too large."""
    ras_to_lps = np.array([-1.0, -1.0, 1.0])
    normal = np.cross(shown[:3], shown[3:])
    normal = normal / np.linalg.norm(normal)
    origin = float((np.asarray(affine, float)[:3, 3] * ras_to_lps) @ normal)
    return origin, float((np.asarray(affine, float)[:3, axis] * ras_to_lps) @ normal)


def _grey(section: np.ndarray, low: float, high: float, slope: float) -> np.ndarray:
    """A stored section as the scaled values' stretch would show it (``slope`` below 0: the grey levels inverted,
    section by section, while NaN voxels and a flat volume stay black)."""
    if slope < 0:
        return apply_stretch(-section.astype(np.float32), -high, -low)
    return apply_stretch(section, low, high)


COARSE = "they are reformatted across them, coarser than the acquisition."


def _along_normal(
    sections: np.ndarray, affine: np.ndarray, shown: tuple[float, ...] | None, axis: int, to_mm: float
) -> tuple[np.ndarray, float, float]:
    """The sections, the first one's position and the step between them, running along the view's normal as a
    DICOM series' do (a coronal volume's RAS+ order runs to anterior, the view's normal to posterior): section k is
    section k of the DICOM twin. Without an orientation: in stored order, from 0, one voxel apart."""
    if not shown:
        return sections, 0.0, float(np.linalg.norm(np.asarray(affine, float)[:3, axis]) * to_mm)
    origin, step = (value * to_mm for value in _nifti_normal_steps(affine, shown, axis))
    if step < 0:
        return np.ascontiguousarray(sections[::-1]), origin + (len(sections) - 1) * step, -step
    return sections, origin, step


def _sizes_usable(header: Any, declared: np.ndarray, zooms: np.ndarray) -> bool:
    """Whether the voxel sizes can be measured with: each within :data:`PLAUSIBLE_MM`, and stored as positive
    numbers where the affine is built from them (no sform): nibabel read a 0 or a -1 as 1 mm, and a file of 0 mm
    voxels was measured in mm and mL without a word."""
    stored_well = bool(np.isfinite(declared).all() and (declared > 0).all())
    return all(plausible_mm(z) for z in zooms) and (stored_well or bool(header.get_sform(coded=True)[1]))


UNMEASURED = (
    "The NIfTI header's voxel sizes are not usable (zero, negative, not a number, in a unit NIfTI does not define, "
    "or beyond "
    f"{PLAUSIBLE_MM[0]}-{PLAUSIBLE_MM[1]:.0f} mm): no distance, area or volume is measured, and sections are numbered."
)


_MM_PER_UNIT = {"meter": 1000.0, "micron": 0.001}  # NIfTI's xyzt_units; "mm" and "unknown" (read as mm) are 1


MORE_THAN_DECLARED = (
    "The NIfTI file holds more voxels than its header declares (a section's worth or more past its volume): its "
    "dimensions are wrong, and the volume it declares would leave sections out."
)


def _unpacked(data: bytes, limits: StudyLimits) -> tuple[bytes, bytes]:
    """The file, unpacked when gzipped up to the end of its volume (never more, but for less than a section), and
    its header; refused when it holds a section's worth more (a header declaring 8 sections of 16 read half the
    head, tumour-free, as the whole). Read to its end, so that its checksum is checked: a byte flipped in the
    stream was analysed and saved, a third of the voxels changed and no word said."""
    try:
        needed, section = nifti_layout(head := nifti_head(data), limits)
        if data[:2] == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
                data = stream.read(needed + section)  # fewer: the stream's end, its checksum checked
    except (OSError, EOFError, zlib.error) as error:
        raise CorruptImage("The .nii.gz file is damaged (its compressed data do not check out).") from error
    if len(data) - needed >= section:
        raise CorruptImage(MORE_THAN_DECLARED)
    return data, head


def _mm_per_unit(header: Any) -> float | None:
    """Millimetres per unit of the header's ``xyzt_units`` (None: a code NIfTI does not define; it was an
    internal error)."""
    try:
        return _MM_PER_UNIT.get(header.get_xyzt_units()[0], 1.0)
    except KeyError:
        return None


def read_nifti(data: bytes, limits: StudyLimits = DEFAULT_STUDY_LIMITS) -> Volume:
    """A NIfTI volume (optionally gzipped) as sections in its acquisition plane (:func:`_cut_axis`) in the
    radiological view, intensities stretched over the whole volume (0.5th-99.5th percentile)."""
    import nibabel

    data, head = _unpacked(data, limits)
    try:
        kind = nibabel.Nifti2Image if int.from_bytes(data[:4], "little") == 540 else nibabel.Nifti1Image
        stored = kind.from_bytes(data)  # NIfTI-2 (64-bit sizes) reads as NIfTI-1 does, within the same budgets
        # the values as stored (at most max_volume_bytes), never converted whole: nibabel applies a header's
        # scl_slope to the whole volume at once (four times the bytes of uint8 as float32), and so does its
        # reorientation; the stretch below is linear, so it is the same on the stored values (a negative slope
        # inverts the grey levels: undone section by section)
        slope = float(stored.dataobj.slope)
        voxels = stored.dataobj.get_unscaled()
        if voxels.ndim == 2:  # one slice stored as X x Y: a third axis before it is turned (nibabel needs three)
            voxels = voxels[..., None]
        unscaled = nibabel.Nifti1Image(voxels, stored.affine, stored.header)
        image = nibabel.as_closest_canonical(unscaled)
        volume = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel raises many types for a damaged file; all mean "cannot use it"
        raise CorruptImage("The NIfTI file is damaged or is not a NIfTI volume.") from error
    if volume.dtype.names or not (np.issubdtype(volume.dtype, np.integer) or np.issubdtype(volume.dtype, np.floating)):
        raise SeriesError("The NIfTI volume holds colour (RGB) or complex values; a grey-level MR volume is needed.")
    placed, notes = _nifti_placement(stored.header)
    if volume.ndim == 4 and volume.shape[3] == 1:
        volume = volume[..., 0]
    if volume.ndim != 3:
        raise SeriesError(f"The NIfTI image has {volume.ndim} dimensions; a single 3-D volume is needed.")
    finite = (int(np.count_nonzero(np.isfinite(plane))) for plane in volume)  # a plane at a time: no volume-sized mask
    missing = volume.size - sum(finite) if volume.dtype.kind == "f" else 0
    if missing:  # drawn black as a mask's outside is: inside the brain, unsaid
        notes = (*notes, f"{missing:,} of its voxels are not numbers (NaN or infinite): they are shown as background.")
    # the spacing comes from the same matrix as the directions (pixdim can disagree with the sform it is under)
    # in millimetres whatever the header's unit (one in metres gave a spacing of 0.0009 "mm": distances, gaps and
    # lesion volumes 1000 times off, unsaid)
    unit = _mm_per_unit(stored.header)  # an undefined unit: no size is claimed
    to_mm = unit or 1.0
    zooms = np.linalg.norm(np.asarray(image.affine, float)[:3, :3], axis=0) * to_mm
    if not (measured := unit is not None and _sizes_usable(stored.header, declared_zooms(head), zooms)):
        zooms, notes = np.ones(3), (*notes, UNMEASURED)
    axis = _cut_axis(zooms, volume.shape)
    across = tuple(a for a in range(3) if a != axis)  # a section's columns follow the first, its rows the second
    if volume.shape[axis] > limits.max_sections:
        raise FileTooLarge(f"The volume holds {volume.shape[axis]} sections; the limit is {limits.max_sections}.")
    low, high = stretch_bounds(volume)
    # the affine says where each section's axes point in the patient, and radiological() turns them into the
    # radiological view of their plane; one section at a time. Without an orientation in the header (codes 0) the
    # reader's affine still puts anterior at the top (readers differ on left and right only), so the view is turned
    # the same way and then no direction is claimed.
    across_first = np.moveaxis(volume, axis, 0)  # a view: np.take copied the whole volume for each section (two
    # minutes for a 512 x 512 x 180 volume)
    sections, spacing, orientation = radiological(
        np.stack([_grey(section.T, low, high, slope) for section in across_first]),
        (float(zooms[across[1]]), float(zooms[across[0]])),
        nifti_orientation(image.affine, across),  # type: ignore[arg-type]
    )
    orientation = orientation if placed else None
    thick = max(zooms[a] for a in across)
    if thick >= 2.0 and thick > 1.5 * min(zooms):  # thick voxels within the sections (along two axes at once, or a
        # thick axis not cut across): coarse (not a volume of thin overlapping sections: 1 x 1 mm, 0.5 mm apart)
        notes = (*notes, f"The volume's voxels are {thick:.1f} mm thick within its sections: {COARSE}")
    digest = hashlib.sha256(data).hexdigest()
    sections, origin, step = _along_normal(sections, image.affine, orientation, axis, to_mm)
    return Volume(
        source="NIfTI volume",
        study=NO_STUDY_UID,  # the upload names the study (read_study)
        # cut in another plane than axial, the same file is another series (a reading of its axial cut, saved
        # before sections were cut in the acquisition plane, is not this one's)
        series=hash_parts("nifti-series", digest, *([f"cut across axis {axis}"] if axis != 2 else [])),
        sections=sections,
        positions=tuple(round(origin + k * step, 3) if measured else float(k) for k in range(volume.shape[axis])),
        positions_in_mm=measured,
        spacing=spacing if measured else None,
        thickness=step if measured else None,
        orientation=orientation,
        modality="MR",
        warnings=notes,
    )
