"""Canary: a typed patient name, a file name and metadata with identities leave no trace in the database."""

from __future__ import annotations

from pathlib import Path

from PIL import PngImagePlugin

from core.identity import local_key, pseudonymise
from core.services.access import Actor
from core.services.triage import triage
from core.storage.images import FolderImages
from core.storage.sqlite import SQLiteStore
from tests.scans import CANARY, dicom_bytes, jpeg_bytes, png_bytes, synthetic_slice


def test_identities_never_reach_the_database_file_or_the_log(tmp_path: Path, tiny_classifier, caplog) -> None:
    import logging

    from PIL import Image

    store = SQLiteStore(tmp_path / "data" / "results.sqlite3")
    key = local_key(tmp_path / "data")
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", f"{CANARY} Test MRN123")
    exif = Image.Exif()
    exif[0x010E] = f"{CANARY} MRN123"  # ImageDescription, where cameras and exporters put names
    uploads = {
        f"{CANARY}_MRN123.png": png_bytes(synthetic_slice(256, tumour=True), pnginfo=info),
        f"{CANARY}_MRN123.dcm": dicom_bytes(synthetic_slice(256).astype("uint16") * 16),
        f"{CANARY}_MRN123.jpg": jpeg_bytes(synthetic_slice(256, seed=4), exif=exif.tobytes()),
    }
    caplog.set_level(logging.DEBUG)
    images = FolderImages(tmp_path / "data" / "images")
    reader = Actor("dr-test", "radiologist")
    for _name, data in uploads.items():  # the file name is never passed on: nothing downstream can store it
        result = triage(
            data,
            tiny_classifier,
            None,
            store,
            actor=reader,
            images=images,
            patient_ref=pseudonymise(f"{CANARY} Test", key),
        )
        assert result.status.state == "saved" and result.record.uploader == "dr-test"  # the signed-in account
        assert result.record.image_key in images.stored_keys()  # the pixels kept for review, de-identified
    assert store.summary().total == 3 and len(store.audit_events()) == 3
    assert CANARY not in caplog.text and "MRN123" not in caplog.text  # every log line of a successful triage
    store._connection().execute("PRAGMA wal_checkpoint(FULL)")
    files = [path for path in (tmp_path / "data").rglob("*") if path.is_file()]
    assert len([path for path in files if path.suffix == ".png"]) == 3
    for path in files:  # the database, its journal, the key and the image store
        content = path.read_bytes()
        assert CANARY.encode() not in content and b"MRN123" not in content, path.name
        assert CANARY.lower().encode() not in content


def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised_and_names_left_out_unless_asked() -> None:
    from core.services.exports import spreadsheet_safe
    from core.services.triage import batch_csv

    for hostile in ('=HYPERLINK("http://x","y")', "+1", "-2+3", "@SUM(A1)", "\tx", "\rx"):
        assert spreadsheet_safe(hostile) == "'" + hostile
    assert spreadsheet_safe("glioma") == "glioma" and spreadsheet_safe(-0.5) == -0.5
    # after a ";" (a list separator in much of Europe), a quoted formula is a formula cell there too
    from core.services.exports import text_line_safe

    assert spreadsheet_safe('1;"=HYPERLINK(""http://x"")"') == '1;"\'=HYPERLINK(""http://x"")"'
    assert spreadsheet_safe("a; =1+1") == "a; '=1+1"
    assert text_line_safe('"=1+1", x') == '"\'=1+1", x' and text_line_safe('v 1,"-2"') == 'v 1,"\'-2"'
    assert text_line_safe("=1") == "'=1" and text_line_safe("a,=1") == "a,'=1"
    assert spreadsheet_safe('1;" =1+1"') == '1;" \'=1+1"' and text_line_safe('a," =1"') == 'a," \'=1"'  # a space in
    rows = [{"scan": 1, "file": '=HYPERLINK("http://evil")', "verdict": "Glioma", "reason": "-looks odd"}]
    with_names = batch_csv(rows, with_names=True).decode()
    assert "'=HYPERLINK" in with_names and ",'-looks odd" in with_names
    assert "HYPERLINK" not in batch_csv(rows, with_names=False).decode()


def test_a_file_name_is_shown_as_plain_text_never_as_markdown(tmp_path, tiny_card, monkeypatch) -> None:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from core.services.access import Actor
    from tests.scans import png_bytes, synthetic_slice

    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("BTD_MODEL", str(tiny_card))
    st.cache_resource.clear()
    app = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "pages" / "scan.py"), default_timeout=60)
    app.session_state["actor"] = Actor("dr", "radiologist")
    app.run()
    name = "![p](http://127.0.0.1:9/x.png).png"
    app.file_uploader[0].set_value([(name, png_bytes(synthetic_slice(128, tumour=True)), "image/png")]).run()
    assert not app.exception
    assert any(t.value == name for t in app.text)  # st.text: shown as typed
    assert not any("http://127.0.0.1:9" in m.value for m in app.markdown)


def test_no_page_serves_review_images_through_streamlits_media_urls() -> None:
    """/media/<id> answered 200 without the session's cookie and with a foreign Host: images are inline now."""
    import re

    root = Path(__file__).resolve().parents[1]
    sources = [*(root / "ui").glob("*.py"), *(root / "pages").glob("*.py"), root / "streamlit_app.py"]
    calls = [str(p.name) for p in sources if re.search(r"\.image\(", p.read_text())]
    assert calls == []


def test_a_patient_reference_typed_or_pasted_differently_is_the_same_patient() -> None:
    """Decomposed accents, full-width digits, a zero-width space pasted with an ID and a non-breaking hyphen each
    gave another reference (History then found no priors). ASCII references hash as they always did."""
    import hashlib
    import hmac

    from core.identity import pseudonymise

    key = b"k" * 32
    same = [
        ("Zoe\u0308 Mu\u0308ller", "Zoë Müller"),
        ("\uff11\uff12\uff13\uff14\uff15", "12345"),
        ("MRN\u200b12345", "MRN12345"),
        ("MRN\u201112345", "MRN-12345"),
        ("MRN\u221212345", "mrn-12345"),
        ("  p-0042 ", "P-0042"),
    ]
    for typed, reference in same:
        assert pseudonymise(typed, key) == pseudonymise(reference, key), typed
    assert pseudonymise("P-0042", key) == hmac.new(key, b"p-0042", hashlib.sha256).hexdigest()  # as stored before
    assert pseudonymise("MRN12345", key) != pseudonymise("MRN12346", key)
    assert pseudonymise("\u200b", key) is None  # only an invisible character: nothing typed
