"""A NIfTI file checked from its header alone, before any voxel is read or inflated: what it declares (dimensions,
stored bytes, where the voxels start) against the limits, one volume and all of an upload's together."""

from __future__ import annotations

import gzip
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from core.errors import CorruptImage, FileTooLarge
from core.imaging.limits import StudyLimits

MAX_NIFTI_EXTENSIONS = 2**20  # header extensions before the voxels (a few kB in practice)


def is_nifti(data: bytes) -> bool:
    if data[:2] == b"\x1f\x8b":
        return True  # a gzip stream: a .nii.gz is the only compressed upload accepted
    return (
        len(data) >= 348 and int.from_bytes(data[:4], "little") == 348 and data[344:348] in (b"n+1\x00", b"ni1\x00")
    ) or (
        len(data) >= 540 and int.from_bytes(data[:4], "little") == 540 and data[4:8] in (b"n+2\x00", b"ni2\x00")
    )  # NIfTI-2 keeps its magic at byte 4 (read as NIfTI-1 is: :func:`core.imaging.nifti.read_nifti`)


def nifti_bytes(head: bytes, limits: StudyLimits) -> int:
    """From a NIfTI header alone: the bytes the file must hold (header and voxels), after checking the volume's
    dimensions and stored size against the limits (before any voxel is read)."""
    return nifti_layout(head, limits)[0]


def nifti_layout(head: bytes, limits: StudyLimits) -> tuple[int, int]:
    """:func:`nifti_bytes`, and the bytes of the volume's smallest section along any axis: a file holding that
    much past its volume holds a section (or more) its header does not declare."""
    try:
        header = _fixed_header(head)
        shape = tuple(int(n) for n in header.get_data_shape())
        itemsize = int(header.get_data_dtype().itemsize)
        offset = int(header.get_data_offset())
    except Exception as error:  # a header nibabel cannot parse
        raise CorruptImage("The NIfTI file is damaged or is not a NIfTI volume.") from error
    if not shape or min(shape) < 1:
        raise CorruptImage("The NIfTI header declares an empty volume.")
    if max(shape[:3]) > limits.max_volume_side:
        raise FileTooLarge(
            f"The volume is {' x '.join(map(str, shape))} voxels; the limit is "
            f"{limits.max_volume_side} along each axis."
        )
    stored = int(np.prod(shape, dtype=np.int64)) * itemsize
    if stored > limits.max_volume_bytes:
        limit = limits.max_volume_bytes / 2**20
        raise FileTooLarge(
            f"The volume holds {stored / 2**20:.0f} MB of voxels; the limit is {limit:.0f} MB (a gzip "
            "bomb?); refused before reading."
        )
    if not 0 <= offset <= MAX_NIFTI_EXTENSIONS + 544:  # extensions between header and voxels: inflated too
        raise CorruptImage(f"The NIfTI header puts the voxels {offset:,} bytes into the file (a gzip bomb?).")
    if (head[344:347], offset < 352) == (b"n+1", True) or (head[4:7], offset < 544) == (b"n+2", True):  # 0: its
        raise CorruptImage(  # own header was read as voxels, every section shifted, without a word
            f"The NIfTI header puts the voxels inside itself (at byte {offset}): the file is damaged."
        )
    sides = (*shape, 1, 1)[:3]
    return offset + stored, min(sides[0] * sides[1], sides[0] * sides[2], sides[1] * sides[2]) * itemsize


def _fixed_header(head: bytes) -> Any:
    """The header's fixed part (348 bytes, NIfTI-2's 540), its extensions left to the reader of the whole file: read
    from the first 540 bytes, an extension past them (AFNI's, a 3 kB comment) refused the file as "damaged"."""
    import nibabel

    two = int.from_bytes(head[:4], "little") == 540
    return (nibabel.Nifti2Header if two else nibabel.Nifti1Header).from_fileobj(
        io.BytesIO(head[: 540 if two else 348]), check=False
    )


def declared_zooms(head: bytes) -> np.ndarray:
    """The voxel sizes as the header stores them (pixdim, one per spatial axis it declares): nibabel's reading
    sets a 0 to 1 and a negative one to its size, saying so on stderr only."""
    header = _fixed_header(head)
    axes = min(3, len(header.get_data_shape()))
    return np.asarray(header["pixdim"][1 : 1 + axes], float)


def nifti_head(data: bytes) -> bytes:
    """The first 540 bytes of a NIfTI file, gzipped or not (the header first: a 1 MB file can unpack to GB)."""
    if data[:2] != b"\x1f\x8b":
        return data[:540]
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            return stream.read(540)
    except (OSError, EOFError) as error:
        raise CorruptImage("The .nii.gz file is damaged.") from error


def check_nifti_budget(files: Sequence[bytes], limits: StudyLimits) -> None:
    """Refuse, from their headers alone, an upload whose NIfTI volumes together would decode past the limits (each
    is checked on its own too): forty small gzip files of zeros once held 3.7 GB before the series count was."""
    if len(files) > limits.max_series:
        raise FileTooLarge(f"The upload holds {len(files)} NIfTI volumes; the limit is {limits.max_series} series.")
    declared = sum(nifti_bytes(nifti_head(data), limits) for data in files)
    if declared > limits.max_study_voxel_bytes:
        raise FileTooLarge(
            f"The NIfTI volumes hold {declared / 2**20:.0f} MB together; the limit is "
            f"{limits.max_study_voxel_bytes / 2**20:.0f} MB per upload (refused before reading them)."
        )
