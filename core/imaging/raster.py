"""PNG and JPEG through Pillow: header checked before decoding, damaged files refused, one path to 8-bit gray.

- Dimensions and the decoded size are checked from the header (:mod:`core.imaging.limits`); large JPEGs are decoded
  at a reduced scale (DCT scaling), and anything larger than the working side is reduced right after decoding.
- The bomb check stays on, truncated files are refused (``LOAD_TRUNCATED_IMAGES`` stays False), PNG chunk CRCs
  and the IEND marker are verified, animations are refused.
- EXIF orientation is applied, transparency composited over black, colour converted with ITU-R 601 luma, and
  16-bit or float rasters percentile-stretched to 8 bits (not truncated to the high byte).
"""

from __future__ import annotations

import io
import logging
import math
import struct
import warnings
import zlib
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageOps

from core.errors import CorruptImage, ImageTooLarge, MultiFrameImage, ScanError, UnsupportedFormat
from core.imaging.codestream import GREY_FILL, cut_short, fill_of_a_cut, grey_filled
from core.imaging.limits import Limits, check_decoded_size, check_dimensions, stretch_to_uint8

# Pillow's debug lines quote every EXIF tag's value as it decodes (an ImageDescription or Artist holding a name):
# never below INFO, whatever level a deployment turns its log to
logging.getLogger("PIL").setLevel(max(logging.getLogger("PIL").getEffectiveLevel(), logging.INFO))

# Bytes per pixel of the largest working copy a mode needs (Pillow keeps multi-band images at 4 bytes a pixel;
# palette images are expanded to RGB(A) before use).
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
_HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def read_raster(data: bytes, fmt: str, limits: Limits) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Decode a PNG or JPEG to (uint8 gray pixels, colourfulness 0..1, size as declared (width, height))."""
    pillow_format = "PNG" if fmt == "png" else "JPEG"
    what = fmt.upper()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # Image.open reads the header only: dimensions are checked before any pixel is decoded.
            with Image.open(io.BytesIO(data), formats=[pillow_format]) as header:
                declared = header.size
                check_dimensions(declared[0], declared[1], limits)
                frames = getattr(header, "n_frames", 1)
                if frames > 1:
                    raise MultiFrameImage(
                        f"This {what} holds {frames} frames (an animation); upload a single still slice."
                    )
                if fmt == "png":
                    _check_png_depth(data, what)
                    header.verify()  # chunk CRCs and the IEND marker
                if fmt == "jpeg" and (reason := cut_short(data)):
                    raise CorruptImage(f"The JPEG file is cut short: {reason}")
            with Image.open(io.BytesIO(data), formats=[pillow_format]) as image:
                size = image.size
                image = _decode_within_budget(image, limits)
                if fmt == "png":  # once decoded within the budget: counting its rows costs no more
                    _check_png_rows(data, size)
                filled = grey_filled(image) if fmt == "jpeg" else None
                if filled is not None and fill_of_a_cut(data, size, limits.max_decoded_bytes, filled, image.size):
                    raise CorruptImage(f"The JPEG file is cut short: {GREY_FILL}")
                image = _upright(image, what)
                pixels, colourfulness = _to_gray(image)
                return pixels, colourfulness, declared
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


_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel


# Adam7's seven passes: the first column and row each starts at, and the steps between them
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _check_png_rows(data: bytes, size: tuple[int, int]) -> None:
    """Refuse a PNG whose image data holds fewer rows than its header declares: a stream closed properly at a row
    boundary passes every checksum, and the missing rows were read as black. An interlaced one's passes are counted
    row by row too (half of its last pass missing, a slice was called glioma at 0.83)."""
    if len(data) < 29:
        return
    width, height = size
    depth, colour = data[24], data[25]
    bits = _CHANNELS.get(colour, 1) * depth
    passes = _ADAM7 if data[28] == 1 else ((0, 0, 1, 1),)
    expected = 0
    for x0, y0, dx, dy in passes:
        columns, rows = max(0, math.ceil((width - x0) / dx)), max(0, math.ceil((height - y0) / dy))
        expected += rows * (1 + math.ceil(columns * bits / 8)) if columns else 0
    stream, at, got = zlib.decompressobj(), 8, 0
    while at + 8 <= len(data) and got <= expected:
        length, kind = struct.unpack(">I", data[at : at + 4])[0], data[at + 4 : at + 8]
        pending = data[at + 8 : at + 8 + length] if kind == b"IDAT" else b""
        while pending and got <= expected:  # counted a megabyte at a time, never held whole
            got += len(stream.decompress(pending, 1 << 20))
            pending = stream.unconsumed_tail
        at += 12 + length
    if got < expected:
        raise CorruptImage(
            f"The PNG file is cut short: its image data holds {got * 100 // expected} % of the rows its header "
            "declares (the rest would read as black)."
        )


def _check_png_depth(data: bytes, what: str) -> None:
    """Refuse a 16-bit PNG with colour or transparency: Pillow would read it at 8 bits, keeping the high byte only
    (a 16-bit gray PNG, the usual MRI export, is read whole and stretched)."""
    depth, colour = (data[24], data[25]) if len(data) > 25 else (8, 0)
    if depth == 16 and colour in (2, 4, 6):
        kind = {2: "colour", 4: "grayscale with transparency", 6: "colour with transparency"}[colour]
        raise UnsupportedFormat(
            f"This {what} is 16-bit {kind}, which would be read at 8 bits; export it as 16-bit grayscale (no alpha)."
        )


def _decode_within_budget(image: Image.Image, limits: Limits) -> Image.Image:
    """Decode at most ``max_decoded_bytes`` and return an image whose longer side is the working side when it was
    longer (a JPEG's DCT-domain reduction halves it first; a whole factor after that shrank a 4,400-pixel JPEG to
    1,100, half the working side, and a 4,100-pixel PNG to 1,367)."""
    side = limits.working_side
    width, height = image.size
    if image.format == "JPEG" and max(width, height) > side:
        ratio = side / max(width, height)
        image.draft(image.mode, (math.ceil(width * ratio), math.ceil(height * ratio)))  # DCT-domain downscale
    check_decoded_size(*image.size, _BYTES_PER_PIXEL.get(image.mode, 4), limits)
    image.load()  # raises on truncated data
    if max(image.size) <= side:
        return image
    scale = side / max(image.size)
    size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
    if image.mode.startswith("I;16"):
        reduced = Image.fromarray(cv2.resize(np.asarray(image), size, interpolation=cv2.INTER_AREA))
    else:
        if image.mode in ("1", "P"):
            image = image.convert("L" if image.mode == "1" else ("RGBA" if "transparency" in image.info else "RGB"))
        reduced = image.resize(size, Image.Resampling.BOX)  # each output pixel the mean of the area it covers
    reduced.info.update(image.info)  # its EXIF orientation too: applied after the reduction, as for any size
    return reduced


def _upright(image: Any, what: str) -> Any:
    """``image`` turned as its EXIF orientation says; damaged EXIF values (a tag of the wrong type) are
    :class:`CorruptImage`: which way up the slice is cannot be known (it was an internal error)."""
    try:
        return ImageOps.exif_transpose(image)
    except (struct.error, TypeError, KeyError, IndexError) as error:
        raise CorruptImage(f"The {what} file's EXIF data (which way up the image is) are damaged.") from error


def _describe(error: Exception) -> str:
    text = str(error).lower()
    if "truncated" in text or isinstance(error, EOFError):
        return "the data ends early"
    if "checksum" in text or "crc" in text:
        return "a checksum does not match"
    if "text_chunk" in text or "too much memory" in text:  # Pillow's limits on a PNG's text and ICC chunks
        return "a text or colour-profile chunk inflates past its limit; the pixels may be sound, export it again"
    return "it cannot be decoded"


def _to_gray(image: Image.Image) -> tuple[np.ndarray, float]:
    """One documented path from any Pillow mode to uint8 gray; returns (pixels, colourfulness in 0..1)."""
    mode = image.mode
    if mode in _HIGH_DEPTH:
        values, key = np.asarray(image), image.info.get("transparency")
        if isinstance(key, int) and (values == key).any():  # a tRNS grey: transparent, black as at 8 bits
            values = np.where(values == key, np.nan, values.astype(np.float32))
        return stretch_to_uint8(values), 0.0
    if mode in ("P", "L", "RGB") and "transparency" in image.info:  # a tRNS colour: transparent, whatever the mode
        image = image.convert("RGBA")
    elif mode == "P":
        image = image.convert("RGB")
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


def encode_png(pixels: np.ndarray) -> bytes:
    """``pixels`` (uint8: grey, or BGR as OpenCV orders colour) as a PNG with nothing but pixels in it: the one
    encoder of the image store, the pages' images, the report's and the command line's masks. ValueError when OpenCV
    cannot encode them (a uint8 image of 2 or 3 dimensions always encodes)."""
    ok, data = cv2.imencode(".png", np.ascontiguousarray(pixels))
    if not ok:  # pragma: no cover - see above
        raise ValueError("the image could not be encoded as PNG")
    return data.tobytes()
