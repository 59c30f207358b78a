"""Where a displayed section's edges point in the patient, derived from the file's geometry, never assumed.

Directions are DICOM patient coordinates (LPS: +x to the patient's left, +y posterior, +z head). A section's
geometry is its ``orientation``: the row direction (the way column indices grow) and the column direction (the way
row indices grow), six direction cosines as in ImageOrientationPatient.

One display convention for every source, the radiological one:
- axial: the patient's right on the screen's left, anterior at the top (rows run to L, columns to P);
- coronal: the patient's right on the screen's left, head at the top (rows to L, columns to F);
- sagittal: anterior on the screen's left, head at the top (rows to P, columns to F).
:func:`display_transform` finds the flips and transpose (one of the eight) that bring stored pixels closest to that
view; :func:`apply_transform` moves the pixels and :func:`transformed_orientation` the geometry with them, so the
letters of :func:`orientation_letters` always describe the pixels shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product
from typing import Any

import numpy as np

from core.imaging.limits import DEFAULT_STUDY_LIMITS

_TARGETS = {  # (row direction, column direction) of the displayed view, LPS
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
}


@dataclass(frozen=True)
class DisplayTransform:
    """Transpose first (rows become columns), then flip the rows' order (up-down), then the columns' (left-right)."""

    transpose: bool = False
    flip_up_down: bool = False
    flip_left_right: bool = False

    @property
    def identity(self) -> bool:
        return not (self.transpose or self.flip_up_down or self.flip_left_right)


PLAUSIBLE_MM = (0.01, 50.0)  # a pixel's or voxel's size in an MR image: outside, a header's mistake, not a size


def plausible_mm(value: float) -> bool:
    """Whether a pixel spacing or voxel size can be measured with (a spacing of 1e30 mm was, in mm and mL)."""
    return bool(np.isfinite(value)) and PLAUSIBLE_MM[0] <= value <= PLAUSIBLE_MM[1]


def dicom_floats(value: object, n: int) -> np.ndarray | None:
    """The first ``n`` numbers of a multi-valued DICOM element (ImagePositionPatient, PixelSpacing), or None when
    there are fewer, or one is not a finite number."""
    try:
        array = np.array([float(v) for v in value][:n])  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None
    return array if array.size == n and np.isfinite(array).all() else None


def dicom_spacing(value: object) -> tuple[float, float] | None:
    """A (row, column) PixelSpacing in mm, or None when missing, malformed or not a size (0, negative, 1e30 mm):
    never a 0 mm claim, nor mm and mL a header's mistake made."""
    found = dicom_floats(value, 2)
    return (float(found[0]), float(found[1])) if found is not None and all(map(plausible_mm, found)) else None


def dicom_length(value: object) -> float | None:
    """A length in mm (SliceThickness, SpacingBetweenSlices) that can be measured with (:func:`plausible_mm`), or
    None."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if plausible_mm(number) else None


def plane_of(orientation: Sequence[float] | None) -> str | None:
    """Axial, coronal or sagittal from row and column directions (the normal's dominant axis; None when they are
    not six numbers, as a malformed ImageOrientationPatient may be)."""
    try:
        if orientation is None or len(orientation) < 6:
            return None
        row, column = np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float)
    except (TypeError, ValueError):
        return None
    normal = np.abs(np.cross(row, column))
    if not np.isfinite(normal).all() or normal.max() == 0:
        return None
    return ("sagittal", "coronal", "axial")[int(np.argmax(normal))]


def transformed_orientation(orientation: Sequence[float], transform: DisplayTransform) -> tuple[float, ...]:
    """The row and column directions of the pixels after ``transform``."""
    row, column = np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float)
    if transform.transpose:
        row, column = column, row
    if transform.flip_up_down:
        column = -column
    if transform.flip_left_right:
        row = -row
    return tuple(float(v) + 0.0 for v in (*row, *column))  # + 0.0: no negative zeros in records


def display_transform(orientation: Sequence[float] | None) -> DisplayTransform:
    """The transform that shows pixels of this ``orientation`` closest to the radiological view of their plane."""
    plane = plane_of(orientation)
    if orientation is None or plane is None:
        return DisplayTransform()
    target_row, target_column = (np.asarray(v) for v in _TARGETS[plane])

    def agreement(transform: DisplayTransform) -> float:
        moved = np.asarray(transformed_orientation(orientation, transform))
        return float(moved[:3] @ target_row + moved[3:] @ target_column)

    candidates = [DisplayTransform(*flags) for flags in product((False, True), repeat=3)]
    return max(candidates, key=agreement)  # the identity first among equals: stored views that are fine stay


def apply_transform(pixels: np.ndarray, transform: DisplayTransform) -> np.ndarray:
    """``transform`` applied to the last two axes of ``pixels`` (one section or a stack)."""
    if transform.transpose:
        pixels = np.swapaxes(pixels, -1, -2)
    if transform.flip_up_down:
        pixels = np.flip(pixels, axis=-2)
    if transform.flip_left_right:
        pixels = np.flip(pixels, axis=-1)
    return np.ascontiguousarray(pixels)


def undo_transform(pixels: np.ndarray, transform: DisplayTransform) -> np.ndarray:
    """The inverse of :func:`apply_transform`: pixels as shown back in the file's stored order."""
    if transform.flip_left_right:
        pixels = np.flip(pixels, axis=-1)
    if transform.flip_up_down:
        pixels = np.flip(pixels, axis=-2)
    if transform.transpose:
        pixels = np.swapaxes(pixels, -1, -2)
    return np.ascontiguousarray(pixels)


def transformed_spacing(spacing: tuple[float, float] | None, transform: DisplayTransform) -> tuple[float, float] | None:
    """(row, column) spacing after ``transform`` (a transpose swaps them)."""
    if spacing is None or not transform.transpose:
        return spacing
    return spacing[1], spacing[0]


def spacing_text(spacing: Sequence[float]) -> str:
    """A (row, column) pixel spacing in mm as DICOM's PixelSpacing writes it ("0.9\\0.9"): what a scan's acquisition
    facts hold for it, read back by :func:`pixel_spacing`."""
    return "\\".join(str(float(v)) for v in spacing)


def pixel_spacing(scan: Any) -> tuple[float, float] | None:
    """A single scan's (row, column) pixel spacing in mm from its DICOM PixelSpacing, as its pixels are shown (a
    display that turns rows into columns swaps them: read as stored, a 0.5 x 1 mm slice was drawn 4:1), or None
    (PNG, JPEG, or a missing or malformed value)."""
    text = scan.acquisition.get("PixelSpacing") if getattr(scan, "acquisition", None) else None
    spacing = dicom_spacing(str(text).split("\\")) if text else None  # as a series' sections read it (a second
    # parser gave a scan pixels only where its series had mm)
    return None if spacing is None else transformed_spacing(spacing, getattr(scan, "display", DisplayTransform()))


def nifti_orientation(affine: np.ndarray, across: tuple[int, int] = (0, 1)) -> tuple[float, ...]:
    """Row and column directions (LPS) of a section of a NIfTI volume with this ``affine`` whose column indices
    follow the voxel axis ``across[0]`` and row indices ``across[1]`` (``data[:, :, k].T``: the first axis, i, then
    the second, j). NIfTI's world is RAS+, so x and y change sign on the way to LPS."""
    ras_to_lps = np.array([-1.0, -1.0, 1.0])
    axes = np.asarray(affine, float)[:3, :3]
    row = axes[:, across[0]] / np.linalg.norm(axes[:, across[0]]) * ras_to_lps
    column = axes[:, across[1]] / np.linalg.norm(axes[:, across[1]]) * ras_to_lps
    return tuple(float(v) + 0.0 for v in (*row, *column))


def orientation_letters(orientation: Sequence[float] | None) -> dict[str, str]:
    """The patient directions at the edges of a displayed section: {"left", "right", "top", "bottom"} letters
    (R/L, A/P, H/F) from its row and column directions (LPS). An oblique direction gets its dominant axis first and
    every other axis it leans 30 degrees or more towards after it ("LA"): at 45 degrees the dominant axis alone
    was a tie, and one letter stood at two edges."""
    if not orientation or len(orientation) < 6:
        return {}
    row, column = np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float)
    return {"right": _letters(row), "left": _letters(-row), "bottom": _letters(column), "top": _letters(-column)}


def _letters(vector: np.ndarray) -> str:
    """The patient direction of ``vector`` (LPS): its dominant axis, then each other axis it leans 30 degrees or
    more towards."""
    named = ""
    for axis in sorted(range(3), key=lambda a: -abs(vector[a])):  # stable: x before y before z at a tie
        if not named or abs(vector[axis]) >= 0.5:
            positive, negative = (("L", "R"), ("P", "A"), ("H", "F"))[axis]
            named += positive if vector[axis] > 0 else negative
    return named


def place_text(orientation: Sequence[float] | None, position: float) -> str:
    """ "L 30.0 mm": a position along the displayed view's normal with the patient direction it points to, by the
    edge letters' rule ("LA" on an oblique normal: a bare "-30.0 mm" on a sagittal series read as a side); signed
    when the orientation is not known."""
    distance = f"{abs(position):.1f} mm"
    if orientation is None or len(orientation) != 6:
        return ("-" if position < 0 else "") + distance
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    return f"{_letters(normal if position >= 0 else -normal)} {distance}"


def stack_line(positions: Sequence[Any]) -> np.ndarray:
    """The direction (a unit vector) along which sections at ``positions`` (ImagePositionPatient, mm) lie, for files
    that give no orientation: the positions' main axis, its largest component positive (which way the sections run
    is not known); any axis when they lie at one point (then one position for all, as with an orientation: two
    different images there are no stack)."""
    points = np.asarray(positions, float)
    centred = points - points.mean(axis=0)
    if len(points) < 2 or float(np.abs(centred).max()) < 1e-3:
        return np.array([0.0, 0.0, 1.0])
    axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    return axis if axis[np.argmax(np.abs(axis))] > 0 else -axis


def gap_starts(positions: Sequence[float], ratio: float = DEFAULT_STUDY_LIMITS.max_gap_ratio) -> list[int]:
    """The sections (0-based) that follow a step over ``ratio`` times the usual one along a series: a section may
    be missing before each, so no run of neighbouring sections crosses it."""
    steps = np.diff(positions)
    if len(steps) < 2 or not float(np.median(steps)) > 0:
        return []
    usual = float(np.median(steps))
    return [k + 1 for k, step in enumerate(steps) if step > ratio * usual]


def gap_notes(positions: Sequence[float], in_mm: bool, ratio: float = DEFAULT_STUDY_LIMITS.max_gap_ratio) -> list[str]:
    """A note for each gap (:func:`gap_starts`), naming the sections as the viewer numbers them (from 1)."""
    steps, unit = np.diff(positions), " mm" if in_mm else ""
    usual = float(np.median(steps)) if len(steps) else 0.0
    return [
        f"A gap of {steps[k - 1]:.1f}{unit} between sections {k} and {k + 1} (usually {usual:.1f}{unit}): "
        "a section may be missing."
        if in_mm
        else f"Section numbers jump from {positions[k - 1]:.0f} to {positions[k]:.0f}: a section may be missing."
        for k in gap_starts(positions, ratio)
    ]


def functional_groups(dataset: Any, frame: int | None) -> tuple[Any | None, Any | None]:
    """(the frame's own functional group, the shared one) of an enhanced file, None where it gives none; ``frame``
    None on a file of one frame is that frame (it keeps its geometry and measures in its frame's group)."""
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence") or []
    if frame is None and len(per_frame) == 1:
        frame = 0
    own = per_frame[frame] if frame is not None and frame < len(per_frame) else None
    return own, (dataset.get("SharedFunctionalGroupsSequence") or [None])[0]


def frame_orientation(dataset: Any, frame: int | None) -> tuple[float, ...] | None:
    """The row and column directions (ImageOrientationPatient) of one frame, the most specific the file gives: the
    frame's own functional group, else the shared group, else the file's top level; None when the file gives none
    (or only unusable ones). The one rule of the Scan page (one frame) and the Study page (the series)."""
    for group in (*functional_groups(dataset, frame), dataset):
        if group is None:
            continue
        value = group.get("ImageOrientationPatient")
        if value is None and group.get("PlaneOrientationSequence"):
            value = group.PlaneOrientationSequence[0].get("ImageOrientationPatient")
        cosines = dicom_floats(value, 6)
        if cosines is not None and _unit_and_orthogonal(cosines[:3], cosines[3:]):
            return _orthonormal(cosines[:3], cosines[3:])
    return None


def _orthonormal(row: np.ndarray, column: np.ndarray) -> tuple[float, ...]:
    """The cosines made exactly unit and at right angles (the column's part along the row taken off): used as
    written, ``1.04\\0\\0\\0\\1.04\\0`` lengthened every step between sections, and each volume, by 8 %."""
    row = row / np.linalg.norm(row)
    column = column - (column @ row) * row
    column = column / np.linalg.norm(column)
    return tuple(float(v) for v in np.concatenate([row, column]))


def _unit_and_orthogonal(row: np.ndarray, column: np.ndarray, tolerance: float = 0.05) -> bool:
    """Two direction cosines that describe a plane: each of length one and at right angles (within the rounding
    files carry). Others (``1\\0\\0\\1\\0\\0``: one direction twice) gave two edges the same letter and every
    section of a series one position; they are treated as no orientation given."""
    lengths = np.linalg.norm(row), np.linalg.norm(column)
    if any(abs(length - 1.0) > tolerance for length in lengths):
        return False
    return abs(float(row @ column)) < tolerance
