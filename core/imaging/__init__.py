"""Bytes in, validated grayscale slices out: format sniffing, limits, PNG/JPEG and DICOM decoding.

Pure: no model, no storage, no screen. Import what you need from the modules; the common entry points are
re-exported here.
"""

from core.imaging.limits import DEFAULT_LIMITS, Limits, stretch_to_uint8
from core.imaging.scan import Scan, frames_in, read_file_bytes, read_scan, read_scan_file, sniff_format

__all__ = [
    "DEFAULT_LIMITS",
    "Limits",
    "Scan",
    "frames_in",
    "read_file_bytes",
    "read_scan",
    "read_scan_file",
    "sniff_format",
    "stretch_to_uint8",
]
