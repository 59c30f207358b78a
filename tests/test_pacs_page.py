"""The Study page's "From the PACS" part under Streamlit's AppTest, against a real development Orthanc (skipped with
the reason when Debian's orthanc / orthanc-dicomweb are missing): search, pick, analyse as an upload, send the
report back; each PACS failure shown with its message; a supervisor refused by the service."""

from __future__ import annotations

import io
import logging
from datetime import date
from pathlib import Path

import pydicom
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from core.config import PacsSettings
from core.identity import local_key
from core.imaging.phantom_series import dicom_series, head_volume
from core.pacs.client import Pacs
from core.pacs.orthanc import DevOrthanc, available
from core.services import pacs as pacs_service
from core.services import reviews
from core.services.access import Actor
from core.storage.sqlite import SQLiteStore
from tests.scans import app_store, garbage_pacs

pytestmark = pytest.mark.pages

ROOT = Path(__file__).resolve().parents[1]
PATIENT = "PACS-UI-001"
NAME = "ZZCANARY^Pacspatient"
TUMOUR_STUDY = "1.2.826.0.1.3680043.8.498.91"
OTHER_STUDY = "1.2.826.0.1.3680043.8.498.92"
EMPTIED_STUDY = "1.2.826.0.1.3680043.8.498.93"


def pacs_datasets(files: list[bytes], patient_id: str, study_date: str, description: str) -> list[pydicom.Dataset]:
    """The phantom series as a PACS would hold it: the patient's name and ID, the study's date and description."""
    datasets = [pydicom.dcmread(io.BytesIO(f)) for f in files]
    for ds in datasets:
        ds.PatientID, ds.PatientName = patient_id, NAME
        ds.StudyDate, ds.StudyDescription = study_date, description
    return datasets


def put_study(pacs: Pacs, study_uid: str, tumour: range | None, study_date: str, description: str, patient=PATIENT):
    series = dicom_series(head_volume(6, 128, tumour), study_uid=study_uid, series_uid=f"{study_uid}.1")
    assert len(pacs.store(pacs_datasets(series, patient, study_date, description))) == 6


@pytest.fixture(scope="module")
def orthanc():
    reason = available()
    if reason:
        pytest.skip(reason)
    with DevOrthanc() as server:
        pacs = Pacs(server.dicomweb, server.user, server.password)
        put_study(pacs, TUMOUR_STUDY, range(2, 5), "20261201", "MR BRAIN WITH CONTRAST")
        put_study(pacs, OTHER_STUDY, None, "20261103", "MR HEAD ROUTINE")
        put_study(pacs, EMPTIED_STUDY, None, "20261020", "MR BRAIN FOLLOW-UP", patient="PACS-UI-002")
        yield server


@pytest.fixture(autouse=True)
def app_environment(tmp_path: Path, tiny_card: Path, orthanc, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BTD_MODEL", str(tiny_card))
    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("MONGODB_URI", raising=False)
    monkeypatch.setenv("BTD_PACS_URL", orthanc.dicomweb)
    monkeypatch.setenv("BTD_PACS_USER", orthanc.user)
    monkeypatch.setenv("BTD_PACS_PASSWORD", orthanc.password)
    st.cache_data.clear()
    st.cache_resource.clear()
    yield tmp_path / "data"
    st.cache_data.clear()
    st.cache_resource.clear()


def study_page(role: str = "radiologist") -> AppTest:
    app = AppTest.from_file(str(ROOT / "pages" / "study.py"), default_timeout=120)
    app.session_state["actor"] = Actor(f"test-{role}", role)
    return app.run()


def search(app: AppTest, patient_id: str = "", dates: tuple = (), description: str = "") -> AppTest:
    app.text_input(key="pacs_patient_id").set_value(patient_id)
    app.date_input(key="pacs_dates").set_value(dates)
    app.text_input(key="pacs_description").set_value(description)
    return next(b for b in app.button if b.label == "Search the PACS").click().run()


def button(app: AppTest, label: str):
    return next(b for b in app.button if b.label == label)


def test_a_radiologist_searches_picks_analyses_and_sends_the_report_back_once(
    app_environment: Path, orthanc, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = study_page()
    assert not app.exception and [t.label for t in app.tabs] == ["Upload files", "From the PACS"]
    search(app, patient_id=PATIENT)
    assert not app.exception and not app.error
    table = app.dataframe[0].value
    assert table["date"].tolist() == ["2026-12-01", "2026-11-03"]  # newest first
    assert table["description"].tolist() == ["MR BRAIN WITH CONTRAST", "MR HEAD ROUTINE"]
    assert table["images"].tolist() == [6, 6] and table["series"].tolist() == [1, 1]
    assert table["patient"].tolist() == ["ZZCANARY Pacspatient"] * 2 and table["patient ID"].tolist() == [PATIENT] * 2
    search(app, dates=(date(2026, 11, 1), date(2026, 11, 30)), description="head")
    assert app.dataframe[0].value["description"].tolist() == ["MR HEAD ROUTINE"]
    search(app, patient_id=PATIENT, description="brain contrast")
    assert app.dataframe[0].value["description"].tolist() == ["MR BRAIN WITH CONTRAST"]
    search(app, patient_id=PATIENT)
    app.selectbox(key="pacs_pick").set_value(1).run()  # the older study
    button(app, "Analyse the chosen study").click().run()
    assert not app.exception and not app.error
    assert app.metric[0].label == "Study verdict (model)" and app.metric[0].value in ("Tumour", "No tumour")
    assert app.expander[0].label.startswith("Series 1 · Axial · 6 sections")
    assert len(app.get("plotly_chart")) == 2  # the viewer's section and curve, as for an upload
    # the study on the page is named: its date, description and patient (it read "the study from the PACS" alone)
    named = "2026-11-03 · MR HEAD ROUTINE · ZZCANARY Pacspatient"
    assert any(c.value.startswith(f"Below: the study from the PACS: {named} (") for c in app.caption)
    picker = app.selectbox(key="pacs_pick")
    assert picker.format_func(1).startswith(f"2 · {named} (")  # two patients' studies alike read the same
    picker.set_value(0).run()  # another study chosen, not analysed: the one below is said to be another
    assert any(c.value.startswith("The study on the page below is another one") for c in app.caption)
    app.selectbox(key="pacs_pick").set_value(1).run()
    assert not any(c.value.startswith("The study on the page below is another one") for c in app.caption)

    store = app_store(app_environment / "results.sqlite3")
    (series,) = store.recent(5)
    assert series.kind == "series" and series.section_count == 6
    assert series.patient_ref == pacs_service.patient_reference(PATIENT, local_key(app_environment))
    raw = (app_environment / "results.sqlite3").read_bytes()
    assert b"ZZCANARY" not in raw and PATIENT.encode() not in raw  # the name and ID were on the screen only
    assert not list(app_environment.rglob("*.dcm"))  # nothing of the original images on disk
    assert "pacs_pull" in [e.action for e in store.audit_events()]

    pacs = Pacs(orthanc.dicomweb, orthanc.user, orthanc.password)
    assert {s.modality for s in pacs.series_of(OTHER_STUDY)} == {"MR"}
    monkeypatch.setenv("BTD_PACS_PASSWORD", "changed meanwhile")
    button(app, "Send to PACS").click().run()  # refused: the message, and the button to try again
    assert not app.exception and not any(s.value.startswith("Sent") for s in app.success)
    assert app.error[0].value.startswith("Not sent: The PACS refused the user name or password")
    assert {s.modality for s in pacs.series_of(OTHER_STUDY)} == {"MR"}
    monkeypatch.setenv("BTD_PACS_PASSWORD", orthanc.password)
    button(app, "Send to PACS").click().run()
    assert not app.exception and not app.error
    assert any(s.value.startswith("Sent: the PACS holds") for s in app.success)
    found = pacs.series_of(OTHER_STUDY)
    assert "SR" in {s.modality for s in found}
    instances = sum(s.instances or 0 for s in found)
    button(app, "Send to PACS").click().run()  # twice: the same instances, nothing new
    assert not app.exception and sum(s.instances or 0 for s in pacs.series_of(OTHER_STUDY)) == instances
    app.run()  # a rerun saves nothing again
    # every send is audited before it leaves; the refused one (the PACS refused the question which report is
    # current, before anything left) as its failure
    assert store.summary().total == 1 and [e.action for e in store.audit_events()].count("pacs_send") == 2
    assert [e.action for e in store.audit_events()].count("pacs_send_failed") == 1
    final_label(app).set_value("glioma").run()  # the radiologist's review, then the final SR
    button(app, "Send to PACS").click().run()
    assert not app.exception and not app.error
    assert store.get(series.id).final_label == "glioma" and store.get(series.id).review_count == 1
    # drawn again with the review just sent (the page above still read the study unreviewed until the next run)
    assert any(i.value.startswith("Reviewed by a radiologist since it was saved: series 1: Glioma") for i in app.info)
    assert app.metric[0].label == "Study verdict (radiologist's final label)"
    assert any(s.value.startswith("Sent: the PACS holds") for s in app.success)
    (report_series,) = [s for s in pacs.series_of(OTHER_STUDY) if s.modality == "SR"]
    reports = pacs._client.retrieve_series(OTHER_STUDY, report_series.series_uid)
    final = next(r for r in reports if r.CompletionFlag == "COMPLETE")
    assert len(reports) == 2 and final.PreliminaryFlag == "FINAL" and final.VerificationFlag == "UNVERIFIED"
    preliminary = next(r for r in reports if r.CompletionFlag == "PARTIAL")
    (before,) = final.PredecessorDocumentsSequence  # the final version names the preliminary one
    assert before.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        preliminary.SOPInstanceUID
    )
    texts = [str(item.get("TextValue", "")) for item in final.ContentSequence]
    assert any(text.startswith("Radiologist's final label: Glioma (given by ") for text in texts)
    # the reviews so far stand above the choice; a colleague's review saved after the page was drawn is never
    # reviewed over unseen (the Worklist's compare-and-set): refused, shown, and the reader chooses again
    assert any("Reviewed already" in i.value and "Glioma by" in i.value for i in app.info)
    final_label(app).set_value("pituitary").run()
    reviews.review_result(store, Actor("dr-b", "radiologist"), series.id, "meningioma")
    button(app, "Send to PACS").click().run()
    assert not app.exception and app.error[0].value.startswith("Not sent: Another reader reviewed")
    assert store.get(series.id).final_label == "meningioma" and store.get(series.id).review_count == 2
    assert any("Meningioma by dr-b" in i.value for i in app.info)
    button(app, "Send to PACS").click().run()  # pressed again, against the reviews now on screen
    assert not app.exception and not app.error and store.get(series.id).final_label == "pituitary"
    assert not any(w.value.startswith("Another review of this study") for w in app.warning)  # its own: no warning
    # a colleague's review while the reader chooses a label: the box above changed quietly, and the send went over
    # it (the pick is a run of its own, which the send is then compared against): said now
    reviews.review_result(store, Actor("dr-c", "radiologist"), series.id, "meningioma")
    final_label(app).set_value("glioma").run()
    assert any(w.value.startswith("Another review of this study was saved") for w in app.warning)
    # a label chosen for one study stayed chosen for the next one pulled: one press sent it as its final report
    app.selectbox(key="pacs_pick").set_value(0).run()  # the newer study
    button(app, "Analyse the chosen study").click().run()
    assert not app.exception and final_label(app).value is None


def test_no_colleagues_review_is_warned_of_after_ones_own_failed_send_or_a_new_analysis(
    app_environment: Path, orthanc, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The review is recorded before the report leaves: when the PACS then failed, the next run read the reader's
    own review as a colleague's ("Another review ... since you last looked"); so did a study pulled again with a
    series added (a new result among the counts)."""
    from core.errors import PacsUnreachable
    from ui.pacs import SHOWN_REVIEWS

    def warned() -> list[str]:
        return [w.value for w in app.warning if w.value.startswith("Another review of this study")]

    app = search(study_page(), patient_id=PATIENT)
    app.selectbox(key="pacs_pick").set_value(1).run()
    button(app, "Analyse the chosen study").click().run()
    final_label(app).set_value("glioma").run()
    real = pacs_service.send_results
    monkeypatch.setattr(pacs_service, "send_results", lambda *a, **k: (_ for _ in ()).throw(PacsUnreachable("down")))
    button(app, "Send to PACS").click().run()
    assert not app.exception and app.error[0].value.startswith("Not sent: down") and not warned()
    app.run()  # and on the next run: the counts on screen are those of this send's review
    assert not warned()
    monkeypatch.setattr(pacs_service, "send_results", real)
    uid, counts = app.session_state[SHOWN_REVIEWS]
    app.session_state[SHOWN_REVIEWS] = (uid, {"a result no longer in it": 0, **counts})  # as after a series left
    app.run()
    assert not warned()  # a result one of the two counts lacks is no review
    app.session_state[SHOWN_REVIEWS] = (uid, dict.fromkeys(counts, 0))
    button(app, "Analyse the chosen study").click().run()  # pulled again: read afresh, nobody's "since"
    assert not app.exception and not warned()


def final_label(app):
    """The send panel's choice of a final label (keyed per study)."""
    return next(s for s in app.selectbox if s.label == "Your final label (optional)")


@pytest.fixture
def garbage():
    with garbage_pacs() as url:
        yield url


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("password", "The PACS refused the user name or password"),
        ("closed", "The PACS does not answer"),
        ("garbage", "is not valid DICOMweb"),
    ],
)
def test_a_failed_search_shows_its_message(
    setting: str, message: str, garbage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.pacs.orthanc import _free_port

    if setting == "password":
        monkeypatch.setenv("BTD_PACS_PASSWORD", "not the password")
    elif setting == "closed":
        monkeypatch.setenv("BTD_PACS_URL", f"http://127.0.0.1:{_free_port()}/dicom-web")
    else:
        monkeypatch.setenv("BTD_PACS_URL", garbage)
    app = search(study_page(), patient_id=PATIENT)
    assert not app.exception
    assert len(app.error) == 1 and message in app.error[0].value
    assert not app.dataframe and not app.metric


def test_a_search_whose_audit_event_cannot_be_written_shows_nothing_found_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The search shows patients' names: with the audit trail locked at that moment the page raised a traceback."""
    from core.errors import StoreUnavailable

    app = study_page()

    def locked(self, event):
        raise StoreUnavailable("The results database is locked by another process; try again.")

    monkeypatch.setattr(SQLiteStore, "append_audit", locked)
    app = search(app, patient_id=PATIENT)
    assert not app.exception and not app.dataframe
    assert len(app.error) == 1 and "audit event could not be written" in app.error[0].value


def test_a_search_that_fills_the_list_says_more_studies_match(monkeypatch: pytest.MonkeyPatch) -> None:
    """The PACS sends its first matches in its own order: a full list could leave out today's study unsaid."""
    import ui.pacs

    app = search(study_page())
    assert not app.exception and not app.warning and len(app.dataframe[0].value) == 3
    monkeypatch.setattr(ui.pacs, "SEARCH_LIMIT", 3)
    app = search(study_page())
    assert len(app.warning) == 1 and "more match" in app.warning[0].value


def test_a_study_without_mr_or_over_the_limits_is_explained(orthanc, monkeypatch: pytest.MonkeyPatch) -> None:
    import requests

    from core.imaging.limits import StudyLimits

    app = search(study_page(), patient_id="PACS-UI-002")
    assert app.dataframe[0].value["description"].tolist() == ["MR BRAIN FOLLOW-UP"]
    button(app, "Analyse the chosen study").click().run()  # read once: on the page
    assert not app.exception and app.metric and any(c.value.startswith("Below: the study") for c in app.caption)
    real_connect = pacs_service.connect
    monkeypatch.setattr(
        pacs_service,
        "connect",
        lambda settings: Pacs(settings.url, settings.user, settings.password, limits=StudyLimits(max_files=3)),
    )
    button(app, "Analyse the chosen study").click().run()
    # refused, the study shown before leaves the page: under the refusal it read as the chosen one (another
    # patient's verdict under a study refused as two patients')
    assert not app.exception and "the limit is 3 per study" in app.error[0].value and not app.metric
    assert not any(c.value.startswith("Below: the study from the PACS") for c in app.caption)
    monkeypatch.setattr(pacs_service, "connect", real_connect)
    auth = (orthanc.user, orthanc.password)  # the study's MR series leaves the PACS after the search listed it
    (found,) = requests.post(f"{orthanc.rest}/tools/lookup", data=f"{EMPTIED_STUDY}.1", auth=auth, timeout=10).json()
    requests.delete(f"{orthanc.rest}{found['Path']}", auth=auth, timeout=10).raise_for_status()
    button(app, "Analyse the chosen study").click().run()
    assert not app.exception and len(app.error) == 1 and not app.metric
    assert app.error[0].value == (  # its only series deleted: the PACS lists nothing of it any more
        "This study cannot be analysed. The PACS has no study with this Study Instance UID (or it holds no series)."
    )


def test_a_supervisor_is_refused_the_page_and_the_pacs_service_refuses_them_wherever_they_get_to() -> None:
    app = study_page("supervisor")
    assert not app.exception and not app.text_input and not app.tabs
    assert any("The supervisor role may not" in e.value for e in app.error)

    def panel() -> None:  # the PACS part alone, as if a supervisor got to it
        from core.services.access import Actor
        from ui.pacs import pacs_panel

        pacs_panel(Actor("boss", "supervisor"), None, None)

    direct = AppTest.from_function(panel, default_timeout=60).run()
    search(direct, patient_id=PATIENT)
    assert not direct.exception and not direct.dataframe
    assert [e.value for e in direct.error] == ["The supervisor role may not search, pull from and send to the PACS."]


def test_a_study_whose_series_were_not_saved_cannot_be_sent_until_they_are(
    app_environment: Path, orthanc, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page sent a report for a study the database had not saved (the command line and the watch refuse to):
    a reader in the PACS acted on a result nobody here could review."""
    from core.errors import StoreUnavailable

    def busy(self, record) -> bool:
        raise StoreUnavailable("The results database is busy.")

    monkeypatch.setattr(SQLiteStore, "add_series", lambda self, record, sections: busy(self, record))
    app = search(study_page(), patient_id=PATIENT)
    app.selectbox(key="pacs_pick").set_value(0).run()
    button(app, "Analyse the chosen study").click().run()
    assert not app.exception and app.metric[0].label == "Study verdict (model)"
    assert not any(b.label == "Send to PACS" for b in app.button)
    assert any(c.value.startswith("Not sendable yet: a series of this study is not saved") for c in app.caption)
    pacs = Pacs(orthanc.dicomweb, orthanc.user, orthanc.password)
    study_uid = app.session_state["pacs_pulled"].study_uid
    assert "SR" not in {s.modality for s in pacs.series_of(study_uid)}


def test_a_study_pulled_while_its_readers_account_is_disabled_is_not_saved(app_environment: Path, monkeypatch) -> None:
    """The Study page's PACS tab saved a pulled study as the actor its run began with: an account an administrator
    disabled during the pull had the study saved under its name."""
    from core.services import accounts
    from core.services import pacs as pacs_service
    from tests.scans import app_store

    store = app_store(app_environment / "results.sqlite3")
    accounts.add_account(store, Actor("root", "admin"), "dr-b", "radiologist", "a long enough password 1")
    app = AppTest.from_file(str(ROOT / "pages" / "study.py"), default_timeout=120)
    app.session_state["actor"] = Actor("dr-b", "radiologist")
    app.run()
    real = pacs_service.pull_and_analyse

    def pulled_then_disabled(*args, **kwargs):
        pulled = real(*args, **kwargs)
        accounts.set_disabled(app_store(app_environment / "results.sqlite3"), Actor("root", "admin"), "dr-b")
        return pulled

    monkeypatch.setattr(pacs_service, "pull_and_analyse", pulled_then_disabled)
    search(app, patient_id=PATIENT)
    button(app, "Analyse the chosen study").click().run()
    assert not app.exception and not store.recent(10)
    assert not [e for e in store.audit_events() if e.action == "upload"]


def test_a_plain_http_pacs_elsewhere_is_warned_on_the_page_and_in_the_log(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The PACS's password went on every request, and the images and names with it, unencrypted: nothing said so."""
    app = study_page()
    assert not app.exception and not app.warning  # the test's Orthanc is on the loopback
    monkeypatch.setenv("BTD_PACS_URL", "http://pacs.hospital.example:8042/dicom-web")
    app = study_page()
    (warning,) = app.warning
    assert "plain http" in warning.value and "the PACS password on every request" in warning.value
    monkeypatch.delenv("BTD_PACS_PASSWORD")
    monkeypatch.delenv("BTD_PACS_USER")
    assert "password" not in study_page().warning[0].value
    monkeypatch.setattr(logging.getLogger("btd"), "propagate", True)  # the page set the process's log up
    with caplog.at_level("WARNING", logger="btd.pacs"):
        pacs_service.connect(PacsSettings("http://pacs2.hospital.example/dicom-web", "u", "p"))
        pacs_service.connect(PacsSettings("http://pacs2.hospital.example/dicom-web", "u", "p"))
        pacs_service.connect(PacsSettings("https://pacs2.hospital.example/dicom-web", "u", "p"))
    said = {id(r): r.getMessage() for r in caplog.records}  # one record reaches the capture by each logger it passes
    lines = [message for message in said.values() if "pacs_unencrypted" in message]
    assert len(lines) == 1 and "password=yes" in lines[0] and "hospital" not in lines[0]
