"""Studies from a real PACS: a development Orthanc with its DICOMweb plugin, started by the fixture (skipped with the
reason when Debian's orthanc / orthanc-dicomweb are missing), and the PACS failures a user meets."""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless

from core.errors import (
    AccessDenied,
    FileTooLarge,
    PacsError,
    PacsMalformed,
    PacsNotFound,
    PacsQueryRefused,
    PacsRefused,
    PacsTimedOut,
    PacsUnreachable,
)
from core.imaging.limits import StudyLimits
from core.imaging.phantom_series import dicom_series, head_volume
from core.pacs import objects
from core.pacs.client import Pacs
from core.pacs.objects import ModelFacts
from core.pacs.orthanc import DevOrthanc, available
from core.services import pacs as pacs_service
from core.services import pacs_watch
from core.services.access import Actor
from core.storage.sqlite import SQLiteStore
from tests.scans import Trail, empty_database, garbage_pacs, run_core

ROOT = Path(__file__).resolve().parents[1]
RADIOLOGIST, SUPERVISOR, ADMIN = Actor("dr-a", "radiologist"), Actor("boss", "supervisor"), Actor("root", "admin")
STUDY = "1.2.826.0.1.3680043.8.498.77"
CT_STUDY = "1.2.826.0.1.3680043.8.498.78"
J2K_STUDY = "1.2.826.0.1.3680043.8.498.90"  # stored JPEG 2000: an Orthanc without GDCM cannot transcode it
MIXED_STUDY = "1.2.826.0.1.3680043.8.498.91"  # one Study Instance UID, two patients

pytestmark = pytest.mark.heavy  # a real Orthanc process per module: make test runs these, make check does not


def _datasets(files: list[bytes], **changes: object) -> list[pydicom.Dataset]:
    datasets = [pydicom.dcmread(io.BytesIO(f)) for f in files]
    for ds in datasets:
        ds.PatientID = "PACS-TEST-001"
        ds.StudyDate = "20261201"
        ds.StudyDescription = "MR BRAIN WITH CONTRAST"
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
    return datasets


@pytest.fixture(scope="module")
def orthanc():
    reason = available()
    if reason:
        pytest.skip(reason)
    with DevOrthanc() as server:
        pacs = Pacs(server.dicomweb, server.user, server.password)
        tumour = dicom_series(head_volume(8, 128, range(3, 6)), study_uid=STUDY, series_uid=f"{STUDY}.1")
        assert len(pacs.store(_datasets(tumour))) == 8
        ct = dicom_series(head_volume(4, 64), study_uid=CT_STUDY, series_uid=f"{CT_STUDY}.1")
        pacs.store(_datasets(ct, Modality="CT", PatientID="PACS-TEST-002"))
        yield server


def test_a_study_is_found_pulled_into_memory_and_analysed_like_an_upload(orthanc, tiny_classifier, tmp_path) -> None:
    pacs = Pacs(orthanc.dicomweb, orthanc.user, orthanc.password)
    hits = pacs_service.search(pacs, RADIOLOGIST, Trail(), None, patient_id="PACS-TEST-001", description="BRAIN")
    assert STUDY in [h.study_uid for h in hits] and hits[0].modalities == ("MR",) and hits[0].instances == 8
    assert (
        pacs_service.search(pacs, RADIOLOGIST, Trail(), None, start="20270101") == []
    )  # a date range that excludes it
    # exact, as the page promises: Orthanc matches a patient ID ignoring case, another patient's ID among them
    assert pacs_service.search(pacs, RADIOLOGIST, Trail(), None, patient_id="pacs-test-001") == []
    store = SQLiteStore(tmp_path / "results.sqlite3")
    key = b"k" * 32
    outcome = pacs_service.pull_and_analyse(pacs, RADIOLOGIST, STUDY, tiny_classifier, store, key).outcome
    assert outcome.error_code is None and len(outcome.series) == 1
    series = outcome.series[0]
    assert len(series.sections) == 8 and series.label is not None and series.volume.step_mm == pytest.approx(5.0)
    (event,) = [e for e in store.audit_events() if e.action == "pacs_pull"]
    assert event.target == pacs_service.patient_reference(STUDY, key) and STUDY not in json.dumps(event.detail)
    assert pacs_service.patient_reference("PACS-TEST-001", key) not in (None, "PACS-TEST-001")


def test_the_report_and_key_images_go_back_to_the_pacs_once_and_read_back_with_their_verdict(
    orthanc, tiny_classifier, tmp_path
) -> None:
    import requests

    from core.pacs.objects import STATEMENT, ModelFacts

    pacs = Pacs(orthanc.dicomweb, orthanc.user, orthanc.password)
    store = SQLiteStore(tmp_path / "results.sqlite3")
    pulled = pacs_service.pull_and_analyse(pacs, RADIOLOGIST, STUDY, tiny_classifier, store, b"k" * 32)
    card = tiny_classifier.card
    model = ModelFacts(card.name, card.version, card.weights_sha256)
    stored = pacs_service.send_results(pacs, RADIOLOGIST, pulled, model, store, b"k" * 32)
    series = pulled.outcome.series[0]
    assert len(stored) == 1 + min(len(series.tumour_sections), 12)
    auth = (orthanc.user, orthanc.password)
    count = lambda: len(requests.get(f"{orthanc.rest}/instances", auth=auth, timeout=10).json())  # noqa: E731
    before = count()
    assert pacs_service.send_results(pacs, RADIOLOGIST, pulled, model, store, b"k" * 32) == stored
    assert count() == before  # the same result sent again: the same instances, no duplicate
    found = {s.modality: s for s in pacs.series_of(STUDY)}
    assert {"MR", "SR"} <= set(found)  # in the source study, beside its images
    (report,) = pacs._client.retrieve_series(STUDY, found["SR"].series_uid)
    text = json.dumps([str(item.get("TextValue", "")) for item in report.ContentSequence])
    said = {"tumour": "Tumour", "notumor": "No tumour"}[pulled.outcome.verdict]  # the screen's words, not codes
    assert f"Model verdict (decision aid): {said}" in text and STATEMENT in text and card.name in text
    assert report.StudyInstanceUID == STUDY and report.PreliminaryFlag == "PRELIMINARY"
    assert report.CompletionFlag == "PARTIAL" and str(report.SOPInstanceUID) in stored
    (evidence,) = report.CurrentRequestedProcedureEvidenceSequence  # it refers to the source images
    assert evidence.StudyInstanceUID == STUDY and len(evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence) == 8
    reviewed = pacs_service.send_results(pacs, RADIOLOGIST, pulled, model, store, b"k" * 32, final_label="glioma")
    assert reviewed[0] != stored[0]  # a new version: a new instance in the same report series
    sent = [e for e in store.audit_events() if e.action == "pacs_send"]
    assert len(sent) == 3 and all(STUDY not in e.detail.values() for e in sent)  # keyed, never the UID
    trail = json.dumps([e.detail for e in sent])  # nor the report's UID: the PACS answers it with the patient
    assert not any(uid in trail for uid in [*stored, *reviewed]) and all(len(e.detail["report"]) == 64 for e in sent)


def test_watch_mode_analyses_each_new_brain_mr_study_once_also_after_a_restart_and_again_when_a_series_is_added(
    orthanc, tiny_classifier, tmp_path
) -> None:
    import time

    import requests

    from core.domain.results import WorklistQuery
    from core.pacs.changes import OrthancChanges
    from core.storage.images import FolderImages

    pacs = Pacs(orthanc.dicomweb, orthanc.user, orthanc.password)
    store = SQLiteStore(tmp_path / "results.sqlite3")
    watcher = pacs_watch.Watcher(
        pacs, OrthancChanges.of(pacs, orthanc.rest), tiny_classifier, store, FolderImages(tmp_path / "img"), b"k" * 32
    )
    state_file = tmp_path / "pacs-watch.json"
    time.sleep(2.5)  # Orthanc calls a study stable after a second without new images
    first = pacs_watch.watch_once(watcher, pacs_watch.WatchState.load(state_file), RADIOLOGIST)
    handled = {line["study_uid"]: line for line in first}
    assert handled[STUDY]["saved"] == ["saved"] and handled[CT_STUDY]["skipped"] == "pacs_not_found"
    (result,) = store.worklist(WorklistQuery(), 10)
    assert result.patient_ref == pacs_service.patient_reference("PACS-TEST-001", b"k" * 32)
    assert pacs_watch.watch_once(watcher, pacs_watch.WatchState.load(state_file), RADIOLOGIST) == []  # restart
    new = "1.2.826.0.1.3680043.8.498.79"
    pacs.store(_datasets(dicom_series(head_volume(6, 96), study_uid=new, series_uid=f"{new}.1")))
    time.sleep(2.5)
    state = pacs_watch.WatchState.load(state_file)
    assert [line["study_uid"] for line in pacs_watch.watch_once(watcher, state, RADIOLOGIST)] == [new]
    assert pacs_watch.watch_once(watcher, state, RADIOLOGIST) == []  # exactly once
    assert len(store.worklist(WorklistQuery(), 10)) == 2
    # the scanner sends another series to that study later: analysed again, the new series added to the worklist
    pacs.store(_datasets(dicom_series(head_volume(5, 96, range(1, 3)), study_uid=new, series_uid=f"{new}.2")))
    time.sleep(2.5)
    (again,) = pacs_watch.watch_once(watcher, state, RADIOLOGIST)
    assert again["study_uid"] == new and again["again"] and sorted(again["saved"]) == ["already saved", "saved"]
    assert len(store.worklist(WorklistQuery(), 10)) == 3
    # a study deleted after it became stable (by hand, or recycled by a full PACS): Orthanc drops its changes too
    gone, later = "1.2.826.0.1.3680043.8.498.80", "1.2.826.0.1.3680043.8.498.81"
    pacs.store(_datasets(dicom_series(head_volume(4, 96), study_uid=gone, series_uid=f"{gone}.1")))
    time.sleep(2.5)
    auth = (orthanc.user, orthanc.password)
    (found,) = requests.post(f"{orthanc.rest}/tools/lookup", data=gone, auth=auth, timeout=10).json()
    requests.delete(f"{orthanc.rest}/studies/{found['ID']}", auth=auth, timeout=10).raise_for_status()
    pacs.store(_datasets(dicom_series(head_volume(4, 96), study_uid=later, series_uid=f"{later}.1")))
    time.sleep(2.5)
    assert [line["study_uid"] for line in pacs_watch.watch_once(watcher, state, RADIOLOGIST)] == [later]
    assert pacs_watch.watch_once(watcher, state, RADIOLOGIST) == []
    # a first start from now (--from-now) goes on after the feed's last change: none of the studies above again
    fresh = SQLiteStore(tmp_path / "fresh.sqlite3")
    assert watcher.changes.latest() == state.last > 0
    now = pacs_watch.open_state(tmp_path / "now.json", b"k" * 32, fresh, RADIOLOGIST, watcher.changes.latest)
    assert now.last == state.last and [(e.action, e.detail) for e in fresh.audit_events()] == [
        ("pacs_watch_started", {"last": state.last})
    ]
    assert pacs_watch.watch_once(replace(watcher, store=fresh), now, RADIOLOGIST) == []


def test_supervisors_and_admins_never_reach_pacs_images(orthanc, tiny_classifier) -> None:
    pacs = Pacs(orthanc.dicomweb, orthanc.user, orthanc.password)
    pulled = pacs_service.pull_and_analyse(pacs, RADIOLOGIST, STUDY, tiny_classifier, Trail(), None)
    facts = ModelFacts("m", "1", "0" * 64)
    for actor in (SUPERVISOR, ADMIN):  # searching, pulling, reviewing and sending are a radiologist's
        with pytest.raises(AccessDenied):
            pacs_service.search(pacs, actor, Trail(), None)
        with pytest.raises(AccessDenied):
            pacs_service.pull_and_analyse(pacs, actor, STUDY, tiny_classifier, Trail(), None)
        with pytest.raises(AccessDenied):
            pacs_service.review_and_send(pacs, actor, pulled, facts, None, None, "glioma", ["x"])
        with pytest.raises(AccessDenied):
            pacs_service.send_results(pacs, actor, pulled, facts, Trail(), None)


def test_the_pacs_command_prints_the_study_lines_with_the_study_uid(orthanc, tiny_card, tmp_path) -> None:
    command = ["pacs", "analyse", "--url", orthanc.dicomweb, "--study", STUDY, "--user", orthanc.user]
    command += ["--password-stdin", "--model", str(tiny_card)]
    env = {"PATH": "/usr/bin:/bin", "BTD_DATA_DIR": str(tmp_path), "BTD_LESION_MODEL": "none"}
    empty_database(tmp_path)  # as the app's first start leaves it
    done = run_core(command, env, orthanc.password + "\n")
    (line,) = [json.loads(text) for text in done.stdout.splitlines()]
    assert done.returncode == 0 and line["study_uid"] == STUDY and line["slices"] == 8 and line["series_verdict"]
    refused = run_core(command, env, "wrong\n")
    assert json.loads(refused.stdout)["error"]["code"] == "pacs_refused" and refused.returncode == 1
    assert orthanc.password not in refused.stdout + refused.stderr


def test_the_watch_command_logs_each_study_under_its_keyed_reference_never_its_uid(orthanc, tiny_card, tmp_path):
    """A daemon's output ends in the system journal: the watch printed every study's UID there."""
    command = ["pacs", "watch", "--url", orthanc.dicomweb, "--rest", orthanc.rest, "--once", "--user", orthanc.user]
    env = {"PATH": "/usr/bin:/bin", "BTD_DATA_DIR": str(tmp_path), "BTD_LESION_MODEL": "none"}
    empty_database(tmp_path)  # as the app's first start leaves it
    done = run_core([*command, "--password-stdin", "--model", str(tiny_card)], env, orthanc.password + "\n")
    lines = [json.loads(text) for text in done.stdout.splitlines()]
    assert done.returncode == 0 and lines and all(len(line["study_ref"]) == 64 for line in lines), done.stdout
    assert STUDY not in done.stdout + done.stderr and CT_STUDY not in done.stdout + done.stderr
    # --from-now on a first start: the PACS's history is not read (every study it lists, reports sent to each)
    later = tmp_path / "later"
    empty_database(later)
    env["BTD_DATA_DIR"] = str(later)
    done = run_core(
        [*command, "--from-now", "--password-stdin", "--model", str(tiny_card)], env, orthanc.password + "\n"
    )
    assert (
        done.returncode == 0 and done.stdout == "" and json.loads((later / "pacs-watch.json").read_text())["last"] > 0
    )


def test_a_watch_line_in_the_log_counts_the_objects_it_stored_and_never_names_them() -> None:
    """The watch's log line listed the report's and key images' UIDs: the PACS answers any of them with the
    patient's name and ID."""
    from core.cli.pacs import _for_the_log

    line = {"study_uid": STUDY, "verdict": "tumour", "stored": [f"{STUDY}.9.1", f"{STUDY}.9.2"]}
    logged = _for_the_log(dict(line), b"k" * 32)
    assert logged["stored"] == 2 and STUDY not in json.dumps(logged) and len(logged["study_ref"]) == 64


def test_pacs_failures_each_get_their_own_message(orthanc, tiny_classifier) -> None:
    with pytest.raises(PacsRefused, match="user name or password"):
        Pacs(orthanc.dicomweb, orthanc.user, "wrong").search()
    with pytest.raises(PacsUnreachable, match="does not answer"):
        Pacs("http://127.0.0.1:9/dicom-web", timeout_s=2).search()
    good = Pacs(orthanc.dicomweb, orthanc.user, orthanc.password)
    with pytest.raises(PacsNotFound, match="no MR series"):
        good.retrieve_mr(CT_STUDY)
    with pytest.raises(PacsNotFound, match="no study with this Study Instance UID"):  # a mistyped UID
        good.retrieve_mr("1.2.826.0.1.3680043.8.498.999999")
    small = Pacs(orthanc.dicomweb, orthanc.user, orthanc.password, limits=StudyLimits(max_files=3))
    with pytest.raises(FileTooLarge, match="limit is 3"):
        small.retrieve_mr(STUDY)
    outcome = pacs_service.pull_and_analyse(small, RADIOLOGIST, STUDY, tiny_classifier, Trail(), None).outcome
    assert outcome.error_code == "file_too_large" and outcome.series == ()  # nothing analysed from a part
    # pixels counted from the series' metadata before any image is held (one huge multi-frame file was held whole)
    few = Pacs(orthanc.dicomweb, orthanc.user, orthanc.password, limits=StudyLimits(max_dicom_pixels=1000))
    few._client.iter_series = lambda *a, **k: pytest.fail("retrieved before the pixels were counted")
    with pytest.raises(FileTooLarge, match="refused before retrieving them"):
        few.retrieve_mr(STUDY)
    with pytest.raises(PacsUnreachable, match="no DICOMweb service at this address"):  # a mistyped root: "no such
        Pacs(orthanc.dicomweb.replace("dicom-web", "dicomweb"), orthanc.user, orthanc.password).search()  # study"
    # a series listed a moment ago and deleted since: not the address (an administrator was sent to check the URL)
    with pytest.raises(PacsUnreachable, match=r"HTTP 404\): the study or series was deleted meanwhile"):
        good._size_of(STUDY, "1.2.826.0.1.3680043.8.498.999998")
    with pytest.raises(PacsQueryRefused, match="exactly"):  # "*" listed every patient's studies, "A,B" two
        good.search(patient_id="PACS-TEST-001,PACS-TEST-002")
    hits = good.search(patient_id="PACS-TEST-001", description="MR, BRAIN")  # a comma is a word break, not a list
    assert STUDY in [h.study_uid for h in hits]


def test_a_study_the_pacs_keeps_as_jpeg_2000_is_pulled_as_stored(orthanc, tiny_classifier) -> None:
    """Asked for uncompressed images, an Orthanc without a JPEG 2000 transcoder failed the retrieval (HTTP 500)
    for ever: a study from an archive that compresses was never analysed."""
    pacs = Pacs(orthanc.dicomweb, orthanc.user, orthanc.password)
    j2k = dicom_series(head_volume(4, 64), study_uid=J2K_STUDY, series_uid=f"{J2K_STUDY}.1")
    j2k = _datasets(j2k, PatientID="PACS-TEST-005")
    for dataset in j2k:
        dataset.compress(JPEG2000Lossless)
    pacs.store(j2k)
    files, left_out = pacs.retrieve_mr(J2K_STUDY)
    assert len(files) == 4 and left_out == []
    outcome = pacs_service.pull_and_analyse(pacs, RADIOLOGIST, J2K_STUDY, tiny_classifier, Trail(), None).outcome
    assert outcome.error_code is None and len(outcome.series[0].sections) == 4


def test_a_study_uid_shared_by_two_patients_is_refused_not_filed_under_the_first(
    orthanc, tiny_classifier, tmp_path
) -> None:
    pacs = Pacs(orthanc.dicomweb, orthanc.user, orthanc.password)
    for n, patient in enumerate(("PACS-TEST-003", "PACS-TEST-004"), start=1):
        files = dicom_series(head_volume(3, 64, seed=n), study_uid=MIXED_STUDY, series_uid=f"{MIXED_STUDY}.{n}")
        pacs.store(_datasets(files, PatientID=patient))
    store = SQLiteStore(tmp_path / "results.sqlite3")
    outcome = pacs_service.pull_and_analyse(pacs, RADIOLOGIST, MIXED_STUDY, tiny_classifier, store, b"k" * 32).outcome
    assert outcome.error_code == "several_patients" and outcome.series == ()
    (pull,) = [e for e in store.audit_events() if e.action == "pacs_pull"]  # retrieved, so audited, refused or not
    assert pull.detail["refused"] == "several_patients"
    assert "more than one patient" in (outcome.error_message or "")


def test_a_study_the_pacs_filed_under_a_corrected_patient_since_the_pull_is_not_sent(orthanc, tiny_classifier) -> None:
    """A real PACS reconciled between pull and send (a trauma alias replaced by the patient's ID, the same UIDs):
    the report went under the alias, beside the study filed under the patient."""
    from core.errors import PacsStudyChanged

    uid = "1.2.826.0.1.3680043.8.498.92"
    files = dicom_series(head_volume(3, 64), study_uid=uid, series_uid=f"{uid}.1")
    pacs = Pacs(orthanc.dicomweb, orthanc.user, orthanc.password)
    pacs.store(_datasets(files, PatientID="TRAUMA-0001"))
    pulled = pacs_service.pull_and_analyse(pacs, RADIOLOGIST, uid, tiny_classifier, Trail(), None)
    pacs.store(_datasets(files, PatientID="MRN-424242"))
    card = tiny_classifier.card
    with pytest.raises(PacsStudyChanged, match="patient or accession number corrected"):
        model = ModelFacts(card.name, card.version, card.weights_sha256)
        pacs_service.send_results(pacs, RADIOLOGIST, pulled, model, Trail(), None)
    assert {s.modality for s in pacs.series_of(uid)} == {"MR"}  # nothing sent


def test_a_pacs_that_answers_malformed_json_is_reported_as_such() -> None:
    with garbage_pacs(b'{"not": "a list of DICOM JSON"') as url, pytest.raises(PacsMalformed, match="not valid"):
        Pacs(url).search()
    with garbage_pacs(b'{"valid": "JSON, but not a list"}') as url, pytest.raises(PacsMalformed, match="not valid"):
        Pacs(url).search()


def test_a_busy_pacs_is_said_at_once_as_one_to_try_again_and_a_refused_request_names_the_request() -> None:
    """dicomweb-client retried 503s for 30 s, then raised a RetryError nobody caught: the watch marked the study
    handled for good ("internal_error") and the page showed an exception. A 403 read as a wrong password."""
    import time

    import requests

    from core.pacs.changes import OrthancChanges

    with garbage_pacs(b"{}", status=503) as url:
        started = time.monotonic()
        with pytest.raises(PacsUnreachable, match=r"busy or unavailable \(HTTP 503\) for the series search"):
            Pacs(url).series_of("1.2.826.0.1.3680043.8.498.1")
        assert time.monotonic() - started < 5
        with pytest.raises(PacsUnreachable, match="busy"):
            Pacs(url).search()
        with pytest.raises(PacsUnreachable, match="busy"):
            OrthancChanges(url.removesuffix("/dicom-web"), requests.Session()).stable_studies(0)
    with garbage_pacs(b"{}", status=403) as url, pytest.raises(PacsRefused, match=r"refused the series search to"):
        Pacs(url).series_of("1.2.826.0.1.3680043.8.498.1")
    with garbage_pacs(b"{}", status=401) as url, pytest.raises(PacsRefused, match="user name or password"):
        Pacs(url).series_of("1.2.826.0.1.3680043.8.498.1")


def test_a_pacs_that_takes_the_request_and_never_answers_has_timed_out_not_gone() -> None:
    """A read timeout (the PACS up, the study too large to prepare in time) read as an outage, which the watch
    waits out for ever: every study after it was held back. It is told apart; a port nothing listens on is not."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)  # connections are taken by the kernel and never answered
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/dicom-web"
        with pytest.raises(PacsTimedOut, match=r"did not answer the search within 1 s") as timed_out:
            Pacs(url, timeout_s=1).search()
    assert timed_out.value.code == "pacs_timed_out" and isinstance(timed_out.value, PacsUnreachable)
    with pytest.raises(PacsUnreachable, match="does not answer") as gone:
        Pacs("http://127.0.0.1:9/dicom-web", timeout_s=1).search()
    assert not isinstance(gone.value, PacsTimedOut)
    # an answer begun and then stalled: requests says a lost connection, which read "check its address"
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Stalling(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"[{")
            self.wfile.flush()
            time.sleep(3)

        def log_message(self, *_: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Stalling)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(PacsTimedOut, match="did not answer the search within 1 s"):
            Pacs(f"http://127.0.0.1:{server.server_address[1]}/dicom-web", timeout_s=1).search()
        import requests

        from core.pacs.changes import OrthancChanges

        feed = OrthancChanges(f"http://127.0.0.1:{server.server_address[1]}", requests.Session(), timeout_s=1)
        with pytest.raises(PacsTimedOut, match="change feed did not answer within 1 s"):  # the watch's feed too
            feed.stable_studies(0)
    finally:
        server.shutdown()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")
def test_a_pacs_certificate_of_the_hospitals_own_authority_is_trusted_with_ca_file_and_named_without(
    tmp_path, monkeypatch
) -> None:
    """A PACS whose certificate a hospital's own authority signed failed every request as "the PACS does not
    answer; check its address", and no setting could name the authority."""
    import ssl
    import subprocess
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from core.config import PacsSettings

    cert, key = tmp_path / "pacs.pem", tmp_path / "pacs.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert)),
            *("-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )

    class Empty(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"[]")

        def log_message(self, *_: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Empty)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_address[1]}/dicom-web"
    try:
        with pytest.raises(PacsUnreachable, match=r"certificate could not be verified: .* \[pacs\] ca_file"):
            pacs_service.connect(PacsSettings(url)).search()
        assert pacs_service.connect(PacsSettings(url, ca_file=str(cert))).search() == []
        # and a session's own setting holds whatever REQUESTS_CA_BUNDLE says (it replaced both, --insecure too)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
        assert pacs_service.connect(PacsSettings(url, ca_file=str(cert))).search() == []
        with pytest.warns(Warning, match="Unverified HTTPS request"):  # --insecure, for tests only
            assert pacs_service.connect(PacsSettings(url, verify_tls=False)).search() == []
        with pytest.raises(PacsError, match=r"certificate authority file \(ca_file\) cannot be read"):
            pacs_service.connect(PacsSettings(url, ca_file=str(tmp_path / "gone.pem")))
        (garbage := tmp_path / "garbage.pem").write_text("not a certificate\n")  # it read "is the port https?"
        with pytest.raises(PacsError, match=r"certificate authority file \(ca_file\) holds no PEM certificate"):
            pacs_service.connect(PacsSettings(url, ca_file=str(garbage)))
        (folder := tmp_path / "authorities").mkdir()  # a folder of certificates, as requests takes one: connects
        assert pacs_service.connect(PacsSettings(url, ca_file=str(folder))) is not None
    finally:
        server.shutdown()
    plain = HTTPServer(("127.0.0.1", 0), Empty)  # an https address at a plain-http port: no certificate to blame
    threading.Thread(target=plain.serve_forever, daemon=True).start()
    try:
        with pytest.raises(PacsUnreachable, match="TLS handshake with the PACS failed") as said:
            pacs_service.connect(PacsSettings(f"https://127.0.0.1:{plain.server_address[1]}/dicom-web")).search()
        assert "ca_file" not in str(said.value)  # it was sent off to install a certificate authority
    finally:
        plain.shutdown()


def test_an_answer_cut_off_is_a_pacs_failure_to_retry_not_a_crash() -> None:
    import requests

    from core.pacs.changes import OrthancChanges

    with garbage_pacs(b"[{", declared=5000) as url, pytest.raises(PacsUnreachable, match=r"broke off|does not answer"):
        Pacs(url, timeout_s=5).search()
    with garbage_pacs(b"[{", declared=5000) as url, pytest.raises(PacsUnreachable, match=r"broke off|does not answer"):
        OrthancChanges(url.removesuffix("/dicom-web"), requests.Session(), timeout_s=5).stable_studies(0)  # it ended
        # the watch service (ChunkedEncodingError)


def test_pacs_analyse_saves_under_the_patients_reference_before_sending_and_sends_nothing_unsaved(
    orthanc, tiny_card, tmp_path, monkeypatch, capsys
) -> None:
    """It sent the report first and saved afterwards (a failed save left a report in the PACS for a result on no
    worklist), and saved without the patient's keyed reference (the study never showed in History)."""
    import io
    import sys

    from core.cli import main
    from core.domain.results import WorklistQuery
    from core.errors import StoreUnavailable
    from core.identity import local_key

    study = "1.2.826.0.1.3680043.8.498.83"
    pacs = Pacs(orthanc.dicomweb, orthanc.user, orthanc.password)
    pacs.store(_datasets(dicom_series(head_volume(6, 96, range(2, 4)), study_uid=study, series_uid=f"{study}.1")))
    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    empty_database(tmp_path / "data")  # as the app's first start leaves it
    monkeypatch.setenv("BTD_LESION_MODEL", "none")
    args = ["pacs", "analyse", "--url", orthanc.dicomweb, "--study", study, "--user", orthanc.user]
    args += ["--password-stdin", "--model", str(tiny_card), "--save", "--send"]
    real = SQLiteStore.add_series

    def down(self, record, sections):
        raise StoreUnavailable("The database is locked.")

    monkeypatch.setattr(SQLiteStore, "add_series", down)
    monkeypatch.setattr(sys, "stdin", io.StringIO(orthanc.password + "\n"))
    assert main(args) == 3
    (line,) = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert line["send_error"]["code"] == "not_saved" and "stored" not in line
    assert {s.modality for s in pacs.series_of(study)} == {"MR"}  # nothing sent
    monkeypatch.setattr(SQLiteStore, "add_series", real)
    monkeypatch.setattr(sys, "stdin", io.StringIO(orthanc.password + "\n"))
    assert main(args) == 0
    (line,) = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert line["saved"] == "saved" and line["stored"]
    (saved,) = SQLiteStore(tmp_path / "data" / "results.sqlite3").worklist(WorklistQuery(), 10)
    assert saved.patient_ref == pacs_service.patient_reference("PACS-TEST-001", local_key(tmp_path / "data"))


def test_the_pacs_is_asked_for_dicom_json_alone_and_logs_no_error_for_our_searches(orthanc) -> None:
    """The client library asked for "application/dicom+json, application/json": Orthanc logged an error for every
    series and report search (five for each study sent)."""
    pacs = Pacs(orthanc.dicomweb, orthanc.user, orthanc.password)
    assert "MR" in [s.modality for s in pacs.series_of(STUDY)]  # (reports sent by the tests before: SR, OT)
    report_series = objects.report_series(STUDY)
    pacs.report_head(STUDY, report_series)
    assert not pacs.holds(STUDY, report_series, "1.2.3")
    log = (orthanc.folder / "orthanc.log").read_text(errors="replace")
    assert "Unsupported return MIME type" not in log, [line for line in log.splitlines() if "MIME" in line][:3]
