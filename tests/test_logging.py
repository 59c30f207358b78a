"""Every refusal, save failure and storage state change is one structured log line: a code, never a file name or
an identity."""

from __future__ import annotations

import logging
from pathlib import Path

from core.errors import StoreUnavailable
from core.services.access import Actor
from core.services.triage import analyse_upload, save
from tests.scans import CANARY, png_bytes, synthetic_slice


class BrokenStore:
    def atomic(self):
        from contextlib import nullcontext

        return nullcontext()

    def add(self, record):
        raise StoreUnavailable("MongoDB cannot be reached right now.")


def test_a_refused_upload_is_one_line_with_its_code(caplog, tiny_classifier) -> None:
    with caplog.at_level(logging.INFO, logger="btd"):
        outcome = analyse_upload(f"%PDF-1.7 {CANARY} Smith".encode() * 10, tiny_classifier)
    assert outcome.error_code == "unsupported_format"
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("btd")]
    assert lines == ["event=upload_refused code=unsupported_format"]
    assert CANARY not in caplog.text


def test_a_save_failure_is_one_line_with_its_code(caplog, tiny_classifier) -> None:
    analysis = analyse_upload(png_bytes(synthetic_slice(256)), tiny_classifier).analysis
    with caplog.at_level(logging.INFO, logger="btd"):
        actor = Actor(f"{CANARY}@example.org", "radiologist")
        status = save(analysis, BrokenStore(), actor=actor, patient_ref="a" * 64)
    assert status.state == "not saved"
    assert [r.getMessage() for r in caplog.records] == ["event=save_failed code=store_unavailable"]
    assert CANARY not in caplog.text and "a" * 64 not in caplog.text


def test_a_storage_state_change_is_logged_once(caplog, tmp_path: Path) -> None:
    import streamlit as st

    from ui.resources import storage_health

    class Flaky:
        down = False

        def ping(self) -> None:
            if self.down:
                raise StoreUnavailable("MongoDB cannot be reached right now.")

    store = Flaky()
    with caplog.at_level(logging.INFO, logger="btd"):
        for down in (False, False, True, True, False):
            st.cache_data.clear()
            store.down = down
            storage_health(f"test {tmp_path}", store)
    states = [r.getMessage() for r in caplog.records if r.name == "btd.ui"]
    assert states == [
        "event=store_state state=healthy",
        "event=store_state state=store_unavailable",
        "event=store_state state=healthy",
    ]


def test_a_failure_in_a_command_is_one_json_line_and_one_log_line_without_its_message(tmp_path: Path) -> None:
    """The command line set up no log: its internal-error path printed Python's whole traceback on stderr, with
    the exception's text (a path, a value; for the PACS watch, in the system journal)."""
    import json
    import subprocess
    import sys

    scan = tmp_path / "scan.png"
    scan.write_bytes(png_bytes(synthetic_slice(256)))
    script = (
        "import runpy, sys\n"
        "import core.model.analysis as analysis\n"
        f"def broken(*a, **k): raise RuntimeError('{CANARY} /home/someone/patient.dcm')\n"
        "analysis.find_brain = broken\n"
        f"sys.argv = ['core', 'predict', {str(scan)!r}]\n"
        "runpy.run_module('core', run_name='__main__')\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root, timeout=120)
    assert done.returncode == 1, done.stderr
    (line,) = [json.loads(text) for text in done.stdout.splitlines()]
    assert line["error"]["code"] == "internal_error"
    logged = [text for text in done.stderr.splitlines() if "event=analysis_failed" in text]
    assert len(logged) == 1 and "exception=RuntimeError at=" in logged[0] and "analysis.py:" in logged[0]
    assert "Traceback" not in done.stderr and CANARY not in done.stdout + done.stderr
