"""Read an uploaded scan safely: sniff the format by content, validate it, decode it to one grayscale array.

Contract: :func:`read_scan` takes the uploaded bytes and returns a :class:`Scan` whose ``pixels`` are a 2-D
``uint8`` array (0 = black, 255 = white) as a radiologist would see the image, or raises a :class:`ScanError`
subclass naming the reason. Nothing from the file's metadata (names, text chunks, EXIF, DICOM patient fields)
leaves this package apart from the non-identifying acquisition facts listed in
:data:`core.imaging.dicom.ACQUISITION_FIELDS`.

One decoder per format, used by the app, the CLI and training alike: :mod:`core.imaging.raster` (PNG, JPEG) and
:mod:`core.imaging.dicom`; the memory budget of one upload is :mod:`core.imaging.limits`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np

from core.errors import EmptyFile, FileTooLarge, MultiFrameImage, UnsupportedFormat
from core.imaging.dicom import count_frames, read_dicom
from core.imaging.geometry import DisplayTransform, orientation_letters
from core.imaging.limits import DEFAULT_LIMITS, Limits
from core.imaging.nifti_header import is_nifti
from core.imaging.raster import read_raster

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
DICOM_MAGIC_OFFSET = 128

# Signatures of things people drop on an image uploader by mistake, named in the rejection message.
VOLUMES = "volumes are read on the Study page, or by python -m core study"
STUDIES = "studies are read on the Study page, or by python -m core study"
_OTHER_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", f"a ZIP archive or an Office document (a zip of DICOM series? {STUDIES})"),
    (b"PK\x05\x06", "an empty ZIP archive"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"\x7fELF", "an executable program"),
    (b"MZ", "an executable program"),
    (b"\x1f\x8b", f"a gzip archive (a .nii.gz volume? {VOLUMES})"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
)


@dataclass(frozen=True, eq=False)
class Scan:
    """A decoded scan: ``pixels`` is 2-D uint8; ``colourfulness`` is 0 for gray sources, up to 1 for vivid colour.

    ``frame`` is the frame read from a multi-frame file (None for a single-frame one); ``frames`` how many the
    file holds. ``pixels`` may be smaller than the file declares when the file was over the working side (a
    warning says so).
    """

    pixels: np.ndarray
    format: str
    sha256: str
    size_bytes: int
    colourfulness: float = 0.0
    frame: int | None = None
    frames: int = 1
    acquisition: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    warnings: tuple[str, ...] = ()
    orientation: tuple[float, ...] | None = None  # row and column directions as shown (a DICOM file's; else None)
    # how the file's stored pixels were turned to be shown (a DICOM file's; the identity else)
    display: DisplayTransform = field(default_factory=DisplayTransform)

    @property
    def letters(self) -> dict[str, str]:
        """The patient directions at the shown image's edges ({} when the file does not say: PNG, JPEG)."""
        return orientation_letters(self.orientation)

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def is_dicom(data: bytes) -> bool:
    """A DICOM Part 10 file: ``DICM`` after the 128-byte preamble (the one test of it in the code)."""
    return data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM"


NEITHER = (
    "A file is neither DICOM nor NIfTI (a read-me, a picture?): remove it from the files chosen, or upload the folder "
    "as a zip, whose other files are left out. PNG and JPEG slices go on the Scan page."
)
EMPTY_PART = "A file is empty (0 bytes): an export or a copy stopped short? Remove it from the files chosen."
HEADERLESS_DICOM = (
    "This looks like a DICOM file without the standard 128-byte preamble and 'DICM' marker. "
    "Export it from the PACS as a standard DICOM (Part 10) file."
)


_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)


def is_headerless_dicom(data: bytes) -> bool:
    """A DICOM data set written without the Part 10 preamble: its 'DICM' marker first, or its first element a
    group 0002 or 0008 tag followed by a value representation (explicit VR) or a short length (implicit VR). Four
    leading tags only were known: a data set opening on its SOP Class UID was left out of a folder unsaid."""
    if data[:4] == b"DICM":
        return True
    if len(data) < 8 or data[:2] not in (b"\x02\x00", b"\x08\x00"):
        return False
    return data[4:6] in _VRS or int.from_bytes(data[4:8], "little") < 1024


def sniff_format(data: bytes) -> str:
    """Return ``"png"``, ``"jpeg"`` or ``"dicom"`` from the leading bytes, or raise :class:`UnsupportedFormat`."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SIGNATURE):
        return "jpeg"
    if is_dicom(data):
        return "dicom"
    for signature, what in _OTHER_SIGNATURES:
        if data.startswith(signature):
            raise UnsupportedFormat(f"This file is {what}, not a PNG, JPEG or DICOM scan.")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        raise UnsupportedFormat("This file is a WebP image, not a PNG, JPEG or DICOM scan.")
    if is_nifti(data):
        raise UnsupportedFormat(f"This file is a NIfTI volume, not a single scan: {VOLUMES}.")
    if is_headerless_dicom(data):
        raise UnsupportedFormat(HEADERLESS_DICOM)
    if data.lstrip()[:1] in (b"<", b"{"):
        raise UnsupportedFormat("This file is a text document (HTML, XML or JSON), not a PNG, JPEG or DICOM scan.")
    raise UnsupportedFormat("This file is not a PNG, JPEG or DICOM scan (its content matches none of them).")


def _check_size(size: int, limits: Limits, read_to_limit: bool = False) -> None:
    """``read_to_limit``: ``size`` is what was read, one byte past the limit at most (a pipe, a device: "The file
    is 50.0 MB; the limit is 50 MB" was said of /dev/zero)."""
    if size > limits.max_bytes:
        said = "more than the limit" if read_to_limit else f"{size / 2**20:.1f} MB"
        raise FileTooLarge(f"The file is {said}; the limit is {limits.max_bytes / 2**20:.0f} MB per scan.")


def frames_in(data: bytes, limits: Limits = DEFAULT_LIMITS) -> int:
    """How many frames the file holds (1 for PNG, JPEG and single-frame DICOM), from its header alone."""
    if not data:
        raise EmptyFile("The file is empty (0 bytes).")
    _check_size(len(data), limits)
    return count_frames(data) if sniff_format(data) == "dicom" else 1


def read_scan(data: bytes, limits: Limits = DEFAULT_LIMITS, frame: int | None = None) -> Scan:
    """Validate and decode ``data``; ``frame`` selects one frame of a multi-frame DICOM (others are refused).

    Raises a :class:`ScanError` subclass with a user-facing message; never returns a partial image.
    """
    if not data:
        raise EmptyFile("The file is empty (0 bytes).")
    _check_size(len(data), limits)
    fmt = sniff_format(data)
    digest = hashlib.sha256(data).hexdigest()
    if fmt == "dicom":
        frames = count_frames(data)
        pixels, acquisition, notes, orientation, display = read_dicom(data, limits, frame)
        return Scan(
            pixels=pixels,
            format=fmt,
            sha256=digest,
            size_bytes=len(data),
            frame=frame if frames > 1 else None,
            frames=frames,
            acquisition=MappingProxyType(acquisition),
            warnings=notes,
            orientation=orientation,
            display=display,
        )
    if frame not in (None, 0):
        raise MultiFrameImage(f"A {fmt.upper()} file has a single frame; frame {frame} does not exist.", frames=1)
    pixels, colourfulness, (width, height) = read_raster(data, fmt, limits)
    notes: tuple[str, ...] = ()
    if pixels.shape != (height, width) and pixels.shape != (width, height):
        notes = (f"The image was reduced from {width} x {height} to {pixels.shape[1]} x {pixels.shape[0]} pixels.",)
    return Scan(
        pixels=pixels, format=fmt, sha256=digest, size_bytes=len(data), colourfulness=colourfulness, warnings=notes
    )


def read_file_bytes(path: str | Path, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """A file's bytes, refused from its size on disk before it is read (OSError when it cannot be read)."""
    _check_size(Path(path).stat().st_size, limits)
    with open(path, "rb") as handle:  # at most one byte over the limit: a pipe or a growing file reports no size
        data = handle.read(limits.max_bytes + 1)
    _check_size(len(data), limits, read_to_limit=True)
    return data


def read_scan_file(path: str | Path, limits: Limits = DEFAULT_LIMITS, frame: int | None = None) -> Scan:
    """Like :func:`read_scan` for a file on disk."""
    return read_scan(read_file_bytes(path, limits), limits, frame)
