"""Canary: a typed patient name, a file name and metadata with identities leave no trace in the database."""

from __future__ import annotations

from pathlib import Path

from PIL import PngImagePlugin

from core.identity import local_key, pseudonymise
from core.services.access import Actor
from core.services.triage import triage
from core.storage.images import FolderImages
from core.storage.sqlite import SQLiteStore
from tests.scans import CANARY, dicom_bytes, png_bytes, synthetic_slice


def test_identities_never_reach_the_database_file(tmp_path: Path, tiny_classifier) -> None:
    store = SQLiteStore(tmp_path / "data" / "results.sqlite3")
    key = local_key(tmp_path / "data")
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", f"{CANARY} Test MRN123")
    uploads = {
        f"{CANARY}_MRN123.png": png_bytes(synthetic_slice(256, tumour=True), pnginfo=info),
        f"{CANARY}_MRN123.dcm": dicom_bytes(synthetic_slice(256).astype("uint16") * 16),
    }
    images = FolderImages(tmp_path / "data" / "images")
    reader = Actor("dr-test", "radiologist")
    for _name, data in uploads.items():  # the file name is never passed on: nothing downstream can store it
        result = triage(data, tiny_classifier, None, store, actor=reader, images=images,
                        patient_ref=pseudonymise(f"{CANARY} Test", key))  # fmt: skip
        assert result.status.state == "saved" and result.record.uploader == "dr-test"  # the signed-in account
        assert result.record.image_key in images.stored_keys()  # the pixels kept for review, de-identified
    assert store.summary().total == 2 and len(store.audit_events()) == 2
    store._connection().execute("PRAGMA wal_checkpoint(FULL)")
    files = [path for path in (tmp_path / "data").rglob("*") if path.is_file()]
    assert len([path for path in files if path.suffix == ".png"]) == 2
    for path in files:  # the database, its journal, the key and the image store
        content = path.read_bytes()
        assert CANARY.encode() not in content and b"MRN123" not in content, path.name
        assert CANARY.lower().encode() not in content
