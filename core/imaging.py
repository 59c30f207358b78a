"""Read an uploaded scan safely: sniff the format by content, validate it, decode it to one grayscale array.

Contract: :func:`read_scan` takes the uploaded bytes and returns a :class:`Scan` whose ``pixels`` are a 2-D
``uint8`` array (0 = black, 255 = white) as a radiologist would see the image, or raises a :class:`ScanError`
subclass naming the reason. Nothing from the file's metadata (names, text chunks, EXIF, DICOM patient fields)
leaves this module apart from the non-identifying acquisition facts listed in :data:`ACQUISITION_FIELDS`.

One decoder per format, used by the app, the CLI and training alike:
- PNG and JPEG through Pillow (bomb check kept on, truncated files rejected, PNG chunk CRCs verified, EXIF
  orientation applied, alpha composited over black, colour converted with ITU-R 601 luma);
- 16-bit and other high-depth rasters: percentile-stretched to 8 bits (0.5th -> 0, 99.5th -> 255);
- DICOM through pydicom: modality LUT, then VOI LUT or window (the first of several), percentile stretch when
  neither is present, MONOCHROME1 inverted.
"""

from __future__ import annotations

import hashlib
import io
import math
import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image, ImageOps

from core.errors import (
    CorruptImage,
    EmptyFile,
    FileTooLarge,
    ImageTooLarge,
    ImageTooSmall,
    MultiFrameImage,
    NoPixelData,
    ScanError,
    UnsupportedDicom,
    UnsupportedFormat,
    WrongModality,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
DICOM_MAGIC_OFFSET = 128

# Signatures of things people drop on an image uploader by mistake, named in the rejection message.
_OTHER_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"\x7fELF", "an executable program"),
    (b"MZ", "an executable program"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
)

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


@dataclass(frozen=True)
class Limits:
    """Size limits enforced before any full decode. ``max_bytes`` matches ``server.maxUploadSize``."""

    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 36_000_000
    min_side: int = 64
    max_aspect_ratio: float = 4.0


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, eq=False)
class Scan:
    """A decoded scan: ``pixels`` is 2-D uint8; ``colourfulness`` is 0 for gray sources, up to 1 for vivid colour."""

    pixels: np.ndarray
    format: str
    sha256: str
    size_bytes: int
    colourfulness: float = 0.0
    frame: int | None = None
    acquisition: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    warnings: tuple[str, ...] = ()

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def sniff_format(data: bytes) -> str:
    """Return ``"png"``, ``"jpeg"`` or ``"dicom"`` from the leading bytes, or raise :class:`UnsupportedFormat`."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SIGNATURE):
        return "jpeg"
    if data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return "dicom"
    for signature, what in _OTHER_SIGNATURES:
        if data.startswith(signature):
            raise UnsupportedFormat(f"This file is {what}, not a PNG, JPEG or DICOM scan.")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        raise UnsupportedFormat("This file is a WebP image, not a PNG, JPEG or DICOM scan.")
    if data[:4] in (b"\x08\x00\x05\x00", b"\x08\x00\x08\x00", b"\x02\x00\x00\x00", b"\x02\x00\x01\x00"):
        raise UnsupportedFormat(
            "This looks like a DICOM file without the standard 128-byte preamble and 'DICM' marker. "
            "Export it from the PACS as a standard DICOM (Part 10) file."
        )
    if data.lstrip()[:1] in (b"<", b"{"):
        raise UnsupportedFormat("This file is a text document (HTML, XML or JSON), not a PNG, JPEG or DICOM scan.")
    raise UnsupportedFormat("This file is not a PNG, JPEG or DICOM scan (its content matches none of them).")


def read_scan(data: bytes, limits: Limits = DEFAULT_LIMITS, frame: int | None = None) -> Scan:
    """Validate and decode ``data``; ``frame`` selects one frame of a multi-frame DICOM (others are refused).

    Raises a :class:`ScanError` subclass with a user-facing message; never returns a partial image.
    """
    if not data:
        raise EmptyFile("The file is empty (0 bytes).")
    if len(data) > limits.max_bytes:
        raise FileTooLarge(
            f"The file is {len(data) / 2**20:.1f} MB; the limit is {limits.max_bytes / 2**20:.0f} MB per scan."
        )
    fmt = sniff_format(data)
    digest = hashlib.sha256(data).hexdigest()
    if fmt == "dicom":
        pixels, acquisition, notes = _read_dicom(data, limits, frame)
        return Scan(
            pixels=pixels,
            format=fmt,
            sha256=digest,
            size_bytes=len(data),
            frame=frame,
            acquisition=MappingProxyType(acquisition),
            warnings=notes,
        )
    if frame not in (None, 0):
        raise MultiFrameImage(f"A {fmt.upper()} file has a single frame; frame {frame} does not exist.")
    pixels, colourfulness = _read_raster(data, fmt, limits)
    return Scan(pixels=pixels, format=fmt, sha256=digest, size_bytes=len(data), colourfulness=colourfulness)


def read_file_bytes(path: str | Path, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """A file's bytes, refused from its size on disk before it is read (OSError when it cannot be read)."""
    size = Path(path).stat().st_size
    if size > limits.max_bytes:
        raise FileTooLarge(
            f"The file is {size / 2**20:.1f} MB; the limit is {limits.max_bytes / 2**20:.0f} MB per scan."
        )
    return Path(path).read_bytes()


def read_scan_file(path: str | Path, limits: Limits = DEFAULT_LIMITS, frame: int | None = None) -> Scan:
    """Like :func:`read_scan` for a file on disk."""
    return read_scan(read_file_bytes(path, limits), limits, frame)


def check_dimensions(width: int, height: int, limits: Limits) -> None:
    """Refuse images too large to decode safely, too small to read, or too elongated to be a brain slice."""
    if width * height > limits.max_pixels:
        raise ImageTooLarge(
            f"The image declares {width} x {height} pixels; the limit is {limits.max_pixels / 1e6:.0f} megapixels."
        )
    if min(width, height) < limits.min_side:
        raise ImageTooSmall(
            f"The image is {width} x {height} pixels; at least {limits.min_side} pixels per side are needed."
        )
    if max(width, height) > limits.max_aspect_ratio * min(width, height):
        raise ImageTooSmall(
            f"The image is {width} x {height} pixels: too elongated to be a brain MRI slice "
            f"(aspect ratio above {limits.max_aspect_ratio:g}:1)."
        )


def stretch_to_uint8(values: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> np.ndarray:
    """Map the ``low_pct`` percentile to 0 and the ``high_pct`` percentile to 255 (clipped); flat input -> 0."""
    values = np.asarray(values, dtype=np.float32)
    low, high = np.percentile(values, (low_pct, high_pct))
    if not math.isfinite(low) or not math.isfinite(high) or high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - low) * (255.0 / (high - low))
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


# --- PNG and JPEG -------------------------------------------------------------------------------------------


def _read_raster(data: bytes, fmt: str, limits: Limits) -> tuple[np.ndarray, float]:
    pillow_format = "PNG" if fmt == "png" else "JPEG"
    what = fmt.upper()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # Image.open reads the header only: dimensions are checked before any pixel is decoded.
            with Image.open(io.BytesIO(data), formats=[pillow_format]) as header:
                check_dimensions(header.size[0], header.size[1], limits)
                frames = getattr(header, "n_frames", 1)
                if frames > 1:
                    raise MultiFrameImage(
                        f"This {what} holds {frames} frames (an animation); upload a single still slice."
                    )
                if fmt == "png":
                    header.verify()  # chunk CRCs and the IEND marker
            with Image.open(io.BytesIO(data), formats=[pillow_format]) as image:
                image.load()  # raises on truncated data (LOAD_TRUNCATED_IMAGES stays False)
                image = ImageOps.exif_transpose(image)
                return _to_gray(image)
    except ScanError:
        raise
    except Image.DecompressionBombError as error:
        size = "far more pixels"
        if fmt == "png" and len(data) >= 24:
            width, height = struct.unpack(">II", data[16:24])  # IHDR, right after the signature
            size = f"{width} x {height} pixels"
        raise ImageTooLarge(
            f"The {what} declares {size}; the limit is {limits.max_pixels / 1e6:.0f} megapixels."
        ) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise CorruptImage(f"The {what} file is damaged or incomplete ({_describe(error)}).") from error


def _describe(error: Exception) -> str:
    text = str(error).lower()
    if "truncated" in text or isinstance(error, EOFError):
        return "the data ends early"
    if "checksum" in text or "crc" in text:
        return "a checksum does not match"
    return "it cannot be decoded"


def _to_gray(image: Image.Image) -> tuple[np.ndarray, float]:
    """One documented path from any Pillow mode to uint8 gray; returns (pixels, colourfulness in 0..1)."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return stretch_to_uint8(np.asarray(image)), 0.0
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("L" if mode == "1" else "RGB")
    elif mode == "PA":
        image = image.convert("RGBA")
    if image.mode in ("LA", "La", "RGBA", "RGBa"):
        # Transparent areas become black, the background of an MRI slice.
        image = image.convert("RGBA")
        black = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, image).convert("RGB")
    if image.mode == "RGB":
        rgb = np.asarray(image)
        sample = rgb[::4, ::4].astype(np.int16)
        colourfulness = float((sample.max(axis=2) - sample.min(axis=2)).mean() / 255.0)
        return np.asarray(image.convert("L")), colourfulness
    if image.mode != "L":
        image = image.convert("L")
    return np.asarray(image), 0.0


# --- DICOM --------------------------------------------------------------------------------------------------


def _read_dicom(data: bytes, limits: Limits, frame: int | None) -> tuple[np.ndarray, dict[str, str], tuple[str, ...]]:
    """pydicom converts header values lazily: a malformed value (an empty window, frames = "x") surfaces as a
    ValueError wherever it is first read, so every read below is one guarded step."""
    try:
        return _read_dicom_checked(data, limits, frame)
    except ScanError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError) as error:
        raise CorruptImage("The DICOM header holds invalid values; it cannot be displayed reliably.") from error


def _read_dicom_checked(
    data: bytes, limits: Limits, frame: int | None
) -> tuple[np.ndarray, dict[str, str], tuple[str, ...]]:
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        header = dcmread(io.BytesIO(data), stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, KeyError, TypeError, EOFError) as error:
        raise CorruptImage("The DICOM file is damaged: its header cannot be read.") from error

    notes = _check_modality(str(header.get("Modality", "") or "").upper())
    rows, columns = header.get("Rows"), header.get("Columns")
    if rows is None or columns is None:
        raise NoPixelData(
            "The DICOM file holds no image (no Rows/Columns): it may be a report or a structured document."
        )
    check_dimensions(int(columns), int(rows), limits)
    frames = int(header.get("NumberOfFrames", 1) or 1)
    if frames > 1 and frame is None:
        raise MultiFrameImage(
            f"This DICOM file holds {frames} frames (a volume or a series); choose one frame (0 to {frames - 1}) "
            "or export the slice you want as a single-frame file."
        )
    if frame is not None and not 0 <= frame < frames:
        raise MultiFrameImage(f"Frame {frame} does not exist: this DICOM file holds {frames} frame(s).")
    samples = int(header.get("SamplesPerPixel", 1) or 1)
    photometric = str(header.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnsupportedDicom(
            f"This DICOM image is in colour ({photometric}); the model reads grayscale MRI (MONOCHROME1/2) only."
        )
    _check_transfer_syntax(header)

    try:
        dataset = dcmread(io.BytesIO(data))
    except (InvalidDicomError, OSError, ValueError, KeyError, TypeError, EOFError) as error:
        raise CorruptImage("The DICOM file is damaged: its pixel data cannot be read.") from error
    if "PixelData" not in dataset:
        raise NoPixelData("The DICOM file has an image header but no pixel data.")
    pixels = _decode_dicom_pixels(dataset, frame if frames > 1 else None)
    return _dicom_display(pixels, dataset), _acquisition_facts(dataset), notes


def _check_modality(modality: str) -> tuple[str, ...]:
    if modality in _MR_MODALITIES:
        return ()
    if modality in _TOLERATED_MODALITIES:
        return (f"The DICOM modality is '{modality or 'missing'}', not MR: check that this is an MRI slice.",)
    raise WrongModality(f"This DICOM file is modality {modality}; the model was trained on brain MRI (MR) only.")


def _check_transfer_syntax(header: object) -> None:
    from pydicom.pixels import get_decoder

    meta = getattr(header, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None)
    if uid is None or not uid.is_compressed:
        return
    try:
        available = get_decoder(uid).is_available
    except (NotImplementedError, ValueError, KeyError):
        available = False
    if not available:
        raise UnsupportedDicom(
            f"This DICOM file is compressed with '{uid.name}', which this installation cannot decode. "
            "Export it uncompressed (Explicit VR Little Endian)."
        )


def _decode_dicom_pixels(dataset: object, frame: int | None) -> np.ndarray:
    from pydicom.pixels import pixel_array

    try:
        pixels = pixel_array(dataset, index=frame) if frame is not None else dataset.pixel_array
    except (ValueError, RuntimeError, NotImplementedError, AttributeError, KeyError, TypeError) as error:
        text = str(error).lower()
        if "length" in text or "less than" in text or "expected" in text or "truncat" in text:
            raise CorruptImage("The DICOM pixel data is truncated: the file ends before the image does.") from error
        raise CorruptImage("The DICOM pixel data cannot be decoded.") from error
    if pixels.ndim != 2:
        raise UnsupportedDicom(f"Unexpected DICOM pixel layout {pixels.shape}; a single grayscale slice is needed.")
    return pixels


def _dicom_display(stored: np.ndarray, dataset: object) -> np.ndarray:
    """Stored values -> displayed uint8: modality LUT, VOI LUT or window (first of several), else stretch."""
    from pydicom.pixels import apply_modality_lut, apply_voi

    values = apply_modality_lut(stored, dataset).astype(np.float64)
    voi_sequence = dataset.get("VOILUTSequence")
    if voi_sequence:
        descriptor = voi_sequence[0].LUTDescriptor
        out_max = 2 ** int(descriptor[2]) - 1
        shown = apply_voi(values, dataset, index=0).astype(np.float64) * (255.0 / out_max)
        display = np.clip(shown + 0.5, 0, 255).astype(np.uint8)
    elif "WindowCenter" in dataset and "WindowWidth" in dataset:
        display = _apply_window(values, dataset)
    else:
        display = stretch_to_uint8(values)
    if str(dataset.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        display = 255 - display
    return display


def _apply_window(values: np.ndarray, dataset: object) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 window (LINEAR, LINEAR_EXACT or SIGMOID) straight to the 0..255 output range."""
    center_value, width_value = dataset.WindowCenter, dataset.WindowWidth
    center = float(center_value[0]) if dataset["WindowCenter"].VM > 1 else float(center_value)
    width = float(width_value[0]) if dataset["WindowWidth"].VM > 1 else float(width_value)
    function = str(dataset.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    if width <= 0 or (function == "LINEAR" and width < 1):
        return stretch_to_uint8(values)
    if function == "SIGMOID":
        shown = 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    elif function == "LINEAR_EXACT":
        shown = ((values - center) / width + 0.5) * 255.0
    else:
        shown = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    return np.clip(shown + 0.5, 0, 255).astype(np.uint8)


def _acquisition_facts(dataset: object) -> dict[str, str]:
    facts: dict[str, str] = {}
    for name in ACQUISITION_FIELDS:
        value = dataset.get(name)
        if value not in (None, ""):
            facts[name] = str(value) if not isinstance(value, (list, tuple)) else "\\".join(str(v) for v in value)
    plane = _plane(dataset.get("ImageOrientationPatient"))
    if plane:
        facts["Plane"] = plane
    meta = getattr(dataset, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None)
    if uid is not None:
        facts["TransferSyntax"] = str(uid.name)
    return facts


def _plane(orientation: object) -> str | None:
    """Axial, coronal or sagittal from ImageOrientationPatient (the normal's dominant axis)."""
    try:
        row = np.array([float(v) for v in orientation[:3]])  # type: ignore[index]
        col = np.array([float(v) for v in orientation[3:6]])  # type: ignore[index]
    except (TypeError, ValueError, IndexError):
        return None
    normal = np.abs(np.cross(row, col))
    if not np.isfinite(normal).all() or normal.max() == 0:
        return None
    return ("sagittal", "coronal", "axial")[int(np.argmax(normal))]
