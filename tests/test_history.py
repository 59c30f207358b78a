"""A patient's history: results in time order, a series beside a prior at the matching position, the report."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from core.errors import AccessDenied
from core.identity import local_key, pseudonymise
from core.imaging.phantom_series import dicom_series, head_volume
from core.imaging.series import read_study
from core.model.volume import analyse_volume
from core.services.access import Actor
from core.services.history import change, lesion_course, lesion_size, matching_section, patient_history
from core.services.series_views import series_view
from core.services.studies import save_series
from core.storage.images import FolderImages
from core.storage.sqlite import SQLiteStore
from tests.scans import app_store
from tests.test_store import make_record, make_series

DOCTOR = Actor("dr-h", "radiologist")


def history_environment(tmp_path: Path, tiny_card: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The History page's environment for an AppTest: the tiny model, a fresh data folder (returned), no MongoDB,
    no cached resources from another test."""
    import streamlit as st

    data = tmp_path / "data"
    monkeypatch.setenv("BTD_MODEL", str(tiny_card))
    monkeypatch.setenv("BTD_DATA_DIR", str(data))
    monkeypatch.delenv("MONGODB_URI", raising=False)
    st.cache_data.clear()
    st.cache_resource.clear()
    return data


def test_sections_match_by_their_place_along_the_analysed_head(tiny_classifier) -> None:
    now = series_view(analyse_volume(read_study(dicom_series(head_volume(10, 96)))[0], tiny_classifier))
    prior = series_view(analyse_volume(read_study(dicom_series(head_volume(20, 96)))[0], tiny_classifier))
    assert matching_section(now, 0, prior) == 0 and matching_section(now, 9, prior) == 19
    assert matching_section(now, 5, prior) == round(5 / 9 * 19)
    matched, moved = change(now, 5, prior)
    assert matched == matching_section(now, 5, prior)
    assert moved.series_change == pytest.approx(now.score - prior.score)
    assert moved.section_change == pytest.approx(now.curve[5] - prior.curve[matched])
    from dataclasses import replace as changed

    from core.services.history import model_caveat

    older = changed(prior, model="btd-cnn 2.1.1")  # another model's scale: shown, never a change
    assert "read by another model (btd-cnn 2.1.1)" in model_caveat(now, older) and model_caveat(now, prior) is None
    _, moved = change(now, 5, older)
    assert moved.series_change is None and moved.section_change is None and moved.series_now == now.score


def test_a_history_is_the_patients_results_in_time_order_and_an_audit_event(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "r.sqlite3")
    start = datetime(2026, 10, 1, 9, tzinfo=UTC)
    for n in range(4):
        store.add(make_record(n + 1, start + timedelta(days=10 * (3 - n)), patient="a" * 64 if n < 3 else "b" * 64))
    read = patient_history(store, DOCTOR, "a" * 64)
    found = read.records
    assert [r.image_sha256[-1] for r in found] == ["3", "2", "1"] and found[0].created_at < found[-1].created_at
    assert not read.earlier_left_out
    assert [(e.action, e.target, e.detail) for e in store.audit_events()] == [("history", "a" * 64, {"results": 3})]
    with pytest.raises(AccessDenied):
        patient_history(store, Actor("boss", "supervisor"), "a" * 64)


def test_a_history_over_its_limit_keeps_the_newest_in_time_order_and_says_older_ones_were_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was read in the worklist's order (unreviewed first) and cut there: a reviewed study in the middle went
    missing unsaid, and the lesion's change was measured against an older one."""
    from core.domain.people import Review
    from core.services import history

    store = SQLiteStore(tmp_path / "r.sqlite3")
    start = datetime(2026, 10, 1, 9, tzinfo=UTC)
    made = [make_record(n + 1, start + timedelta(days=n), patient="a" * 64) for n in range(5)]
    for record in made:
        store.add(record)
    reviewed = made[3]  # the prior of the newest: reviewed, so the worklist's order put it last
    store.add_review(Review(reviewed.id, "dr", start + timedelta(days=9), "agree", reviewed.label, reviewed.label))
    monkeypatch.setattr(history, "LIMIT", 3)
    read = patient_history(store, DOCTOR, "a" * 64)
    assert [r.id for r in read.records] == [r.id for r in made[2:]] and read.earlier_left_out


@pytest.mark.pages
def test_history_page_compares_a_series_with_its_prior_and_makes_the_report(
    tmp_path: Path, tiny_card: Path, tiny_classifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    data = history_environment(tmp_path, tiny_card, monkeypatch)
    store, images = app_store(data / "results.sqlite3"), FolderImages(data / "images")
    reference = pseudonymise("P-0042", local_key(data))
    for n, tumour in enumerate((None, range(3, 6))):
        analysis = analyse_volume(
            read_study(dicom_series(head_volume(8, 96, tumour, seed=n), series_uid=f"1.2.3.{n}"))[0], tiny_classifier
        )
        unread = n  # the later upload of the study had a series nobody could read (not saved)
        save_series(
            analysis,
            store,
            actor=DOCTOR,
            patient_ref=reference,
            images=images,
            key=local_key(data),
            study_unread=unread,
            unread_named=("DICOM series 9: the file is cut off",) if unread else (),
        )
    app = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "pages" / "history.py"), default_timeout=60)
    app.session_state["actor"] = DOCTOR
    app.run()
    assert not app.exception and app.title[0].value == "Patient history"
    app.text_input[0].set_value("  p-0042 ").run()  # case and spaces do not change the reference
    assert not app.exception
    assert app.dataframe[0].value["kind"].tolist() == ["series", "series"]
    assert app.dataframe[0].value["sections"].tolist() == ["8", "8"]  # one type: numbers beside "" were refused by
    # Arrow on every run (Streamlit then converted the table the slow way)
    assert app.dataframe[0].value["lesion"].tolist() == ["—", "—"]  # saved without a segmenter: nothing claimed
    assert app.dataframe[0].value["change"].tolist() == ["—", "—"]
    assert len(app.get("plotly_chart")) == 3  # the timeline, the current section and the prior's
    # one kind of result: Plotly draws no legend, so the colours and the height are said under the timeline
    assert any(c.value.startswith("Red: tumour, green: no tumour") for c in app.caption)
    heat = next(t for t in app.toggle if t.label == "Heat maps")
    assert heat.value is False  # red blobs side by side in a "change over time" view read as the lesion
    heat.set_value(True).run()
    assert any("not where a tumour is" in c.value for c in app.caption)
    assert [m.label for m in app.metric] == ["Series score", "At this section, now"]  # the current series' value
    import json
    import re

    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in app.get("plotly_chart")[1:]]
    assert all(re.search(r"section \d+, [RLAPSIFH]+ \d+\.\d mm · ", t) for t in titles), titles  # a match in mm
    assert any("1 series of this study could not be analysed" in w.value for w in app.warning)
    assert any("(DICOM series 9: the file is cut off)" in w.value for w in app.warning)  # which one: it said none
    # both series are of one study: the default prior is the other sequence, and the page says so
    assert any(w.value.startswith("The prior is another series of the same study") for w in app.warning)
    button = next(b for b in app.button if b.label.startswith("Make the PDF report"))
    assert button.label.endswith("(2 series)")  # both series share the study's UID: one report for the study
    names: list[str] = []
    real = st.download_button
    monkeypatch.setattr(st, "download_button", lambda label, data, name, *a, **k: names.append(name) or real(
        label, data, name, *a, **k))  # fmt: skip
    button.click().run()
    assert not app.exception and app.get("download_button")
    # named by its reference's prefix and the study's time, as its header gives them (every one was
    # "study-report.pdf": several downloaded could not be told apart)
    first = min(store.recent(5), key=lambda r: r.created_at)
    assert names == [f"study-report-{first.patient_ref[:12]}-{first.created_at:%Y%m%d-%H%M}Z.pdf"]
    actions = [e.action for e in store.audit_events()]
    assert actions.count("history") == 1 and actions.count("open") == 2 and actions.count("report") == 2
    # reviewed meanwhile (another session): the PDF made before it said "not reviewed yet", so it is not offered
    from core.services import reviews

    reviewed = store.recent(1)[0]
    reviews.review_result(store, Actor("dr-b", "radiologist"), reviewed.id, "tumour", ["wrong_type"])
    app.run()
    assert not app.exception and not app.get("download_button")
    assert np.isfinite([r.tumour_probability for r in store.recent(5)]).all()
    st.cache_data.clear()
    st.cache_resource.clear()


def test_a_prior_pulled_after_todays_study_is_compared_as_the_earlier_scan_and_its_date_is_not_kept(
    tmp_path: Path, tiny_card: Path, tiny_classifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The study dates are read from the files and kept only as days between scans (a keyed offset): History lists
    the prior scanned in January, saved after June's study, as day 0, and compares June's study with it."""
    import sqlite3

    from streamlit.testing.v1 import AppTest

    from core.identity import scan_day
    from tests.scans import relabelled

    data = history_environment(tmp_path, tiny_card, monkeypatch)
    store, images = SQLiteStore(data / "results.sqlite3"), FolderImages(data / "images")
    key = local_key(data)
    reference = pseudonymise("P-0042", key)
    for n, when in enumerate(("20260601", "20260101")):  # June's study first, January's pulled from the PACS after
        study = f"1.2.826.0.1.3680043.8.498.{40 + n}"
        files = dicom_series(head_volume(6, 96, seed=n), study_uid=study, series_uid=f"{study}.1")
        volume = read_study(relabelled(files, StudyDate=when, SeriesDate=when))[0]
        save_series(analyse_volume(volume, tiny_classifier), store, actor=DOCTOR, patient_ref=reference,
                    images=images, key=key)  # fmt: skip
    june, january = sorted(store.recent(2), key=lambda r: r.created_at)
    assert june.geometry["scan_day"] - january.geometry["scan_day"] == 151
    assert june.geometry["scan_day"] == scan_day(datetime(2026, 6, 1).date(), key)
    with sqlite3.connect(data / "results.sqlite3") as database:  # the dates themselves are nowhere
        dump = "\n".join(database.iterdump())
    unshifted = (datetime(2026, 6, 1) - datetime(1970, 1, 1)).days
    assert "20260601" not in dump and "2026-06-01" not in dump and f"{unshifted}" not in dump
    app = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "pages" / "history.py"), default_timeout=60)
    app.session_state["actor"] = DOCTOR
    app.run()
    app.text_input[0].set_value("P-0042").run()
    assert not app.exception
    # in the order scanned, table and timeline: by their saving, January's "No tumour" stood after June's study
    assert app.dataframe[0].value["scanned"].tolist() == ["day 0", "day 151"]
    drawn = json.loads(app.get("plotly_chart")[0].proto.spec)
    assert sorted(x for trace in drawn["data"] for x in trace["x"]) == [0, 151]
    assert drawn["layout"]["xaxis"]["title"]["text"] == "days from the first scan"
    assert any("compared in the order they were scanned" in c.value for c in app.caption)
    assert any("Across: days from this patient's first scan." in c.value for c in app.caption)
    current, prior = app.selectbox(key="history_current"), app.selectbox(key=f"history_prior-{june.id}")
    assert current.value.id == june.id and prior.value.id == january.id  # the latest scan, against the earlier
    assert current.format_func(current.value).startswith("scanned day 151 · saved ")
    # overridden, the series is listed by its final label first (the picker gave the model's call alone)
    from core.services.reviews import review_result
    from ui.wording import pretty

    final = "notumor" if june.is_tumour else "glioma"
    review_result(store, DOCTOR, june.id, final, ["false_alarm"] if june.is_tumour else ["missed_lesion"])
    app.run()
    said = app.selectbox(key="history_current").format_func(app.selectbox(key="history_current").value)
    assert f" · final {pretty(final)} (model {pretty(june.label)}) · " in said, said


def test_no_prior_is_chosen_for_the_reader_when_the_prior_study_has_several_series_in_the_plane(
    tmp_path: Path, tiny_card: Path, tiny_classifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """January's FLAIR and T1 with contrast, June's FLAIR: the picker chose January's latest series (the T1c) and
    the panel read "+0.11 in score since the prior" in red, where the table above said no change is measured (the
    sequence is not kept). No prior is chosen now, and the page says why."""
    from streamlit.testing.v1 import AppTest

    from tests.scans import relabelled

    data = history_environment(tmp_path, tiny_card, monkeypatch)
    store, images = SQLiteStore(data / "results.sqlite3"), FolderImages(data / "images")
    key = local_key(data)
    reference = pseudonymise("P-0042", key)
    for n, (study, when) in enumerate([("1", "20260101"), ("1", "20260101"), ("2", "20260601")]):
        uid = f"1.2.826.0.1.3680043.8.498.5{study}"
        files = dicom_series(head_volume(6, 96, seed=n), study_uid=uid, series_uid=f"{uid}.{n}")
        volume = read_study(relabelled(files, StudyDate=when, SeriesDate=when, SeriesNumber=n + 3))[0]
        save_series(analyse_volume(volume, tiny_classifier), store, actor=DOCTOR, patient_ref=reference,
                    images=images, key=key)  # fmt: skip
    june = max(store.recent(3), key=lambda r: r.geometry["scan_day"])
    app = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "pages" / "history.py"), default_timeout=60)
    app.session_state["actor"] = DOCTOR
    app.run()
    app.text_input[0].set_value("P-0042").run()
    assert not app.exception and app.selectbox(key="history_current").value.id == june.id
    assert app.selectbox(key=f"history_prior-{june.id}").value is None
    assert any(i.value.startswith("The prior study has 2 series in this plane") for i in app.info)
    listed = " ".join(app.selectbox(key=f"history_prior-{june.id}").options)  # each by the scanner's number,
    assert all(f"axial (DICOM series {n}) · " in listed for n in (3, 4))  # as the PACS names them
    assert "axial (DICOM series 3)" in app.dataframe[0].value["plane"].tolist()
    assert app.dataframe[0].value["change"].tolist() == ["—", "—", "—"]  # the table's prior: none either
    assert not app.metric or not any("since the prior" in str(m.value) for m in app.metric)


def test_an_earlier_series_without_a_study_uid_is_the_default_prior_before_another_sequence_of_the_same_study(
    tmp_path: Path, tiny_card: Path, tiny_classifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An earlier series saved without a study reference (no key then) and today's study of two sequences: the
    default prior of today's second sequence is the earlier series, never today's other sequence (a review of this
    session's change caught it choosing the latter)."""
    from streamlit.testing.v1 import AppTest

    from core.imaging.phantom_series import nifti

    data = history_environment(tmp_path, tiny_card, monkeypatch)
    store, images = SQLiteStore(data / "results.sqlite3"), FolderImages(data / "images")
    key = local_key(data)
    reference = pseudonymise("P-0042", key)
    volumes = [read_study([nifti(head_volume(6, 96, seed=9))])[0]]
    uid = "1.2.826.0.1.3680043.8.498.61"
    volumes += [read_study(dicom_series(head_volume(6, 96, seed=n), study_uid=uid, series_uid=f"{uid}.{n}"))[0]
                for n in (1, 2)]  # fmt: skip
    for n, volume in enumerate(volumes):
        save_series(analyse_volume(volume, tiny_classifier), store, actor=DOCTOR, patient_ref=reference,
                    images=images, key=key if n else None)  # fmt: skip
    earlier, _, today = sorted(store.recent(3), key=lambda r: r.created_at)
    assert earlier.study_ref is None and today.study_ref is not None
    app = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "pages" / "history.py"), default_timeout=60)
    app.session_state["actor"] = DOCTOR
    app.run()
    app.text_input[0].set_value("P-0042").run()
    assert not app.exception and app.selectbox(key="history_current").value.id == today.id
    assert app.selectbox(key=f"history_prior-{today.id}").value.id == earlier.id
    assert not any(w.value.startswith("The prior is another series of the same study") for w in app.warning)


def test_a_prior_whose_images_are_purged_is_said_so_and_its_series_score_still_compared(
    tmp_path: Path, tiny_card: Path, tiny_classifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page said "the prior's images are no longer kept" and then "No prior chosen to show beside it", and the
    change of the series score, which the prior's record still keeps, was not given."""
    import sqlite3

    from streamlit.testing.v1 import AppTest

    from tests.scans import relabelled

    data = history_environment(tmp_path, tiny_card, monkeypatch)
    store, images = SQLiteStore(data / "results.sqlite3"), FolderImages(data / "images")
    key = local_key(data)
    reference = pseudonymise("P-0043", key)
    for n, when in enumerate(("20260101", "20260601")):
        study = f"1.2.826.0.1.3680043.8.498.{50 + n}"
        files = dicom_series(
            head_volume(6, 96, range(2, 4) if n else (), seed=n), study_uid=study, series_uid=f"{study}.1"
        )
        volume = read_study(relabelled(files, StudyDate=when, SeriesDate=when))[0]
        save_series(analyse_volume(volume, tiny_classifier), store, actor=DOCTOR, patient_ref=reference,
                    images=images, key=key)  # fmt: skip
    january, june = sorted(store.recent(2), key=lambda r: r.created_at)
    with sqlite3.connect(data / "results.sqlite3") as database:  # the tiny model scores both alike: January lower
        database.execute("UPDATE scans SET tumour_probability = 0.25 WHERE id = ?", (january.id,))
    assert images.delete(january.image_key)  # past its retention period
    app = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "pages" / "history.py"), default_timeout=60)
    app.session_state["actor"] = DOCTOR
    app.run()
    app.text_input[0].set_value("P-0043").run()
    assert not app.exception
    assert app.selectbox(key=f"history_prior-{june.id}").value.id == january.id
    said = [i.value for i in app.info]
    assert any("images of the prior chosen are no longer kept" in s for s in said)
    assert not any("No prior chosen" in s for s in said)
    (score,) = [m for m in app.metric if m.label == "Series score"]
    assert score.delta == f"{june.tumour_probability - 0.25:+.2f} in score since the prior"  # not the lesion's size
    assert not app.warning or not any("another model" in w.value for w in app.warning)
    # read by another model: not compared, and said (a score shown with no change read as "unchanged")
    with sqlite3.connect(data / "results.sqlite3") as database:
        database.execute("UPDATE scans SET model_version = '0.0.0-older' WHERE id = ?", (january.id,))
    app.run()
    assert any("The prior was read by another model" in w.value for w in app.warning)
    assert any("its sections cannot be shown." in i.value for i in app.info)
    (score,) = [m for m in app.metric if m.label == "Series score"]
    assert not score.delta


def lesion_history() -> list:
    """A patient's results, oldest first: series and single scans, measured or not."""
    start = datetime(2026, 9, 1, 9, tzinfo=UTC)
    at = [start + timedelta(days=7 * k) for k in range(8)]
    return [
        replace(make_series(1, at[0], study=1), lesion_px=5000, lesion_ml=4.0),
        replace(make_record(2, at[1]), lesion_px=480, lesion_mm2=120.0),  # a single scan: an area, not a volume
        replace(make_series(3, at[2], study=2), lesion_px=6000, lesion_ml=5.0),
        make_series(4, at[3], study=3),  # saved without a segmenter: unknown
        replace(make_series(5, at[4], study=4), lesion_px=7000, lesion_ml=6.0),
        replace(make_series(6, at[5], study=5), lesion_px=7200, lesion_ml=6.6),
        replace(make_record(7, at[6]), lesion_px=510),  # no pixel spacing: pixels, never compared
        replace(make_series(8, at[7], study=6), lesion_px=0, lesion_ml=0.0),
    ]


def test_the_lesion_course_gives_each_size_and_the_change_from_the_prior_studys_series() -> None:
    course = lesion_course(lesion_history())
    assert [(s.size, s.unit) for s in course] == [
        (4.0, "mL"),
        (120.0, "mm2"),
        (5.0, "mL"),
        (None, None),
        (6.0, "mL"),
        (6.6, "mL"),
        (510.0, "px"),
        (0.0, "mL"),
    ]
    assert course[0].change is None and course[1].change is None  # nothing before: no change
    assert course[2].change == pytest.approx(1.0) and course[2].change_percent == pytest.approx(25.0)  # past a scan
    assert course[3].change is None and course[3].change_percent is None  # unknown now
    assert course[4].change is None and course[4].change_percent is None  # never across the unknown one
    assert course[5].change == pytest.approx(0.6) and course[5].change_percent == pytest.approx(10.0)
    assert course[6].change is None  # a scan measured in pixels is not compared with one in mm^2
    assert course[7].change == pytest.approx(-6.6) and course[7].change_percent == pytest.approx(-100.0)
    grown = lesion_course(
        [lesion_history()[-1], replace(make_series(9, datetime(2027, 1, 1, tzinfo=UTC)), lesion_ml=2.0)]
    )
    assert grown[1].change == pytest.approx(2.0) and grown[1].change_percent is None  # from 0: no percentage
    assert lesion_size(replace(make_series(10, datetime(2027, 1, 1, tzinfo=UTC)), lesion_px=900)) == (900.0, "px")


def test_a_change_is_only_claimed_between_one_lesion_measured_in_two_studies() -> None:
    """Two series of one study (two sequences), a prior study with several series in the plane, another plane, or
    two single scans (not the same section): no change. The one series of the prior study: its change."""
    at = [datetime(2026, 9, 1, tzinfo=UTC) + timedelta(days=k) for k in range(9)]
    sagittal = {"spacing": [0.9, 0.9], "thickness": 5.0, "orientation": [0, 1, 0, 0, 0, -1], "plane": "sagittal"}
    records = [
        replace(make_series(1, at[0], study=1), lesion_ml=4.0),
        replace(make_series(2, at[1], study=1), lesion_ml=9.0),  # the same study's other series: not a course
        replace(make_series(3, at[2], study=2), lesion_ml=5.0),  # the prior study has two axial series: which?
        replace(make_series(4, at[3], study=3), lesion_ml=6.0),  # the one axial series of study 2: +1.0 mL
        replace(make_series(5, at[4], study=4), geometry=sagittal, lesion_ml=2.0),  # no sagittal before
        replace(make_series(6, at[5], study=5), lesion_ml=3.0),  # the latest study with an axial one: study 3
        replace(make_record(7, at[6]), lesion_px=400, lesion_mm2=100.0),
        replace(make_record(8, at[7]), lesion_px=480, lesion_mm2=120.0),  # two single scans: not one section
    ]
    course = lesion_course(records)
    assert [s.change for s in course[:3]] == [None, None, None]
    assert course[1].prior is None and course[2].prior is None
    assert course[3].prior is records[2] and course[3].change == pytest.approx(1.0)
    assert course[3].change_percent == pytest.approx(20.0)
    assert course[4].prior is None and course[4].change is None
    assert course[5].prior is records[3] and course[5].change == pytest.approx(-3.0)
    assert course[6].change is None and course[7].change is None and course[7].size == 120.0
    # the prior study's second axial series saved after today's (the PACS sent it later): which is the prior is
    # unknown again (today's FLAIR read +900 % against the prior T1c)
    late = [records[0], replace(make_series(11, at[1], study=12), lesion_ml=20.0)]
    late.append(replace(make_series(12, at[2], study=1), lesion_ml=2.0))
    assert lesion_course(late[:2])[1].prior is records[0]
    assert lesion_course(late)[1].prior is None and lesion_course(late)[1].change is None


def test_a_prior_study_saved_after_a_later_one_is_compared_in_the_order_of_scanning() -> None:
    """A prior pulled from the PACS after today's study was saved later, so read as the later one: the tumour that
    grew from 5 to 10 mL read as shrinking by 5 mL. With every series' scan day kept, the course is in the order of
    scanning; without one of them it stays in the order of saving (the page says which)."""
    from core.services.history import dated, days_from_first, series_before

    def scanned(record, day: int):
        return replace(record, geometry={**record.geometry, "scan_day": day})

    saved = datetime(2026, 9, 1, 9, tzinfo=UTC)
    today = scanned(replace(make_series(1, saved, study=1), lesion_ml=10.0), 20_000)
    prior = scanned(replace(make_series(2, saved + timedelta(hours=1), study=2), lesion_ml=5.0), 20_000 - 150)
    course = lesion_course([today, prior])  # in the order saved, as the page lists them
    assert course[0].prior is prior and course[0].change == pytest.approx(5.0) and course[0].change_percent == 100
    assert course[1].prior is None and course[1].change is None
    assert dated([today, prior]) and days_from_first([today, prior]) == {today.id: 150, prior.id: 0}
    assert series_before([today, prior], today) == [prior] and series_before([today, prior], prior) == []
    same_day = scanned(replace(make_series(3, saved + timedelta(hours=2), study=3), lesion_ml=7.0), 20_000)
    assert lesion_course([today, prior, same_day])[2].prior is prior  # another study the same day: not before it
    undated = replace(make_series(4, saved + timedelta(hours=3), study=4), lesion_ml=8.0)  # a NIfTI volume
    course = lesion_course([today, prior, undated])
    assert not dated([today, prior, undated]) and course[1].prior is today  # saved order: the page says so
    assert course[1].change == pytest.approx(-5.0)


def test_two_series_of_todays_study_in_one_plane_get_no_change_and_a_few_voxels_before_no_percentage() -> None:
    """A T1 (1.0 mL) and a FLAIR (9.0 mL) of one study were each set against the same prior (4.0 mL): "-75 %" and
    "+125 %" in one table; a prior of 0.004 mL made a change of "+29900 %"."""
    at = [datetime(2026, 9, 1, tzinfo=UTC) + timedelta(days=k) for k in range(6)]
    records = [
        replace(make_series(1, at[0], study=1), lesion_ml=4.0),
        replace(make_series(2, at[1], study=2), lesion_ml=1.0),
        replace(make_series(3, at[2], study=2), lesion_ml=9.0),
    ]
    course = lesion_course(records)
    assert [(s.prior, s.change) for s in course[1:]] == [(None, None), (None, None)]
    tiny = [
        replace(make_series(4, at[3], study=3), lesion_ml=0.004),
        replace(make_series(5, at[4], study=4), lesion_ml=1.2),
    ]
    (_, grown) = lesion_course(tiny)
    assert grown.change == pytest.approx(1.196) and grown.change_percent is None
    false_lesion = [replace(tiny[0], lesion_ml=0.38), replace(tiny[1], lesion_ml=1.58)]  # one false lesion's size
    (_, grown) = lesion_course(false_lesion)  # before: "+317 %"
    assert grown.change == pytest.approx(1.2) and grown.change_percent is None
    thin = replace(tiny[1], geometry={**tiny[1].geometry, "thickness": 1.0}, lesion_ml=6.0)  # a 3D sequence
    (_, step) = lesion_course([replace(tiny[0], lesion_ml=4.0), thin])
    assert (
        step.change is None
        and step.not_compared == "not compared: sections 5 mm thick then 1 mm (another partial volume)"
    )


def test_a_lower_bound_or_another_segmenters_volume_is_never_a_change() -> None:
    """A volume with sections inside the lesion not analysed is a lower bound: 3.0 mL then 1.5 mL read as "-50 %",
    a lesion halving; a prior another segmenter measured is not the same measurement."""
    at = [datetime(2026, 9, 1, tzinfo=UTC) + timedelta(days=k) for k in range(3)]
    prior = replace(make_series(1, at[0], study=1), lesion_ml=3.0)
    caveat = "2 section(s) inside the lesion's span (sections 3-9) could not be analysed: ... a lower bound"
    short = replace(make_series(2, at[1], study=2), lesion_ml=1.5)
    short = replace(short, geometry={**short.geometry, "lesion_caveats": [caveat]})
    (_, step) = lesion_course([prior, short])
    assert step.prior is prior and step.change is None and "lower bound" in step.not_compared

    def measured_by(record, segmenter: str):
        return replace(record, geometry={**record.geometry, "lesion_model": segmenter})

    first = measured_by(prior, "lesion-a 1.0")
    other = measured_by(replace(make_series(3, at[2], study=3), lesion_ml=4.0), "lesion-b 2.0")
    (_, step) = lesion_course([first, other])
    assert step.change is None and "another segmenter (lesion-a 1.0)" in step.not_compared
    (_, step) = lesion_course([prior, other])  # saved before records named their segmenter: unknown, not the same
    assert step.change is None and "not recorded" in step.not_compared
    same = measured_by(replace(make_series(4, at[2], study=3), lesion_ml=4.0, model_version="9.9.9"), "lesion-a 1.0")
    (_, step) = lesion_course([first, same])  # another classifier, the same segmenter: one lesion's course
    assert step.change == pytest.approx(1.0) and step.not_compared is None
    unnamed = replace(make_series(5, at[2], study=3), lesion_ml=4.0, model_version="9.9.9")  # saved before records
    (_, step) = lesion_course([prior, unnamed])  # named their segmenter: another model's reading is not compared
    assert step.change is None and "another model" in step.not_compared


@pytest.mark.pages
def test_the_history_page_shows_each_lesion_size_and_its_change(
    tmp_path: Path, tiny_card: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    data = tmp_path / "data"
    monkeypatch.setenv("BTD_MODEL", str(tiny_card))
    monkeypatch.setenv("BTD_DATA_DIR", str(data))
    monkeypatch.setenv("BTD_LESION_MODEL", "none")
    monkeypatch.delenv("MONGODB_URI", raising=False)
    st.cache_data.clear()
    st.cache_resource.clear()
    store = SQLiteStore(data / "results.sqlite3")
    reference = pseudonymise("P-0077", local_key(data))
    for k, record in enumerate(lesion_history()):  # the second flagged for review, never reviewed
        store.add(replace(record, patient_ref=reference, gate="needs_review" if k == 1 else record.gate))
    app = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "pages" / "history.py"), default_timeout=60)
    app.session_state["actor"] = DOCTOR
    app.run()
    app.text_input[0].set_value("P-0077").run()
    assert not app.exception
    table = app.dataframe[0].value
    assert table["flag"].tolist().count("needs review") == 1  # as the Worklist and the PDF flag it
    assert table["lesion"].tolist() == [
        "4.0 mL",
        "120 mm²",
        "5.0 mL",
        "—",
        "6.0 mL",
        "6.6 mL",
        "510 px",
        "0.00 mL",
    ]
    assert table["change"].tolist() == [
        "—",
        "—",
        "+1.0 mL (+25%)",
        "—",
        "—",
        "+0.60 mL (+10%)",
        "—",
        "-6.6 mL (-100%)",
    ]
    assert any("one series in the same plane of this patient's previous study" in c.value for c in app.caption)
    # two sequences of one study saved in one minute read alike in the pickers, and Streamlit kept the last of two
    # equal labels: one of them could not be chosen
    labels = app.selectbox(key="history_current").options
    assert len(labels) == len(set(labels)) == sum(r.kind == "series" for r in lesion_history())
    assert all(" · #" in label for label in labels), labels
    # a prior pulled from the PACS after today's study was saved later: only earlier-saved series were offered
    app.selectbox(key="history_current").set_value(app.selectbox(key="history_current").options[-1]).run()
    chosen = app.selectbox(key="history_current").value
    priors = next(s for s in app.selectbox if s.label.startswith("Prior")).options
    assert len(priors) == len(labels) - 1 and all(label.startswith("saved ") for label in priors)
    assert f"#{chosen.id[:6]}" not in " ".join(priors)
    st.cache_data.clear()
    st.cache_resource.clear()


def test_a_prior_cut_in_another_plane_matches_no_section_and_says_so(tiny_classifier) -> None:
    """An axial section was paired with a sagittal one by its relative index, and a change given at it."""
    from core.imaging.phantom_series import SAGITTAL
    from core.services.history import plane_caveat

    now = series_view(analyse_volume(read_study(dicom_series(head_volume(10, 96)))[0], tiny_classifier))
    sagittal = dicom_series(head_volume(12, 96), orientation=SAGITTAL)
    prior = series_view(analyse_volume(read_study(sagittal)[0], tiny_classifier))
    assert (now.geometry["plane"], prior.geometry["plane"]) == ("axial", "sagittal")
    shown, moved = change(now, 3, prior)
    assert moved.section_before is None and moved.section_change is None  # no change claimed at this section
    assert moved.series_change is None  # nor of the series: a sagittal score is no earlier state of an axial one's
    assert shown == (prior.window[len(prior.window) // 2] if prior.window else 6)
    assert "axial, the prior sagittal" in plane_caveat(now, prior) and plane_caveat(now, now) is None
    # one plane, but files that gave no positions: their sections may run the other way, so none is matched
    unplaced = replace(now, geometry={**now.geometry, "positions_in_mm": False})
    for current, earlier, which in ((now, unplaced, "the prior"), (unplaced, now, "this series")):
        shown, moved = change(current, 3, earlier)
        assert moved.section_before is None and moved.section_change is None
        assert moved.series_change == pytest.approx(current.score - earlier.score)
        assert f"files of {which} gave no section positions" in plane_caveat(current, earlier)


@pytest.mark.pages
def test_a_history_report_of_a_study_read_by_two_model_versions_gives_each_series_once(
    tmp_path: Path, tiny_card: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report listed each series twice (once per model that read the study) under the first record's version
    alone, and turned every heat map off."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from core.domain.results import record_id
    from tests.test_store import series_sections

    data = history_environment(tmp_path, tiny_card, monkeypatch)
    store = SQLiteStore(data / "results.sqlite3")
    reference = pseudonymise("P-0077", local_key(data))
    first = replace(make_series(1, datetime(2026, 11, 1, 9, tzinfo=UTC)), patient_ref=reference)
    again = replace(
        first,
        id=record_id(first.image_sha256, first.model_name, "9.9.9"),
        model_version="9.9.9",
        created_at=datetime(2026, 11, 2, 9, tzinfo=UTC),
    )
    for record in (first, again):
        store.add_series(record, series_sections())
    app = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "pages" / "history.py"), default_timeout=60)
    app.session_state["actor"] = DOCTOR
    app.run()
    app.text_input[0].set_value("P-0077").run()
    assert not app.exception
    assert any(b.label == "Make the PDF report of this study (1 series)" for b in app.button)
    assert any(c.value.startswith("This study was also read by another model version") for c in app.caption)
    st.cache_data.clear()
    st.cache_resource.clear()
