"""DICOM through pydicom: header first, then one frame, then the display transform a radiologist's viewer applies.

- The header is read with ``stop_before_pixels`` and checked (size, frames, colour, modality, transfer syntax)
  before any pixel is decoded; never ``force=True``.
- Compressed syntaxes are decoded by the pylibjpeg plugins (JPEG, JPEG-LS, JPEG 2000, RLE) or refused by name.
- Display (PS3.3 C.11): :mod:`core.imaging.dicom_display`.
- Only non-identifying acquisition facts (:data:`ACQUISITION_FIELDS`) leave this module.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
import zlib
from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np

from core.errors import (
    BurnedInText,
    CorruptImage,
    MultiFrameImage,
    NoPixelData,
    ScanError,
    SeveralImages,
    UnsupportedDicom,
    WrongModality,
)
from core.imaging import geometry
from core.imaging.body_part import check_body_part, quoted
from core.imaging.codestream import check_codestream
from core.imaging.dicom_display import display, frame_view, window_note
from core.imaging.limits import Limits, check_decoded_size, check_dimensions

# DICOM modalities the model may see. Secondary captures and "other" are allowed with a warning because MR
# slices are often exported that way; any other declared modality is refused.
_MR_MODALITIES = {"MR"}
_TOLERATED_MODALITIES = {"OT", "SC", ""}

# Non-identifying acquisition facts kept from a DICOM header (shown in the app, never stored as free text).
ACQUISITION_FIELDS: tuple[str, ...] = (
    "Modality",
    "MagneticFieldStrength",
    "ScanningSequence",
    "SequenceVariant",
    "MRAcquisitionType",
    "RepetitionTime",
    "EchoTime",
    "SliceThickness",
    "PixelSpacing",
    "PhotometricInterpretation",
    "BitsStored",
)

# The working copy of one frame is float64 after the modality LUT.
_WORKING_BYTES_PER_PIXEL = 8

# what a damaged header raises while it is parsed (a file cut inside its header: struct.error, pydicom's
# BytesLengthException; an unknown value representation: NotImplementedError) besides the usual: each once reached
# the user as "Unexpected error; try again", which no retry can fix
_HEADER_ERRORS = (OSError, ValueError, KeyError, TypeError, EOFError, zlib.error, struct.error, NotImplementedError)
_VALUE_ERRORS = (
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    IndexError,
    ArithmeticError,
    zlib.error,
    struct.error,
    NotImplementedError,
)


@cache
def invalid_values() -> tuple[type[BaseException], ...]:
    """What pydicom raises where it first converts a malformed or cut value (pydicom is imported when a DICOM file
    is first read, never at import: it costs a third of a second)."""
    from pydicom.errors import BytesLengthException

    return (*_VALUE_ERRORS, BytesLengthException)


@cache
def _damaged_header() -> tuple[type[BaseException], ...]:
    from pydicom.errors import BytesLengthException, InvalidDicomError

    return (InvalidDicomError, BytesLengthException, *_HEADER_ERRORS)


INVALID_HEADER = "The DICOM header holds invalid values; it cannot be displayed reliably."
DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian: pydicom inflates it whole, unbounded


def read_dicom(
    data: bytes, limits: Limits, frame: int | None
) -> tuple[np.ndarray, dict[str, str], tuple[str, ...], tuple[float, ...] | None, geometry.DisplayTransform]:
    """(display pixels in the radiological view of their plane, acquisition facts, warnings, the row and column
    directions as shown, or None when the file gives none, and the transform that turned the stored pixels so) of
    one frame of a DICOM file.

    pydicom converts header values lazily: a malformed value (an empty window, frames = "x") surfaces as a
    ValueError wherever it is first read, so every read below is one guarded step.
    """
    try:
        return _read_checked(data, limits, frame)
    except ScanError:
        raise
    except invalid_values() as error:
        raise CorruptImage(INVALID_HEADER) from error


def count_frames(data: bytes) -> int:
    """How many frames a DICOM file holds, from its header alone (1 for a single slice)."""
    return frames_of(header_of(data))


def frames_of(header: Any) -> int:
    """A header's NumberOfFrames (1 when absent), or :class:`CorruptImage` for one that is not a count (a negative
    one lowered an upload's pixel budget and its file then gave no section, unsaid)."""
    try:
        frames = int(header.get("NumberOfFrames", 1) or 1)
    except invalid_values() as error:
        raise CorruptImage(INVALID_HEADER) from error
    if frames < 1:
        raise CorruptImage(INVALID_HEADER)
    return frames


def quiet_pydicom() -> None:
    """pydicom's default reading mode quotes a file's invalid values (a date of birth, a UID) in a warning and a log
    line, which reach the server's log: values are read without that (what the app needs it checks itself), and
    its other warnings are not shown and its logger says errors only (an unknown character set's name, which is
    the file's text, reached the log and stderr for every file read). Called before any DICOM is parsed (here, and
    where the PACS's files are); set once, process-wide, as highdicom is (``core.pacs.objects.quiet_highdicom``)."""
    import logging
    import warnings

    from pydicom import config

    config.settings.reading_validation_mode = config.IGNORE
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?")
    logging.getLogger("pydicom").setLevel(logging.ERROR)


def header_of(data: bytes) -> Any:
    """A DICOM file's header, read without its pixel data."""
    from pydicom import dcmread

    quiet_pydicom()
    _refuse_deflated(data)
    try:
        return dcmread(io.BytesIO(data), stop_before_pixels=True)
    except _damaged_header() as error:
        raise CorruptImage("The DICOM file is damaged: its header cannot be read.") from error


def is_non_image(header: Any) -> bool:
    """A DICOM object that is no image: no Rows/Columns and a class whose name is not an image's (a DICOMDIR index,
    a structured report, a presentation state, a key-object selection: what a CD or PACS export holds beside its
    images). An image's class without its size is a cut file, not this; so is a file with no class at all (cut right
    after its "DICM": it was called a report)."""
    meta = getattr(header, "file_meta", None)
    sop_class = header.get("SOPClassUID") or getattr(meta, "MediaStorageSOPClassUID", None)
    sized = header.get("Rows") is not None and header.get("Columns") is not None
    return not sized and sop_class is not None and "Image" not in str(getattr(sop_class, "name", ""))


def _refuse_deflated(data: bytes) -> None:
    """Refuse the deflated transfer syntax from the file meta alone: pydicom inflates the whole dataset before
    reading any element, so a few KB could ask for gigabytes before the header's sizes are checked. The meta is
    read by pydicom's own reader, as :func:`pydicom.dcmread` then reads it: a parser of our own (explicit VR, first
    copy) let through a meta written in implicit VR, and one naming the syntax twice (pydicom keeps the last)."""
    if transfer_syntax_of(data) == DEFLATED:
        raise UnsupportedDicom(
            "This DICOM file uses the Deflated transfer syntax, which is not accepted; export it uncompressed or "
            "with a JPEG / JPEG 2000 / RLE transfer syntax."
        )


def transfer_syntax_of(data: bytes) -> str | None:
    """The TransferSyntaxUID of a DICOM file's meta (group 2) as pydicom reads it before the dataset (None without
    one, or when the meta cannot be read: the header reader then says what is wrong)."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    stream = io.BytesIO(data)
    try:
        with warnings.catch_warnings():  # "expected explicit VR": said by the header reader, if at all
            warnings.simplefilter("ignore")
            read_preamble(stream, force=False)  # as dcmread reads it (never forced)
            syntax = _read_file_meta_info(stream).get("TransferSyntaxUID")
    except Exception:  # pydicom raises many types for a damaged meta; dcmread says it was damaged
        return None
    return None if syntax is None else str(syntax)


def check_bit_layout(header: Any) -> None:
    """Refuse a bit layout the standard forbids (PS3.5 8.1.1: HighBit is BitsStored - 1, within BitsAllocated): a
    12-bit image stored at the top of 16 bits was read from its low 12 bits, another picture ("no tumour")."""
    try:
        allocated, stored = (int(header.get(k) or 0) for k in ("BitsAllocated", "BitsStored"))
        high = None if header.get("HighBit") in (None, "") else int(header.get("HighBit"))  # 0 is a value
    except invalid_values() as error:
        raise CorruptImage(INVALID_HEADER) from error
    if stored and allocated and (stored > allocated or (high is not None and high != stored - 1)):
        raise UnsupportedDicom(
            f"This DICOM image's bit layout is not one the standard allows (bits allocated {allocated}, stored "
            f"{stored}, high bit {high}): its pixels would be misread. Export it again from the scanner or PACS."
        )
    representation = header.get("PixelRepresentation")
    # (64: a double-float parametric map, refused by name further on)
    if allocated not in (1, 8, 16, 32, 64) or (representation not in (None, "") and representation not in (0, 1)):
        raise UnsupportedDicom(  # "cannot be decoded" was all a reader was told
            f"This DICOM image's bits allocated ({allocated}) or pixel representation ({representation}) is not "
            "one the standard allows (8, 16 or 32 bits; 0 unsigned or 1 signed): its pixels cannot be read."
        )


def check_pixel_length(dataset: Any, frames: int) -> None:
    """Refuse uncompressed pixel data longer, by a row or more, than the header's frames of Rows x Columns: the
    decoder read what the header declares and left the rest unsaid (20 frames stored, 10 declared: half a volume
    judged as the whole; 256 rows stored, 128 declared)."""
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or not syntax.is_transfer_syntax or syntax.is_encapsulated:
        return
    row_bits = int(dataset.Columns) * int(dataset.get("SamplesPerPixel", 1) or 1) * int(dataset.BitsAllocated)
    declared = math.ceil(int(dataset.Rows) * frames * row_bits / 8)
    if len(dataset.PixelData) >= declared + math.ceil(row_bits / 8):
        raise CorruptImage(
            f"The DICOM pixel data holds more than its header declares ({frames} frame(s) of {dataset.Columns} x "
            f"{dataset.Rows}): its size or frame count is wrong, so the image cannot be laid out."
        )


def checked_dataset(data: bytes, limits: Limits, header: Any = None) -> tuple[Any, tuple[str, ...]]:
    """The one DICOM reader: the header first (stop before pixels: modality, body part, dimensions and decoded size
    against the budget, grayscale, a decodable transfer syntax), then the whole dataset; with the modality notes.
    Single scans and series both read through it."""
    from pydicom import dcmread

    quiet_pydicom()
    header = header if header is not None else header_of(data)  # parsed once when the caller already has it
    notes = check_modality(str(header.get("Modality", "") or "").upper())
    check_body_part(header)
    if _says_burnt_in(header.get("BurnedInAnnotation")):  # its pixels would be kept as the de-identified copy
        raise BurnedInText(
            "This DICOM file says its pixels carry burnt-in text (patient details): it is not analysed or kept. "
            "Use a copy without it (most scanners can export one)."
        )
    if "MOSAIC" in image_type(header):
        raise SeveralImages(  # a Siemens mosaic: the crop took one of its tiles, and the others went unread
            "This DICOM image is a mosaic (Image Type MOSAIC): the sections of a series tiled in one image, which "
            "would be read as one head. Export the series with one image per section."
        )
    rows, columns = header.get("Rows"), header.get("Columns")
    if rows is None or columns is None:
        if not is_non_image(header) and b"\xe0\x7f\x10\x00" in data[132:]:  # its pixels are there: not cut short
            raise CorruptImage(
                "The DICOM header lacks the image's size (Rows or Columns): its pixels cannot be laid out."
            )
        if not is_non_image(header):  # an image's class: the file is cut
            raise CorruptImage("The DICOM file is damaged: it ends inside its header, before the image's size.")
        raise NoPixelData(
            "The DICOM file holds no image (no Rows/Columns): it may be a report or a structured document."
        )
    check_dimensions(int(columns), int(rows), limits)
    check_decoded_size(int(columns), int(rows), _WORKING_BYTES_PER_PIXEL, limits)
    samples = int(header.get("SamplesPerPixel", 1) or 1)
    photometric = str(header.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if not photometric.strip():  # empty: no colour to name ("in colour (1 samples per pixel)" was said)
        raise CorruptImage("The DICOM header leaves its Photometric Interpretation empty; it cannot be displayed.")
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        kind = quoted(photometric) if samples == 1 or photometric not in ("MONOCHROME1", "MONOCHROME2") else ""
        raise UnsupportedDicom(
            f"This DICOM image is in colour ({kind or f'{samples} samples per pixel'}); the model reads grayscale "
            "MRI (MONOCHROME1/2) only."
        )
    check_bit_layout(header)
    check_transfer_syntax(header)
    try:
        dataset = dcmread(io.BytesIO(data))
    except _damaged_header() as error:
        raise CorruptImage("The DICOM file is damaged: its pixel data cannot be read.") from error
    if "PhotometricInterpretation" in dataset and dataset.PhotometricInterpretation != photometric:
        dataset.PhotometricInterpretation = photometric  # "monochrome2": the decoder knows upper case only (it was
        # "cannot be decoded")
    if "PixelData" not in dataset:
        if "FloatPixelData" in dataset or "DoubleFloatPixelData" in dataset:
            raise UnsupportedDicom("This DICOM file holds floating-point pixels (a parametric map), not an MR image.")
        if b"\xe0\x7f\x10\x00" in data[132:]:
            # its pixel data's tag is there: pydicom drops an element the file ends inside (a compressed image cut
            # short read as "no pixel data", where an uncompressed one cut short is "truncated")
            raise CorruptImage("The DICOM pixel data is truncated: the file ends before the image does.")
        raise NoPixelData("The DICOM file has an image header but no pixel data.")
    check_pixel_length(dataset, frames_of(header))
    return dataset, notes


def _read_checked(
    data: bytes, limits: Limits, frame: int | None
) -> tuple[np.ndarray, dict[str, str], tuple[str, ...], tuple[float, ...] | None, geometry.DisplayTransform]:
    header = header_of(data)
    frames = frames_of(header)
    if frames > 1 and frame is None:
        raise MultiFrameImage(
            f"This DICOM file holds {frames} frames (a volume or a series); choose one frame (0 to {frames - 1}) "
            "or export the slice you want as a single-frame file.",
            frames=frames,
        )
    if frame is not None and not 0 <= frame < frames:
        raise MultiFrameImage(f"Frame {frame} does not exist: this DICOM file holds {frames} frame(s).", frames=frames)
    dataset, notes = checked_dataset(data, limits, header)
    pixels = decode_frame(dataset, frame if frames > 1 else None)
    # shown in the radiological view of its plane, as the Study page shows the same file in its series (a file
    # stored with the patient's right on the right was shown so on one page and mirrored on the other)
    orientation = geometry.frame_orientation(dataset, frame if frames > 1 else None)
    transform = geometry.display_transform(orientation)
    shown = geometry.transformed_orientation(orientation, transform) if orientation else None
    view = frame_view(dataset, frame if frames > 1 else 0)
    shown_pixels = display(pixels, view)
    notes = (*notes, said) if (said := window_note(view)) else notes
    return (
        geometry.apply_transform(shown_pixels, transform),
        acquisition_facts(view, orientation),
        notes,
        shown,
        transform,
    )


def image_type(header: Any) -> list[str]:
    """ImageType's values, upper case: one value written as text is one value (iterated, "LOCALIZER" was letters)."""
    value = header.get("ImageType") or []
    return [str(v).strip().upper() for v in ([value] if isinstance(value, str) else value)]


def _says_burnt_in(value: Any) -> bool:
    """Whether a BurnedInAnnotation value says YES (any case, padded either side, any of several values)."""
    values = [value] if value is None or isinstance(value, str | bytes) else list(value)  # a MultiValue too
    return any(str(v or "").strip().upper() == "YES" for v in values)


def check_modality(modality: str) -> tuple[str, ...]:
    """Warnings for a tolerated modality; refuses one the model was not trained on."""
    if modality in _MR_MODALITIES:
        return ()
    if modality in _TOLERATED_MODALITIES:
        return (f"The DICOM modality is '{quoted(modality) or 'missing'}', not MR: check that this is an MRI slice.",)
    raise WrongModality(
        f"This DICOM file is modality {quoted(modality)}; the model was trained on brain MRI (MR) only."
    )


def check_transfer_syntax(header: Any) -> None:
    """Refuse, by name, a compressed transfer syntax that no installed decoder handles."""
    from pydicom.pixels import get_decoder

    meta = getattr(header, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None)
    if uid is None:
        return
    try:
        compressed = uid.is_compressed
    except ValueError:  # a transfer syntax pydicom does not know (JPEG XL, a private one): named, not "invalid"
        raise UnsupportedDicom(
            f"This DICOM file uses a transfer syntax this installation does not know ({quoted(str(uid))}). "
            "Export it uncompressed (Explicit VR Little Endian)."
        ) from None
    if not compressed:
        return
    try:
        available = get_decoder(uid).is_available
    except (NotImplementedError, ValueError, KeyError):
        available = False
    if not available:
        raise UnsupportedDicom(
            f"This DICOM file is compressed with '{quoted(uid.name)}', which this installation cannot decode. "
            "Export it uncompressed (Explicit VR Little Endian)."
        )


def decode_frame(dataset: Any, frame: int | None) -> np.ndarray:
    """The stored values of one frame (``frame`` None: the only one) as a 2-D array, its compressed codestream's
    declared size checked first."""
    from pydicom.pixels import pixel_array

    check_codestream(dataset, frame, frames_of(dataset))
    try:
        pixels = pixel_array(dataset, index=frame) if frame is not None else dataset.pixel_array
    except (ValueError, RuntimeError, NotImplementedError, AttributeError, KeyError, TypeError) as error:
        text = str(error).lower()
        if "length" in text or "less than" in text or "expected" in text or "truncat" in text:
            raise CorruptImage("The DICOM pixel data is truncated: the file ends before the image does.") from error
        raise CorruptImage("The DICOM pixel data cannot be decoded.") from error
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as error:  # a decoder written in Rust panics on a damaged codestream (an RLE segment
        # that runs past the frame): pyo3's PanicException is no Exception, and it ended a whole batch
        raise CorruptImage("The DICOM pixel data is damaged: its decoder failed on it.") from error
    if pixels.ndim != 2:
        raise UnsupportedDicom(f"Unexpected DICOM pixel layout {pixels.shape}; a single grayscale slice is needed.")
    return pixels


def acquisition_facts(dataset: Any, orientation: Sequence[float] | None) -> dict[str, str]:
    """The header's facts the page lists, with the plane of ``orientation`` (the one the pixels are shown by: the
    raw ImageOrientationPatient named "axial" a file whose unusable orientation gave no letters)."""
    facts: dict[str, str] = {}
    for name in ACQUISITION_FIELDS:
        value = dataset.get(name)
        if value not in (None, ""):
            several = isinstance(value, Sequence) and not isinstance(value, str | bytes)  # pydicom's MultiValue too
            facts[name] = "\\".join(str(v) for v in value) if several else str(value)
    if plane := geometry.plane_of(orientation):
        facts["Plane"] = plane
    meta = getattr(dataset, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None)
    if uid is not None:
        facts["TransferSyntax"] = str(uid.name)
    return facts
