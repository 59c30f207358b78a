"""Image fixtures generated in code: DICOM files with planted identities and tiny models with cards (the brain
phantom and its encoders are :mod:`core.imaging.phantoms`).

Nothing here is a real scan; the ``ZZCANARY`` strings are planted to prove identities never leak.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from core.imaging.phantoms import jpeg_bytes, png_bytes, synthetic_slice

CANARY = "ZZCANARY"


def dicom_bytes(
    stored: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    modality: str = "MR",
    transfer_syntax: str | None = None,
    pixel_data: bool = True,
    frames: int = 1,
    truncate_pixels: int = 0,
    preamble: bool = True,
    extra: dict[str, object] | None = None,
) -> bytes:
    """An MR image DICOM file with a planted patient name; ``stored`` is uint16 (frames stacked on axis 0);
    ``extra`` sets more header fields by keyword."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = f"{CANARY}^Test"
    ds.PatientID = "MRN123"
    ds.Modality = modality
    ds.MagneticFieldStrength = 1.5
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ScanningSequence = "SE"
    ds.Rows, ds.Columns = int(stored.shape[-2]), int(stored.shape[-1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if pixel_data:
        raw = stored.astype("<u2").tobytes()
        ds.PixelData = raw[: len(raw) - truncate_pixels] if truncate_pixels else raw
    if transfer_syntax is not None:
        from pydicom.uid import UID

        uid = UID(transfer_syntax)
        if uid.is_compressed and pixel_data:
            try:
                ds.compress(uid)
            except NotImplementedError:  # no encoder (video syntaxes): wrap placeholder bytes as one fragment
                from pydicom.encaps import encapsulate

                ds.file_meta.TransferSyntaxUID = uid
                ds.PixelData = encapsulate([b"\x00" * 64])
                ds["PixelData"].VR = "OB"
                ds["PixelData"].is_undefined_length = True
        else:
            ds.file_meta.TransferSyntaxUID = uid
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    return data if preamble else data[132:]


def build_tiny_model(size: int = 32, channels: int = 1, output: str = "logits", seed: int = 0):
    """A few-hundred-parameter Keras CNN with a deterministic init (a stand-in until a trained model is used)."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, channels))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    units, activation = {"logits": (4, None), "softmax": (4, "softmax"), "sigmoid": (1, "sigmoid")}[output]
    return keras.Model(inputs, keras.layers.Dense(units, activation=activation)(x))


def write_model_card(
    directory: Path,
    *,
    output: str = "logits",
    size: int = 32,
    channels: int = 1,
    name: str = "tiny",
    mirror: bool = False,
    calibration: dict | None = None,
    resnet_width: int = 0,
) -> Path:
    """Save a tiny model and its card into ``directory``; returns the card path (``mirror``: 2-channel input;
    ``resnet_width``: a model-3 network of that width, one channel scaled to [0, 1], instead of the tiny CNN)."""
    channels = 2 if mirror else channels
    if resnet_width:
        from core.training.standard import build_resnet

        model = build_resnet(size, resnet_width, name=name)
    else:
        model = build_tiny_model(size, channels, output)
    weights = directory / f"{name}.keras"
    model.save(weights)
    labels = ["notumor", "tumour"] if output == "sigmoid" else ["glioma", "meningioma", "notumor", "pituitary"]
    card = {
        "name": name,
        "version": "0.0.1-test",
        "labels": labels,
        "negative_label": "notumor",
        "input": {
            "size": size,
            "channels": channels,
            "crop": True,
            "scaling": "unit" if channels == 3 or resnet_width else "percentile",
            "mirror": mirror,
        },
        "output": output,
        "threshold": 0.5,
        "calibration": calibration or {"temperature": 1.0},
        "weights": {"file": weights.name, "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()},
    }
    path = directory / f"{name}.json"
    path.write_text(json.dumps(card, indent=2))
    return path


__all__ = [
    "CANARY",
    "build_tiny_model",
    "dicom_bytes",
    "jpeg_bytes",
    "png_bytes",
    "synthetic_slice",
    "write_model_card",
]


@contextmanager
def garbage_pacs(
    body: bytes = b"<html>not DICOMweb</html>", declared: int | None = None, status: int = 200
) -> Iterator[str]:
    """A local HTTP server that answers every GET with ``body`` labelled as DICOM JSON, and with HTTP ``status``:
    its DICOMweb root (``declared``: the length its header announces, more than it sends for an answer cut off)."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Garbage(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(declared or len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Garbage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    finally:
        server.shutdown()


def sandboxed(env: dict[str, str]) -> dict[str, str]:
    """A child process's environment built from nothing, with the tests' register of databases and secrets file
    (tests/conftest.py): without them a child wrote the user's own register and read the checkout's real
    secrets file (its database, its keys)."""
    import os

    return {**env, "BTD_STATE_DIR": os.environ["BTD_STATE_DIR"], "BTD_SECRETS": os.environ["BTD_SECRETS"]}


def run_core(args: list[str], env: dict[str, str], stdin: str | None = None, timeout: int = 300):
    """``python -m core ARGS`` in a process of its own, from the repository root, as an operator runs it."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    return subprocess.run(
        [sys.executable, "-m", "core", *args], input=stdin, cwd=root, capture_output=True, text=True,
        env=sandboxed(env), timeout=timeout,
    )  # fmt: skip


def relabelled(files: list[bytes], **values: object) -> list[bytes]:
    """DICOM ``files`` with header ``values`` set as a scanner wrote them."""
    from pydicom import dcmread

    out = []
    for data in files:
        ds = dcmread(io.BytesIO(data))
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        buffer = io.BytesIO()
        ds.save_as(buffer)
        out.append(buffer.getvalue())
    return out


def empty_database(folder: Path) -> Path:
    """The app's database as its first start leaves it: a command that saves refuses a data folder without one (a
    mistyped folder made a new database nobody reads)."""
    from core.storage.sqlite import SQLiteStore

    folder.mkdir(parents=True, exist_ok=True)
    SQLiteStore(folder / "results.sqlite3")
    return folder


def app_store(path: Path):
    """The app's SQLite database at ``path``, keyed as the app keys it (an event under another key is refused)."""
    from core.config import audit_key, file_secrets
    from core.storage.sqlite import SQLiteStore

    store = SQLiteStore(path)
    store.audit_key = audit_key(file_secrets(), shared_database=False)
    return store


class Trail:
    """An audit trail kept in memory: for services that must audit what they do, tested apart from a database."""

    def __init__(self) -> None:
        self.events: list = []

    def append_audit(self, event):
        self.events.append(event)
        return event
