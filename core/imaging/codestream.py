"""A compressed DICOM frame's codestream checked before it is decoded: the size it declares (a JPEG or JPEG-LS frame
header, a JPEG 2000 SIZ marker) must be the header's Rows x Columns, which the budget was checked against; and a
JPEG's, a .jpg's too, must not be cut short (decoders fill what is missing without an error)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from core.errors import CorruptImage

_JPEG_2000 = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
              "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}  # fmt: skip
_JPEG = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
         "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}  # fmt: skip  # baseline, extended, lossless, JPEG-LS


def check_codestream(dataset: Any, frame: int | None, frames: int) -> None:
    """Refuse a compressed frame whose codestream declares another size than the header's Rows x Columns before it is
    decoded: the decoder allocates what the codestream says (a 47 KB JPEG-LS file declaring 16000 x 16000 took 1.5
    GB before failing), and only the header's size was checked against the budget."""
    syntax = str(getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", ""))
    if syntax not in _JPEG_2000 | _JPEG:
        return
    from pydicom.encaps import get_frame

    try:
        data = get_frame(dataset.PixelData, frame or 0, number_of_frames=frames)
        if syntax in _JPEG_2000:
            import openjpeg

            found = openjpeg.get_parameters(data)
            size = (int(found["rows"]), int(found["columns"]))
        else:
            size = _jpeg_frame_size(data)
    except (ValueError, RuntimeError, KeyError, TypeError, IndexError) as error:
        raise CorruptImage("The DICOM pixel data cannot be decoded.") from error
    if size != (int(dataset.Rows), int(dataset.Columns)):
        raise CorruptImage(
            f"The DICOM file's compressed image says it is {size[1]} x {size[0]} pixels where its header says "
            f"{dataset.Columns} x {dataset.Rows}: refused before decoding it."
        )
    if syntax in _JPEG and (reason := cut_short(data) or _decoded_cut_short(data)):  # as a .jpg is
        raise CorruptImage(f"The DICOM file's compressed image is cut short: {reason}")


def cut_short(data: bytes) -> str | None:
    """Why a JPEG codestream is cut short, as its structure tells, or None: progressive scans missing, or restart
    intervals missing (both decode without an error, the missing part blurred or grey). A marker segment shorter
    than its fields (a byte of the image data damaged into a marker) is :class:`CorruptImage`: it was an internal
    error for a .jpg, and "invalid header values" for a DICOM file."""
    try:
        complete, counted = progressive_complete(data), restarts(data)
    except IndexError as error:
        raise CorruptImage("The JPEG image data are damaged: a marker segment is shorter than its fields.") from error
    if not complete:
        return "its progressive scans end before the image is complete."
    if counted is not None and counted[1] < counted[0]:
        return f"it holds {counted[1] + 1} of its {counted[0] + 1} restart intervals (the rest would read as grey)."
    return None


GREY_FILL = "its last rows are the decoder's grey fill, not the image."


def _decoded_cut_short(data: bytes) -> str | None:
    """Why an 8-bit baseline or extended JPEG frame of a DICOM file is cut short, as Pillow decoding it tells (the
    checks a .jpg passes), or None. The DICOM decoder reads a frame cut anywhere without an error, its missing rows
    a repeated pattern: 30 % of a slice so missing was called glioma at 0.99. A 12-bit or lossless frame, which
    Pillow does not read, is left to the structural checks."""
    marker, frame = next(((m, segment) for m, segment in jpeg_segments(data) if m in SOF), (None, b""))
    if marker not in (0xC0, 0xC1, 0xC2) or frame[:1] != b"\x08":  # Pillow's: 8-bit DCT, sequential or progressive
        return None
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:
            image.load()  # a file without its end: "image file is truncated" (Pillow fills nothing unasked)
            filled = (region := grey_filled(image)) is not None and fill_of_a_cut(data, image.size, 1 << 62, region)
    except (OSError, SyntaxError, ValueError, EOFError):
        return "the file ends before its image does."
    return GREY_FILL if filled else None


_SOF_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}


def progressive_complete(data: bytes) -> bool:
    """Whether a progressive JPEG's scans, as their headers say, refine every component's DC and AC bands (1-63) to
    their last bit: a file cut short and closed with an end marker decodes without an error, blurred (a cut slice
    was called meningioma at 0.9997). A scan cut inside counts as there: its header is. True for a baseline JPEG."""
    components, progressive, done = [], False, {}
    for marker, segment in jpeg_segments(data):
        if marker in _SOF_PROGRESSIVE | {0xC0, 0xC1}:
            progressive = marker in _SOF_PROGRESSIVE
            components = [segment[6 + 3 * k] for k in range(segment[5])] if len(segment) > 5 else []
            done = {c: set() for c in components}
        elif marker == SOS and progressive and segment:
            count = segment[0]
            ids = [segment[1 + 2 * k] for k in range(count)]
            start, end, approx = segment[1 + 2 * count], segment[2 + 2 * count], segment[3 + 2 * count]
            if approx & 0x0F == 0:  # the band's last bit
                for c in ids:
                    done.setdefault(c, set()).update(range(start, end + 1))
    return not progressive or all(done.get(c, set()) >= set(range(64)) for c in components)


Region = tuple[slice, slice]


def grey_filled(image: Any) -> Region | None:
    """Where a JPEG as Pillow decoded it ends in its fill (mid-grey, 128), or None: a file cut short and closed
    with an end marker decodes without an error, what is missing grey (a slice cut so was called meningioma at
    1.0). Its blocks are decoded in rows: the fill is its last rows (one block high at least), or, cut inside a row
    of blocks, that row's right part (one block square at least) and the rows after it (no whole row was grey: such
    cuts were read and saved, 2.4 % of the slice grey)."""
    pixels = np.asarray(image.convert("L"))
    height, width = pixels.shape
    grey = pixels == 128
    rows = int(np.argmin(grey.all(axis=1)[::-1])) if not grey.all() else height  # whole grey rows at the end
    if 8 <= rows < height:
        return slice(height - rows, height), slice(0, width)
    band = grey[max(0, height - rows - 8) : height - rows]  # the row of blocks above them, or the last one
    columns = int(np.argmin(band.all(axis=0)[::-1])) if band.size and not band.all() else 0
    if band.shape[0] == 8 and 8 <= columns < width:
        return slice(height - rows - 8, height), slice(width - columns, width)
    return None


def fill_of_a_cut(
    data: bytes, size: tuple[int, int], max_decoded_bytes: int, region: Region, found_in: tuple[int, int] | None = None
) -> bool:
    """Whether a grey ``region`` (:func:`grey_filled`) is Pillow's fill of a file cut short, not an image's own (an
    export's caption strip of mid-grey, refused as cut short): a second decoder, libjpeg, which fills a cut file
    otherwise, reads it too. ``found_in``: the (width, height) of the image the region was found in, when Pillow
    read it reduced (the region is scaled to the file's ``size``: a large export's own grey strip was looked for in
    the wrong place and refused). A file it cannot read, or too large to read again, stays refused."""
    if size[0] * size[1] * 3 > max_decoded_bytes:
        return True
    try:
        from libjpeg import decode  # pylibjpeg's, pinned for compressed DICOM

        pixels = decode(data)
    except Exception:  # any failure of the second decoder leaves the first's verdict
        return True
    if found_in is not None and found_in != size:  # inside the reduced region's footprint, never past it
        rows, columns = region
        fy, fx = size[1] / found_in[1], size[0] / found_in[0]
        region = slice(math.ceil(rows.start * fy), size[1]), slice(math.ceil(columns.start * fx), size[0])
    return not bool((np.asarray(pixels)[region] == 128).all())


SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}  # start of frame (F7: LS)
SOS = 0xDA


def jpeg_segments(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(marker, segment) of a JPEG or JPEG-LS codestream's marker segments after its start of image, in order (fill
    bytes and each scan's entropy-coded data stepped over), up to its end of image or the first byte that is no
    marker: the one walk the DICOM size check and the cut-short checks read."""
    for marker, segment, _ in _segments(data):
        yield marker, segment


def _segments(data: bytes) -> Iterator[tuple[int, bytes, int]]:
    """:func:`jpeg_segments` with where each segment ends (a scan's data begins there)."""
    at = 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker == 0xFF:  # a fill byte before a marker
            at += 1
            continue
        if marker == 0xD9:  # end of image
            return
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        yield marker, data[at + 4 : at + 2 + length], at + 2 + length
        at += 2 + length
        if marker == SOS:  # the scan's data: to the next marker (stuffed 0xFF00 and restarts are not markers)
            at = scan_end(data, at)[0]


def _jpeg_frame_size(data: bytes) -> tuple[int, int]:
    """(rows, columns) from a JPEG or JPEG-LS codestream's frame header (the decoders' own parameter readers
    allocate the image first)."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("no JPEG start of image")
    for marker, segment in jpeg_segments(data):
        if marker in SOF:
            if len(segment) < 5:
                raise ValueError("frame header cut off")
            return int.from_bytes(segment[1:3], "big"), int.from_bytes(segment[3:5], "big")
    raise ValueError("no frame header before the data")


RESTARTS = range(0xD0, 0xD8)


def scan_end(data: bytes, at: int) -> tuple[int, int]:
    """Where a scan's entropy-coded data starting at ``at`` ends (its next marker, or the end of the data), and how
    many restart markers it holds: stuffed bytes (0xFF00), fill bytes before a marker (0xFFFF) and restarts are
    stepped over, found a 0xFF at a time by bytes.find (a byte at a time in Python took seconds for a 37 MB file)."""
    found = 0
    while (at := data.find(b"\xff", at)) >= 0 and at + 1 < len(data):
        following = data[at + 1]
        if following in (0x00, 0xFF):
            at += 1
        elif following in RESTARTS:
            found, at = found + 1, at + 2
        else:
            return at, found
    return len(data), found


def restarts(data: bytes) -> tuple[int, int] | None:
    """(the restart markers a baseline JPEG's single scan must hold, the ones it holds), or None for a file without
    a restart interval or another kind (progressive, several scans). A file cut short and closed with an end marker
    decodes without an error, its missing rows grey; with restart markers both decoders fill them so, and only the
    count of intervals tells the cut (a slice missing a fifth of its rows was called glioma at 0.97)."""
    interval, frame = 0, None
    for marker, segment, end in _segments(data):
        if marker == 0xDD and len(segment) >= 2:  # DRI
            interval = int.from_bytes(segment[:2], "big")
        elif marker in (0xC0, 0xC1) and len(segment) >= 6:
            frame = segment
        elif marker in SOF:
            return None
        elif marker == SOS:  # the first scan: counted only with an interval (no walk of the others' data)
            if not (segment and interval and frame is not None):
                return None
            return _intervals(frame, segment[0], interval) - 1, scan_end(data, end)[1]
    return None


def _intervals(frame: bytes, in_scan: int, interval: int) -> int:
    """How many restart intervals of ``interval`` MCUs a scan of ``in_scan`` components of this frame header holds."""
    height, width, count = int.from_bytes(frame[1:3], "big"), int.from_bytes(frame[3:5], "big"), frame[5]
    factors = [(frame[7 + 3 * k] >> 4, frame[7 + 3 * k] & 0x0F) for k in range(count) if 8 + 3 * k <= len(frame)]
    h_max, v_max = max((h for h, _ in factors), default=1), max((v for _, v in factors), default=1)
    if in_scan == 1:  # one component's blocks (its sampling over the largest), one block an MCU
        h, v = factors[0] if factors else (1, 1)
        mcus = math.ceil(math.ceil(width * h / h_max) / 8) * math.ceil(math.ceil(height * v / v_max) / 8)
    else:
        mcus = math.ceil(width / (8 * h_max)) * math.ceil(height / (8 * v_max))
    return math.ceil(mcus / interval)
