"""Reading uploads: every bad input in RELIABILITY.md 'Uploaded images' gets its own specific error."""

from __future__ import annotations

import io
import re
import struct
import tracemalloc
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from core.errors import (
    CorruptImage,
    EmptyFile,
    FileTooLarge,
    ImageTooLarge,
    ImageTooSmall,
    MultiFrameImage,
    UnsupportedFormat,
)
from core.imaging import Limits, read_scan, sniff_format, stretch_to_uint8
from tests.scans import CANARY, dicom_bytes, jpeg_bytes, png_bytes, synthetic_slice


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A few-KB PNG whose header declares ``width`` x ``height`` 8-bit gray pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 64, 9)  # only the first rows: the file stays tiny
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b"")


def test_reads_png_as_2d_uint8() -> None:
    image = synthetic_slice(256)
    scan = read_scan(png_bytes(image))
    assert scan.format == "png"
    assert scan.pixels.dtype == np.uint8 and scan.pixels.shape == (256, 256)
    assert np.array_equal(scan.pixels, image)
    assert len(scan.sha256) == 64 and scan.colourfulness == 0.0


def test_reads_jpeg_close_to_source() -> None:
    image = synthetic_slice(256)
    scan = read_scan(jpeg_bytes(image, quality=95))
    assert scan.format == "jpeg" and scan.pixels.shape == (256, 256)
    assert np.abs(scan.pixels.astype(int) - image).mean() < 3


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b"%PDF-1.7\n1 0 obj\n" + b"x" * 200, "PDF"),
        (b"PK\x03\x04" + b"\x00" * 200, "ZIP"),
        (b"II*\x00" + b"\x00" * 200, "TIFF"),
        (b"GIF89a" + b"\x00" * 200, "GIF"),
        (b"<!DOCTYPE html><html><body>scan</body></html>" + b" " * 200, "HTML"),
        (b"MZ\x90\x00" + b"\x00" * 200, "executable"),
        (b"\x7fELF\x02\x01" + b"\x00" * 200, "executable"),
        (b"just some text, renamed to scan.png" * 10, "not a PNG, JPEG or DICOM"),
    ],
)
def test_rejects_non_images_renamed_png_by_content(data: bytes, named: str) -> None:
    with pytest.raises(UnsupportedFormat, match=named):
        read_scan(data)


def test_an_uncompressed_nifti_volume_is_sent_to_where_volumes_are_read() -> None:
    """A .nii (NIfTI-1 or -2) was "not a PNG, JPEG or DICOM scan (its content matches none of them)"; a .nii.gz
    was named."""
    import gzip

    import nibabel

    volume = np.zeros((16, 16, 4), dtype=np.int16)
    for image in (nibabel.Nifti1Image(volume, np.eye(4)), nibabel.Nifti2Image(volume, np.eye(4))):
        with pytest.raises(UnsupportedFormat, match="NIfTI volume, not a single scan: volumes are read on the Study"):
            read_scan(image.to_bytes())
        with pytest.raises(UnsupportedFormat, match=r"\.nii\.gz volume\? volumes are read .* python -m core study"):
            read_scan(gzip.compress(image.to_bytes()))


def test_sniffs_each_supported_format() -> None:
    image = synthetic_slice(64)
    assert sniff_format(png_bytes(image)) == "png"
    assert sniff_format(jpeg_bytes(image)) == "jpeg"
    assert sniff_format(b"\x00" * 128 + b"DICM" + b"\x00" * 64) == "dicom"


def test_rejects_empty_file() -> None:
    with pytest.raises(EmptyFile):
        read_scan(b"")


def test_rejects_file_over_the_upload_limit() -> None:
    with pytest.raises(FileTooLarge, match="limit"):
        read_scan(png_bytes(synthetic_slice(128)), Limits(max_bytes=1000))


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
def test_rejects_truncated_jpeg(keep: float) -> None:
    data = jpeg_bytes(synthetic_slice(256))
    with pytest.raises(CorruptImage, match=r"ends early|damaged"):
        read_scan(data[: int(len(data) * keep)])


@pytest.mark.parametrize("keep", [0.6, 0.8, 0.95])
@pytest.mark.parametrize("colour", [False, True])
def test_a_jpeg_cut_short_and_closed_with_an_end_marker_is_refused(keep: float, colour: bool) -> None:
    """It decoded without an error, its missing rows the decoder's grey: a slice cut so was called meningioma at
    1.0 by the shipped model."""
    from PIL import Image

    pixels = synthetic_slice(512, tumour=True)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("RGB" if colour else "L").save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    with pytest.raises(CorruptImage, match="cut short"):
        read_scan(data[: int(len(data) * keep)] + b"\xff\xd9")
    assert read_scan(data).pixels.shape == (512, 512)  # whole, it is read


@pytest.mark.parametrize("subsampling", [0, 2])
def test_a_jpeg_cut_inside_its_last_row_of_blocks_is_refused_wherever_it_is_cut(subsampling: int) -> None:
    """Cut inside its last row of blocks, a JPEG's missing part is grey on the right of that row only: no whole
    row was grey, so eight such cuts of a 4:2:0 slice were read and saved, 2.4 % of it the decoder's fill. Every
    cut near the end is refused now, or left the image as it was but for less than a block (a cut in the last few
    bytes loses the last block's finest detail: 6 pixels off by 41)."""
    from PIL import Image

    pixels = synthetic_slice(256, tumour=True)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("RGB").save(buffer, "JPEG", quality=92, subsampling=subsampling)
    data = buffer.getvalue()
    whole = read_scan(data).pixels.astype(int)
    for cut in range(int(len(data) * 0.9), len(data) - 2, 7):
        try:
            read = read_scan(data[:cut] + b"\xff\xd9").pixels.astype(int)
        except CorruptImage:
            continue
        assert (np.abs(read - whole) > 20).sum() < 64, cut  # read only where less than a block was lost


@pytest.mark.parametrize("keep", [0.4, 0.8, 0.95])
@pytest.mark.parametrize(("colour", "subsampling"), [(False, None), (True, 0), (True, 2)])
def test_a_jpeg_with_restart_markers_cut_short_is_refused(keep: float, colour: bool, subsampling: int | None) -> None:
    """With restart markers both decoders fill a cut file's missing rows with grey: a glioma slice cut to 80 % of
    its bytes was read and called glioma at 0.97, a fifth of its rows grey."""
    from PIL import Image

    from core.imaging.codestream import restarts

    pixels = synthetic_slice(512, tumour=True)
    buffer = io.BytesIO()
    options = {"subsampling": subsampling} if subsampling is not None else {}
    Image.fromarray(pixels).convert("RGB" if colour else "L").save(
        buffer, "JPEG", quality=90, restart_marker_rows=1, **options
    )
    data = buffer.getvalue()
    whole = restarts(data)
    assert whole is not None and whole[0] == whole[1] > 0
    assert read_scan(data).pixels.shape == (512, 512)  # whole, it is read
    with pytest.raises(CorruptImage, match="restart intervals"):
        read_scan(data[: int(len(data) * keep)] + b"\xff\xd9")
    # a fill byte (0xFF) before each restart marker, as the standard allows: read whole, never "cut short"
    filled = re.sub(rb"\xff([\xd0-\xd7])", lambda marker: b"\xff" + marker.group(0), data)
    assert restarts(filled) == whole and read_scan(filled).pixels.shape == (512, 512)


@pytest.mark.parametrize(("colour", "side"), [(False, 256), (True, 256), (False, 3000)])
def test_a_whole_jpeg_whose_last_rows_are_mid_grey_is_read(colour: bool, side: int) -> None:
    """An export's caption strip of grey 128 looks like the decoder's fill of a cut file: the whole file was refused
    as cut short (the same pixels as a PNG were read). One over the working side is read reduced: its strip, found
    there, was looked for in the full-size reading at the reduced one's place, and the file refused."""
    from PIL import Image

    pixels = synthetic_slice(side, tumour=True)
    pixels[-16 * (side // 256) :] = 128
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("RGB" if colour else "L").save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    assert read_scan(data).pixels.shape[0] == min(side, 2048)
    with pytest.raises(CorruptImage, match="cut short"):  # cut, it still is refused
        read_scan(data[: int(len(data) * 0.7)] + b"\xff\xd9")


@pytest.mark.parametrize("keep", [0.15, 0.3, 0.5])
def test_a_progressive_jpeg_cut_short_and_closed_with_an_end_marker_is_refused(keep: float) -> None:
    """A progressive JPEG cut so decodes without an error, blurred (no grey rows to find): the command line called
    one meningioma at 0.9997 with the gate accepting it."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(synthetic_slice(256, tumour=True)).save(buffer, "JPEG", quality=90, progressive=True)
    data = buffer.getvalue()
    with pytest.raises(CorruptImage, match="progressive scans end before the image is complete"):
        read_scan(data[: int(len(data) * keep)] + b"\xff\xd9")
    assert read_scan(data).pixels.shape == (256, 256)  # whole, it is read


def test_a_png_whose_image_data_ends_early_at_a_row_boundary_is_refused() -> None:
    """Its stream closed properly after 150 of 256 rows, every checksum right: the missing rows read as black."""
    pixels = synthetic_slice(256, tumour=True)
    rows = b"".join(b"\x00" + pixels[k].tobytes() for k in range(150))
    header = struct.pack(">IIBBBBB", 256, 256, 8, 0, 0, 0, 0)
    short = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(rows))
    with pytest.raises(CorruptImage, match="holds 58 % of the rows"):
        read_scan(short + _png_chunk(b"IEND", b""))
    whole = b"".join(b"\x00" + row.tobytes() for row in pixels)
    full = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(whole))
    assert read_scan(full + _png_chunk(b"IEND", b"")).pixels.shape == (256, 256)


@pytest.mark.parametrize(("height", "width"), [(256, 256), (201, 131)])
def test_an_interlaced_png_missing_part_of_a_pass_is_refused_and_a_whole_one_read(height: int, width: int) -> None:
    """Interlaced images were not counted: half of the last pass missing (every other row black), a slice was
    called glioma at 0.83; more passes missing, it was 'no brain found' where the file is damaged."""
    pixels = synthetic_slice(256, tumour=True)[:height, :width]
    passes = [
        b"".join(b"\x00" + row.tobytes() for row in pixels[y0::dy, x0::dx])
        for x0, y0, dx, dy in (
            (0, 0, 8, 8),
            (4, 0, 8, 8),
            (0, 4, 4, 8),
            (2, 0, 4, 4),
            (0, 2, 2, 4),
            (1, 0, 2, 2),
            (0, 1, 1, 2),
        )
    ]
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 1))

    def png(data: bytes) -> bytes:
        return b"\x89PNG\r\n\x1a\n" + header + _png_chunk(b"IDAT", zlib.compress(data)) + _png_chunk(b"IEND", b"")

    assert np.array_equal(read_scan(png(b"".join(passes))).pixels, pixels)
    last_row = 1 + width
    half = passes[6][: len(passes[6]) // last_row // 2 * last_row]
    for short in (b"".join(passes[:6]) + half, b"".join(passes[:4])):
        with pytest.raises(CorruptImage, match="cut short"):
            read_scan(png(short))


def test_rejects_png_with_bad_crc() -> None:
    data = bytearray(png_bytes(synthetic_slice(128)))
    at = data.find(b"IDAT")
    length = struct.unpack(">I", data[at - 4 : at])[0]
    data[at + 4 + length] ^= 0xFF  # first byte of the IDAT CRC
    with pytest.raises(CorruptImage, match="checksum"):
        read_scan(bytes(data))


def test_rejects_png_without_iend() -> None:
    data = png_bytes(synthetic_slice(128))
    with pytest.raises(CorruptImage):
        read_scan(data[:-12])


def test_refuses_decompression_bomb_from_header_with_bounded_memory() -> None:
    data = bomb_png()
    assert len(data) < 64 * 1024
    tracemalloc.start()
    with pytest.raises(ImageTooLarge, match="30000 x 30000"):
        read_scan(data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 20 * 2**20  # the 900-megapixel image was never allocated


def test_rejects_animated_png() -> None:
    frames = [Image.fromarray(synthetic_slice(128, seed=s)) for s in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "PNG", save_all=True, append_images=frames[1:])
    with pytest.raises(MultiFrameImage, match="3 frames"):
        read_scan(buffer.getvalue())


def test_rescales_16bit_png_instead_of_truncating() -> None:
    twelve_bit = (synthetic_slice(128).astype(np.uint16) * 16).astype(np.uint16)  # 0..4080, typical MRI export
    buffer = io.BytesIO()
    Image.fromarray(twelve_bit).save(buffer, "PNG")
    scan = read_scan(buffer.getvalue())
    assert scan.pixels.dtype == np.uint8
    assert scan.pixels.max() == 255  # the high byte alone would top out at 15
    assert np.corrcoef(scan.pixels.ravel(), twelve_bit.ravel())[0, 1] > 0.99


def test_alpha_is_composited_over_black() -> None:
    gray = synthetic_slice(128)
    alpha = np.full_like(gray, 255)
    alpha[:, :32] = 0  # transparent strip
    rgba = np.dstack([gray, gray, gray, alpha])
    scan = read_scan(png_bytes(rgba))
    assert scan.pixels[:, :32].max() == 0
    assert np.array_equal(scan.pixels[:, 32:], gray[:, 32:])
    la = read_scan(png_bytes(np.dstack([gray, alpha]), mode="LA"))
    assert np.array_equal(la.pixels, scan.pixels)


@pytest.mark.parametrize("mode", ["P", "1", "RGB"])
def test_other_png_modes_give_the_same_gray_path(mode: str) -> None:
    gray = synthetic_slice(128)
    image = Image.fromarray(gray).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    scan = read_scan(buffer.getvalue())
    expected = np.asarray(image.convert("L"))
    assert scan.pixels.shape == (128, 128)
    assert np.abs(scan.pixels.astype(int) - expected).max() <= 1


def test_cmyk_jpeg_is_read_as_gray() -> None:
    gray = synthetic_slice(128)
    buffer = io.BytesIO()
    Image.fromarray(gray).convert("CMYK").save(buffer, "JPEG", quality=95)
    scan = read_scan(buffer.getvalue())
    assert scan.pixels.shape == (128, 128)
    assert np.corrcoef(scan.pixels.ravel(), gray.ravel())[0, 1] > 0.98


def test_exif_orientation_is_applied() -> None:
    gray = np.zeros((96, 128), np.uint8)
    gray[:, :16] = 255  # bright left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = jpeg_bytes(gray, quality=95, exif=exif.tobytes())
    scan = read_scan(data)
    assert scan.pixels.shape == (128, 96)
    assert scan.pixels[:16].mean() > 200  # the left edge is now on top


def test_damaged_exif_or_a_marker_damaged_into_the_image_data_is_corrupt_never_an_internal_error() -> None:
    """An EXIF-rotated slice whose EXIF holds a SHORT tag written as text, and a JPEG whose image data hold a byte
    damaged into a marker, were "Unexpected error; try again" (Pillow's struct.error, an IndexError); the same
    damage in a DICOM file's JPEG was "the DICOM header holds invalid values"."""
    from core.imaging.codestream import cut_short

    gray = np.ascontiguousarray(np.rot90(synthetic_slice(128), 1))
    exif = Image.Exif()
    exif[0x0112], exif[0x013B] = 6, "x" * 19  # orientation, and an ASCII tag (Artist)
    for fmt in ("JPEG", "PNG"):
        buffer = io.BytesIO()
        Image.fromarray(gray).save(buffer, fmt, exif=exif)
        data = bytearray(buffer.getvalue())
        for entry, tag in ((b"\x3b\x01\x02\x00", b"\x23\x01"), (b"\x01\x3b\x00\x02", b"\x01\x23")):  # either order
            if (at := data.find(entry)) >= 0:  # the Artist entry, made GrayResponseCurve (a SHORT) holding text
                data[at : at + 2] = tag
        if fmt == "PNG":  # its chunk's checksum made good again: only the EXIF value is wrong
            chunk = data.find(b"eXIf")
            length = struct.unpack(">I", data[chunk - 4 : chunk])[0]
            crc = zlib.crc32(bytes(data[chunk : chunk + 4 + length])) & 0xFFFFFFFF
            data[chunk + 4 + length : chunk + 8 + length] = struct.pack(">I", crc)
        with pytest.raises(CorruptImage, match="EXIF data"):
            read_scan(bytes(data))
    frame = bytearray(b"\xff\xd8\xff\xc2\x00\x0b\x08\x00\x10\x00\x10\x05\x01\x11\x00\xff\xd9")  # 5 components, 1 given
    with pytest.raises(CorruptImage, match="marker segment is shorter"):
        cut_short(bytes(frame))


def test_colour_photo_reports_colourfulness() -> None:
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
    assert read_scan(png_bytes(colour)).colourfulness > 0.3
    gray3 = np.dstack([synthetic_slice(128)] * 3)
    assert read_scan(png_bytes(gray3)).colourfulness == 0.0


def test_rejects_tiny_image() -> None:
    with pytest.raises(ImageTooSmall, match="at least 64"):
        read_scan(png_bytes(synthetic_slice(48)))


def test_rejects_extreme_aspect_ratio() -> None:
    with pytest.raises(ImageTooSmall, match="elongated"):
        read_scan(png_bytes(np.zeros((64, 1000), np.uint8)))


def test_metadata_never_surfaces_in_the_scan() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Patient", f"{CANARY} Test MRN123")
    scan_png = read_scan(png_bytes(synthetic_slice(128), pnginfo=info))
    exif = Image.Exif()
    exif[0x010E] = f"{CANARY} MRN123"  # ImageDescription
    scan_jpeg = read_scan(jpeg_bytes(synthetic_slice(128), exif=exif.tobytes()))
    for scan in (scan_png, scan_jpeg):
        text = repr(scan) + repr(dict(scan.acquisition)) + repr(scan.warnings)
        assert CANARY not in text and "MRN123" not in text


def test_stretch_maps_percentiles_and_survives_flat_input() -> None:
    values = np.linspace(0, 1000, 10000).reshape(100, 100)
    out = stretch_to_uint8(values)
    assert out.min() == 0 and out.max() == 255
    assert stretch_to_uint8(np.full((10, 10), 7.0)).max() == 0


def test_a_16_bit_png_too_large_once_decoded_is_refused_from_its_header() -> None:
    """A few-hundred-KB PNG declaring 6000 x 6000 16-bit pixels would take 72 MB decoded (and a gigabyte in
    float copies): refused before decoding (bench/memory.py measures the memory)."""
    header = struct.pack(">IIBBBBB", 6000, 6000, 16, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (2 * 6000 + 1) * 64, 9)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b"")
    with pytest.raises(ImageTooLarge, match="69 MB once decoded"):
        read_scan(data)


def test_an_image_over_the_working_side_is_reduced_once_decoded_and_says_so() -> None:
    large = cv2.resize(synthetic_slice(256), (3000, 3000), interpolation=cv2.INTER_LINEAR)
    for data in (png_bytes(large), jpeg_bytes(large)):
        scan = read_scan(data, Limits(working_side=1024))
        assert scan.pixels.shape == (1024, 1024)  # the working side itself (a JPEG's was halved twice: 750)
        assert "reduced from 3000 x 3000" in scan.warnings[0]
    sixteen = Image.fromarray(cv2.resize(synthetic_slice(256), (2100, 2100)).astype(np.uint16) * 16)
    buffer = io.BytesIO()
    sixteen.save(buffer, "PNG")
    scan = read_scan(buffer.getvalue(), Limits(working_side=1024))
    assert scan.pixels.dtype == np.uint8 and max(scan.pixels.shape) <= 1024 and scan.pixels.max() == 255
    exif = Image.Exif()
    exif[0x0112] = 6  # turned a quarter after the reduction, as a small one is
    wide = cv2.resize(synthetic_slice(256), (3000, 2000), interpolation=cv2.INTER_LINEAR)
    scan = read_scan(jpeg_bytes(wide, quality=95, exif=exif.tobytes()), Limits(working_side=1024))
    assert scan.pixels.shape == (1024, 683)


@pytest.mark.parametrize("channels", [3, 4])
def test_a_16_bit_colour_or_transparent_png_is_refused_not_read_at_its_high_byte(channels: int) -> None:
    """Pillow opens these at 8 bits: a 12-bit slice stored in them came out almost black, 16 grey levels."""
    from core.errors import UnsupportedFormat

    gray = synthetic_slice(128).astype(np.uint16) * 16
    pixels = np.dstack([gray] * channels)
    if channels == 4:
        pixels[..., 3] = 65535
    ok, data = cv2.imencode(".png", pixels)
    assert ok
    with pytest.raises(UnsupportedFormat, match="16-bit"):
        read_scan(data.tobytes())


def test_exif_orientation_is_applied_to_a_16_bit_png_whatever_its_size() -> None:
    """Above the working side the 16-bit reduction dropped the EXIF: the same slice came out unrotated."""
    shapes = []
    for width in (2000, 2100):
        image = Image.fromarray((np.arange(1000 * width) % 4096).reshape(1000, width).astype(np.uint16))
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to display
        buffer = io.BytesIO()
        image.save(buffer, "PNG", exif=exif.tobytes())
        shapes.append(read_scan(buffer.getvalue()).pixels.shape)
    assert all(height > width for height, width in shapes), shapes


def test_a_file_that_gives_no_size_is_read_no_further_than_the_limit(tmp_path) -> None:
    """A pipe (or a file growing after its size was read) reports no size: it was read whole."""
    import contextlib
    import os
    import threading

    from core.imaging.scan import read_file_bytes

    fifo = tmp_path / "scan.png"
    os.mkfifo(fifo)
    limits = Limits(max_bytes=1024 * 1024)

    def feed() -> None:
        with open(fifo, "wb") as handle, contextlib.suppress(BrokenPipeError):
            handle.write(b"\x00" * (8 * 1024 * 1024))

    writer = threading.Thread(target=feed)
    writer.start()
    with pytest.raises(FileTooLarge, match="The file is more than the limit; the limit is 1 MB") as said:
        read_file_bytes(fifo, limits)  # read to one byte past the limit: its size is unknown ("1.0 MB; the limit
    writer.join(timeout=10)  # is 1 MB" was said)
    assert "1.0 MB" not in str(said.value)


def test_a_transparent_colour_key_is_composited_over_black_in_gray_and_palette_pngs_alike() -> None:
    """The same picture with a white background marked transparent: the palette PNG's became black, the gray
    PNG's stayed white, so the two gave the model different inputs."""
    pixels = synthetic_slice(128)
    pixels[:8, :8] = 255
    gray = Image.fromarray(pixels)
    gray_buffer, palette_buffer = io.BytesIO(), io.BytesIO()
    gray.save(gray_buffer, "PNG", transparency=255)
    gray.convert("P").save(palette_buffer, "PNG", transparency=255)
    from_gray = read_scan(gray_buffer.getvalue()).pixels
    from_palette = read_scan(palette_buffer.getvalue()).pixels
    assert from_gray[0, 0] == 0 and from_palette[0, 0] == 0
    deep, deep_buffer = pixels.astype(np.uint16) * 257, io.BytesIO()  # the same at 16 bits: it stayed white there
    deep[:8, :8] = 65535
    Image.fromarray(deep).save(deep_buffer, "PNG", transparency=65535)
    from_deep = read_scan(deep_buffer.getvalue()).pixels
    assert from_deep[0, 0] == 0 and from_deep[:8, :8].max() == 0 and from_deep.max() == 255


def test_a_jpeg_declaring_billions_of_pixels_or_holding_several_frames_is_refused_before_decoding() -> None:
    from core.errors import ImageTooLarge, MultiFrameImage

    small = bytearray(jpeg_bytes(synthetic_slice(64)))
    frame_header = small.index(b"\xff\xc0")  # baseline SOF0: length, precision, then height and width
    small[frame_header + 5 : frame_header + 9] = struct.pack(">HH", 60000, 60000)
    with pytest.raises(ImageTooLarge, match="megapixels"):
        read_scan(bytes(small))
    frames = [Image.fromarray(np.full((64, 64), v, np.uint8)) for v in (10, 200)]
    mpo = io.BytesIO()
    frames[0].save(mpo, "MPO", save_all=True, append_images=frames[1:])
    with pytest.raises(MultiFrameImage, match="2 frames"):
        read_scan(mpo.getvalue())


def test_importing_the_app_leaves_pillows_bomb_and_truncation_guards_on() -> None:
    """A module setting Image.MAX_IMAGE_PIXELS = None or LOAD_TRUNCATED_IMAGES = True (a common snippet) would
    switch them off for every upload of the process."""
    import importlib
    import pkgutil

    from PIL import ImageFile

    import core
    import ui

    for package in (core, ui):
        for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if not any(part in module.name for part in (".training", ".cli", "__main__")):  # heavy, or a command
                importlib.import_module(module.name)
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS <= 200_000_000
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_a_damaged_rle_frame_is_a_corrupt_image_not_a_decoder_panic_that_ends_the_batch() -> None:
    """An RLE segment that runs two bytes past the frame made the Rust decoder panic; pyo3's PanicException is a
    BaseException, which no ``except Exception`` caught: the command line printed a traceback and no line for the
    file, nor for the files after it."""
    from pydicom import dcmread
    from pydicom.encaps import encapsulate, generate_frames
    from pydicom.uid import RLELossless

    ds = dcmread(io.BytesIO(dicom_bytes((synthetic_slice(64) * 16).astype(np.uint16))))
    ds.compress(RLELossless)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    count, first, second = struct.unpack_from("<3I", frame)
    run = bytes([0xFF, 0x00])  # one replicate run, the value 0 twice, opening the second segment
    ds.PixelData = encapsulate([struct.pack("<16I", count, first, second + len(run), *[0] * 13) + run + frame[64:]])
    ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    with pytest.raises(CorruptImage, match=r"damaged|cannot be decoded"):
        read_scan(buffer.getvalue())


def test_a_bit_layout_the_standard_forbids_is_refused_and_a_lower_case_photometric_is_read() -> None:
    """A 12-bit image stored at the top of 16 bits (HighBit 15) was read from its low 12 bits, another picture,
    called "no tumour" where its true pixels read meningioma; "monochrome2" was "pixel data cannot be decoded";
    a whole file without Rows was "cut inside its header"."""
    from core.errors import UnsupportedDicom

    stored = (synthetic_slice(64) * 16).astype(np.uint16)
    with pytest.raises(UnsupportedDicom, match="bit layout"):
        read_scan(dicom_bytes(stored << 4, extra={"BitsStored": 12, "HighBit": 15}))
    with pytest.raises(UnsupportedDicom, match="bit layout"):
        read_scan(dicom_bytes(stored, extra={"BitsStored": 16, "BitsAllocated": 8}))
    with pytest.raises(UnsupportedDicom, match="high bit 0"):  # 0 is a high bit given, not one missing
        read_scan(dicom_bytes(stored, extra={"BitsStored": 12, "HighBit": 0}))
    plain = read_scan(dicom_bytes(stored, extra={"BitsStored": 12, "HighBit": 11}))
    lower = read_scan(
        dicom_bytes(stored, extra={"BitsStored": 12, "HighBit": 11, "PhotometricInterpretation": "monochrome2"})
    )
    assert np.array_equal(plain.pixels, lower.pixels)

    from pydicom import dcmread

    ds = dcmread(io.BytesIO(dicom_bytes(stored)))
    del ds.Rows
    buffer = io.BytesIO()
    ds.save_as(buffer)
    with pytest.raises(CorruptImage, match="lacks the image's size"):
        read_scan(buffer.getvalue())


def test_a_png_whose_text_or_profile_chunk_inflates_past_its_limit_is_named_so() -> None:
    """Sound pixels with a zTXt or iCCP chunk inflating to megabytes were "damaged or incomplete (it cannot be
    decoded)": the reader could not tell what to fix."""
    plain = png_bytes(synthetic_slice(128))
    inflating = zlib.compress(b"\x00" * (8 << 20), 9)
    for kind, payload in ((b"zTXt", b"Comment\x00\x00" + inflating), (b"iCCP", b"profile\x00\x00" + inflating)):
        data = plain[:33] + _png_chunk(kind, payload) + plain[33:]  # after IHDR
        with pytest.raises(CorruptImage, match="a text or colour-profile chunk inflates past its limit"):
            read_scan(data)
