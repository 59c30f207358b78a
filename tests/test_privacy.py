"""Canary: a typed patient name, a file name and metadata with identities leave no trace in the database."""

from __future__ import annotations

from pathlib import Path

from PIL import PngImagePlugin

from core.identity import local_key, pseudonymise
from core.model.analysis import analyse
from core.services.triage import new_record
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
    for _name, data in uploads.items():  # the file name is never passed on: nothing downstream can store it
        analysis = analyse(data, tiny_classifier)
        record = new_record(
            analysis,
            patient_ref=pseudonymise(f"{CANARY} Test", key),
            uploader="dr-test",
        )
        assert store.add(record)
    assert store.summary().total == 2
    store._connection().execute("PRAGMA wal_checkpoint(FULL)")
    for path in (tmp_path / "data").iterdir():
        content = path.read_bytes()
        assert CANARY.encode() not in content and b"MRN123" not in content, path.name
        assert CANARY.lower().encode() not in content
