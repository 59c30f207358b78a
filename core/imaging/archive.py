"""Zip archives of a study, checked before anything is read from them: member count, total and per-member
uncompressed size and compression ratio (bombs), names (no absolute paths, no ``..``, no nested archives); members
are read in memory, never extracted to disk."""

from __future__ import annotations

import io
import zipfile
import zlib

from core.errors import CorruptImage, FileTooLarge, UnsupportedFormat
from core.imaging.limits import DEFAULT_STUDY_LIMITS, StudyLimits


def is_zip(data: bytes) -> bool:
    """A zip's first bytes: a member's header, or the end record alone of an empty zip (read as "neither DICOM nor
    NIfTI, a read-me or a picture?")."""
    return data[:4] in (b"PK\x03\x04", b"PK\x05\x06")


READABLE = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)


def _members(data: bytes) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        return archive, [m for m in archive.infolist() if not m.is_dir()]
    except UnicodeDecodeError as error:  # flagged UTF-8, written otherwise: it was an internal error
        raise CorruptImage("The zip's file names are not in the encoding it declares (UTF-8); zip it again.") from error
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise CorruptImage("The zip archive is damaged.") from error


def declared_size(data: bytes) -> int:
    """The bytes a zip says it unpacks to, from its directory alone (nothing is unpacked): what an upload of
    several zips adds up before any is opened (each was unpacked whole before their sum was refused). Reading is
    held to these sizes (:func:`unzip`)."""
    return sum(member.file_size for member in _members(data)[1])


def unzip(data: bytes, limits: StudyLimits = DEFAULT_STUDY_LIMITS) -> list[bytes]:
    """The members of a zip, in memory, after checking it for bombs and path tricks."""
    archive, members = _members(data)
    if len(members) > limits.max_zip_members:
        raise FileTooLarge(f"The zip holds {len(members)} files; the limit is {limits.max_zip_members}.")
    total = sum(m.file_size for m in members)
    if total > limits.max_total_bytes:
        raise FileTooLarge(
            f"The zip unpacks to {total / 2**20:.0f} MB; the limit is {limits.max_total_bytes / 2**20:.0f} MB."
        )
    for member in members:
        name = member.filename.replace("\\", "/")
        if name.startswith("/") or ".." in name.split("/") or (len(name) > 1 and name[1] == ":"):
            raise UnsupportedFormat("The zip names a file outside itself (an absolute path or '..'); refused.")
        if member.compress_size and member.file_size / member.compress_size > limits.max_compression_ratio:
            raise FileTooLarge("The zip holds a file compressed over 200 times (a zip bomb?); refused.")
        if member.filename.lower().endswith(".zip"):
            raise UnsupportedFormat("The zip holds another zip; upload the inner archive itself.")
        if member.flag_bits & 0x1:
            raise UnsupportedFormat("The zip is password-protected; upload the files unencrypted.")
        if member.compress_type not in READABLE:
            raise UnsupportedFormat("The zip uses a compression method that cannot be read; zip it again (deflate).")
    out = []
    for member in members:
        try:
            with archive.open(member) as handle:
                content = handle.read(member.file_size + 1)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as error:  # a bad CRC, a cut stream,
            # a directory pointing before the file's start ("negative seek value": it was an internal error)
            why = "a checksum does not match" if "crc" in str(error).lower() else "it cannot be unpacked"
            raise CorruptImage(f"A file in the zip is damaged ({why}); refused.") from error
        if len(content) > member.file_size:  # the header lied about the size
            raise FileTooLarge("A file in the zip is larger than its header says; refused.")
        out.append(content)
    return out
