"""A series as the app holds it: :class:`Volume`, its sections ordered along the normal in the radiological view
of their plane, with what the files say about their geometry, and the keys that name a series without its UIDs."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from typing import Any

import numpy as np

from core.errors import ScanError
from core.imaging.geometry import (
    apply_transform,
    display_transform,
    gap_starts,
    orientation_letters,
    plane_of,
    transformed_orientation,
    transformed_spacing,
)


class SeriesError(ScanError):
    code = "series_error"


class OnlyLocalizers(SeriesError):
    """An upload, or a PACS study so far, of the scanner's positioning images alone: nothing to read yet."""

    code = "only_localizers"

    def __init__(self) -> None:
        super().__init__(
            "The upload holds only localizer images (the scanner's positioning images); upload the series to read."
        )


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
    stack: str = ""  # which stack of its source series it is, where that holds several ("b = 1000 s/mm2")
    scanned: date | None = field(default=None, repr=False)  # its study's scan day, in memory only (never printed)
    # each section's source image (SOP class, SOP instance, frame number or None), in memory only, never saved nor
    # shown: what a key image sent back to the PACS names as the image it was made from
    sources: tuple[tuple[str, str, int | None], ...] = field(default=(), repr=False)
    number: int | None = None  # the DICOM series' SeriesNumber, as the reader's viewer lists it (None: NIfTI, none)

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
    return hash_parts(study_uid, series_uid)


def hash_parts(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def radiological(
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


def one_per_position(
    keyed: list[tuple[float, Any]], where: Callable[[float], str], notes: list[str]
) -> list[tuple[float, Any]]:
    """The sections in order, a duplicate of the one before at its position left out (and said in ``notes``); two
    different images at one position are no stack (:class:`SeriesError`)."""
    kept: list[tuple[float, Any]] = []
    for position, section in keyed:
        if kept and abs(position - kept[-1][0]) < 1e-3:
            if np.array_equal(section.pixels, kept[-1][1].pixels):
                notes.append(f"A duplicate of the section at {where(position)} was left out.")
                continue
            raise SeriesError(
                f"Two different sections lie at the same position ({where(position)}) in one series (a "
                "diffusion, multi-echo or dynamic series whose files do not say which image is which?)."
            )
        kept.append((position, section))
    return kept


def each_once(volumes: list[Volume]) -> tuple[list[Volume], list[str]]:
    """The volumes, each content once, and what was left out: a series of a study whose sections are another's of
    it as displayed (sent twice, re-exported) is read as the first one only. Both were saved as one result (its id
    is the pixels'): the page said "already saved" of the second while the PDF printed the first's record, spacing
    and volume under both numbers. Where their geometry differs (a corrected export) one header is wrong, and that
    is said. Series of two studies are left to the study's own checks, and blank series (one grey level) are no
    content to tell apart."""
    kept: dict[tuple, int] = {}
    chosen, notes = [], []
    for k, volume in enumerate(volumes):
        sections = volume.sections
        if sections.size and sections.min() == sections.max():
            chosen.append(volume)
            continue
        first = kept.setdefault((volume.study, sections.shape, volume.sha256), k)
        if first == k:
            chosen.append(volume)
            continue
        named = [_named(volumes[n], n) for n in (k, first)]
        note = f"{named[0]} holds the same images as {named[1]} (a series sent twice?): read once, as the latter."
        if _geometry(volume) != _geometry(volumes[first]):
            note += " Their pixel spacing, positions or orientation differ: one header is wrong; check which."
        notes.append(note[0].upper() + note[1:])
    return chosen, notes


def _named(volume: Volume, index: int) -> str:
    """A series as a note names it: its place in the upload, and its DICOM series number when it has one."""
    return f"the upload's series {index + 1}" + (
        f" (DICOM series {volume.number})" if volume.number is not None else ""
    )


def _geometry(volume: Volume) -> tuple:
    """What a volume's files say of where its sections lie, to 0.01 (mm, or direction cosines)."""
    parts = (volume.spacing, (volume.thickness,), volume.orientation, volume.positions)
    return tuple(None if part is None else tuple(None if x is None else round(x, 2) for x in part) for part in parts)
