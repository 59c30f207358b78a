"""Peak memory of reading one upload, for files that declare large images: each read in a fresh process.

    .venv/bin/python bench/memory.py

Prints, per kind of file, its size, what happened (read and reduced, or refused with the reason's code) and the
rise of the process's peak resident memory while reading it (Linux: the peak is reset through
``/proc/self/clear_refs``, then ``VmHWM`` is read against the resident size before), in MB. The target
is under 200 MB whatever the file declares (issue 16; one 16-bit 6000 x 6000 PNG used to cost 1.1 GB).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KINDS = {
    "png16_6000": "16-bit gray PNG, 6000 x 6000 (72 MB decoded)",
    "png8_6000": "8-bit gray PNG, 6000 x 6000 (36 MB decoded)",
    "png_rgb_4000": "RGB PNG, 4000 x 4000 (64 MB decoded)",
    "jpeg_rgb_6000": "RGB JPEG, 6000 x 6000 (decoded at a reduced scale)",
    "dicom16_4096": "16-bit DICOM, 4096 x 4096",
}


def make(kind: str) -> bytes:
    """A compressible file of ``kind`` (smooth gradients: small on disk, large once decoded)."""
    from PIL import Image

    side = int(kind.rsplit("_", 1)[1])
    ramp = np.linspace(0, 1, side, dtype=np.float32)
    field = np.add.outer(ramp, ramp) / 2
    buffer = io.BytesIO()
    if kind.startswith("png16"):
        Image.fromarray((field * 4095).astype(np.uint16)).save(buffer, "PNG")
    elif kind.startswith("png8"):
        Image.fromarray((field * 255).astype(np.uint8)).save(buffer, "PNG")
    elif kind.startswith("png_rgb"):
        gray = (field * 255).astype(np.uint8)
        Image.fromarray(np.dstack([gray, gray[::-1], gray[:, ::-1]])).save(buffer, "PNG")
    elif kind.startswith("jpeg"):
        gray = (field * 255).astype(np.uint8)
        Image.fromarray(np.dstack([gray, gray[::-1], gray[:, ::-1]])).save(buffer, "JPEG", quality=70)
    else:
        return _dicom((field * 4095).astype(np.uint16))
    return buffer.getvalue()


def _dicom(stored: np.ndarray) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta, ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta, MRImageStorage, generate_uid(), "MR"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = stored.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


_CHILD = """
import sys, json
sys.path.insert(0, {root!r})
from core.imaging import read_scan
from core.errors import ScanError
import numpy, PIL.Image, cv2, pydicom  # loaded before the baseline

def kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])

data = open({path!r}, 'rb').read()
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current resident size
before = kb("VmRSS:")
try:
    scan = read_scan(data)
    outcome = f"read, {{scan.width}} x {{scan.height}}"
except ScanError as error:
    outcome = f"refused ({{error.code}})"
print(json.dumps({{"outcome": outcome, "peak_rise_mb": round((kb("VmHWM:") - before) / 1024, 1)}}))
"""


def main() -> None:
    import tempfile

    report = {}
    with tempfile.TemporaryDirectory() as folder:
        for kind, what in KINDS.items():
            path = Path(folder) / kind
            path.write_bytes(make(kind))
            out = subprocess.run(
                [sys.executable, "-c", _CHILD.format(root=str(ROOT), path=str(path))],
                capture_output=True,
                text=True,
                timeout=300,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            report[kind] = {"file": what, "file_mb": round(path.stat().st_size / 2**20, 2), **result}
            print(f"{kind:15s} {report[kind]}", file=sys.stderr)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
