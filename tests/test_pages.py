"""AppTest runs of every page: upload to verdict and one saved record; bad files explained; charts from a store."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from core.store import SQLiteStore
from tests.scans import png_bytes, synthetic_slice
from tests.test_store import make_record

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def app_environment(tmp_path: Path, tiny_card: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BTD_MODEL", str(tiny_card))
    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("MONGODB_URI", raising=False)
    st.cache_data.clear()
    st.cache_resource.clear()
    yield tmp_path / "data"
    st.cache_data.clear()
    st.cache_resource.clear()


def page(name: str) -> AppTest:
    return AppTest.from_file(str(ROOT / "pages" / name), default_timeout=60)


def test_entry_script_opens_the_scan_page() -> None:
    app = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
    assert not app.exception
    assert app.title[0].value == "Scan triage"
    assert "tiny" in " ".join(m.value for m in app.sidebar.markdown)


def test_scan_page_shows_original_crop_and_verdict_and_saves_once(app_environment: Path) -> None:
    app = page("scan.py").run()
    assert not app.exception and app.info  # the empty-state explanation
    scan = png_bytes(synthetic_slice(512, tumour=True))
    app.file_uploader[0].set_value([("ZZCANARY_MRN123.png", scan, "image/png")]).run()
    assert not app.exception
    assert len(app.get("image")) == 3  # original with box, crop as the model sees it, where it looked
    assert app.metric[0].label == "Verdict"
    assert app.metric[0].value in {"Glioma", "Meningioma", "Pituitary tumour", "No tumour"}
    spec = json.loads(app.get("plotly_chart")[0].proto.spec)
    assert len(spec["data"][0]["y"]) == 4
    assert "ZZCANARY" not in str(app.main)  # the file name is never shown
    app.run()  # a rerun (any widget change) must not save again
    store = SQLiteStore(app_environment / "results.sqlite3")
    assert store.summary().total == 1
    assert "saved" in app.caption[0].value.lower() or any("saved" in c.value for c in app.caption)


def test_bad_file_gets_its_reason_and_the_batch_goes_on(app_environment: Path) -> None:
    app = page("scan.py").run()
    app.file_uploader[0].set_value(
        [
            ("fake.png", b"%PDF-1.7 not an image" * 20, "image/png"),
            ("good.png", png_bytes(synthetic_slice(256)), "image/png"),
            ("black.png", png_bytes(synthetic_slice(256) * 0), "image/png"),
        ]
    ).run()
    assert not app.exception
    errors = [e.value for e in app.error]
    assert any("PDF document" in e for e in errors)
    assert any("No brain region" in e for e in errors)
    assert len(app.get("image")) == 3  # the good one
    table = app.dataframe[0].value
    assert table["result"][0] == "rejected" and table["result"][2] == "rejected"
    assert table["result"][1] in ("classified", "needs review")  # the tiny test model is unsure of everything
    assert SQLiteStore(app_environment / "results.sqlite3").summary().total == 1


def test_statistics_page_explains_an_empty_database() -> None:
    app = page("statistics.py").run()
    assert not app.exception
    assert any("No saved results" in i.value for i in app.info)
    assert not app.get("plotly_chart")


def test_statistics_page_charts_the_stores_aggregates(app_environment: Path) -> None:
    store = SQLiteStore(app_environment / "results.sqlite3")
    now = datetime.now(UTC)
    labels = ["glioma"] * 6 + ["notumor"] * 4 + ["pituitary"] * 2
    for i, label in enumerate(labels):
        store.add(make_record(i + 1, now - timedelta(days=i % 3, minutes=5), label))
    store.add(replace(make_record(99, now - timedelta(minutes=1), "glioma"), gate="rejected"))  # not counted
    app = page("statistics.py").run()
    assert not app.exception
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Scans with a verdict"] == "12" and metrics["Tumour rate"] == "66.7%"
    assert metrics["Flagged for review"] == "0" and metrics["Rejected (not brain MRI)"] == "1"
    assert metrics["Glioma"] == "6" and metrics["No tumour"] == "4"
    charts = {
        json.loads(c.proto.spec)["layout"]["title"]["text"]: json.loads(c.proto.spec) for c in app.get("plotly_chart")
    }
    assert set(charts) == {"Tumour rate per day", "Class mix", "Confidence of the predicted class"}
    assert len(app.dataframe[1].value) == 12  # latest results


def test_batch_of_fifty_scans_gets_a_progress_bar_and_one_record_each(app_environment: Path) -> None:
    files = [
        (f"scan{i}.png", png_bytes(synthetic_slice(256, tumour=i % 3 == 0, seed=i)), "image/png") for i in range(50)
    ]
    app = page("scan.py").run()
    app.file_uploader[0].set_value(files).run(timeout=300)
    assert not app.exception
    assert app.progress[0].value == 100 and "50 of 50" in app.progress[0].text
    assert len(app.dataframe[0].value) == 50
    assert SQLiteStore(app_environment / "results.sqlite3").summary().total == 50
    assert app.download_button[0].label == "Download results (CSV)"


def test_two_sessions_never_see_each_others_uploads() -> None:
    first, second = page("scan.py").run(), page("scan.py").run()
    first.file_uploader[0].set_value([("a.png", png_bytes(synthetic_slice(256, tumour=True)), "image/png")]).run()
    second.run()
    assert len(first.get("image")) == 3
    assert not second.get("image") and second.info  # still the empty state
