"""The PACS service's own rules with a PACS stand-in (the real Orthanc round trips are in ``test_pacs.py``): a reviewed
report names the version before it, and a watch never drops a study the PACS failed to give."""

from __future__ import annotations

import copy
import io
import json
import re
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest

from core.domain.results import WorklistQuery, record_id
from core.errors import (
    AccessDenied,
    FileTooLarge,
    PacsAnotherPatient,
    PacsError,
    PacsMalformed,
    PacsNotFound,
    PacsTimedOut,
    PacsUnreachable,
    ReviewedMeanwhile,
    StoreError,
)
from core.imaging.phantom_series import dicom_series, head_volume
from core.pacs import captures, objects
from core.pacs.client import SeriesHit, StudyHit
from core.services import pacs as pacs_service
from core.services import pacs_watch, pacs_watch_state
from core.services.access import Actor
from core.services.study_reading import analyse_study
from core.storage.sqlite import SQLiteStore
from tests.scans import Trail, empty_database, relabelled

RADIOLOGIST = Actor("dr-a", "radiologist")
STUDY = "1.2.826.0.1.3680043.8.498.91"


class StandIn:
    """What the services ask of a PACS: a study's MR files (or a failure, once per entry of ``failures``), and
    storing objects (kept)."""

    def __init__(self, files: dict[str, list[bytes]], failures: dict[str, list[Exception]] | None = None) -> None:
        self.files, self.failures, self.stored = files, failures or {}, []
        self.listed: set[str] = set()  # report series the PACS lists besides those stored here (sent before)

    def retrieve_mr(self, study_uid: str) -> tuple[list[bytes], list[str]]:
        if self.failures.get(study_uid):
            raise self.failures[study_uid].pop(0)
        return self.files[study_uid], []

    def store(self, datasets: list) -> list[str]:
        self.stored.append(datasets)
        return [str(ds.SOPInstanceUID) for ds in datasets]

    def report_head(self, study_uid: str, series_uid: str):
        """The highest-numbered report stored in ``series_uid`` (as a PACS keeps one copy of each)."""
        held = [d for batch in self.stored for d in batch if d.SeriesInstanceUID == series_uid]
        reports = {str(d.SOPInstanceUID): d for d in held}
        return max(reports.values(), key=lambda d: (int(d.InstanceNumber), str(d.SOPInstanceUID))) if reports else None

    def holds(self, study_uid: str, series_uid: str, sop_uid: str) -> bool:
        return any(str(d.SOPInstanceUID) == sop_uid for batch in self.stored for d in batch)

    def series_of(self, study_uid: str) -> list[SeriesHit]:
        """The study's files as one MR series (enough for the watch's fingerprint: adding files changes it), and
        our report's series once one is stored."""
        reports = {str(d.SeriesInstanceUID) for batch in self.stored for d in batch if d.Modality == "SR"}
        reports |= self.listed
        ours = [SeriesHit(uid, "SR", "", 1) for uid in sorted(reports) if uid == objects.report_series(study_uid)]
        return [SeriesHit(f"{study_uid}.mr", "MR", "", len(self.files.get(study_uid, []))), *ours]

    def patient_of(self, study_uid: str) -> list[tuple[str, ...]]:
        """The patient and accession number the study's files name, as a study search lists them."""
        from pydicom import dcmread

        keywords = ("PatientID", "IssuerOfPatientID", "PatientName", "AccessionNumber")
        headers = [dcmread(io.BytesIO(f), stop_before_pixels=True) for f in self.files.get(study_uid, [])]
        return sorted({tuple(str(h.get(k, "") or "") for k in keywords) for h in headers})


class Searchable(StandIn):
    def search(self, **filters: str | None) -> list[StudyHit]:
        return [
            StudyHit(f"1.2.826.0.1.3680043.10.1.{k}", "20261201", "MR BRAIN", ("MR",), patient, "ZZCANARY^Listed", 1, 6)
            for k, patient in enumerate(("PACS-TEST-001", "PACS-TEST-001", "PACS-TEST-002"))
        ]


def test_a_pull_judges_two_patients_by_the_uploads_rule(tmp_path: Path, tiny_classifier) -> None:
    """The pull compared raw patient IDs: one ID from two issuers (two hospitals' patients) passed, unlike an upload
    of the same files. A file without an ID beside the patient's is refused by a pull still: the first version of
    this fix let it through, and a study whose first file had no ID was saved without its patient and its report
    sent to the PACS with an empty Patient ID."""
    first = relabelled(dicom_series(head_volume(3), study_uid=STUDY, series_uid=f"{STUDY}.1"), PatientID="ZZ-1")
    second = dicom_series(head_volume(3, seed=4), study_uid=STUDY, series_uid=f"{STUDY}.2")
    store, key = SQLiteStore(tmp_path / "r.db"), b"k" * 32
    for files in ([*first, *relabelled(second, PatientID="")], [*relabelled(second, PatientID=""), *first]):
        pulled = pacs_service.pull_and_analyse(StandIn({STUDY: files}), RADIOLOGIST, STUDY, tiny_classifier, store, key)
        assert pulled.outcome.error_code == "several_patients"
    one = StandIn({STUDY: [*first, *relabelled(second, PatientID=" ZZ-1")]})  # one patient, its ID padded
    pulled = pacs_service.pull_and_analyse(one, RADIOLOGIST, STUDY, tiny_classifier, store, key)
    assert pulled.outcome.error_code is None and len(pulled.outcome.series) == 2
    issuers = [*relabelled(first, IssuerOfPatientID="A"), *relabelled(second, PatientID="ZZ-1", IssuerOfPatientID="B")]
    pulled = pacs_service.pull_and_analyse(StandIn({STUDY: issuers}), RADIOLOGIST, STUDY, tiny_classifier, store, key)
    assert pulled.outcome.error_code == "several_patients"
    refusals = [e.detail.get("refused") for e in store.audit_events() if e.action == "pacs_pull"]
    assert refusals == ["several_patients", "several_patients", None, "several_patients"]


def test_a_pacs_search_is_an_audit_event_naming_whose_names_it_showed_never_its_filters(tmp_path: Path) -> None:
    """The search shows patients' names and IDs: its event said how many studies, not whose, where History's read
    names its patient. It now names them by their keyed references; nothing typed or shown is in it."""
    store, key = SQLiteStore(tmp_path / "r.db"), b"k" * 32
    hits = pacs_service.search(Searchable({}), RADIOLOGIST, store, key, patient_id="PACS-TEST-001", description="x")
    assert len(hits) == 3
    first, second = (pacs_service.patient_reference(f"PACS-TEST-00{n}", key) for n in (1, 2))
    pacs_service.search(Searchable({}), RADIOLOGIST, store, key, start="20261201")
    pacs_service.search(Searchable({}), RADIOLOGIST, store, None, start="20261201")  # no key: no reference
    by_id, by_date, unkeyed = store.audit_events()
    assert (by_id.action, by_id.actor, by_id.target) == ("pacs_search", "dr-a", first)
    assert by_id.detail == {"studies": 3, "by_patient_id": True, "patients": sorted([first, second])}
    assert by_date.target is None and by_date.detail["patients"] == sorted([first, second])
    assert unkeyed.target is None and unkeyed.detail == {"studies": 3, "by_patient_id": False}
    said = str(store.audit_events())
    assert "PACS-TEST" not in said and "ZZCANARY" not in said and "20261201" not in said
    from core.services import audit

    assert audit.redacted(by_id).target is None and audit.redacted(by_id).detail == {}  # a supervisor: who, when


class Feed:
    """Orthanc's change feed: every study stable once, in one page."""

    def __init__(self, studies: list[str]) -> None:
        self.studies = studies

    def stable_studies(self, since: int) -> tuple[list[tuple[int, str]], int, bool]:
        found = [(seq, uid) for seq, uid in enumerate(self.studies, start=1) if seq > since]
        return found, len(self.studies), True


def pulled_and_saved(files: list[bytes], classifier, tmp_path: Path):
    """The study of ``files`` pulled from a stand-in PACS, analysed and its series saved: (pulled, store, the saved
    result ids, the model's facts, the PACS)."""
    from core.services.studies import save_series

    outcome = analyse_study(files, classifier)
    pulled = pacs_service.Pulled(STUDY, outcome, tuple(objects.headers(files)))
    store = SQLiteStore(tmp_path / "r.db")
    ids = [save_series(s, store, actor=RADIOLOGIST, patient_ref=None).record_id for s in outcome.series]
    card = classifier.card
    model = objects.ModelFacts.of(card)
    return pulled, store, ids, model, StandIn({STUDY: files})


def tumour_study(uid: str) -> list[bytes]:
    return dicom_series(head_volume(6, 96, range(2, 4)), study_uid=uid, series_uid=f"{uid}.1")


def test_each_reviewed_report_names_the_version_before_it(tiny_classifier) -> None:
    """Reviewed twice (glioma, then meningioma): three versions in one chain, never two final reports that both
    claim to replace the preliminary one."""
    files = tumour_study(STUDY)
    pulled = pacs_service.Pulled(STUDY, analyse_study(files, tiny_classifier), tuple(objects.headers(files)))
    assert pulled.outcome.series and pulled.outcome.series[0].label is not None
    pacs = StandIn({STUDY: files})
    card = tiny_classifier.card
    model = objects.ModelFacts.of(card)
    send = pacs_service.send_results
    preliminary = send(pacs, RADIOLOGIST, pulled, model, Trail(), None)[0]
    first = send(pacs, RADIOLOGIST, pulled, model, Trail(), None, final_label="glioma")[0]
    assert send(pacs, RADIOLOGIST, pulled, model, Trail(), None, final_label="glioma")[0] == first  # the same: again
    second = send(
        pacs, RADIOLOGIST, pulled, model, Trail(), None, final_label="meningioma", earlier_finals=[("glioma", "dr-a")]
    )[0]
    elsewhere = StandIn({STUDY: files})  # the same review by another reader, sent to a PACS of its own
    other_reader = send(elsewhere, Actor("dr-b", "radiologist"), pulled, model, Trail(), None, final_label="glioma")[0]
    assert other_reader != first  # it names another reader: a new instance, never the old one's UID
    assert len({preliminary, first, second}) == 3

    def report(uid: str):
        return next(batch[0] for batch in pacs.stored if str(batch[0].SOPInstanceUID) == uid)

    def predecessor(uid: str) -> str | None:
        found = report(uid).get("PredecessorDocumentsSequence")
        return (
            str(found[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            if found
            else None
        )

    assert predecessor(preliminary) is None and predecessor(first) == preliminary and predecessor(second) == first
    assert [int(report(u).InstanceNumber) for u in (preliminary, first, second)] == [1, 2, 3]
    assert [report(u).PreliminaryFlag for u in (preliminary, first, second)] == ["PRELIMINARY", "FINAL", "FINAL"]
    texts = [str(item.get("TextValue", "")) for item in report(preliminary).ContentSequence]
    assert any(text.startswith(f"DICOM series UID {STUDY}.1: ") for text in texts)  # a reader finds it in the PACS
    # glioma -> meningioma -> glioma: the third review is a version of its own, not the first one again
    third = send(
        pacs,
        RADIOLOGIST,
        pulled,
        model,
        Trail(),
        None,
        final_label="glioma",
        earlier_finals=[("glioma", "dr-a"), ("meningioma", "dr-a")],
    )[0]
    assert third not in (preliminary, first, second) and predecessor(third) == second
    # a final report names who gave its label (it named nobody)
    finding = [str(item.get("TextValue", "")) for item in report(second).ContentSequence]
    assert any(f"Meningioma (given by {RADIOLOGIST.name}" in text for text in finding)
    assert report(second).CompletionFlag == "COMPLETE"
    series, verdict = list(pulled.outcome.series), pulled.outcome.verdict
    partly = objects.verdict_report(pulled.evidence, series, verdict, model, "glioma", unread=("Series 9: colour",))
    assert partly.CompletionFlag == "PARTIAL"  # it lists a series nobody read: never COMPLETE


def test_a_study_the_pacs_failed_to_give_is_tried_again_not_dropped(tiny_classifier, tmp_path: Path) -> None:
    one, two, three = (f"{STUDY}.{k}" for k in (1, 2, 3))
    failures: dict[str, list[Exception]] = {
        two: [PacsUnreachable("The PACS does not answer."), PacsError("The PACS failed (HTTP 503).")],
        three: [PacsNotFound("The PACS has no MR series in this study.")],  # not transient: skipped for good
    }
    pacs = StandIn({uid: tumour_study(uid) for uid in (one, two, three)}, failures)
    watcher = pacs_watch.Watcher(
        pacs, Feed([one, two, three]), tiny_classifier, SQLiteStore(tmp_path / "r.db"), None, None
    )
    state = pacs_watch.WatchState.load(tmp_path / "watch.json")
    first = pacs_watch.watch_once(watcher, state, RADIOLOGIST)
    assert [(line["study_uid"], line.get("skipped"), line.get("retry")) for line in first] == [
        (one, None, None),
        (two, "pacs_unreachable", True),
        (three, "pacs_not_found", None),
    ]
    assert state.last == 0  # the feed is not moved past the failed study
    assert state.seen(one) and state.seen(three) and not state.seen(two)
    second = pacs_watch.watch_once(watcher, pacs_watch.WatchState.load(tmp_path / "watch.json"), RADIOLOGIST)
    assert [(line["study_uid"], line.get("skipped")) for line in second] == [(two, "pacs_error")]  # a 5xx: again
    third = pacs_watch.watch_once(watcher, pacs_watch.WatchState.load(tmp_path / "watch.json"), RADIOLOGIST)
    assert [(line["study_uid"], line.get("skipped")) for line in third] == [(two, None)]
    assert third[0]["verdict"] is not None and len(third[0]["saved"]) == 1
    done = pacs_watch.WatchState.load(tmp_path / "watch.json")
    assert done.last == 3 and all(done.seen(uid) for uid in (one, two, three))
    assert pacs_watch.watch_once(watcher, done, RADIOLOGIST) == []  # each once


def test_admins_and_supervisors_may_not_watch_the_pacs(tiny_classifier, tmp_path: Path) -> None:
    from core.errors import AccessDenied

    watcher = pacs_watch.Watcher(StandIn({}), Feed([]), tiny_classifier, SQLiteStore(tmp_path / "r.db"), None, None)
    for role in ("admin", "supervisor"):
        with pytest.raises(AccessDenied):
            pacs_watch.watch_once(watcher, pacs_watch.WatchState.load(tmp_path / "w.json"), Actor("x", role))


def test_sending_a_review_again_records_no_second_review_and_sends_the_same_report(tiny_classifier, tmp_path) -> None:
    """A retry after the PACS failed (the review was already saved) or a second press: each added a review and a
    new FINAL version naming one the PACS never received."""

    files = tumour_study(STUDY)
    pulled, store, ids, model, pacs = pulled_and_saved(files, tiny_classifier, tmp_path)
    first = pacs_service.review_and_send(pacs, RADIOLOGIST, pulled, model, store, None, "glioma", ids)[0]
    again = pacs_service.review_and_send(pacs, RADIOLOGIST, pulled, model, store, None, "glioma", ids)[0]
    assert again == first and [len(store.reviews_of(i)) for i in ids] == [1] * len(ids)
    changed = pacs_service.review_and_send(pacs, RADIOLOGIST, pulled, model, store, None, "meningioma", ids)[0]
    assert changed != first and [len(store.reviews_of(i)) for i in ids] == [2] * len(ids)


def test_a_pacs_review_over_a_colleagues_review_made_since_the_page_was_drawn_is_refused_whole(
    tiny_classifier, tmp_path
) -> None:
    """The Study page's review and send appended the reader's label over a review a colleague had saved on the
    Worklist meanwhile, unseen (the Worklist's own review is compare-and-set): now no series is reviewed and
    nothing is sent; against the counts as they stand, it goes through."""
    from core.services import reviews

    files = tumour_study(STUDY) + dicom_series(head_volume(5, 96, seed=3), study_uid=STUDY, series_uid=f"{STUDY}.2")
    pulled, store, ids, model, pacs = pulled_and_saved(files, tiny_classifier, tmp_path)
    assert len(ids) == 2
    on_screen = {rid: n for rid, (n, _) in pacs_service.study_reviews(store, RADIOLOGIST, ids).items()}
    assert on_screen == dict.fromkeys(ids, 0)
    reviews.review_result(store, Actor("dr-b", "radiologist"), ids[-1], "meningioma")  # the colleague, meanwhile
    with pytest.raises(ReviewedMeanwhile):
        pacs_service.review_and_send(pacs, RADIOLOGIST, pulled, model, store, None, "glioma", ids, on_screen)
    assert [len(store.reviews_of(i)) for i in ids] == [0] * (len(ids) - 1) + [1] and not pacs.stored
    with pytest.raises(AccessDenied):  # what the panel shows is for readers only
        pacs_service.study_reviews(store, Actor("sup", "supervisor"), ids)
    on_screen = {rid: n for rid, (n, _) in pacs_service.study_reviews(store, RADIOLOGIST, ids).items()}
    pacs_service.review_and_send(pacs, RADIOLOGIST, pulled, model, store, None, "glioma", ids, on_screen)
    assert [store.get(i).final_label for i in ids] == ["glioma"] * len(ids) and len(pacs.stored) == 1


def test_a_worklist_review_of_one_series_of_several_is_no_study_report_of_its_reader(tiny_classifier, tmp_path) -> None:
    """dr-b reviewed the first of two series on the Worklist; a study review sent from the PACS panel then rebuilt
    dr-b's series label as a FINAL, COMPLETE study report "given by dr-b", a label dr-b never gave the study."""
    from core.services import reviews

    files = tumour_study(STUDY) + dicom_series(head_volume(5, 96, seed=3), study_uid=STUDY, series_uid=f"{STUDY}.2")
    pulled, store, ids, model, pacs = pulled_and_saved(files, tiny_classifier, tmp_path)
    reviews.review_result(store, Actor("dr-b", "radiologist"), ids[0], "notumor")  # one series, on the Worklist
    on_screen = {rid: n for rid, (n, _) in pacs_service.study_reviews(store, RADIOLOGIST, ids).items()}
    pacs_service.review_and_send(pacs, RADIOLOGIST, pulled, model, store, None, "glioma", ids, on_screen)
    (sent,) = pacs.stored
    reports = [d for d in sent if d.Modality == "SR"]
    texts = [str(i.get("TextValue", "")) for r in reports for i in r.ContentSequence]
    assert not any("given by dr-b" in t for t in texts) and len(reports) == 2  # the preliminary and the review
    assert any(t.startswith(f"Radiologist's final label: Glioma (given by {RADIOLOGIST.name}") for t in texts)


def test_a_report_of_a_study_read_again_replaces_the_pacs_current_one_never_stands_beside_it(
    tiny_classifier, tmp_path
) -> None:
    """The report chain was rebuilt from each analysis: once a series came later, the watch's new preliminary named
    no predecessor and the reviewed FINAL report stayed current beside it (two current reports). A report of the
    same reading sent again without a label (the command line) left the FINAL as it was before, and still does."""
    from core.services.studies import save_series

    first_files = tumour_study(STUDY)
    outcome = analyse_study(first_files, tiny_classifier)
    pulled = pacs_service.Pulled(STUDY, outcome, tuple(objects.headers(first_files)))
    store = SQLiteStore(tmp_path / "r.db")
    ids = [save_series(s, store, actor=RADIOLOGIST, patient_ref=None).record_id for s in outcome.series]
    model = final_model(tiny_classifier.card)
    pacs = StandIn({STUDY: first_files})
    series_uid = objects.report_series(STUDY)
    pacs_service.send_results(pacs, RADIOLOGIST, pulled, model, store, None)
    pacs_service.review_and_send(pacs, RADIOLOGIST, pulled, model, store, None, "glioma", ids)
    final = pacs.report_head(STUDY, series_uid)
    assert final.PreliminaryFlag == "FINAL" and int(final.InstanceNumber) == 2
    # its dates and times are the server's local ones: the zone they are in goes with them (a PACS elsewhere, or a
    # server kept on UTC, showed the report at another hour)
    offset = final.TimezoneOffsetFromUTC
    assert re.fullmatch(r"[+-]\d{4}", offset) and offset == objects.utc_offset()
    # a study whose images give their offset: the report's is theirs, its own times written in it (said at the
    # server's, the study's copied date and time moved by the difference)
    tokyo = relabelled(first_files, TimezoneOffsetFromUTC="+0900", StudyDate="20240102", StudyTime="101500")
    issuer, other = pydicom.Dataset(), pydicom.Dataset()
    issuer.LocalNamespaceEntityID = "ACC-ISSUER"
    other.PatientID, other.IssuerOfPatientID = "OTHER-555", "HOSP-B"
    tokyo = relabelled(tokyo, IssuerOfAccessionNumberSequence=[issuer], OtherPatientIDsSequence=[other])
    there = objects.verdict_report(objects.headers(tokyo), outcome.series, outcome.verdict, model)
    # the qualifiers its key images keep (a RIS matching on the accession number's issuer filed the SR apart)
    assert there.IssuerOfAccessionNumberSequence[0].LocalNamespaceEntityID == "ACC-ISSUER"
    assert (there.OtherPatientIDsSequence[0].PatientID, there.OtherPatientIDsSequence[0].IssuerOfPatientID) == (
        "OTHER-555",
        "HOSP-B",
    )
    made = datetime.strptime(there.ContentDate + there.ContentTime.split(".")[0] + "+0900", "%Y%m%d%H%M%S%z")
    assert there.TimezoneOffsetFromUTC == "+0900" and (there.StudyDate, there.StudyTime) == ("20240102", "101500")
    assert abs((made - datetime.now(UTC)).total_seconds()) < 120 and there.InstanceCreationDate == there.ContentDate
    contributed = str(there.ContributingEquipmentSequence[0].ContributionDateTime).split(".")[0] + "+0900"
    assert abs((datetime.strptime(contributed, "%Y%m%d%H%M%S%z") - datetime.now(UTC)).total_seconds()) < 120
    key_image = pydicom.Dataset()  # a key image's capture time too (it kept the server's, beside +0900)
    key_image.DateOfSecondaryCapture, key_image.TimeOfSecondaryCapture = "19990101", "000000"
    objects.dated_as(key_image, objects.headers(tokyo)[0])
    captured = key_image.DateOfSecondaryCapture + key_image.TimeOfSecondaryCapture.split(".")[0] + "+0900"
    assert abs((datetime.strptime(captured, "%Y%m%d%H%M%S%z") - datetime.now(UTC)).total_seconds()) < 120
    pacs_service.send_results(pacs, RADIOLOGIST, pulled, model, store, None)  # the same reading, no label
    assert pacs.report_head(STUDY, series_uid).SOPInstanceUID == final.SOPInstanceUID  # the FINAL stays current
    series = outcome.series[0]  # the same images and model read otherwise (a rule changed, a series now read)
    reread = replace(outcome, series=(replace(series, score=(series.score or 0.0) / 2),))
    pacs_service.send_results(pacs, RADIOLOGIST, replace(pulled, outcome=reread), model, store, None)
    head = pacs.report_head(STUDY, series_uid)
    assert head.PreliminaryFlag == "PRELIMINARY" and int(head.InstanceNumber) == 3  # it said the old reading
    # the reviewed report it replaces: its label is said first, not dropped without a word (the PACS's current
    # report read as if nobody had reviewed the study)
    first = str(head.ContentSequence[0].TextValue)
    assert first.startswith("The final report this version replaces") and "Radiologist's final label: Glioma" in first
    assert head.ContinuityOfContent == "SEPARATE"  # each statement its own, labelled, in an SR viewer
    pacs.stored = [batch for batch in pacs.stored if head not in batch]  # as before it, for the rest of the test
    # a series arrives later: the study is read again and its preliminary report sent (the watch)
    files = first_files + dicom_series(head_volume(5, 96, seed=3), study_uid=STUDY, series_uid=f"{STUDY}.2")
    again = analyse_study(files, tiny_classifier)
    later = pacs_service.Pulled(STUDY, again, tuple(objects.headers(files)))
    pacs_service.send_results(pacs, RADIOLOGIST, later, model, store, None)
    head = pacs.report_head(STUDY, series_uid)
    assert head.PreliminaryFlag == "PRELIMINARY" and int(head.InstanceNumber) == 3
    (before,) = head.PredecessorDocumentsSequence
    assert before.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == final.SOPInstanceUID
    reports = {str(d.SOPInstanceUID) for batch in pacs.stored for d in batch if d.Modality == "SR"}
    pacs_service.send_results(pacs, RADIOLOGIST, later, model, store, None)  # sent again: nothing new
    assert {str(d.SOPInstanceUID) for batch in pacs.stored for d in batch if d.Modality == "SR"} == reports
    assert current_reports(pacs) == [str(head.SOPInstanceUID)]  # one current report
    # a second series arrives later still: its version carries the label on (it dropped it again)
    files3 = files + dicom_series(head_volume(5, 96, seed=5), study_uid=STUDY, series_uid=f"{STUDY}.3")
    third = pacs_service.Pulled(STUDY, analyse_study(files3, tiny_classifier), tuple(objects.headers(files3)))
    pacs_service.send_results(pacs, RADIOLOGIST, third, model, store, None)
    fourth = pacs.report_head(STUDY, series_uid)
    assert int(fourth.InstanceNumber) == 4 and fourth.PreliminaryFlag == "PRELIMINARY"
    assert "Radiologist's final label: Glioma" in str(fourth.ContentSequence[0].TextValue)
    assert str(fourth.ContentSequence[0].TextValue) == str(head.ContentSequence[0].TextValue)  # said once, as v3
    pacs.stored = [batch for batch in pacs.stored if fourth not in batch]  # as before it, for the rest of the test
    later_ids = [save_series(s, store, actor=RADIOLOGIST, patient_ref=None).record_id for s in again.series]
    reviewed = pacs_service.review_and_send(pacs, RADIOLOGIST, later, model, store, None, "meningioma", later_ids)
    assert current_reports(pacs) == [reviewed[0]] and int(pacs.report_head(STUDY, series_uid).InstanceNumber) == 4
    pacs_service.review_and_send(pacs, RADIOLOGIST, later, model, store, None, "meningioma", later_ids)  # again
    assert current_reports(pacs) == [reviewed[0]]


def test_a_review_of_a_study_read_again_before_any_resend_replaces_the_preliminary_once(
    tiny_classifier, tmp_path
) -> None:
    """A preliminary report, a series added, a review sent (no watch between) and sent again: the second press
    found the first's UID in the chain rebuilt from scratch and sent another instance under it; numbers and UIDs
    are each one version's."""
    from core.services.studies import save_series

    first_files = tumour_study(STUDY)
    pulled = pacs_service.Pulled(
        STUDY, analyse_study(first_files, tiny_classifier), tuple(objects.headers(first_files))
    )
    model = final_model(tiny_classifier.card)
    pacs, store = StandIn({STUDY: first_files}), SQLiteStore(tmp_path / "r.db")
    pacs_service.send_results(pacs, RADIOLOGIST, pulled, model, store, None)
    files = first_files + dicom_series(head_volume(5, 96, seed=3), study_uid=STUDY, series_uid=f"{STUDY}.2")
    again = analyse_study(files, tiny_classifier)
    later = pacs_service.Pulled(STUDY, again, tuple(objects.headers(files)))
    ids = [save_series(s, store, actor=RADIOLOGIST, patient_ref=None).record_id for s in again.series]
    for _ in range(2):
        pacs_service.review_and_send(pacs, RADIOLOGIST, later, model, store, None, "glioma", ids)
    sent = [d for batch in pacs.stored for d in batch if d.Modality == "SR"]
    by_uid = {str(d.SOPInstanceUID): d for d in sent}
    assert all(int(d.InstanceNumber) == int(by_uid[str(d.SOPInstanceUID)].InstanceNumber) for d in sent)
    assert sorted(int(d.InstanceNumber) for d in by_uid.values()) == [1, 2]  # the preliminary, then the review
    (current,) = current_reports(pacs)
    assert by_uid[current].PreliminaryFlag == "FINAL"


def current_reports(pacs: StandIn) -> list[str]:
    """The report UIDs no stored version names as the one it replaces."""
    reports = {str(d.SOPInstanceUID): d for batch in pacs.stored for d in batch if d.Modality == "SR"}
    replaced = {
        str(sop.ReferencedSOPInstanceUID)
        for d in reports.values()
        for ref in d.get("PredecessorDocumentsSequence") or []
        for series in ref.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    return sorted(set(reports) - replaced)


def test_the_watch_state_is_private_to_the_server_and_two_writers_never_empty_it(tmp_path) -> None:
    """Saved through one fixed draft name: a second writer truncated the draft the first then moved in place (a
    watch read an empty state and stopped, or failed on the draft gone, 300 times in 300); the file was readable
    by every account where the database is not."""
    import stat
    import threading

    path, failures = tmp_path / "pacs-watch.json", []

    def writer(n: int) -> None:
        state = pacs_watch.WatchState(path, key=b"k" * 32)
        for k in range(150):
            try:
                state.save(k, {f"{STUDY}.{n}.{k}": "fingerprint"})
                assert pacs_watch.WatchState.load(path, b"k" * 32).last >= 0
            except Exception as error:  # collected for the assertion below
                failures.append(error)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:3]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_second_watch_of_one_data_folder_is_refused_while_the_first_runs(tmp_path) -> None:
    import os

    first = pacs_watch.WatchState.exclusive(tmp_path / "pacs-watch.lock")
    assert first is not None and pacs_watch.WatchState.exclusive(tmp_path / "pacs-watch.lock") is None
    os.close(first)  # the first watch ended
    again = pacs_watch.WatchState.exclusive(tmp_path / "pacs-watch.lock")
    assert again is not None
    os.close(again)


def test_the_watch_state_names_studies_by_a_keyed_hash_and_still_reads_a_file_written_before(tmp_path) -> None:
    """The state file kept a plain SHA-256 of each Study Instance UID: whoever held it could test which PACS studies
    were triaged. With a key it keeps an HMAC; a file written before keys is still honoured (no study redone)."""
    import hashlib
    import json

    key, uid = b"k" * 32, f"{STUDY}.5"
    state = pacs_watch.WatchState.load(tmp_path / "watch.json", key)
    state.save(1, {uid: "fingerprint-1"})
    written = (tmp_path / "watch.json").read_text()
    assert hashlib.sha256(uid.encode()).hexdigest() not in written and uid not in written
    assert pacs_watch.WatchState.load(tmp_path / "watch.json", key).fingerprint(uid) == "fingerprint-1"
    assert pacs_watch.WatchState.load(tmp_path / "watch.json").fingerprint(uid) is None  # the key names it
    before = {"last": 7, "handled": {hashlib.sha256(uid.encode()).hexdigest(): "old"}, "tries": {}}
    (tmp_path / "old.json").write_text(json.dumps(before))
    old = pacs_watch.WatchState.load(tmp_path / "old.json", key)
    assert old.seen(uid) and old.fingerprint(uid) == "old"  # not analysed again after the upgrade
    old.save(8, {uid: "new"})
    assert hashlib.sha256(uid.encode()).hexdigest() not in (tmp_path / "old.json").read_text()
    assert pacs_watch.WatchState.load(tmp_path / "old.json", key).fingerprint(uid) == "new"


def test_a_diffusion_series_two_stacks_are_two_lines_told_apart_in_the_report(tiny_classifier) -> None:
    """Each stack of a diffusion series is read as a series of its own: the report named both "Series 5 DWI (UID
    x)", two lines that could carry two verdicts, and their key images read alike."""
    dwi = f"{STUDY}.5"
    b0 = relabelled(dicom_series(head_volume(5, 96, range(2, 4), seed=2), study_uid=STUDY, series_uid=dwi),
                    DiffusionBValue=0, SeriesNumber=5)  # fmt: skip
    b1000 = relabelled(dicom_series(head_volume(5, 96, range(2, 4), seed=3), study_uid=STUDY, series_uid=dwi),
                       DiffusionBValue=1000, SeriesNumber=5)  # fmt: skip
    files = b0 + b1000
    outcome = analyse_study(files, tiny_classifier)
    assert len(outcome.series) == 2
    report = objects.verdict_report(
        objects.headers(files), outcome.series, outcome.verdict, final_model(tiny_classifier.card)
    )
    lines = [
        str(i.get("TextValue", ""))
        for i in report.ContentSequence
        if str(i.get("TextValue", "")).startswith("DICOM series 5")
    ]
    assert sorted(line.split(" (UID")[0] for line in lines) == [
        "DICOM series 5, images at b = 0 s/mm2",
        "DICOM series 5, images at b = 1000 s/mm2",
    ]


def test_report_text_from_another_character_set_survives_the_file(tiny_classifier) -> None:
    """The report took the first image's character set: a series description in Cyrillic (its own header said
    ISO_IR 144) was written as "?"."""
    import io

    from pydicom import dcmread

    first = relabelled(tumour_study(STUDY), SpecificCharacterSet="ISO_IR 100", SeriesDescription="T1 axial")
    second = dicom_series(head_volume(5, 96, range(2, 4), seed=3), study_uid=STUDY, series_uid=f"{STUDY}.2")
    files = first + relabelled(second, SpecificCharacterSet="ISO_IR 144", SeriesDescription="Т2 аксиальная")
    outcome = analyse_study(files, tiny_classifier)
    model = final_model(tiny_classifier.card)
    report = objects.verdict_report(objects.headers(files), outcome.series, outcome.verdict, model)
    buffer = io.BytesIO()
    report.save_as(buffer)
    back = dcmread(io.BytesIO(buffer.getvalue()))
    assert any("Т2 аксиальная" in str(item.get("TextValue", "")) for item in back.ContentSequence)


def test_the_report_names_each_multiframe_files_own_series(tiny_classifier) -> None:
    """A multi-frame file's series key adds the file's hash: the report fell back to the first file's series, so a
    finding on the T1 post-contrast file was attributed to the FLAIR file."""
    import io

    from pydicom import dcmread

    from core.imaging.phantom_series import enhanced_multiframe

    def relabelled(number: int, description: str) -> bytes:
        ds = dcmread(io.BytesIO(enhanced_multiframe(head_volume(4, 64, seed=number))))
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = f"1.2.3.4.{number}", number, description
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    files = [relabelled(7, "FLAIR"), relabelled(3, "T1 post")]
    outcome = analyse_study(files, tiny_classifier)
    evidence = objects.headers(files)
    named = sorted(objects.source_series(evidence, series) for series in outcome.series)
    assert named == ["1.2.3.4.3", "1.2.3.4.7"]
    lines = [objects._series_lines(evidence, series) for series in outcome.series]
    assert any(line.startswith("DICOM series 3 T1 post") for line in lines) and any("7 FLAIR" in line for line in lines)


def test_a_study_that_breaks_the_watch_is_reported_and_left_behind_and_one_not_saved_is_tried_again(
    tiny_classifier, tmp_path: Path, monkeypatch
) -> None:
    """An exception on one study stopped the watch, and the restarted watch met it first again: triage stopped for
    every later study. A study whose series could not be saved was marked handled: never on the worklist."""
    bad, good = f"{STUDY}.5", f"{STUDY}.6"
    pacs = StandIn({uid: tumour_study(uid) for uid in (bad, good)})
    store = SQLiteStore(tmp_path / "r.db")
    watcher = pacs_watch.Watcher(pacs, Feed([bad, good]), tiny_classifier, store, None, None)
    real = pacs_watch._handle

    def breaks_on_bad(w, uid, actor, *rest):
        if uid == bad:
            raise ValueError("a study the code cannot handle")
        return real(w, uid, actor, *rest)

    monkeypatch.setattr(pacs_watch, "_handle", breaks_on_bad)
    state = pacs_watch.WatchState.load(tmp_path / "watch.json")
    lines = pacs_watch.watch_once(watcher, state, RADIOLOGIST)
    assert [(line["study_uid"], line.get("skipped")) for line in lines] == [(bad, "internal_error"), (good, None)]
    assert state.seen(bad) and state.seen(good) and state.last == 2
    monkeypatch.setattr(pacs_watch, "_handle", real)

    later = f"{STUDY}.7"
    pacs.files[later] = tumour_study(later)
    from core.services.triage import SaveStatus

    monkeypatch.setattr("core.services.studies.save_series", lambda *a, **k: SaveStatus("not saved", "disk full"))
    again = pacs_watch.watch_once(
        pacs_watch.Watcher(pacs, Feed([bad, good, later]), tiny_classifier, store, None, None), state, RADIOLOGIST
    )
    assert [(line["study_uid"], line.get("skipped"), line.get("retry")) for line in again] == [
        (later, "store_unavailable", True)
    ]
    assert not state.seen(later) and state.last == 2  # tried again next time


def test_a_watched_study_with_a_series_nobody_could_read_is_handled_not_retried_forever(
    tiny_classifier, tmp_path: Path
) -> None:
    import numpy as np

    uid = f"{STUDY}.8"
    unread = dicom_series(np.zeros((4, 96, 96), np.uint16), study_uid=uid, series_uid=f"{uid}.2")
    pacs = StandIn({uid: tumour_study(uid) + unread})
    watcher = pacs_watch.Watcher(pacs, Feed([uid]), tiny_classifier, SQLiteStore(tmp_path / "r.db"), None, None)
    state = pacs_watch.WatchState.load(tmp_path / "watch.json")
    (line,) = pacs_watch.watch_once(watcher, state, RADIOLOGIST)
    assert line.get("skipped") is None and line["unanalysed_series"] == 1 and line["saved"] == ["saved", "not saved"]
    assert state.seen(uid) and state.last == 1


def test_a_watched_study_is_analysed_again_only_when_mr_images_are_added_to_it(tiny_classifier, tmp_path) -> None:
    """A study was analysed at its first stability only: a series the scanner sent later was never triaged. Our
    own report added to the study (stable again, same MR images) must not start a second analysis."""
    uid = f"{STUDY}.9"
    pacs = StandIn({uid: tumour_study(uid)})
    feed = Feed([uid])
    store = SQLiteStore(tmp_path / "r.db")
    watcher = pacs_watch.Watcher(pacs, feed, tiny_classifier, store, None, None)
    state = pacs_watch.WatchState.load(tmp_path / "watch.json")
    (first,) = pacs_watch.watch_once(watcher, state, RADIOLOGIST)
    assert first["saved"] == ["saved"] and "again" not in first
    feed.studies.append(uid)  # stable again, nothing of MR added (our report, say)
    assert pacs_watch.watch_once(watcher, state, RADIOLOGIST) == [] and state.last == 2
    later = dicom_series(head_volume(5, 96, range(1, 3), seed=4), study_uid=uid, series_uid=f"{uid}.2")
    pacs.files[uid] = pacs.files[uid] + later
    feed.studies.append(uid)
    restarted = pacs_watch.WatchState.load(tmp_path / "watch.json")
    (again,) = pacs_watch.watch_once(watcher, restarted, RADIOLOGIST)
    assert again["again"] and again["saved"] == ["already saved", "saved"]  # the first series is not saved twice
    assert again["verdict"] is not None and restarted.last == 3
    assert len(store.worklist(WorklistQuery(), 10)) == 2
    feed.studies.append(uid)
    assert pacs_watch.watch_once(watcher, pacs_watch.WatchState.load(tmp_path / "watch.json"), RADIOLOGIST) == []


def test_a_watch_state_written_before_fingerprints_keeps_its_studies_handled(tiny_classifier, tmp_path) -> None:
    import hashlib
    import json

    uid = f"{STUDY}.10"
    (tmp_path / "watch.json").write_text(json.dumps({"last": 0, "handled": [hashlib.sha256(uid.encode()).hexdigest()]}))
    pacs = StandIn({uid: tumour_study(uid)})
    watcher = pacs_watch.Watcher(pacs, Feed([uid]), tiny_classifier, SQLiteStore(tmp_path / "r.db"), None, None)
    state = pacs_watch.WatchState.load(tmp_path / "watch.json")
    assert state.seen(uid) and pacs_watch.watch_once(watcher, state, RADIOLOGIST) == [] and state.last == 1


def test_a_files_invalid_values_never_reach_warnings_or_the_log_when_a_report_is_made(
    tiny_classifier, caplog, recwarn
) -> None:
    """pydicom's default reading mode quoted an invalid date of birth (read for the report) in a warning and a log
    line: the server's log then held it; and copied into the report, it stopped the report being made."""
    import io
    import logging

    import pydicom

    def with_birth_date(data: bytes) -> bytes:
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.PatientBirthDate = "1970-01-01"  # not a DICOM date (YYYYMMDD)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()

    files = [with_birth_date(f) for f in tumour_study(STUDY)]
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    recwarn.clear()  # what making the test's files said; from here on, the app's reading only
    outcome = analyse_study(files, tiny_classifier)
    pulled = pacs_service.Pulled(STUDY, outcome, tuple(objects.headers(files)))
    card = tiny_classifier.card
    model = objects.ModelFacts.of(card)
    pacs = StandIn({STUDY: files})
    assert pacs_service.send_results(pacs, RADIOLOGIST, pulled, model, Trail(), None)
    assert pacs.stored and str(pacs.stored[0][0].PatientBirthDate) == ""  # made and sent, the bad date left out
    said = caplog.text + " ".join(str(w.message) for w in recwarn.list)
    assert "1970-01-01" not in said


def test_the_report_says_which_series_needs_review_and_the_threshold_each_was_judged_by(tiny_classifier) -> None:
    """The report wrote the rule's own threshold beside a verdict judged on fewer neighbours at the single-scan one,
    and never said that the app had sent the series to review first: a plain "notumor" in the PACS."""
    files = dicom_series(head_volume(2, 64), study_uid=STUDY, series_uid=f"{STUDY}.1")
    outcome = analyse_study(files, tiny_classifier)
    (series,) = outcome.series
    used, rule = series.neighbours_used, series.rule
    assert used < rule.neighbours and series.needs_review and series.label is not None
    line = objects._series_lines(objects.headers(files), series)
    assert f"tumour at >= {rule.threshold_for(used, series.single_threshold):.2f})" in line
    # a clinical report never states certainty: the PACS's report read "P(tumour) 1.000" (the screen: ">99.9%")
    sure, none = (objects._series_lines(objects.headers(files), replace(series, score=p)) for p in (0.99996, 2e-5))
    assert "series score >0.999 (" in sure and "series score <0.001 (" in none
    # named as the screen and the PDF name it: the lowest of a run of sections, not the series' tumour probability
    assert "P(tumour)" not in line and "the lowest tumour probability of its best run of neighbouring sections" in line
    # a report an earlier version sent, in its words ("P(tumour) 0.459 (the lowest of the best 2 ..."), is the same
    # reading: sent again unchanged, never a new version replacing a reader's FINAL one
    facts = objects.ModelFacts(tiny_classifier.card.name, tiny_classifier.card.version, "0" * 64)
    ours = objects.verdict_report(objects.headers(files), outcome.series, outcome.verdict, facts)
    earlier = copy.deepcopy(ours)
    for item in earlier.ContentSequence:
        text = str(item.get("TextValue", ""))
        item.TextValue = re.sub(r"series score (\S+) \(", r"P(tumour) \1 (the lowest of the best ", text)
    assert "P(tumour) " in " ".join(str(i.get("TextValue", "")) for i in earlier.ContentSequence)
    assert objects.same_reading(earlier, ours)
    other = objects.verdict_report(objects.headers(files), [replace(series, score=0.5)], outcome.verdict, facts)
    assert not objects.same_reading(earlier, other) and series.score != 0.5
    assert f"fewer than the rule's {rule.neighbours}" in line and "NEEDS REVIEW (it rests on 2 neighbouring" in line
    card = tiny_classifier.card
    report = objects.verdict_report(
        objects.headers(files), outcome.series, outcome.verdict, objects.ModelFacts(card.name, card.version, "0" * 64)
    )
    texts = [str(item.get("TextValue", "")) for item in report.ContentSequence]
    assert texts[0].startswith("Model verdict (decision aid): ") and "flagged for review" in texts[0]
    assert outcome.needs_review  # and so the screen, the PDF headline and the command line say (they did not)
    assert "notumor" not in " ".join(texts)  # the words the screen uses, never the model's codes
    # the reviewed (FINAL) version: the flag is history, no longer "NEEDS REVIEW" beside the radiologist's label
    final = objects.verdict_report(
        objects.headers(files),
        outcome.series,
        outcome.verdict,
        objects.ModelFacts(card.name, card.version, "0" * 64),
        "glioma",
        report,
    )
    texts = [str(item.get("TextValue", "")) for item in final.ContentSequence]
    assert not any("NEEDS REVIEW" in t for t in texts) and "since reviewed" in texts[2]
    # the reader's label first (a viewer's preview shows the first finding: it was the model's, unnamed as such)
    assert texts[0].startswith("Radiologist's final label: Glioma") and texts[1].startswith("Model verdict (decision")
    assert "reviewed: the radiologist's final label above" in texts[1] and final.CompletionFlag == "COMPLETE"
    blank = replace(outcome.series[0], label=None, score=None)  # a series nothing of which could be analysed
    partly = objects.verdict_report(objects.headers(files), [blank], None, final_model(card), "glioma", report)
    assert partly.PreliminaryFlag == "FINAL" and partly.CompletionFlag == "PARTIAL"  # it said COMPLETE


def test_a_report_is_made_for_the_header_values_real_scanners_write(tiny_classifier, tmp_path) -> None:
    """A patient sex of "U" or "male", and a Japanese character set written with its first value empty, stopped
    the report (highdicom refused them; the command line printed the patient's value in its error); a Korean one
    too, always."""
    card = tiny_classifier.card
    model = objects.ModelFacts.of(card)
    store = SQLiteStore(tmp_path / "r.db")
    for sex, charset, written in (("U", ["", "ISO 2022 IR 87"], ""), ("male", "ISO 2022 IR 100", "M")):
        files = relabelled(tumour_study(STUDY), PatientSex=sex, SpecificCharacterSet=charset)
        pulled = pacs_service.Pulled(STUDY, analyse_study(files, tiny_classifier), tuple(objects.headers(files)))
        pacs = StandIn({STUDY: files})
        assert pacs_service.send_results(pacs, RADIOLOGIST, pulled, model, store, None)
        assert pacs.stored[0][0].PatientSex == written
    # Korean (the report library names its set wrongly, and refused it): every Korean study went without a report
    korean = "Hong^Gildong=\u6d2a^\u5409\u6d1e=\ud64d^\uae38\ub3d9"
    files = relabelled(tumour_study(STUDY), SpecificCharacterSet=["", "ISO 2022 IR 149"], PatientName=korean)
    pulled = pacs_service.Pulled(STUDY, analyse_study(files, tiny_classifier), tuple(objects.headers(files)))
    pacs = StandIn({STUDY: files})
    assert pacs_service.send_results(pacs, RADIOLOGIST, pulled, model, store, None)
    report = pacs.stored[0][0]
    buffer = io.BytesIO()
    report.save_as(buffer, enforce_file_format=True)
    written = pydicom.dcmread(io.BytesIO(buffer.getvalue()))  # as the PACS reads it back
    assert written.SpecificCharacterSet == "ISO_IR 192" and str(written.PatientName) == korean


def test_a_send_the_audit_trail_cannot_record_is_not_made(tiny_classifier, tmp_path, monkeypatch) -> None:
    """The send was audited after the PACS had the report: an audit write that failed then left a clinical report
    in the PACS with no event, and the page saying "Not sent"."""
    from core.errors import StoreUnavailable

    files = tumour_study(STUDY)
    pulled = pacs_service.Pulled(STUDY, analyse_study(files, tiny_classifier), tuple(objects.headers(files)))
    card = tiny_classifier.card
    store, pacs = SQLiteStore(tmp_path / "r.db"), StandIn({STUDY: files})

    def unavailable(*args: object, **kwargs: object) -> None:
        raise StoreUnavailable("The results database is busy.")

    monkeypatch.setattr(store, "append_audit", unavailable)
    with pytest.raises(StoreUnavailable):
        pacs_service.send_results(pacs, RADIOLOGIST, pulled, objects.ModelFacts.of(card), store, None)
    assert pacs.stored == []


@pytest.mark.parametrize(
    ("error", "wait"),
    [
        (PacsError("HTTP 500"), pacs_watch.GIVE_UP_AFTER_S),
        (PacsMalformed("not valid DICOMweb"), pacs_watch.GIVE_UP_AFTER_S),
        (PacsTimedOut("no answer within 10 s"), pacs_watch.STUCK_AFTER_S),
        (PacsUnreachable("The PACS's answer to the retrieval broke off"), pacs_watch.STUCK_AFTER_S),
    ],
)
def test_a_study_the_pacs_keeps_failing_is_left_behind_and_does_not_hold_back_the_feed(
    tiny_classifier, tmp_path, monkeypatch, error, wait
):
    """WADO-RS answering 406 or 500 for one study every time kept the watch at that study for ever: every study
    after it in the feed was never triaged. Counted in watches alone (every 10 s), a PACS restarting (HTTP 500 for
    under a minute) dropped the study from triage for good: it takes ten minutes too. A study whose every retrieval
    timed out or broke off, the PACS answering its search each time, was waited on for ever, as an outage: an hour.
    An answer that is not DICOMweb was taken as the study's own fault, never tried again."""
    now = [1_000_000.0]
    monkeypatch.setattr(pacs_watch, "clock", lambda: now[0])
    broken, later = f"{STUDY}.11", f"{STUDY}.12"
    pacs = StandIn({broken: [], later: tumour_study(later)}, {broken: [error] * 20})
    watcher = pacs_watch.Watcher(
        pacs, Feed([broken, later]), tiny_classifier, SQLiteStore(tmp_path / "r.db"), None, None
    )
    first = pacs_watch.watch_once(watcher, pacs_watch.WatchState.load(tmp_path / "w.json"), RADIOLOGIST)
    assert [(line["study_uid"], line.get("retry")) for line in first] == [(broken, True), (later, None)]
    for _ in range(pacs_watch.MAX_TRIES * 2):  # a minute of watches: waited out
        now[0] += 10
        (line,) = pacs_watch.watch_once(watcher, pacs_watch.WatchState.load(tmp_path / "w.json"), RADIOLOGIST)
        assert line["retry"] and line["study_uid"] == broken and "left_behind" not in line
    assert pacs_watch.WatchState.load(tmp_path / "w.json").last == 0  # held at the failing study so far
    now[0] = 1_000_000.0 + wait - 60  # a minute short of the wait from its first failure
    (line,) = pacs_watch.watch_once(watcher, pacs_watch.WatchState.load(tmp_path / "w.json"), RADIOLOGIST)
    assert line["retry"] and "left_behind" not in line
    now[0] += 60
    state = pacs_watch.WatchState.load(tmp_path / "w.json")
    (line,) = pacs_watch.watch_once(watcher, state, RADIOLOGIST)
    minutes = f"over {wait // 60} minutes"
    assert "left behind" in line["left_behind"] and minutes in line["left_behind"] and "retry" not in line
    assert state.seen(broken) and state.last == 2 and pacs_watch.WatchState.load(tmp_path / "w.json").last == 2


def test_an_outage_is_waited_out_and_a_report_that_could_not_be_sent_is_sent_by_the_next_watch(
    tiny_classifier, tmp_path
) -> None:
    """A study the PACS did not answer for is never left behind, however many watches it takes; a report the PACS
    did not take (down during the send) was never sent again: the study was marked handled."""
    uid = f"{STUDY}.13"
    pacs = StandIn({uid: tumour_study(uid)}, {uid: [PacsUnreachable("down")] * (pacs_watch.MAX_TRIES + 1)})
    watcher = pacs_watch.Watcher(pacs, Feed([uid]), tiny_classifier, SQLiteStore(tmp_path / "r.db"), None, None)
    watcher = pacs_watch.Watcher(
        *[getattr(watcher, f) for f in ("pacs", "changes", "classifier", "store")], None, None, True
    )
    for _ in range(pacs_watch.MAX_TRIES + 1):
        (line,) = pacs_watch.watch_once(watcher, pacs_watch.WatchState.load(tmp_path / "w.json"), RADIOLOGIST)
        assert line["retry"] and "left_behind" not in line
    real_store, calls = pacs.store, []

    def down_once(datasets: list) -> list[str]:
        calls.append(1)
        if len(calls) == 1:
            raise PacsUnreachable("The PACS did not answer.")
        return real_store(datasets)

    pacs.store = down_once
    (unsent,) = pacs_watch.watch_once(watcher, pacs_watch.WatchState.load(tmp_path / "w.json"), RADIOLOGIST)
    assert unsent["saved"] == ["saved"] and unsent["send_error"]["code"] == "pacs_unreachable" and unsent["retry"]
    state = pacs_watch.WatchState.load(tmp_path / "w.json")
    (sent,) = pacs_watch.watch_once(watcher, state, RADIOLOGIST)
    assert sent["saved"] == ["already saved"] and sent["stored"] and state.seen(uid)


def test_an_outage_the_studys_search_fails_in_too_is_waited_out_past_the_hour(tiny_classifier, tmp_path, monkeypatch):
    """Only a study the PACS will not deliver while it answers the study's search is stuck: when the search fails
    too, the PACS is down, and its studies wait however long that lasts."""
    now = [1_000_000.0]
    monkeypatch.setattr(pacs_watch, "clock", lambda: now[0])
    uid = f"{STUDY}.14"
    pacs = StandIn({uid: tumour_study(uid)}, {uid: [PacsUnreachable("down")] * 20})

    def down(study_uid: str) -> list:
        raise PacsUnreachable("The PACS does not answer.")

    pacs.series_of = down
    watcher = pacs_watch.Watcher(pacs, Feed([uid]), tiny_classifier, SQLiteStore(tmp_path / "r.db"), None, None)
    for _ in range(pacs_watch.MAX_TRIES + 2):
        now[0] += pacs_watch.STUCK_AFTER_S
        (line,) = pacs_watch.watch_once(watcher, pacs_watch.WatchState.load(tmp_path / "w.json"), RADIOLOGIST)
        assert line["retry"] and "left_behind" not in line and line["skipped"] == "pacs_unreachable"
    # the study pulled, its report not taken (the PACS busy for its stores) for hours: left behind, never sent
    pacs.failures.clear()
    pacs.series_of = StandIn.series_of.__get__(pacs)

    def busy(datasets: list) -> list[str]:
        raise PacsUnreachable("The PACS is busy or unavailable (HTTP 503) for the store; try again later.")

    pacs.store = busy
    watcher = replace(watcher, send=True)
    for _ in range(pacs_watch.MAX_TRIES + 2):
        now[0] += pacs_watch.STUCK_AFTER_S
        (line,) = pacs_watch.watch_once(watcher, pacs_watch.WatchState.load(tmp_path / "w.json"), RADIOLOGIST)
        assert line["retry"] and "left_behind" not in line and line["send_error"]["code"] == "pacs_unreachable"


def test_a_pacs_that_refuses_our_reports_has_the_study_left_behind_not_pulled_and_audited_for_ever(
    tiny_classifier, tmp_path, monkeypatch
) -> None:
    """An account that may read but not store (HTTP 403 on STOW) was waited out as a wrong password is: every
    watch pulled, analysed and audited every study again, four events a study every ten seconds, for ever."""
    from core.errors import PacsForbidden

    uid = f"{STUDY}.14"
    pacs, store = StandIn({uid: tumour_study(uid)}), SQLiteStore(tmp_path / "r.db")

    def forbidden(datasets: list) -> list[str]:
        raise PacsForbidden("The PACS refused the store to this account (HTTP 403).")

    pacs.store = forbidden
    now = [1_000_000.0]
    monkeypatch.setattr(pacs_watch, "clock", lambda: now[0])
    watcher = pacs_watch.Watcher(pacs, Feed([uid]), tiny_classifier, store, None, None, True)
    for _ in range(pacs_watch.MAX_TRIES - 1):
        (line,) = pacs_watch.watch_once(watcher, pacs_watch.WatchState.load(tmp_path / "w.json"), RADIOLOGIST)
        assert line["send_error"]["code"] == "pacs_forbidden" and line["retry"]
        now[0] += 10  # a refusal is left behind after five watches: no half hour of pulls every ten seconds
    state = pacs_watch.WatchState.load(tmp_path / "w.json")
    (line,) = pacs_watch.watch_once(watcher, state, RADIOLOGIST)
    assert "left behind" in line["left_behind"] and "retry" not in line and state.seen(uid)
    pulls = [e for e in store.audit_events() if e.action == "pacs_pull"]
    assert pacs_watch.watch_once(watcher, state, RADIOLOGIST) == [] and len(pulls) == pacs_watch.MAX_TRIES
    assert store.summary().total == 1  # the series stays saved for review: only the report never reached the PACS


def test_a_pacs_whose_change_numbers_went_back_stops_the_watch_until_an_operator_decides(
    tiny_classifier, tmp_path
) -> None:
    """Orthanc's database reset or restored numbers its changes from 1 again: the watch took the smaller last change
    as its own and the studies received before its next look were never triaged. Read again from the first change
    unasked, a PACS restored (or another one at the address) had its history analysed and reported."""
    from core.errors import PacsFeedWentBack

    first, second, third = (f"{STUDY}.{n}" for n in (21, 22, 23))
    pacs = StandIn({uid: tumour_study(uid) for uid in (first, second, third)})
    store = SQLiteStore(tmp_path / "r.db")
    watcher = pacs_watch.Watcher(pacs, Feed([first, second, second]), tiny_classifier, store, None, None)
    done = pacs_watch.watch_once(watcher, pacs_watch.WatchState.load(tmp_path / "w.json"), RADIOLOGIST)
    assert [line["study_uid"] for line in done] == [first, second]
    restored = pacs_watch.Watcher(pacs, Feed([first, third]), tiny_classifier, store, None, None)  # numbered 1, 2
    events = len(store.audit_events())
    with pytest.raises(PacsFeedWentBack, match=r"last change is now 2, and this watch had read up to 3.*w\.json"):
        pacs_watch.watch_once(restored, pacs_watch.WatchState.load(tmp_path / "w.json"), RADIOLOGIST)
    assert pacs_watch.WatchState.load(tmp_path / "w.json").last == 3 and len(store.audit_events()) == events
    state = pacs_watch.WatchState.load(tmp_path / "w.json")
    state.save(0)  # the operator's answer: from its first change; the study analysed as it is passes by
    assert [line["study_uid"] for line in pacs_watch.watch_once(restored, state, RADIOLOGIST)] == [third]


def test_a_running_watch_reads_the_operators_answer_to_a_feed_that_went_back(tmp_path, monkeypatch, capsys) -> None:
    """The message said to set "last" in the state file, but the running watch had read the file once: it kept
    refusing, and its next save would have written over the operator's answer."""
    import argparse

    from core.cli import pacs as pacs_cli
    from core.errors import PacsFeedWentBack

    path = tmp_path / "pacs-watch.json"
    pacs_watch.WatchState(path, last=30).save(30)
    monkeypatch.setattr(pacs_cli, "data_dir", lambda: tmp_path)
    monkeypatch.setattr(pacs_cli.time, "sleep", lambda seconds: None)
    seen: list[int] = []

    def watch_once(watcher, state, actor):
        seen.append(state.last)
        if len(seen) == 1:
            pacs_watch.WatchState(path, last=30).save(0)  # the operator's answer, while the watch waits
            raise PacsFeedWentBack("The PACS's change feed went back ...")
        raise KeyboardInterrupt  # the test's end

    monkeypatch.setattr(pacs_watch, "watch_once", watch_once)
    watcher = pacs_watch.Watcher(None, None, None, SQLiteStore(tmp_path / "r.db"), None, None)
    with pytest.raises(KeyboardInterrupt):
        pacs_cli._watch(argparse.Namespace(once=False, interval=0, from_now=False), watcher, None)
    assert seen == [30, 0] and "pacs_feed_went_back" in capsys.readouterr().out


def test_a_watch_whose_state_file_went_is_refused_not_sent_through_the_pacss_whole_history(
    tiny_classifier, tmp_path, monkeypatch, capsys
) -> None:
    """Restored from a backup without its state file (or the file deleted), the watch took itself for a first start
    and pulled, analysed, saved and reported every study the PACS ever held. Its first start is now an audit event
    and writes the file at once; a file gone after it is refused until an operator restores or writes one."""
    from core.cli import pacs as pacs_cli
    from core.errors import WatchStateMissing

    first, second = f"{STUDY}.31", f"{STUDY}.32"
    store, path = SQLiteStore(tmp_path / "r.db"), tmp_path / "pacs-watch.json"
    pacs = StandIn({uid: tumour_study(uid) for uid in (first, second)})
    watcher = pacs_watch.Watcher(pacs, Feed([first]), tiny_classifier, store, None, None)
    state = pacs_watch.open_state(path, None, store, RADIOLOGIST)  # the first start
    assert path.exists() and state.last == 0
    assert [e.action for e in store.audit_events()] == ["pacs_watch_started"]
    assert pacs_watch.open_state(path, None, store, RADIOLOGIST).last == 0  # a second start reads the file
    assert [line["study_uid"] for line in pacs_watch.watch_once(watcher, state, RADIOLOGIST)] == [first]
    path.unlink()  # restored from a backup without it
    with pytest.raises(WatchStateMissing, match=r"pacs-watch\.json in the data folder\) is missing"):
        pacs_watch.open_state(path, None, store, RADIOLOGIST)
    assert not path.exists() and [e.action for e in store.audit_events()].count("pacs_watch_started") == 1
    monkeypatch.setattr(pacs_cli, "data_dir", lambda: tmp_path)
    pulls = len(store.audit_events())
    assert pacs_cli._watch(argparse_once(), watcher, None) == 2  # the command says so and stops
    said = json.loads(capsys.readouterr().out)["error"]
    assert said["code"] == "watch_state_missing" and len(store.audit_events()) == pulls
    for written in ("1e400", '"5"', "true", "-1", "5.5", "[" * 100_000 + "]" * 100_000):  # not a change number
        path.write_text(f'{{"last": {written}}}')  # (1e400: an OverflowError, an internal error; "5": taken)
        with pytest.raises(PacsError, match=r"state file .* cannot be read"):
            pacs_watch.open_state(path, None, store, RADIOLOGIST)
    path.write_text('{"last": 1}')  # the operator's answer: go on after change 1
    watcher = pacs_watch.Watcher(pacs, Feed([first, second]), tiny_classifier, store, None, None)
    state = pacs_watch.open_state(path, None, store, RADIOLOGIST)
    assert [line["study_uid"] for line in pacs_watch.watch_once(watcher, state, RADIOLOGIST)] == [second]
    before = SQLiteStore(tmp_path / "before.db")  # a watch that ran before the event existed: recorded at its start
    assert pacs_watch.open_state(path, None, before, RADIOLOGIST).last == 2
    assert [(e.action, e.detail) for e in before.audit_events()] == [("pacs_watch_started", {"last": 2})]
    path.unlink()
    with pytest.raises(WatchStateMissing):
        pacs_watch.open_state(path, None, before, RADIOLOGIST)
    path.write_text("{damaged")  # its advice is one the watch takes (moved away, the file is refused as missing)
    with pytest.raises(PacsError, match=r'replace it with one holding \{"last": N\}') as damaged:
        pacs_watch.open_state(path, None, before, RADIOLOGIST)
    assert "move it away" not in str(damaged.value)
    path.unlink()
    fresh, calls = SQLiteStore(tmp_path / "fresh.db"), []

    def down(event):
        calls.append(event)
        raise StoreError("The results database is locked by another process; try again.")

    monkeypatch.setattr(fresh, "append_audit", down)  # the first start's event cannot be recorded
    with pytest.raises(StoreError):
        pacs_watch.open_state(path, None, fresh, RADIOLOGIST)
    assert path.exists() and calls  # the file first: the next start is no missing file, and records the event
    monkeypatch.undo()
    assert pacs_watch.open_state(path, None, fresh, RADIOLOGIST).last == 0
    assert [e.action for e in fresh.audit_events()] == ["pacs_watch_started"]


def test_from_now_on_a_watch_whose_first_start_failed_begins_from_now(tmp_path) -> None:
    """A first start at a mistyped port wrote its state at change 0; the retry with --from-now was ignored (the file
    was there), and the watch went through the PACS's whole history, with --send reporting into every old study."""
    store, path = SQLiteStore(tmp_path / "r.db"), tmp_path / "pacs-watch.json"
    assert pacs_watch.open_state(path, None, store, RADIOLOGIST).last == 0  # the failed first start's file
    assert pacs_watch.open_state(path, None, store, RADIOLOGIST, lambda: 18).last == 18  # the retry: from now
    assert json.loads(path.read_text())["last"] == 18
    assert [e.detail for e in store.audit_events() if e.action == "pacs_watch_started"] == [{"last": 0}, {"last": 18}]
    state = pacs_watch.WatchState.load(path)
    state.save(20, {f"{STUDY}.41": "f"})  # a watch that has gone on: --from-now, on every start, is no first start
    assert pacs_watch.open_state(path, None, store, RADIOLOGIST, lambda: 99).last == 20
    empty, fresh = tmp_path / "empty.json", SQLiteStore(tmp_path / "fresh.db")  # a first start on a PACS with
    watcher = pacs_watch.Watcher(StandIn({}), Feed([]), None, fresh, None, None)  # nothing in its feed, read all
    pacs_watch.watch_once(watcher, pacs_watch.open_state(empty, None, fresh, RADIOLOGIST, lambda: 0), RADIOLOGIST)
    assert pacs_watch.open_state(empty, None, fresh, RADIOLOGIST, lambda: 7).last == 0  # the same: a unit always
    # passing --from-now skipped the studies sent while it was down
    path.write_text('{"last": 0}')  # an operator's answer, "go through the whole history again": taken as written
    assert pacs_watch.open_state(path, None, store, RADIOLOGIST, lambda: 99).last == 0


def test_a_pacs_study_of_localizers_alone_so_far_is_no_failure_and_is_read_when_its_series_arrive(
    tiny_classifier, tmp_path
) -> None:
    """Scanners often send the scout first, and Orthanc called the study stable before its series arrived: the
    watch reported "series_error", worded for an upload, and exited 1 for a normal exam."""
    uid = f"{STUDY}.27"
    scout = relabelled(tumour_study(uid)[:3], ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    pacs, store = StandIn({uid: scout}), SQLiteStore(tmp_path / "r.db")
    state = pacs_watch.WatchState.load(tmp_path / "w.json")
    watcher = pacs_watch.Watcher(pacs, Feed([uid]), tiny_classifier, store, None, None)
    (line,) = pacs_watch.watch_once(watcher, state, RADIOLOGIST)
    assert line["skipped"] == "only_localizers" and "read when its series arrive" in line["reason"]
    assert not pacs_watch.failed(line) and "upload" not in line["reason"]
    pacs.files[uid] = scout + tumour_study(uid)  # the series arrive: the study's MR images changed
    (line,) = pacs_watch.watch_once(replace(watcher, changes=Feed([uid, uid])), state, RADIOLOGIST)
    assert line["again"] and line["saved"] == ["saved"] and not pacs_watch.failed(line)


def argparse_once():
    import argparse

    return argparse.Namespace(once=True, interval=0, from_now=False)


def test_a_study_kept_by_a_watch_before_patients_were_fingerprinted_is_not_analysed_again(
    tiny_classifier, tmp_path
) -> None:
    """The fingerprint took the patient in: every study kept by the version before read as changed when it became
    stable again (our own report stored in it does that), and was analysed and sent again; kept as it was, a
    correction of the patient since went unseen."""
    import hashlib

    uid = f"{STUDY}.24"
    pacs, store = StandIn({uid: tumour_study(uid)}), SQLiteStore(tmp_path / "r.db")
    state = pacs_watch.WatchState.load(tmp_path / "w.json")
    old = hashlib.sha256(f"{uid}.mr:{len(pacs.files[uid])}".encode()).hexdigest()  # as the version before kept it
    state.save(0, {uid: old})
    pacs.listed.add(objects.report_series(uid))  # the report the version before sent
    watcher = pacs_watch.Watcher(pacs, Feed([uid]), tiny_classifier, store, None, None, True)
    assert pacs_watch.watch_once(watcher, pacs_watch.WatchState.load(tmp_path / "w.json"), RADIOLOGIST) == []
    assert pacs.stored == [] and store.summary().total == 0
    kept = pacs_watch.WatchState.load(tmp_path / "w.json").fingerprint(uid)
    assert kept == pacs_service.mr_fingerprint(pacs, uid)  # brought up to date: a later correction of the patient
    pacs.files[uid] = relabelled(pacs.files[uid], PatientID="MRN-1")  # is seen
    watcher = pacs_watch.Watcher(pacs, Feed([uid, uid]), tiny_classifier, store, None, None, True)  # stable again
    (line,) = pacs_watch.watch_once(watcher, pacs_watch.WatchState.load(tmp_path / "w.json"), RADIOLOGIST)
    assert line["again"] and pacs.stored
    pacs.files[uid] = [*pacs.files[uid], *relabelled(tumour_study(uid)[:1], PatientID="MRN-1")]  # a series added
    watcher = pacs_watch.Watcher(pacs, Feed([uid, uid, uid]), tiny_classifier, store, None, None, True)
    (line,) = pacs_watch.watch_once(watcher, pacs_watch.WatchState.load(tmp_path / "w.json"), RADIOLOGIST)
    assert line["again"] and len(pacs.stored) > 1


def test_a_study_whose_report_left_the_pacs_is_reported_again_when_it_is_stable_again(tiny_classifier, tmp_path):
    """Deleted and sent again by the modality (a routine fix), or the PACS restored from a backup older than the
    report: the same MR images came back without our report, the fingerprint matched, and the watch passed over
    the study in silence; its readers in the PACS lost the report."""
    uid = f"{STUDY}.26"
    pacs, store = StandIn({uid: tumour_study(uid)}), SQLiteStore(tmp_path / "r.db")
    state = pacs_watch.WatchState.load(tmp_path / "w.json", b"k" * 32)
    watcher = pacs_watch.Watcher(pacs, Feed([uid]), tiny_classifier, store, None, b"k" * 32, True)
    (line,) = pacs_watch.watch_once(watcher, state, RADIOLOGIST)
    sent = [str(d.SOPInstanceUID) for batch in pacs.stored for d in batch]
    assert sent and "again" not in line
    watcher = replace(watcher, changes=Feed([uid, uid]))  # our report made the study stable again: nothing to do
    assert pacs_watch.watch_once(watcher, state, RADIOLOGIST) == []
    pacs.stored.clear()  # the study deleted and sent again: the same MR images, no report
    watcher = replace(watcher, changes=Feed([uid, uid, uid]))
    (line,) = pacs_watch.watch_once(watcher, state, RADIOLOGIST)
    assert "no longer in the PACS" in line["again"] and line["saved"] == ["already saved"]
    assert [str(d.SOPInstanceUID) for batch in pacs.stored for d in batch] == sent  # the same objects again
    watcher = replace(watcher, send=False, changes=Feed([uid] * 4))  # not sending: nothing is looked for
    pacs.stored.clear()
    assert pacs_watch.watch_once(watcher, state, RADIOLOGIST) == []
    # a study never reported (refused, or read without --send) is no report gone: it was pulled again and its line
    # said "sent again", sending nothing
    other = f"{STUDY}.28"
    pacs.files[other] = tumour_study(other)
    quiet = replace(watcher, send=False, changes=Feed([uid] * 4 + [other]))
    (line,) = pacs_watch.watch_once(quiet, state, RADIOLOGIST)
    assert line.get("saved") and "again" not in line and not pacs.stored
    loud = replace(watcher, send=True, changes=Feed([uid] * 4 + [other, other]))
    assert pacs_watch.watch_once(loud, state, RADIOLOGIST) == [] and not pacs.stored


def test_a_pacs_refusing_this_account_its_studies_is_waited_out_not_left_behind(tiny_classifier, tmp_path) -> None:
    """A permission that slipped for 40 seconds (HTTP 403 on every study's search) had every study then waiting
    left behind for good, never triaged once the permission came back; only a refused report is counted."""
    from core.errors import PacsForbidden

    uids = [f"{STUDY}.{n}" for n in (50, 51)]
    pacs = StandIn({uid: tumour_study(uid) for uid in uids})
    real, forbidden = pacs.series_of, [True]

    def series_of(study_uid: str) -> list[SeriesHit]:
        if forbidden[0]:
            raise PacsForbidden("The PACS refused this request to this account (HTTP 403).")
        return real(study_uid)

    pacs.series_of = series_of
    watcher = pacs_watch.Watcher(pacs, Feed(uids), tiny_classifier, SQLiteStore(tmp_path / "r.db"), None, None)
    for _ in range(pacs_watch.MAX_TRIES + 2):
        lines = pacs_watch.watch_once(watcher, pacs_watch.WatchState.load(tmp_path / "w.json"), RADIOLOGIST)
        assert all(line["retry"] and "left_behind" not in line for line in lines) and len(lines) == 2
    forbidden[0] = False
    lines = pacs_watch.watch_once(watcher, pacs_watch.WatchState.load(tmp_path / "w.json"), RADIOLOGIST)
    assert [line["study_uid"] for line in lines if line.get("verdict")] == uids


def test_a_damaged_watch_state_is_refused_not_taken_for_a_first_start(tmp_path) -> None:
    """A state file cut short was read as a first start: the watch went back to the beginning of the PACS's
    history and analysed, and with --send wrote reports into, every study it ever held."""
    (tmp_path / "w.json").write_text("{")
    with pytest.raises(PacsError, match="cannot be read"):
        pacs_watch.WatchState.load(tmp_path / "w.json")
    assert pacs_watch.WatchState.load(tmp_path / "none.json").last == 0  # no file: a first start


def test_a_stow_answer_that_confirms_fewer_objects_than_were_sent_is_not_a_success() -> None:
    """dicomweb-client reads an answer whose type carries a charset as an empty dataset: the PACS's failures were
    never seen, and the page said "Sent" with "-1 key images"."""
    from pydicom.dataset import Dataset

    from core.pacs.client import Pacs

    sent = []
    for number in (1, 2):
        ds = Dataset()
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.77.{number}"
        sent.append(ds)
    pacs = Pacs("http://127.0.0.1:9/dicom-web")
    pacs._client.store_instances = lambda datasets: Dataset()  # nothing confirmed, nothing refused
    with pytest.raises(PacsError, match="confirmed 0 of the 2 objects"):
        pacs.store(sent)
    confirmed = Dataset()
    item = Dataset()
    item.ReferencedSOPInstanceUID = sent[0].SOPInstanceUID
    confirmed.ReferencedSOPSequence = [item]
    pacs._client.store_instances = lambda datasets: confirmed
    with pytest.raises(PacsError, match="confirmed 1 of the 2 objects"):
        pacs.store(sent)
    item2 = Dataset()
    item2.ReferencedSOPInstanceUID = sent[1].SOPInstanceUID
    confirmed.ReferencedSOPSequence = [item, item2]
    assert pacs.store(sent) == [str(ds.SOPInstanceUID) for ds in sent]


def test_a_reviewed_report_sent_first_takes_the_versions_it_replaces_with_it(tiny_classifier) -> None:
    """A first send with a final label (or after reviews made on the Worklist) stored a FINAL report whose
    predecessor the PACS never received: a chain that points at nothing."""
    files = tumour_study(STUDY)
    pulled = pacs_service.Pulled(STUDY, analyse_study(files, tiny_classifier), tuple(objects.headers(files)))
    pacs = StandIn({STUDY: files})
    card = tiny_classifier.card
    model = objects.ModelFacts.of(card)
    returned = pacs_service.send_results(
        pacs, RADIOLOGIST, pulled, model, Trail(), None, final_label="meningioma", earlier_finals=[("glioma", "dr-b")]
    )
    (batch,) = pacs.stored
    final = batch[0]
    held = {str(ds.SOPInstanceUID) for ds in batch}
    assert final.PreliminaryFlag == "FINAL" and int(final.InstanceNumber) == 3
    seen = final
    while seen.get("PredecessorDocumentsSequence"):  # every version it names is in the PACS too
        uid = seen.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
        assert str(uid.ReferencedSOPInstanceUID) in held
        seen = next(ds for ds in batch if str(ds.SOPInstanceUID) == str(uid.ReferencedSOPInstanceUID))
    assert int(seen.InstanceNumber) == 1 and seen.PreliminaryFlag == "PRELIMINARY"
    assert returned[0] == str(final.SOPInstanceUID) and len(returned) == len(batch) - 2  # this version, its images


def test_an_oblique_tumour_series_is_reported_with_key_images_that_name_every_letter_of_their_edges(
    tiny_classifier,
) -> None:
    """An oblique series' edges read "LP": highdicom takes one letter, so the key images, and with them the report of
    every oblique tumour series, failed ("report not made")."""
    from dataclasses import replace

    import numpy as np

    angle = np.radians(35.0)
    oblique = (np.cos(angle), np.sin(angle), 0.0, -np.sin(angle), np.cos(angle), 0.0)
    files = dicom_series(head_volume(6, 96, range(2, 4)), orientation=oblique, study_uid=STUDY, series_uid=f"{STUDY}.1")
    outcome = analyse_study(files, tiny_classifier)
    (series,) = outcome.series
    series = replace(series, rule=replace(series.rule, threshold=0.0))  # every section a key section
    assert any(len(letter) > 1 for letter in series.volume.letters.values())
    images = captures.key_images(objects.headers(files), series)
    assert images and all(
        list(image.PatientOrientation) == [series.volume.letters["right"], series.volume.letters["bottom"]]
        for image in images
    )
    # their pixel spacing, in the order shown (a series stored transposed, 2 x 1 mm pixels): a PACS drew them square
    transposed = relabelled(
        dicom_series(head_volume(6, 96, range(2, 4)), orientation=(0, 1, 0, 1, 0, 0), study_uid=STUDY),
        PixelSpacing=[2.0, 1.0],
    )
    (stored,) = analyse_study(transposed, tiny_classifier).series
    stored = replace(stored, rule=replace(stored.rule, threshold=0.0))
    assert stored.volume.spacing == (1.0, 2.0)  # turned to the radiological view: rows 1 mm apart, columns 2 mm
    (image, *_) = captures.key_images(objects.headers(transposed), stored)
    assert [float(v) for v in image.PixelSpacing] == [1.0, 2.0]
    assert (image.Rows, image.Columns) == stored.volume.sections.shape[1:]  # the pixels as shown, as spaced
    unspaced = replace(stored, volume=replace(stored.volume, spacing=None))
    (without, *_) = captures.key_images(objects.headers(transposed), unspaced)
    assert "PixelSpacing" not in without and without.SOPInstanceUID != image.SOPInstanceUID  # sent again: a new one
    # the identity qualifiers the report keeps, the key images keep too (an issuer-aware PACS filed them apart)
    qualified = relabelled(files, IssuerOfPatientID="HOSP-A", StudyDescription="MR BRAIN")
    (image, *_) = captures.key_images(objects.headers(qualified), series)
    assert (image.IssuerOfPatientID, image.StudyDescription, image.BurnedInAnnotation) == ("HOSP-A", "MR BRAIN", "NO")
    # each names the image it was made from: its instance number is the section's place in the app, not the source's
    import io

    from pydicom import dcmread

    from core.imaging.scan import read_scan

    by_uid = {str(dcmread(io.BytesIO(f), stop_before_pixels=True).SOPInstanceUID): f for f in files}
    for key_image in images:
        (source,) = key_image.SourceImageSequence
        shown = read_scan(by_uid[str(source.ReferencedSOPInstanceUID)]).pixels
        assert np.array_equal(key_image.pixel_array[..., 0], shown)  # the very section it shows


def test_patients_names_never_reach_the_log_or_warnings_when_a_report_is_made(tiny_classifier, caplog, recwarn, capsys):
    """highdicom quoted a one-part patient name (and the referring physician's) in a warning and a log line, new for
    every patient: the server's log held patients' names."""
    import logging

    files = relabelled(tumour_study(STUDY), PatientName="ZZCANARYSMITH", ReferringPhysicianName="ZZCANARYDOC")
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    recwarn.clear()
    pulled = pacs_service.Pulled(STUDY, analyse_study(files, tiny_classifier), tuple(objects.headers(files)))
    card = tiny_classifier.card
    pacs = StandIn({STUDY: files})
    model = objects.ModelFacts.of(card)
    assert pacs_service.send_results(pacs, RADIOLOGIST, pulled, model, Trail(), None)
    captured = capsys.readouterr()
    said = caplog.text + " ".join(str(w.message) for w in recwarn.list) + captured.out + captured.err
    assert "ZZCANARY" not in said and str(pacs.stored[0][0].PatientName) == "ZZCANARYSMITH"  # kept in the report


def test_a_report_whose_study_has_a_series_it_could_not_read_is_a_new_instance_naming_that_series(
    tiny_classifier,
) -> None:
    """A series added to the study that cannot be read withholds the verdict; its report took the UID of the report
    without it, so the PACS kept the old one's verdict (and the line did not say which series)."""
    files = dicom_series(head_volume(6, 64), study_uid=STUDY, series_uid=f"{STUDY}.1")
    outcome = analyse_study(files, tiny_classifier)
    card = tiny_classifier.card
    model = objects.ModelFacts(card.name, card.version, "0" * 64)
    before = objects.verdict_report(objects.headers(files), outcome.series, outcome.verdict, model)
    unread = ("Series 7: This DICOM image is in colour (RGB); the model reads grayscale MRI only.",)
    after = objects.verdict_report(objects.headers(files), outcome.series, None, model, unread=unread)
    assert after.SOPInstanceUID != before.SOPInstanceUID
    again = objects.verdict_report(objects.headers(files), outcome.series, outcome.verdict, model)
    assert again.SOPInstanceUID == before.SOPInstanceUID  # the same report: the same instance, stored once
    reworded = ("Series 7: a colour image (RGB): not read.",)  # the same series unread, the message reworded
    same = objects.verdict_report(objects.headers(files), outcome.series, None, model, unread=reworded)
    assert same.SOPInstanceUID == after.SOPInstanceUID
    renamed = ("DICOM series 7: a colour image (RGB): not read.",)  # as series are named since: the same report
    assert (
        objects.verdict_report(objects.headers(files), outcome.series, None, model, unread=renamed).SOPInstanceUID
        == after.SOPInstanceUID
    )
    texts = [str(item.get("TextValue", "")) for item in after.ContentSequence]
    assert any(t.startswith("A series could not be read, read it yourself: Series 7: ") for t in texts)


def test_a_series_the_pacs_gives_short_is_not_analysed_short(monkeypatch: pytest.MonkeyPatch) -> None:
    """The PACS listed 6 images and sent 4 (ones it could not transcode): the series was analysed without them,
    and a study missing its end sections could read "no tumour"."""
    import io

    import pydicom

    from core.pacs.client import Pacs

    files = dicom_series(head_volume(6, 64), study_uid=STUDY, series_uid=f"{STUDY}.1")
    pacs = Pacs("http://pacs.invalid/dicom-web")
    listed = [SeriesHit(f"{STUDY}.1", "MR", "T1", 6)]
    monkeypatch.setattr(pacs, "series_of", lambda study_uid: listed)
    sent = [pydicom.dcmread(io.BytesIO(data)) for data in files]
    monkeypatch.setattr(pacs._client, "retrieve_series_metadata", lambda *_: [d.to_json_dict() for d in sent])
    monkeypatch.setattr(pacs._client, "iter_series", lambda study_uid, series_uid, **_: iter(sent[:4]))
    with pytest.raises(PacsError, match="gave 4 of the 6 images"):
        pacs.retrieve_mr(STUDY)
    monkeypatch.setattr(pacs._client, "iter_series", lambda study_uid, series_uid, **_: iter(sent))
    assert len(pacs.retrieve_mr(STUDY)[0]) == 6
    # a PACS answering with another study's images (as many): analysed as this study's, saved under that
    # patient's reference, and its report and key images stored in the other study
    other = [pydicom.dcmread(io.BytesIO(d)) for d in dicom_series(head_volume(6, 64), study_uid=f"{STUDY}9")]
    monkeypatch.setattr(pacs._client, "iter_series", lambda study_uid, series_uid, **_: iter(other))
    with pytest.raises(PacsMalformed, match="images of another study or series"):
        pacs.retrieve_mr(STUDY)


def test_a_series_in_a_transfer_syntax_pydicom_does_not_know_is_named_unread_and_the_others_analysed(
    tiny_classifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One series stored as JPEG XL failed the whole study as "not valid DICOMweb" (pydicom cannot write it back),
    its good series unanalysed; the watch then took the study as handled."""
    from core.errors import UnsupportedDicom
    from core.pacs.client import Pacs
    from core.services import audit

    good = dicom_series(head_volume(6, 64), study_uid=STUDY, series_uid=f"{STUDY}.1")
    odd = dicom_series(head_volume(4, 64), study_uid=STUDY, series_uid=f"{STUDY}.2")
    sent = {f"{STUDY}.1": [pydicom.dcmread(io.BytesIO(data)) for data in good]}
    sent[f"{STUDY}.2"] = [pydicom.dcmread(io.BytesIO(data)) for data in odd]
    for dataset in sent[f"{STUDY}.2"][1:]:
        dataset.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.110"  # JPEG XL: after one image read well
    pacs = Pacs("http://pacs.invalid/dicom-web")
    listed = [SeriesHit(f"{STUDY}.1", "MR", "T1", 6, "3"), SeriesHit(f"{STUDY}.2", "MR", "T2", 4, "4")]
    monkeypatch.setattr(pacs, "series_of", lambda study_uid: listed)
    monkeypatch.setattr(pacs, "patient_of", lambda study_uid: [("ZZ-1", "", "", "")])
    monkeypatch.setattr(pacs._client, "retrieve_series_metadata", lambda _, uid: [d.to_json_dict() for d in sent[uid]])
    monkeypatch.setattr(pacs._client, "iter_series", lambda study_uid, series_uid, **_: iter(sent[series_uid]))
    files, left_out = pacs.retrieve_mr(STUDY)
    assert len(files) == 6 and left_out == [
        "DICOM series 4: its images are in a transfer syntax this app cannot read (1.2.840.10008.1.2.4.110) "
        "(not analysed)"
    ]
    store = SQLiteStore(tmp_path / "r.db")
    pulled = pacs_service.pull_and_analyse(pacs, RADIOLOGIST, STUDY, tiny_classifier, store, b"k" * 32)
    assert pulled.outcome.error_code is None and len(pulled.outcome.series) == 1
    assert pulled.outcome.unread == (left_out[0],) and pulled.outcome.verdict != "notumor"  # never "no tumour"
    listed[:] = listed[1:]  # every series unreadable: refused, named, and its images' access audited
    with pytest.raises(UnsupportedDicom, match="No MR series of this study can be read: DICOM series 4"):
        pacs.retrieve_mr(STUDY)
    refused = pacs_service.pull_and_analyse(pacs, RADIOLOGIST, STUDY, tiny_classifier, store, b"k" * 32)
    assert refused.outcome.error_code == "unsupported_dicom"
    assert [(e.action, e.detail.get("instances")) for e in store.audit_events()][-1] == ("pacs_pull_failed", 2)
    assert audit.verify(store).intact
    faulty = sent[f"{STUDY}.2"][0]  # a faulty image in a known syntax is no syntax to blame: the answer
    del faulty.SOPInstanceUID, faulty.file_meta.MediaStorageSOPInstanceUID
    with pytest.raises(PacsMalformed, match="not valid DICOMweb"):  # is not valid DICOM (tried again by a watch)
        pacs.retrieve_mr(STUDY)


def test_a_multi_frame_series_over_the_sections_limit_is_left_out_before_retrieval(monkeypatch) -> None:
    """One file of 12,800 frames counted as one image: it was retrieved whole (400 MB, 3 GB held), then the study
    was refused with it, its other series unread. Its frames are counted from the metadata first."""
    from core.imaging.limits import StudyLimits
    from core.pacs.client import Pacs

    good = dicom_series(head_volume(6, 64), study_uid=STUDY, series_uid=f"{STUDY}.1")
    sent = {f"{STUDY}.1": [pydicom.dcmread(io.BytesIO(data)) for data in good]}
    big = pydicom.dcmread(io.BytesIO(good[0])).to_json_dict() | {"00280008": {"vr": "IS", "Value": [600]}}
    pacs = Pacs("http://pacs.invalid/dicom-web", limits=StudyLimits(max_sections=512))
    listed = [SeriesHit(f"{STUDY}.1", "MR", "T1", 6, "3"), SeriesHit(f"{STUDY}.2", "MR", "cine", 1, "8")]
    monkeypatch.setattr(pacs, "series_of", lambda study_uid: listed)
    metadata = {f"{STUDY}.1": [d.to_json_dict() for d in sent[f"{STUDY}.1"]], f"{STUDY}.2": [big]}
    monkeypatch.setattr(pacs._client, "retrieve_series_metadata", lambda _, uid: metadata[uid])
    monkeypatch.setattr(pacs._client, "iter_series", lambda study_uid, series_uid, **_: iter(sent[series_uid]))
    files, left_out = pacs.retrieve_mr(STUDY)  # never asked for series 8 (a KeyError)
    assert len(files) == 6 and left_out == [
        "DICOM series 8: a file of 600 frames, left out to keep the study within 512 sections a series (not "
        "retrieved, not analysed)"
    ]
    listed[:] = listed[1:]
    with pytest.raises(FileTooLarge, match="No MR series of this study fits: DICOM series 8: a file of 600 frames"):
        pacs.retrieve_mr(STUDY)
    # two files of 300 frames: each a stack of its own, as an upload reads them (not 600 sections of one series)
    two = big | {"00280008": {"vr": "IS", "Value": [300]}}
    metadata[f"{STUDY}.2"] = [two, two]
    assert pacs._size_of(STUDY, f"{STUDY}.2")[1] == 300


def test_a_pull_that_failed_after_images_crossed_is_an_audit_event_and_one_before_is_not(
    tiny_classifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retrieval that broke off after four of a series' six images had been received (a patient's images read)
    left no trace in the audit trail: only a completed pull was an event."""
    from core.pacs.client import Pacs
    from core.services import audit

    files = dicom_series(head_volume(6, 64), study_uid=STUDY, series_uid=f"{STUDY}.1")
    sent = [pydicom.dcmread(io.BytesIO(data)) for data in files]
    pacs = Pacs("http://pacs.invalid/dicom-web")
    monkeypatch.setattr(pacs, "series_of", lambda study_uid: [SeriesHit(f"{STUDY}.1", "MR", "T1", 6)])
    monkeypatch.setattr(pacs, "patient_of", lambda study_uid: [("ZZ-1", "", "", "")])
    monkeypatch.setattr(pacs._client, "retrieve_series_metadata", lambda *_: [d.to_json_dict() for d in sent])
    monkeypatch.setattr(pacs._client, "iter_series", lambda study_uid, series_uid, **_: iter(sent[:4]))
    store, key = SQLiteStore(tmp_path / "r.db"), b"k" * 32
    pulled = pacs_service.pull_and_analyse(pacs, RADIOLOGIST, STUDY, tiny_classifier, store, key)
    assert pulled.outcome.error_code == "pacs_error" and not pulled.outcome.series
    (event,) = store.audit_events()
    assert (event.action, event.actor, event.detail) == (
        "pacs_pull_failed",
        "dr-a",
        {"instances": 4, "code": "pacs_error"},
    )
    assert event.target == pacs_service.study_reference(STUDY, key) and STUDY not in event.target
    assert audit.redacted(event).target is None  # a supervisor does not see which study
    missing = StandIn({}, {STUDY: [PacsNotFound("The PACS has no study with this Study Instance UID.")]})
    assert pacs_service.pull_and_analyse(missing, RADIOLOGIST, STUDY, tiny_classifier, store, key).outcome.error_code
    assert len(store.audit_events()) == 1  # nothing was read: logged, not an event


def test_a_study_over_the_limits_is_pulled_without_its_largest_series_which_it_names(
    tiny_classifier, monkeypatch
) -> None:
    """A tumour protocol with a perfusion series of a thousand images was refused whole (over 1,024 images), and the
    watch never put it on the worklist: the smaller series are pulled, the left-out one named as unread (so the
    study gets no "no tumour" verdict from the rest)."""
    import io

    import pydicom

    from core.imaging.limits import StudyLimits
    from core.pacs.client import Pacs, within_limits

    limits = StudyLimits(max_files=10, max_sections=8)
    t1 = SeriesHit(f"{STUDY}.1", "MR", "T1", 6, "3")
    perfusion = SeriesHit(f"{STUDY}.2", "MR", "PERF", 50, "9")
    assert within_limits([perfusion, t1], limits) == ([t1], [perfusion])
    # a protocol within the study's images whose series each fit is taken whole (a per-series limit of 512 sections
    # read as the study's budget left a 582-image protocol's largest series out)
    protocol = [SeriesHit(f"{STUDY}.{k}", "MR", "", n, str(k)) for k, n in enumerate((176, 176, 200, 30))]
    assert within_limits(protocol, StudyLimits()) == (protocol, [])
    assert within_limits(protocol, StudyLimits(max_files=400)) == (
        [protocol[0], protocol[1], protocol[3]],
        [protocol[2]],
    )
    files = tumour_study(STUDY)
    pacs = Pacs("http://pacs.invalid/dicom-web", limits=limits)
    monkeypatch.setattr(pacs, "series_of", lambda study_uid: [t1, perfusion])
    monkeypatch.setattr(pacs, "patient_of", lambda study_uid: [("PACS-TEST-001", "", "", "")])
    sent = [pydicom.dcmread(io.BytesIO(data)) for data in files]
    monkeypatch.setattr(pacs._client, "retrieve_series_metadata", lambda *_: [d.to_json_dict() for d in sent])
    monkeypatch.setattr(pacs._client, "iter_series", lambda study_uid, series_uid, **_: iter(sent))
    pulled = pacs_service.pull_and_analyse(pacs, RADIOLOGIST, STUDY, tiny_classifier, Trail(), None)
    assert pulled.outcome.error_code is None and len(pulled.outcome.series) == 1
    assert any(reason.startswith("DICOM series 9: 50 images, left out") for reason in pulled.outcome.unread)
    assert pulled.outcome.verdict != "notumor"  # a study with a series nobody read is never "no tumour"


@pytest.mark.parametrize(
    "rest",
    [
        "notaurl",
        "ftp://pacs.example",
        "http://user:secret@pacs.example:8042",
        "http://127.0.0.1:99999/",
        "http://[::1/",
        "http://127.0.0.1:0/",
    ],
)
def test_the_watchs_rest_root_is_checked_like_the_pacs_address(rest, tmp_path, monkeypatch, capsys) -> None:
    """``--rest notaurl`` read as "the change feed is not valid JSON", and one with credentials in it was used; a
    port past 65535 read so too (nothing had answered), and a bracket left open was Python's "Invalid IPv6 URL"."""
    import json

    from core.cli import main

    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    empty_database(tmp_path / "data")  # as the app's first start leaves it
    code = main(["pacs", "watch", "--url", "http://127.0.0.1:1/dicom-web", "--rest", rest, "--once"])
    (line,) = capsys.readouterr().out.splitlines()
    assert code == 2 and "not an http(s) URL with a host and a port" in json.loads(line)["error"]["message"]
    assert "secret" not in line
    code = main(["pacs", "analyse", "--url", rest.rstrip("/") + "/dicom-web", "--study", "1.2.3.4"])  # the address
    (line,) = capsys.readouterr().out.splitlines()
    assert code == 2 and "not an http(s) URL with a host and a port" in json.loads(line)["error"]["message"]


def test_the_reports_coded_lesion_volume_is_a_tumour_series_and_never_a_no_tumour_studys(
    tiny_classifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The segmenter runs on every section: a "no tumour" series' leftover outline went into the report as the
    study's coded Volume (mL), which software reading the SR takes for a lesion."""
    from dataclasses import replace

    from core.model.volume import SeriesAnalysis

    monkeypatch.setattr(SeriesAnalysis, "lesion_ml", property(lambda self: 2.5))  # as a segmenter measured it
    files = dicom_series(head_volume(6, 64), study_uid=STUDY, series_uid=f"{STUDY}.1")
    outcome = analyse_study(files, tiny_classifier)
    card = tiny_classifier.card
    model = objects.ModelFacts(card.name, card.version, "0" * 64)
    (series,) = outcome.series

    def coded(label: str) -> list:
        analysed = replace(series, label=label)
        report = objects.verdict_report(objects.headers(files), [analysed], label, model)
        return [item for item in report.ContentSequence if item.ValueType == "NUM"]

    assert coded(card.negative_label) == []
    (volume,) = coded("glioma")
    assert float(volume.MeasuredValueSequence[0].NumericValue) == 2.5
    assert "; lesion volume 2.5 mL" in objects._series_lines(objects.headers(files), series)
    monkeypatch.setattr(SeriesAnalysis, "lesion_ml", property(lambda self: 0.004))  # a few voxels
    assert "; lesion volume <0.01 mL" in objects._series_lines(objects.headers(files), series)  # as the PDF: not 0.00


def test_a_study_deleted_between_the_feed_and_its_read_is_passed_over_not_a_watch_stopped_for_good() -> None:
    """Orthanc listed the change, then the study was gone (HTTP 404): the error stopped every watch at that change,
    so no later study was ever triaged."""
    import requests

    from core.errors import PacsRefused
    from core.pacs.changes import OrthancChanges

    def answer(status: int, body: object) -> requests.Response:
        response = requests.Response()
        response.status_code, response._content = status, json.dumps(body).encode()
        return response

    class Feed:
        gone = 404

        def get(self, url: str, timeout: float) -> requests.Response:
            if "/changes" in url:
                changes = [{"ChangeType": "StableStudy", "ID": i, "Seq": n} for n, i in ((4, "gone"), (5, "ok"))]
                return answer(200, {"Changes": changes, "Last": 5, "Done": True})
            if url.endswith("/studies/gone"):
                return answer(self.gone, {})
            return answer(200, {"MainDicomTags": {"StudyInstanceUID": "1.2.3"}})

    feed = Feed()
    assert OrthancChanges("http://pacs", feed).stable_studies(3) == ([(5, "1.2.3")], 5, True)
    feed.gone = 403  # refused is not gone: the watch says so and tries again
    with pytest.raises(PacsRefused):
        OrthancChanges("http://pacs", feed).stable_studies(3)

    class NoFeed(Feed):  # a wrong REST root: the feed itself is not there, which is not "no longer has this study"
        def get(self, url: str, timeout: float) -> requests.Response:
            return answer(404, {})

    with pytest.raises(PacsUnreachable, match=r"No Orthanc change feed .* check --rest"):  # an address to check,
        OrthancChanges("http://pacs", NoFeed()).stable_studies(3)  # waited out (it read as a server's error)


def test_a_key_image_that_shows_something_else_is_a_new_instance(tiny_classifier) -> None:
    """Its UID came from the study, the series, the section and the score alone: an outline added later (a lesion
    segmenter installed) went under the old image's UID, and the PACS kept the picture without it."""
    from dataclasses import replace

    files = tumour_study(STUDY)
    (series,) = analyse_study(files, tiny_classifier).series
    series = replace(series, rule=replace(series.rule, threshold=0.0))  # every section a key section
    evidence = objects.headers(files)
    first = [str(image.SOPInstanceUID) for image in captures.key_images(evidence, series)]
    assert first == [str(image.SOPInstanceUID) for image in captures.key_images(evidence, series)]  # sent again: same
    drawn = list(series.volume.sections)
    drawn[0] = drawn[0].copy()
    drawn[0][10:20, 10:20] = 255  # what an outline burned in does to the picture
    changed = replace(series, volume=replace(series.volume, sections=drawn))
    second = [str(image.SOPInstanceUID) for image in captures.key_images(evidence, changed)]
    assert second[0] != first[0] and second[1:] == first[1:]


def test_text_from_the_pacs_and_names_reach_the_page_as_text_never_as_markdown() -> None:
    """A series number holding a Markdown link, left out over the limits, was quoted in a caption and shown as a
    link; a reviewer named dr_x_y read in italics."""
    from core.pacs.client import _series_number
    from ui.wording import plain

    assert _series_number("[Open](https://evil.example)") == "" and _series_number("7") == "7"
    assert plain("[Open](https://e.example) ![](x.png) dr_x_y") == (
        r"\[Open\]\(https://e.example\) \!\[\]\(x.png\) dr\_x\_y"
    )


def final_model(card) -> objects.ModelFacts:
    return objects.ModelFacts(card.name, card.version, "0" * 64)


def test_the_watchs_exit_status_tells_a_failed_study_or_report_and_not_a_study_without_brain_mr() -> None:
    """``pacs watch --once`` exited 0 while the PACS refused every report: a run from cron showed nothing wrong."""
    assert pacs_watch.failed({"retry": True, "skipped": "pacs_unreachable"})
    assert pacs_watch.failed({"send_error": {"code": "pacs_forbidden"}, "left_behind": "..."})
    assert pacs_watch.failed({"skipped": "internal_error"})
    assert not pacs_watch.failed({"skipped": "pacs_not_found", "reason": "This study has no MR series."})
    assert not pacs_watch.failed({"skipped": "wrong_body_part", "reason": "a knee"})
    for refused in ("file_too_large", "several_patients", "unsupported_dicom", "pacs_malformed"):  # brain MR not
        assert pacs_watch.failed({"skipped": refused, "reason": "..."})  # triaged: it exited 0
    assert not pacs_watch.failed({"verdict": "tumour", "saved": ["saved"], "stored": ["1"]})


def test_a_pull_kept_while_the_study_changed_in_the_pacs_is_not_sent_over_the_newer_reading(
    tiny_classifier, tmp_path
) -> None:
    """An analysis kept on a page (or pulled before a series arrived) was sent FINAL after a later pull had reported
    the study with its new series: the PACS's current report then named the old series only."""
    from core.errors import PacsStudyChanged

    uid = f"{STUDY}.15"
    pacs, store = StandIn({uid: tumour_study(uid)}), SQLiteStore(tmp_path / "r.db")
    model = objects.ModelFacts.of(tiny_classifier.card)
    old = pacs_service.pull_and_analyse(pacs, RADIOLOGIST, uid, tiny_classifier, store, None)
    assert old.fingerprint is not None
    pacs.files[uid] = [*pacs.files[uid], *tumour_study(uid)[:2]]  # two more MR images arrived
    new = pacs_service.pull_and_analyse(pacs, RADIOLOGIST, uid, tiny_classifier, store, None)
    assert pacs_service.send_results(pacs, RADIOLOGIST, new, model, store, None)
    sent = len(pacs.stored)
    with pytest.raises(PacsStudyChanged, match="analyse it again"):
        pacs_service.send_results(pacs, RADIOLOGIST, old, model, store, None, final_label="notumor")
    assert len(pacs.stored) == sent
    assert store.audit_events()[-1].action == "pacs_send_failed"
    assert store.audit_events()[-1].detail["code"] == "study_changed"


def test_a_pull_is_not_sent_once_the_pacs_filed_the_study_under_a_corrected_patient(tiny_classifier, tmp_path) -> None:
    """The PACS reconciled the study (a trauma alias replaced by the patient's ID, the same UIDs) between pull and
    send: the report went to the PACS under the alias, beside the study now filed under the patient."""
    from core.errors import PacsStudyChanged

    uid = f"{STUDY}.16"
    pacs, store = StandIn({uid: relabelled(tumour_study(uid), PatientID="TRAUMA-0001")}), SQLiteStore(tmp_path / "r")
    model = objects.ModelFacts.of(tiny_classifier.card)
    pulled = pacs_service.pull_and_analyse(pacs, RADIOLOGIST, uid, tiny_classifier, store, None)
    for corrected in ({"PatientID": "MRN-424242"}, {"AccessionNumber": "ACC-2"}):
        pacs.files[uid] = relabelled(tumour_study(uid), **{"PatientID": "TRAUMA-0001", **corrected})
        with pytest.raises(PacsStudyChanged, match="patient or accession number corrected"):
            pacs_service.send_results(pacs, RADIOLOGIST, pulled, model, store, None)
        assert pacs.stored == []
    pacs.files[uid] = relabelled(tumour_study(uid), PatientID="TRAUMA-0001")  # as pulled: sent
    assert pacs_service.send_results(pacs, RADIOLOGIST, pulled, model, store, None)


def test_each_reading_sends_its_key_images_in_a_series_of_its_own(tiny_classifier) -> None:
    """Every reading's key images went into one series per source series: after a second model's reading the PACS
    held two sets under one name, and a series re-read as "no tumour" kept its old tumour key images there."""
    from dataclasses import replace

    files = tumour_study(STUDY)
    (series,) = analyse_study(files, tiny_classifier).series
    series = replace(series, rule=replace(series.rule, threshold=0.0))  # every section a key section
    evidence = objects.headers(files)
    first = {str(image.SeriesInstanceUID) for image in captures.key_images(evidence, series)}
    assert len(first) == 1 and first == {str(i.SeriesInstanceUID) for i in captures.key_images(evidence, series)}
    other = replace(series, model_version="9.9.9+00000000")
    (image, *_) = captures.key_images(evidence, other)
    assert str(image.SeriesInstanceUID) not in first and "(9.9.9+00000000)" in image.SeriesDescription
    # a source series without number or description: named so, never by its UID cut to 64 characters (a valid UID)
    bare = relabelled(files, SeriesNumber=None, SeriesDescription=None)
    (image, *_) = captures.key_images(objects.headers(bare), series)
    assert image.SeriesDescription.endswith(" of an unnamed series")
    assert series.volume.series[:20] not in image.SeriesDescription


def test_a_report_the_pacs_says_it_stored_but_does_not_hold_is_not_sent(tiny_classifier, tmp_path) -> None:
    """An Orthanc filtering what it accepts answered the STOW with every instance stored while it kept none; the
    page said "Sent" and the audit trail a send that never arrived."""
    files = tumour_study(STUDY)
    pulled = pacs_service.Pulled(STUDY, analyse_study(files, tiny_classifier), tuple(objects.headers(files)))
    store, pacs = SQLiteStore(tmp_path / "r.db"), StandIn({STUDY: files})
    pacs.store = lambda datasets: [str(ds.SOPInstanceUID) for ds in datasets]  # says stored, keeps nothing
    with pytest.raises(PacsError, match="does not list it"):  # "stored", yet kept nothing
        pacs_service.send_results(pacs, RADIOLOGIST, pulled, objects.ModelFacts.of(tiny_classifier.card), store, None)
    assert [e.action for e in store.audit_events()][-2:] == ["pacs_send", "pacs_send_failed"]


@pytest.mark.parametrize(
    ("url", "rest"),
    [
        ("http://pacs.example:8042/dicom-web", "http://pacs.example:8042"),
        ("http://pacs.example:8042/dicom-web/", "http://pacs.example:8042"),
        ("https://pacs.example/orthanc/dicom-web", "https://pacs.example/orthanc"),
        ("http://127.0.0.1:8042", "http://127.0.0.1:8042"),  # it was cut to "http:/" and refused as no URL
    ],
)
def test_the_watchs_rest_root_is_worked_out_from_the_dicomweb_root(url: str, rest: str) -> None:
    from core.cli.pacs import rest_root

    assert rest_root(url) == rest


def test_a_review_is_not_recorded_against_a_pull_the_pacs_no_longer_matches(tiny_classifier, tmp_path) -> None:
    """The reviews were recorded, then the send refused (the study had changed): the label stood against the old
    analysis and the page said to press Send again, which could never work."""
    from core.errors import PacsStudyChanged

    uid = f"{STUDY}.16"
    pacs, store = StandIn({uid: tumour_study(uid)}), SQLiteStore(tmp_path / "r.db")
    pulled = pacs_service.pull_and_analyse(pacs, RADIOLOGIST, uid, tiny_classifier, store, None)
    saved = pacs_service.save_pulled(pulled, store, actor=RADIOLOGIST, images=None, key=None)
    ids = [view.record.id for view in saved.views]
    pacs.files[uid] = [*pacs.files[uid], *tumour_study(uid)[:2]]  # a series arrived since the pull
    model = objects.ModelFacts.of(tiny_classifier.card)
    with pytest.raises(PacsStudyChanged):
        pacs_service.review_and_send(pacs, RADIOLOGIST, pulled, model, store, None, "glioma", ids)
    assert all(store.get(rid).review_count == 0 for rid in ids) and pacs.stored == []
    assert store.audit_events()[-1].action == "pacs_send_failed"


def test_the_objects_uids_are_made_under_the_sites_own_root_when_one_is_set(
    tiny_classifier, monkeypatch, capsys, tmp_path
) -> None:
    """DICOM asks whoever makes objects to make their UIDs under their own organisation root: every report and key
    image was made under pydicom's, which a hospital could not replace."""
    files = tumour_study(STUDY)
    outcome = analyse_study(files, tiny_classifier)
    facts = objects.ModelFacts(tiny_classifier.card.name, tiny_classifier.card.version, "0" * 64)
    made = objects.verdict_report(objects.headers(files), outcome.series, outcome.verdict, facts)
    assert str(made.SOPInstanceUID).startswith(objects.PYDICOM_ROOT)  # unset: the UIDs made before
    assert objects.report_series(STUDY) == "1.2.826.0.1.3680043.8.498.13882216794543682675091960672740834771"
    monkeypatch.setenv("BTD_UID_ROOT", "1.2.826.0.1.3680043.10.999.")
    report = objects.verdict_report(objects.headers(files), outcome.series, outcome.verdict, facts)
    (series,) = outcome.series
    images = captures.key_images(objects.headers(files), series)
    made_here = [report.SOPInstanceUID, report.SeriesInstanceUID, objects.report_series(STUDY)]
    made_here += [uid for image in images for uid in (image.SOPInstanceUID, image.SeriesInstanceUID)]
    assert images and all(str(uid).startswith("1.2.826.0.1.3680043.10.999.") for uid in made_here)
    assert all(len(str(uid)) <= 64 for uid in made_here)
    assert str(report.StudyInstanceUID) == STUDY  # the study's own is kept
    for wrong in ("1.2.3", "1.2.03.", "abc.", "1." * 30):
        monkeypatch.setenv("BTD_UID_ROOT", wrong)
        with pytest.raises(PacsError, match="BTD_UID_ROOT is not a UID root"):
            objects.report_series(STUDY)
    # said when a send is asked for, before anything is pulled (each study was pulled, analysed and saved, then its
    # send failed, and the watch pulled it again)
    from core.cli import main

    for command in (["watch", "--once"], ["analyse", "--study", STUDY, "--save"]):
        assert main(["pacs", *command, "--url", "http://127.0.0.1:9/dicom-web", "--send"]) == 2
        (line,) = capsys.readouterr().out.splitlines()
        assert "BTD_UID_ROOT is not a UID root" in json.loads(line)["error"]["message"]


def test_the_report_names_each_series_key_sections_as_images_a_pacs_viewer_opens(tiny_classifier) -> None:
    """The report named a series and its score and no image: a reader in the PACS looked for the key sections by
    hand. Each series' line is followed by its key sections' source images, those its key images show."""
    files = dicom_series(head_volume(6, 96, range(2, 4)), study_uid=STUDY, series_uid=f"{STUDY}.1")
    outcome = analyse_study(files, tiny_classifier)
    (series,) = outcome.series
    series = replace(series, rule=replace(series.rule, threshold=0.0))  # every section a key section
    facts = objects.ModelFacts(tiny_classifier.card.name, tiny_classifier.card.version, "0" * 64)
    report = objects.verdict_report(objects.headers(files), [series], outcome.verdict, facts)
    buffer = io.BytesIO()
    report.save_as(buffer, enforce_file_format=True)
    items = list(pydicom.dcmread(io.BytesIO(buffer.getvalue())).ContentSequence)
    kinds = [str(item.ValueType) for item in items]
    line = next(k for k, item in enumerate(items) if str(item.get("TextValue", "")).startswith("DICOM series "))
    named = [item.ReferencedSOPSequence[0] for item in items if item.ValueType == "IMAGE"]
    assert kinds[line + 1 : line + 1 + len(named)] == ["IMAGE"] * len(named) == ["IMAGE"] * 6  # under its line
    assert all(item.ConceptNameCodeSequence[0].CodeValue == "121200" for item in items if item.ValueType == "IMAGE")
    sent = [image.SourceImageSequence[0] for image in captures.key_images(objects.headers(files), series)]
    assert [str(n.ReferencedSOPInstanceUID) for n in named] == [str(s.ReferencedSOPInstanceUID) for s in sent]
    assert {str(n.ReferencedSOPClassUID) for n in named} == {str(s.ReferencedSOPClassUID) for s in sent}
    # a report an earlier version sent, without them, is the same reading (never a new version over a FINAL one)
    earlier = copy.deepcopy(report)
    earlier.ContentSequence = [item for item in earlier.ContentSequence if item.ValueType != "IMAGE"]
    assert objects.same_reading(earlier, report)
    unread = objects.verdict_report(objects.headers(files), [replace(series, label=None, score=None)], None, facts)
    assert not any(item.ValueType == "IMAGE" for item in unread.ContentSequence)  # nothing analysed, nothing named


def test_a_study_whose_images_are_saved_from_another_study_is_not_reviewed_or_reported_from_the_pacs(
    tiny_classifier, tmp_path
) -> None:
    """A study filed twice in the PACS (one patient's same images under two study UIDs) is one result, saved from
    the first study. Reviewed from the second, the review went onto the first study's result, and the second got
    FINAL reports of every earlier label, "given by" readers who never opened it (seven versions in one send)."""
    from core.errors import PacsAnotherStudy
    from core.services import reviews
    from core.services.studies import save_series

    key, earlier = b"k" * 32, f"{STUDY}.9"
    first = analyse_study(tumour_study(earlier), tiny_classifier)
    store = SQLiteStore(tmp_path / "r.db")
    ids = [save_series(s, store, actor=RADIOLOGIST, patient_ref=None, key=key).record_id for s in first.series]
    reviews.review_result(store, Actor("dr-h", "radiologist"), ids[0], "glioma")  # the first study's reader
    files = tumour_study(STUDY)
    pulled = pacs_service.Pulled(STUDY, analyse_study(files, tiny_classifier), tuple(objects.headers(files)))
    series = pulled.outcome.series[0]
    assert record_id(series.volume.sha256, series.model_name, series.model_version) == ids[0]  # the same result
    pacs, model = StandIn({STUDY: files}), objects.ModelFacts.of(tiny_classifier.card)
    assert pacs_service.not_sendable(store, RADIOLOGIST, pulled, key) == pacs_service.ANOTHER_STUDY  # said first
    with pytest.raises(PacsAnotherStudy, match="saved from another study"):
        pacs_service.review_and_send(pacs, RADIOLOGIST, pulled, model, store, key, "notumor", ids, {ids[0]: 1})
    assert [r.reviewer for r in store.reviews_of(ids[0])] == ["dr-h"] and pacs.stored == []
    with pytest.raises(PacsAnotherStudy):
        pacs_service.send_results(pacs, RADIOLOGIST, pulled, model, store, key)
    assert pacs.stored == [] and PacsAnotherStudy.code not in pacs_watch.RETRIED
    headers = tuple(objects.headers(tumour_study(earlier)))
    assert pacs_service.not_sendable(store, RADIOLOGIST, pacs_service.Pulled(earlier, first, headers), key) is None
    # without the key (references off: it could not be read) neither check can be made: every study, its own
    # pulled again too, read as another's
    assert pacs_service.not_sendable(store, RADIOLOGIST, pacs_service.Pulled(earlier, first, headers), None) is None


def test_a_study_whose_images_are_saved_for_another_patient_is_not_reviewed_or_reported_from_the_pacs(
    tiny_classifier, tmp_path
) -> None:
    """The same images filed under two patients in the PACS are one result (pixels and model), saved under the
    first patient's reference. Reviewed from the second patient's study, the review went onto the first's result
    and the second's study got FINAL reports of the first's labels, "given by" a reader who never read it."""
    from core.services import reviews

    key = b"k" * 32
    pulled, store, ids, model, pacs = pulled_and_saved(tumour_study(STUDY), tiny_classifier, tmp_path)
    first = pacs_service.patient_reference("SOMEONE-ELSE", key)
    store.set_patient_ref(ids[0], first, None)
    reviews.review_result(store, Actor("dr-h", "radiologist"), ids[0], "glioma")  # the first patient's reader
    with pytest.raises(PacsAnotherPatient, match="saved for another patient"):
        pacs_service.review_and_send(pacs, RADIOLOGIST, pulled, model, store, key, "notumor", ids, {ids[0]: 1})
    assert [r.reviewer for r in store.reviews_of(ids[0])] == ["dr-h"] and pacs.stored == []
    # nor is a preliminary report sent for it (the panel's, the watch's, `pacs analyse --send`): its result is on
    # the other patient's worklist, never made final from this study
    with pytest.raises(PacsAnotherPatient):
        pacs_service.send_results(pacs, RADIOLOGIST, pulled, model, store, key)
    assert pacs.stored == [] and PacsAnotherPatient.code not in pacs_watch.RETRIED
    store.set_patient_ref(ids[0], pacs_service.patient_reference(pacs_service.pacs_patient_id(pulled), key), first)
    pacs_service.review_and_send(pacs, RADIOLOGIST, pulled, model, store, key, "notumor", ids, {ids[0]: 1})
    assert len(pacs.stored) == 1  # under this study's own patient: reviewed and sent


def test_a_report_is_never_sent_into_another_study_than_the_one_pulled(tiny_classifier, tmp_path) -> None:
    """The report takes its study from its evidence: images of another study, pulled as this one's, had the report
    and key images stored in that other study."""
    files = tumour_study(f"{STUDY}9")  # what the PACS gave for STUDY
    pulled = pacs_service.Pulled(STUDY, analyse_study(files, tiny_classifier), tuple(objects.headers(files)))
    pacs, store = StandIn({STUDY: files}), SQLiteStore(tmp_path / "r.db")
    with pytest.raises(PacsMalformed, match="images of another study or series"):
        pacs_service.send_results(pacs, RADIOLOGIST, pulled, final_model(tiny_classifier.card), store, None)
    assert not pacs.stored


def test_a_store_the_pacs_made_but_answered_too_late_is_a_send_made(tiny_classifier, tmp_path) -> None:
    """Orthanc stored the report and its key images but answered after the timeout: the send failed, and every
    watch pulled and sent the study again, never reaching the studies after it. One it made but did not answer
    is asked for and counted as sent; one it did not make still fails."""
    from core.errors import PacsTimedOut

    class Slow(StandIn):
        def __init__(self, files, makes: bool) -> None:
            super().__init__(files)
            self.makes = makes

        def store(self, datasets: list) -> list[str]:
            if self.makes:
                super().store(datasets)
            raise PacsTimedOut("The PACS took the request and sent no answer in time.")

    files = tumour_study(STUDY)
    pulled = pacs_service.Pulled(STUDY, analyse_study(files, tiny_classifier), tuple(objects.headers(files)))
    model, store = final_model(tiny_classifier.card), SQLiteStore(tmp_path / "r.db")
    made = Slow({STUDY: files}, makes=True)
    sent = pacs_service.send_results(made, RADIOLOGIST, pulled, model, store, None)
    assert sent == [str(d.SOPInstanceUID) for d in made.stored[0]]
    assert [e.action for e in store.audit_events()][-1] == "pacs_send"  # no failure recorded
    with pytest.raises(PacsTimedOut):
        pacs_service.send_results(Slow({STUDY: files}, makes=False), RADIOLOGIST, pulled, model, store, None)
    assert [e.action for e in store.audit_events()][-1] == "pacs_send_failed"


def test_a_watch_whose_state_file_cannot_be_written_says_so_and_what_it_did(
    tiny_classifier, tmp_path, monkeypatch
) -> None:
    """A read-only or full data folder: the watch stopped with "bad_input" naming a draft file, and the studies it
    had just pulled, saved and sent were never said."""
    import errno

    from core.errors import WatchStateUnwritable

    uid = f"{STUDY}.9"
    watcher = pacs_watch.Watcher(
        StandIn({uid: tumour_study(uid)}), Feed([uid]), tiny_classifier, SQLiteStore(tmp_path / "r.db"), None, None
    )
    state = pacs_watch.WatchState.load(tmp_path / "pacs-watch.json")

    def refused(*_: object, **__: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(pacs_watch_state.os, "replace", refused)
    with pytest.raises(WatchStateUnwritable, match=r"pacs-watch\.json in the data folder cannot be written") as said:
        pacs_watch.watch_once(watcher, state, RADIOLOGIST)
    assert said.value.code == "watch_state_unwritable" and "Read-only file system" in str(said.value)
    (line,) = said.value.lines  # what it did, said all the same
    assert line["study_uid"] == uid and line["saved"] == ["saved"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".pacs-watch")] == []  # no draft left
    monkeypatch.undo()  # a read-only folder: the draft itself cannot be made (it was still "bad_input")
    monkeypatch.setattr(pacs_watch_state.tempfile, "mkstemp", refused)
    with pytest.raises(WatchStateUnwritable, match="Read-only file system"):
        pacs_watch_state.WatchState.load(tmp_path / "pacs-watch.json").save(3)


def test_a_study_left_behind_is_tried_again_when_stable_again_and_is_an_audit_event(
    tiny_classifier, tmp_path, monkeypatch
) -> None:
    """Left behind under the fingerprint of its images (the PACS answered its search), it read as analysed: once the
    PACS was mended and the study stable again, it was passed over for good, and no event said it was given up."""
    now = [1_000_000.0]
    monkeypatch.setattr(pacs_watch, "clock", lambda: now[0])
    broken = f"{STUDY}.13"
    pacs = StandIn({broken: tumour_study(broken)}, {broken: [PacsError("HTTP 500")] * pacs_watch.MAX_TRIES})
    feed, store = Feed([broken]), SQLiteStore(tmp_path / "r.db")
    watcher = pacs_watch.Watcher(pacs, feed, tiny_classifier, store, None, b"k" * 32)
    for _ in range(pacs_watch.MAX_TRIES):
        (line,) = pacs_watch.watch_once(watcher, pacs_watch.WatchState.load(tmp_path / "w.json"), RADIOLOGIST)
        now[0] += pacs_watch.GIVE_UP_AFTER_S / 2
    assert "left_behind" in line
    (event,) = [e for e in store.audit_events() if e.action == "pacs_left_behind"]
    assert event.detail == {"code": "pacs_error"}
    from core.services.audit import redacted

    assert event.target and redacted(event).target is None  # the study's keyed reference: not for supervisors
    feed.studies.append(broken)  # the PACS mended; the study stable again, its images as they were
    (line,) = pacs_watch.watch_once(watcher, pacs_watch.WatchState.load(tmp_path / "w.json"), RADIOLOGIST)
    assert line["study_uid"] == broken and line["saved"] == ["saved"]
    assert line["again"] == "tried again: it was left behind (pacs_error)"  # not "its images changed"
