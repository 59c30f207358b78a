"""One contract suite, run against SQLite, mongomock and (when BTD_TEST_MONGODB_URI is set) a real MongoDB.

mongomock checks the pipelines' logic; it is not a server. The real-server run is the only proof of indexes,
the validator and write concern, and it needs a MongoDB the tests can reach.
"""

from __future__ import annotations

import io
import json
import os
import pwd
import shutil
import sqlite3
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest

from core.analytics.stats import roll_up, suppress_small
from core.domain.people import GENESIS, Account, AuditEvent, AuditQuery, Review, VerifiedPoint, first_broken
from core.domain.results import FIELDS, DayCount, Filters, Record, Section, WorklistQuery, record_id
from core.domain.times import to_ms, utc_offset_segments
from core.errors import InvalidRecord, StoreError, StoreUnavailable
from core.identity import local_key, pseudonymise
from core.storage import open_store
from core.storage.mongo import MongoStore
from core.storage.mongo_schema import VALIDATOR
from core.storage.protocol import SCHEMA_VERSION
from core.storage.sqlite import SQLiteStore
from core.storage.synthetic import LABELS, synthetic_record

make_record = synthetic_record  # the name the tests have always used


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# Fixed data: around the Europe/Paris spring-forward night (2026-03-29, 02:00 -> 03:00 local), and other months.
FIXTURE = [
    make_record(1, utc(2026, 3, 28, 23, 30), "glioma", "1.0.0", 0.95),  # Paris 03-29 00:30 (CET)
    make_record(2, utc(2026, 3, 29, 0, 30), "notumor", "1.0.0", 0.80),  # Paris 03-29 01:30
    make_record(3, utc(2026, 3, 29, 21, 30), "pituitary", "1.0.0", 0.62),  # Paris 03-29 23:30 (CEST)
    make_record(4, utc(2026, 3, 29, 22, 30), "notumor", "1.0.0", 0.99),  # Paris 03-30 00:30
    make_record(5, utc(2026, 2, 10, 12, 0), "meningioma", "0.9.0", 0.51),
    make_record(6, utc(2026, 2, 11, 12, 0), "glioma", "0.9.0", 0.70),
    make_record(7, utc(2026, 4, 1, 8, 0), "notumor", "1.0.0", 0.97),
    make_record(8, utc(2026, 4, 6, 8, 0), "glioma", "1.0.0", 0.88),
]


def _stores() -> list[str]:
    kinds = ["sqlite", "mongomock"]
    if os.environ.get("BTD_TEST_MONGODB_URI"):
        kinds.append("mongodb")
    return kinds


@pytest.fixture(params=_stores())
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLiteStore | MongoStore]:
    if request.param == "sqlite":
        yield SQLiteStore(tmp_path / "results.sqlite3")
    elif request.param == "mongomock":
        import mongomock

        yield MongoStore(mongomock.MongoClient(tz_aware=True), collection=f"scans_{uuid.uuid4().hex[:8]}")
    else:
        database = f"btd_test_{uuid.uuid4().hex[:8]}"
        real = MongoStore.connect(os.environ["BTD_TEST_MONGODB_URI"], database)
        yield real
        real._client.drop_database(database)


@pytest.fixture
def filled(store: SQLiteStore | MongoStore) -> SQLiteStore | MongoStore:
    for record in FIXTURE:
        assert store.add(record) is True
    return store


def test_a_keys_fingerprint_is_recorded_once_and_then_only_read(store) -> None:
    assert store.key_check("patient_reference", "a" * 32) == "a" * 32
    assert store.key_check("patient_reference", "b" * 32) == "a" * 32  # another key: the first is kept
    assert store.key_check("another", "b" * 32) == "b" * 32


def test_a_bulk_insert_counts_the_results_it_added_and_nothing_else(store) -> None:
    """SQLite counted the daily roll-up triggers' writes too: 4,000 "new" for 250 results."""
    assert store.add_many(FIXTURE) == len(FIXTURE)
    assert store.add_many(FIXTURE) == 0  # the same again: none new
    assert store.summary().total == len(FIXTURE)


def test_same_upload_saves_one_record(store) -> None:
    record = FIXTURE[0]
    assert store.add(record) is True
    assert store.add(record) is False
    assert store.add(replace(record, created_at=record.created_at + timedelta(minutes=5))) is False
    assert store.summary().total == 1


def test_round_trip_keeps_every_field(store) -> None:
    record = make_record(42, utc(2026, 5, 1, 9, 15, 30), "pituitary", patient="a" * 64)
    store.add(record)
    back = store.get(record.id)
    assert back == record
    assert back.created_at.tzinfo is not None and back.created_at == record.created_at
    assert store.get("0" * 64) is None


def test_invalid_records_are_refused_before_the_database(store) -> None:
    good = FIXTURE[0]
    bad = [
        replace(good, probabilities={"glioma": 0.7, "notumor": 0.7}),
        replace(good, tumour_probability=1.5),
        replace(good, created_at=datetime(2026, 1, 1)),  # naive
        replace(good, image_sha256="not-a-hash"),
        replace(good, roi=(10, 10, 5, 5)),
        replace(good, label="cat"),
        replace(good, patient_ref="ZZCANARY Test"),
        replace(good, id="f" * 64),
    ]
    for record in bad:
        with pytest.raises(InvalidRecord):
            store.add(record)
    assert store.summary().total == 0


def test_each_field_rule_in_the_table_refuses_its_bad_value() -> None:
    good = FIXTURE[0]
    cases = {
        "image_width is out of range": replace(good, image_width=0),
        "image_format is unknown": replace(good, image_format="gif"),
        "gate is unknown": replace(good, gate="maybe"),
        "review_count is not an integer": replace(good, review_count=1.5),
        "study_ref does not have the expected form": replace(good, study_ref="not-a-hash"),
        "tumour_probability is not a finite number": replace(good, tumour_probability=float("nan")),
        "model_version is empty": replace(good, model_version=""),
        "roi is not four non-negative integers": replace(good, roi=(1, 2, 3)),
    }
    for message, record in cases.items():
        with pytest.raises(InvalidRecord, match=message):
            record.validate()
    assert good.validate() is good


def test_the_stores_derive_their_columns_and_validator_from_the_one_field_table(tmp_path: Path) -> None:
    SQLiteStore(tmp_path / "results.sqlite3")
    with sqlite3.connect(tmp_path / "results.sqlite3") as connection:
        table = {row[1]: bool(row[3] or row[5]) for row in connection.execute("PRAGMA table_info(scans)")}
    legacy = {"review_note", "first_reviewed_ms"}  # kept so that older files' data can be moved on migration
    assert set(table) - legacy == {spec.sql_column for spec in FIELDS}
    assert all(table[spec.sql_column] == spec.required for spec in FIELDS)
    schema = VALIDATOR["$jsonSchema"]
    assert set(schema["properties"]) == {"_id", "sections"} | {spec.name for spec in FIELDS} - {"id"}
    assert "_id" in schema["required"] and "confidence" in schema["required"] and "frame" not in schema["required"]
    assert schema["properties"]["gate"] == {"enum": ["accepted", "needs_review", "rejected"]}
    assert schema["properties"]["patient_ref"]["bsonType"] == ["string", "null"]


def test_patient_reference_is_an_attribute_not_part_of_the_identity(store) -> None:
    record = FIXTURE[0]
    assert store.add(record) is True
    assert store.add(replace(record, patient_ref="a" * 64)) is False  # the same upload: still one result
    assert store.set_patient_ref(record.id, "b" * 64, was=None) is True  # typed or corrected later: in place
    assert store.set_patient_ref(record.id, "b" * 64, was="b" * 64) is False
    assert store.get(record.id).patient_ref == "b" * 64 and store.summary().total == 1
    # a compare-and-set: a session that saw no reference never moves one another session linked meanwhile
    assert store.set_patient_ref(record.id, "c" * 64, was=None) is False
    assert store.get(record.id).patient_ref == "b" * 64
    assert store.set_patient_ref(record.id, None, was="b" * 64) is True and store.get(record.id).patient_ref is None
    with pytest.raises(InvalidRecord):
        store.set_patient_ref("0" * 64, "b" * 64, was=None)


def test_one_patients_results_are_read_newest_first(store) -> None:
    mine = [make_record(80 + n, utc(2026, 5, 1 + n), patient="a" * 64) for n in range(3)]
    for record in [*mine, make_record(90, utc(2026, 5, 9), patient="b" * 64), make_record(91, utc(2026, 5, 9))]:
        store.add(record)
    assert [r.id for r in store.of_patient("a" * 64, 10)] == [r.id for r in reversed(mine)]
    assert [r.id for r in store.of_patient("a" * 64, 2)] == [mine[2].id, mine[1].id]
    assert store.of_patient("c" * 64, 10) == [] and store.of_patient("a" * 64, 0) == []


def test_frames_of_one_file_are_separate_results(store) -> None:
    first = make_record(70, utc(2026, 5, 1), "glioma", frame=0)
    second = make_record(70, utc(2026, 5, 1, 0, 1), "notumor", frame=1)
    assert first.id != second.id
    assert store.add(first) is True and store.add(second) is True
    assert store.add(first) is False
    assert store.summary().total == 2 and store.get(second.id).frame == 1


def test_a_row_the_database_refuses_raises_instead_of_counting_as_saved(store, monkeypatch) -> None:
    if isinstance(store, MongoStore) and not os.environ.get("BTD_TEST_MONGODB_URI"):
        pytest.skip("mongomock does not enforce $jsonSchema validators; a real server does")
    monkeypatch.setattr(Record, "validate", lambda self: self)  # reach the database's own checks
    with pytest.raises(InvalidRecord):
        store.add(replace(FIXTURE[0], image_format="gif"))
    assert store.summary().total == 0


def test_summary_counts_and_rates(filled) -> None:
    summary = filled.summary()
    assert summary.total == 8 and summary.tumour == 5
    assert summary.tumour_rate == pytest.approx(5 / 8)
    assert dict(summary.per_class) == {"glioma": 3, "notumor": 3, "pituitary": 1, "meningioma": 1}
    assert summary.mean_confidence == pytest.approx((0.95 + 0.80 + 0.62 + 0.99 + 0.51 + 0.70 + 0.97 + 0.88) / 8)
    assert summary.first == utc(2026, 2, 10, 12, 0) and summary.last == utc(2026, 4, 6, 8, 0)


def test_filters_by_date_label_and_model(filled) -> None:
    march = Filters(start=utc(2026, 3, 1), end=utc(2026, 4, 1))
    assert filled.summary(march).total == 4
    assert filled.summary(Filters(labels=("notumor",))).total == 3
    assert filled.summary(Filters(model_versions=("0.9.0",))).total == 2
    both = Filters(start=utc(2026, 3, 1), labels=("glioma", "pituitary"), model_versions=("1.0.0",))
    assert filled.summary(both).total == 3
    assert filled.summary(Filters(start=utc(2030, 1, 1))).total == 0
    assert filled.summary(Filters(start=utc(2030, 1, 1))).tumour_rate is None


def test_days_follow_the_viewers_time_zone_across_dst(filled) -> None:
    march = Filters(start=utc(2026, 3, 28), end=utc(2026, 3, 31))
    paris = filled.daily_counts(march, "Europe/Paris")
    assert paris == [DayCount(date(2026, 3, 29), 3, 2), DayCount(date(2026, 3, 30), 1, 0)]
    in_utc = filled.daily_counts(march, "UTC")
    assert in_utc == [DayCount(date(2026, 3, 28), 1, 1), DayCount(date(2026, 3, 29), 3, 1)]
    tokyo = filled.daily_counts(march, "Asia/Tokyo")  # +9: 08:30, 09:30, 06:30 and 07:30 the next days
    assert [(d.day.day, d.total) for d in tokyo] == [(29, 2), (30, 2)]


def test_weeks_and_months_roll_up_from_days(filled) -> None:
    days = filled.daily_counts(Filters(), "Europe/Paris")
    assert sum(d.total for d in days) == 8
    months = roll_up(days, "month")
    assert [(m.start, m.total, m.tumour) for m in months] == [
        (date(2026, 2, 1), 2, 2),
        (date(2026, 3, 1), 4, 2),
        (date(2026, 4, 1), 2, 1),
    ]
    weeks = roll_up(days, "week")
    assert weeks[0].start == date(2026, 2, 9)  # a Monday
    assert all(w.start.weekday() == 0 for w in weeks)
    assert sum(w.total for w in weeks) == 8


def test_confidence_histogram(filled) -> None:
    counts = filled.confidence_histogram()  # twenty bins of 0.05, both stores
    assert len(counts) == 20 and sum(counts) == 8
    assert counts[19] == 3  # 0.95, 0.99, 0.97
    assert [i for i, n in enumerate(counts) if n == 1] == [10, 12, 14, 16, 17]  # 0.51, 0.62, 0.70, 0.80, 0.88


def test_per_model_version(filled) -> None:
    rows = filled.by_model()
    assert [(r.model_version, r.total, r.tumour) for r in rows] == [("0.9.0", 2, 2), ("1.0.0", 6, 3)]
    assert rows[0].mean_confidence == pytest.approx((0.51 + 0.70) / 2)
    assert filled.model_versions() == ["0.9.0", "1.0.0"]


def test_latest_records_newest_first(filled) -> None:
    latest = filled.recent(3)
    assert [r.image_sha256[-1] for r in latest] == ["8", "7", "4"]
    assert [r.label for r in filled.recent(5, Filters(labels=("notumor",)))] == ["notumor"] * 3


def test_a_limit_of_none_or_fewer_lists_nothing_on_either_store(filled) -> None:
    """SQLite read LIMIT -1 as "every row", MongoDB's store gave none: a caller's bad arithmetic listed the whole
    table on one store only."""
    filled.append_audit(AuditEvent(datetime(2026, 3, 1, tzinfo=UTC), "a", "admin", "open", None, {}))
    patient = "e" * 64
    filled.add(replace(make_record(99, datetime(2026, 3, 1, tzinfo=UTC)), patient_ref=patient))
    for limit in (0, -1):
        assert filled.recent(limit) == [] and filled.of_patient(patient, limit) == []
        assert filled.worklist(WorklistQuery(), limit) == [] and filled.find_audit(AuditQuery(), limit) == []
    assert filled.recent(1) and filled.of_patient(patient, 1) and filled.find_audit(AuditQuery(), 1)


def test_reviews_are_an_append_only_history_whose_latest_is_the_final_label(filled) -> None:
    record = FIXTURE[2]  # pituitary
    assert filled.get(record.id).final_label is None and filled.reviews_of(record.id) == []
    first = Review(record.id, "dr-a", utc(2026, 5, 1, 9), "agree", "pituitary", "pituitary")
    second = Review(
        record.id,
        "dr-b",
        utc(2026, 5, 2, 9),
        "override",
        "pituitary",
        "meningioma",
        ("wrong_type",),
        "enhancing dural tail",
    )
    assert filled.add_review(first).final_label == "pituitary"
    updated = filled.add_review(second)
    assert (updated.final_label, updated.reviewer, updated.review_count, updated.review_verdict) == (
        "meningioma",
        "dr-b",
        2,
        "override",
    )
    assert updated.disagrees and updated.reviewed_at == utc(2026, 5, 2, 9)
    history = filled.reviews_of(record.id)
    assert [(r.reviewer, r.final_label, r.reasons, r.note) for r in history] == [
        ("dr-a", "pituitary", (), ""),
        ("dr-b", "meningioma", ("wrong_type",), "enhancing dural tail"),
    ]
    with pytest.raises(InvalidRecord):  # not of this result's verdict
        filled.add_review(replace(first, model_label="glioma", final_label="glioma"))
    with pytest.raises(InvalidRecord):  # an unknown reason code
        filled.add_review(replace(second, reasons=("hunch",)))
    with pytest.raises(InvalidRecord):
        filled.add_review(replace(first, result_id="0" * 64))
    assert len(filled.reviews_of(record.id)) == 2
    # saved against the one review its reader saw: another was saved since, so nothing is written
    with pytest.raises(InvalidRecord, match="meanwhile"):
        filled.add_review(replace(first, reviewer="dr-c", created_at=utc(2026, 5, 3)), seen_reviews=1)
    assert len(filled.reviews_of(record.id)) == 2 and filled.get(record.id).final_label == "meningioma"
    third = filled.add_review(replace(first, reviewer="dr-c", created_at=utc(2026, 5, 3)), seen_reviews=2)
    assert (third.final_label, third.review_count) == ("pituitary", 3)


def test_two_reviews_saved_against_the_same_count_keep_the_first_in_the_stores_own_write(store, monkeypatch) -> None:
    """The service's read and the store's write are apart: a colleague's review landing between them must still
    be refused by the write itself (SQLite's conditional update, MongoDB's numbered review id), nothing written."""
    record = make_record(91, utc(2026, 5, 1), "glioma")
    store.add(record)
    stale = store.get(record.id)
    store.add_review(Review(record.id, "dr-b", utc(2026, 5, 2), "override", "glioma", "notumor", ("false_alarm",)))
    monkeypatch.setattr(store, "get", lambda record_id: stale)  # read before the colleague's review was saved
    with pytest.raises(InvalidRecord, match="meanwhile"):
        store.add_review(Review(record.id, "dr-a", utc(2026, 5, 3), "agree", "glioma", "glioma"), seen_reviews=0)
    monkeypatch.undo()
    assert [r.reviewer for r in store.reviews_of(record.id)] == ["dr-b"]
    assert (store.get(record.id).final_label, store.get(record.id).review_count) == ("notumor", 1)


def test_the_latest_review_is_the_last_saved_whatever_the_clocks_say(store) -> None:
    """MongoDB ordered a result's reviews by their time: a replica's clock a minute behind put the later review
    first, and the report and the PACS read it as the latest while the result's final label was the other's."""
    record = make_record(92, utc(2026, 5, 1), "glioma")
    store.add(record)
    store.add_review(Review(record.id, "dr-a", utc(2026, 5, 2, 10), "agree", "glioma", "glioma"))
    store.add_review(
        Review(record.id, "dr-b", utc(2026, 5, 2, 9, 59), "override", "glioma", "notumor", ("false_alarm",))
    )
    assert [r.reviewer for r in store.reviews_of(record.id)] == ["dr-a", "dr-b"]
    assert store.reviews_of(record.id)[-1].final_label == store.get(record.id).final_label == "notumor"


def test_a_mongodb_review_whose_summary_a_timeout_left_unwritten_never_blocks_the_result(monkeypatch) -> None:
    """The review is written, then the result's summary: a timeout between the two left a review numbered 1 with
    the result still at 0 reviews, and every later review was refused as "reviewed meanwhile", for good."""
    import mongomock
    from pymongo.errors import WTimeoutError

    store = MongoStore(mongomock.MongoClient(tz_aware=True), collection=f"scans_{uuid.uuid4().hex[:8]}")
    record = make_record(93, utc(2026, 5, 1), "glioma")
    store.add(record)
    real = store._collection.update_one

    def times_out(*args, **kwargs):
        raise WTimeoutError("waiting for replication timed out")

    monkeypatch.setattr(store._collection, "update_one", times_out)
    with pytest.raises(StoreError):
        store.add_review(Review(record.id, "dr-a", utc(2026, 5, 2), "agree", "glioma", "glioma"))
    monkeypatch.setattr(store._collection, "update_one", real)
    assert store.get(record.id).review_count == 0 and len(store.reviews_of(record.id)) == 1
    with pytest.raises(InvalidRecord, match="meanwhile"):  # the next attempt writes the summary, then says so
        store.add_review(Review(record.id, "dr-b", utc(2026, 5, 3), "agree", "glioma", "glioma"))
    assert (store.get(record.id).review_count, store.get(record.id).reviewer) == (1, "dr-a")
    again = store.add_review(Review(record.id, "dr-b", utc(2026, 5, 3), "agree", "glioma", "glioma"), seen_reviews=1)
    assert again.review_count == 2 and [r.reviewer for r in store.reviews_of(record.id)] == ["dr-a", "dr-b"]


def test_a_refused_image_is_never_agreed_with(store) -> None:
    record = replace(make_record(90, utc(2026, 5, 1), "notumor"), gate="rejected")
    store.add(record)
    with pytest.raises(InvalidRecord, match="no verdict to agree with"):
        store.add_review(Review(record.id, "dr", utc(2026, 5, 2), "agree", "notumor", "notumor"))
    assert store.reviews_of(record.id) == [] and store.get(record.id).review_count == 0
    saved = store.add_review(
        Review(record.id, "dr", utc(2026, 5, 2), "override", "notumor", "notumor", ("image_unsuitable",))
    )
    assert (saved.review_verdict, saved.final_label) == ("override", "notumor")


def test_accounts_are_kept_and_updated(store) -> None:
    assert store.get_account("dr-a") is None and store.accounts() == []
    assert store.insert_account(Account("dr-a", "radiologist", "$argon2id$hash", created_at=utc(2026, 1, 1)))
    assert store.insert_account(Account("boss", "supervisor", None, created_at=utc(2026, 1, 2)))
    assert not store.insert_account(Account("dr-a", "admin", None, created_at=utc(2026, 1, 3)))  # taken: unchanged
    assert store.update_account("dr-a", {"failed_count": 3, "locked_until": utc(2026, 1, 1, 0, 15)}, {})
    account = store.get_account("dr-a")
    assert (account.role, account.password_hash, account.failed_count) == ("radiologist", "$argon2id$hash", 3)
    assert account.locked_until == utc(2026, 1, 1, 0, 15) and account.created_at == utc(2026, 1, 1)
    assert [a.name for a in store.accounts()] == ["boss", "dr-a"]
    assert account.sessions_from is None and store.get_account("boss").sessions_from is None
    assert store.update_account("dr-a", {"sessions_from": utc(2026, 1, 3, 8)}, {"sessions_from": None})
    assert store.get_account("dr-a").sessions_from == utc(2026, 1, 3, 8)
    assert store.update_account("dr-a", {"role": "admin"}, {"role": "radiologist"})  # the other fields kept
    assert store.get_account("dr-a").sessions_from == utc(2026, 1, 3, 8) and store.get_account("dr-a").role == "admin"
    with pytest.raises(InvalidRecord):
        store.insert_account(Account("dr a; drop", "radiologist"))
    with pytest.raises(InvalidRecord):
        store.insert_account(Account("x", "superuser"))
    assert [a.name for a in store.accounts()] == ["boss", "dr-a"]


def test_an_account_is_created_once_and_changed_only_from_what_was_read(store) -> None:
    """Two creations of one name: the second replaced the first's role and password (an upsert). A change made from
    a copy read before another (a role change racing a password reset on MongoDB) wrote the old password back."""
    first = Account("dr-a", "radiologist", "$argon2id$first", created_at=utc(2026, 1, 1))
    assert store.insert_account(first)
    assert not store.insert_account(replace(first, role="admin", password_hash="$argon2id$second"))
    assert (
        store.get_account("dr-a").password_hash == "$argon2id$first" and store.get_account("dr-a").role == "radiologist"
    )
    assert store.update_account("dr-a", {"password_hash": "$argon2id$new"}, {"password_hash": "$argon2id$first"})
    # a role change from the copy read before the reset: refused, and the new password stays
    assert not store.update_account(
        "dr-a", {"role": "supervisor"}, {"role": "radiologist", "password_hash": "$argon2id$first"}
    )
    assert store.update_account(
        "dr-a", {"disabled": True, "locked_until": None}, {"role": "radiologist", "disabled": False}
    )
    account = store.get_account("dr-a")
    assert (account.role, account.password_hash, account.disabled) == ("radiologist", "$argon2id$new", True)
    assert not store.update_account("nobody", {"role": "admin"}, {})
    with pytest.raises(InvalidRecord):
        store.update_account("dr-a", {"name": "x"}, {})


def test_the_audit_trail_is_one_hash_chain(store) -> None:
    for k, action in enumerate(("sign_in", "upload", "open", "review")):
        event = store.append_audit(
            AuditEvent(utc(2026, 5, 1, 9, k, 0, 123456), "dr-a", "radiologist", action, "f" * 64, {"n": k})
        )
        assert event.seq == k + 1
    events = store.audit_events()
    assert [e.action for e in events] == ["sign_in", "upload", "open", "review"]
    assert events[0].prev_hash == GENESIS and all(b.prev_hash == a.hash for a, b in pairwise(events))
    assert first_broken(events) is None and events[0].at == utc(2026, 5, 1, 9, 0, 0, 123000)
    assert [e.seq for e in store.audit_events(since_seq=2, limit=1)] == [3]
    tampered = [*events[:1], replace(events[1], actor="someone-else"), *events[2:]]
    assert first_broken(tampered).seq == 2  # an edited event
    assert first_broken([events[0], *events[2:]]).seq == 3  # a deleted one


AUDIT_TRAIL = (  # (minute, actor, action, target): minute 7 twice (one millisecond), minute 3 out of order
    (1, "dr-a", "sign_in", None),
    (2, "dr-a", "upload", "a" * 64),
    (4, "dr-b", "open", "a" * 64),
    (3, "dr-a", "review", "a" * 64),
    (5, "root", "account_created", "dr-c"),
    (7, "dr-b", "upload", "b" * 64),
    (7, "dr-b", "open", "b" * 64),
    (8, "dr-a", "open", "b" * 64),
    (9, "dr-c", "sign_in_failed", None),
    (10, "dr-a", "review", "b" * 64),
)


def test_audit_events_are_filtered_and_paged_in_the_database_newest_first(store) -> None:
    for minute, actor, action, target in AUDIT_TRAIL:
        store.append_audit(AuditEvent(utc(2026, 5, 1, 9, minute), actor, "radiologist", action, target))
    every = store.audit_events()
    newest_first = sorted(every, key=lambda e: (e.at, e.seq), reverse=True)
    assert [e.seq for e in store.find_audit(AuditQuery(), 100)] == [10, 9, 8, 7, 6, 5, 3, 4, 2, 1]
    assert store.find_audit(AuditQuery(), 100) == newest_first  # whole events, hashes included
    queries = {
        AuditQuery(actor="dr-a"): [10, 8, 4, 2, 1],
        AuditQuery(action="open"): [8, 7, 3],
        AuditQuery(target="b" * 64): [10, 8, 7, 6],
        AuditQuery(actor="dr-b", action="open"): [7, 3],
        AuditQuery(start=utc(2026, 5, 1, 9, 4), end=utc(2026, 5, 1, 9, 8)): [7, 6, 5, 3],  # start in, end out
        AuditQuery(actor="dr-a", start=utc(2026, 5, 1, 9, 3), end=utc(2026, 5, 1, 9, 9)): [8, 4],
        AuditQuery(action="nothing"): [],
    }
    for query, expected in queries.items():
        assert [e.seq for e in store.find_audit(query, 100)] == expected, query
        assert store.count_audit(query) == len(expected), query
    for query in (AuditQuery(), AuditQuery(actor="dr-a"), AuditQuery(target="b" * 64)):  # pages of three
        paged: list[AuditEvent] = []
        while page := store.find_audit(replace(query, before=(paged[-1].at, paged[-1].seq) if paged else None), 3):
            assert len(page) <= 3
            paged.extend(page)
        assert [e.seq for e in paged] == [e.seq for e in store.find_audit(query, 100)], query
    tied = store.find_audit(AuditQuery(before=(utc(2026, 5, 1, 9, 7), 7)), 2)  # within one millisecond
    assert [e.seq for e in tied] == [6, 5]
    assert store.count_audit(AuditQuery(before=(utc(2026, 5, 1, 9, 7), 7))) == 6


def test_the_last_verified_audit_event_is_kept(store) -> None:
    assert store.audit_verified() is None
    store.mark_audit_verified(VerifiedPoint(12, "hmac:" + "c" * 64, "d" * 64))
    assert store.audit_verified() == VerifiedPoint(12, "hmac:" + "c" * 64, "d" * 64)
    store.mark_audit_verified(VerifiedPoint(9, "e" * 64))  # replaced as given (a full check may set it back)
    assert store.audit_verified() == VerifiedPoint(9, "e" * 64, "")
    # over a given point only (the page's check, begun from a point a full check has replaced meanwhile)
    assert not store.mark_audit_verified(VerifiedPoint(20, "f" * 64), replacing=VerifiedPoint(12, "e" * 64))
    assert store.audit_verified() == VerifiedPoint(9, "e" * 64, "")
    assert store.mark_audit_verified(VerifiedPoint(20, "f" * 64), replacing=VerifiedPoint(9, "e" * 64))
    assert store.audit_verified() == VerifiedPoint(20, "f" * 64, "")


def test_every_audit_filter_reads_an_index_in_the_order_shown(store) -> None:
    """No sort of the whole trail: SQLite's plans name an index and no temporary B-tree; MongoDB has the indexes
    (a real server's plan is checked too, when one is configured)."""
    store.append_audit(AuditEvent(utc(2026, 5, 1, 9), "dr-a", "radiologist", "sign_in"))
    queries = [
        AuditQuery(start=utc(2026, 1, 1), end=utc(2026, 6, 1)),
        AuditQuery(actor="dr-a", start=utc(2026, 1, 1), before=(utc(2026, 5, 2), 9)),
        AuditQuery(action="open", end=utc(2026, 6, 1)),
        AuditQuery(target="a" * 64, start=utc(2026, 1, 1)),
    ]
    if isinstance(store, SQLiteStore):
        for query in queries:
            where, values = store._audit_where(query)
            sql = f"EXPLAIN QUERY PLAN SELECT * FROM audit{where} ORDER BY at_ms DESC, seq DESC LIMIT 10"
            plan = " ".join(row[-1] for row in store._query(sql, values))
            assert "USING INDEX audit_by_" in plan and "TEMP B-TREE" not in plan, plan
        # a page of a dated range: one upper bound on the time, the page's (with the range's end too, the index range
        # ended at the end, and every newer event was walked to reach each page)
        where, values = store._audit_where(AuditQuery(end=utc(2026, 6, 1), before=(utc(2026, 5, 2), 9)))
        assert where.count("at_ms <= ?") == 1 and where.count("at_ms < ?") == 1 and "(at_ms < ? OR" in where
        assert values[0] == to_ms(utc(2026, 5, 2))
        return
    indexes = [list(spec["key"]) for spec in store._db["audit"].index_information().values()]
    assert [("at", -1), ("_id", -1)] in indexes and [("target", 1), ("at", -1), ("_id", -1)] in indexes
    assert [("actor", 1), ("at", -1), ("_id", -1)] in indexes and [("action", 1), ("at", -1), ("_id", -1)] in indexes
    if os.environ.get("BTD_TEST_MONGODB_URI") and not isinstance(store._client, __import__("mongomock").MongoClient):
        for query in queries:
            cursor = store._db["audit"].find(store._audit_filter(query)).sort([("at", -1), ("_id", -1)]).limit(10)
            plan = str(cursor.explain()["queryPlanner"]["winningPlan"])
            assert "IXSCAN" in plan and "'SORT'" not in plan, plan


def test_reviews_and_audit_events_cannot_be_changed_in_sqlite(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "results.sqlite3")
    store.add(FIXTURE[0])
    store.add_review(Review(FIXTURE[0].id, "dr-a", utc(2026, 5, 1), "agree", "glioma", "glioma"))
    store.append_audit(AuditEvent(utc(2026, 5, 1), "dr-a", "radiologist", "review", FIXTURE[0].id))
    connection = sqlite3.connect(tmp_path / "results.sqlite3")
    for statement in (
        "UPDATE reviews SET final_label = 'notumor'",
        "DELETE FROM reviews",
        "UPDATE audit SET actor = 'x'",
        "DELETE FROM audit",
    ):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            connection.execute(statement)


def test_offset_segments_find_the_transition() -> None:
    segments = utc_offset_segments(
        "Europe/Paris", int(utc(2026, 3, 1).timestamp() * 1000), int(utc(2026, 4, 30).timestamp() * 1000)
    )
    assert [offset for _, offset in segments] == [3_600_000, 7_200_000]
    assert segments[1][0] == int(utc(2026, 3, 29, 1, 0).timestamp() * 1000)


def test_small_cells_are_suppressed() -> None:
    assert [suppress_small(n) for n in (0, 1, 4, 5, 12)] == [0, None, None, 5, 12]


# --- SQLite faults ------------------------------------------------------------------------------------------


def test_corrupt_sqlite_file_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="corrupt"):
        SQLiteStore(path)


def test_a_corrupt_database_met_before_its_key_is_made_is_named_a_store_error_not_a_configuration_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no audit.key yet, the key's check of the database wrapped its error: the command line said
    "bad_configuration" and the app "fix the configuration" for a file that is not a database."""
    from core.services.resources import open_results_store

    (tmp_path / "results.sqlite3").write_bytes(b"this is not a database" * 100)
    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("MONGODB_URI", raising=False)
    monkeypatch.delenv("BTD_AUDIT_KEY", raising=False)
    with pytest.raises(StoreError, match="not a database") as raised:
        open_results_store({})
    assert not isinstance(raised.value, ValueError) and "configuration" not in str(raised.value)
    assert not (tmp_path / "audit.key").exists()  # and no new key beside it


def test_locked_sqlite_file_gives_a_retryable_error(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite3"
    store = SQLiteStore(path, busy_timeout_s=0.2)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailable, match="locked"):
            store.add(FIXTURE[0])
    finally:
        blocker.execute("ROLLBACK")
    assert store.add(FIXTURE[0]) is True


def test_concurrent_writers_keep_one_record_per_upload(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "results.sqlite3")
    results: list[bool] = []
    lock = threading.Lock()

    def save(k: int) -> None:
        outcome = store.add(FIXTURE[k % 4])
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=save, args=(k,)) for k in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 4 and store.summary().total == 4


@pytest.mark.heavy  # a timing: run alone
def test_unreachable_mongodb_fails_within_three_seconds() -> None:
    import time

    started = time.perf_counter()
    with pytest.raises(StoreUnavailable, match="cannot be reached"):
        # Port 9 on loopback (discard): nothing listens, so the connection is refused at once.
        open_store("mongodb://127.0.0.1:9/?directConnection=true", Path("/nonexistent")).ping()
    assert time.perf_counter() - started < 3.5


# --- identities ---------------------------------------------------------------------------------------------


def test_patient_reference_is_a_keyed_hash_of_normalised_text(tmp_path: Path) -> None:
    key = local_key(tmp_path)
    assert local_key(tmp_path) == key and len(key) == 32
    assert oct((tmp_path / "patient-ref.key").stat().st_mode)[-3:] == "600"
    ref = pseudonymise("  ZZCANARY   Test ", key)
    assert ref == pseudonymise("zzcanary test", key)
    assert ref != pseudonymise("zzcanary test", b"another key of 16+ bytes")
    assert "ZZCANARY" not in ref.upper() and len(ref) == 64
    assert pseudonymise("   ", key) is None


def test_mongodb_indexes_serve_the_dashboard_queries(store) -> None:
    if not isinstance(store, MongoStore):
        pytest.skip("MongoDB only")
    store.add(FIXTURE[0])
    keys = {tuple(name for name, _ in spec["key"]) for spec in store._collection.index_information().values()}
    assert {
        ("created_at", "model_version", "label", "gate"),
        ("model_version", "created_at"),
        ("label", "created_at"),
    } <= keys
    if os.environ.get("BTD_TEST_MONGODB_URI"):  # a real server: the date-range query must use an index
        plan = store._collection.find({"created_at": {"$gte": utc(2026, 1, 1)}}).explain()
        assert "IXSCAN" in str(plan["queryPlanner"]["winningPlan"])


def test_gate_decisions_are_counted_and_rejected_scans_left_out_of_verdicts(store) -> None:
    from core.domain.results import SHOWN

    store.add(FIXTURE[0])
    store.add(replace(make_record(60, utc(2026, 3, 2), "glioma"), gate="rejected", gate_score=3.5))
    store.add(replace(make_record(61, utc(2026, 3, 3), "notumor", confidence=0.55), gate="needs_review"))
    everything = store.summary()
    assert dict(everything.per_gate) == {"accepted": 1, "rejected": 1, "needs_review": 1}
    shown = store.summary(Filters(gates=SHOWN))
    assert shown.total == 2 and shown.tumour == 1
    assert sum(d.total for d in store.daily_counts(Filters(gates=SHOWN), "UTC")) == 2
    assert store.get(make_record(60, utc(2026, 3, 2)).id).gate_score == 3.5


def test_unusable_mongodb_uri_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="MongoDB URI"):
        open_store("mongodb://user:secret@host:notaport/", Path("/nonexistent"))
    for unusable in ("not-a-uri", "/srv/mongo", "localhost:27017"):  # a host name to pymongo: "cannot be reached"
        with pytest.raises(StoreError, match="does not start with mongodb:// or mongodb"):
            open_store(unusable, Path("/nonexistent"))


def test_saving_without_a_database_reports_not_saved(tiny_classifier) -> None:
    from core.model.analysis import analyse
    from core.services.access import Actor
    from core.services.triage import NOT_SAVED, save
    from tests.scans import png_bytes, synthetic_slice

    analysis = analyse(png_bytes(synthetic_slice(128)), tiny_classifier)
    status = save(analysis, None, actor=Actor("dr-test", "radiologist"), patient_ref=None)
    assert status.state == NOT_SAVED and "unavailable" in status.message


def test_a_short_configured_patient_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from core.config import patient_key

    monkeypatch.setenv("BTD_HMAC_KEY", "abcd")
    with pytest.raises(ValueError, match="shorter than 16 bytes"):
        patient_key({}, shared_database=True)


# --- schema versions, migrations, a data directory that goes away ------------------------------------------

ROUND_1_DATABASE = Path(__file__).parent / "data" / "results-v1.sqlite3"


def test_a_round_1_database_opens_and_is_upgraded_in_place(tmp_path: Path) -> None:
    """tests/data/results-v1.sqlite3 was written by the round-1 code (commit 65ccfa9): eight rows, three of them
    one upload saved again as its patient reference was typed and corrected, one reviewed."""
    import shutil

    path = tmp_path / "results.sqlite3"
    shutil.copy(ROUND_1_DATABASE, path)
    store = SQLiteStore(path)
    assert store.schema_version() == SCHEMA_VERSION
    assert (tmp_path / "results.sqlite3.v1.bak").exists()  # the file as it was, beside it
    assert store.summary().total == 6  # the three copies of one upload are one result now
    merged = store.get(record_id(f"{4:064x}", "btd-cnn", "1.4.0+ab12cd34"))
    assert merged.patient_ref == "c" * 64  # the last reference typed
    assert merged.created_at == utc(2026, 11, 20, 12, 0)  # the first save
    assert merged.confidence == pytest.approx(0.85)  # the call's confidence, P(tumour), not P(meningioma) 0.55
    reviewed = store.get(record_id(f"{1:064x}", "btd-cnn", "1.4.0+ab12cd34"))
    assert (reviewed.reviewer, reviewed.review_verdict, reviewed.final_label) == ("dr-old", "agree", "glioma")
    history = store.reviews_of(reviewed.id)  # round 1's one review is now the first of an append-only history
    assert [(r.reviewer, r.action, r.note) for r in history] == [("dr-old", "agree", "fine")]
    assert dict(store.summary().per_gate) == {"accepted": 4, "needs_review": 1, "rejected": 1}
    assert store.add(merged) is False
    assert SQLiteStore(path).schema_version() == SCHEMA_VERSION  # opening again changes nothing
    assert store.accounts() == [] and store.audit_events() == []


def test_connections_making_one_new_database_at_once_wait_for_each_other(tmp_path: Path) -> None:
    """The app's first start beside a `users add` (or a watch): setting WAL mode answered "locked" at once, without
    the busy timeout, and a third of the processes opening a new database together failed ("try again")."""
    import threading

    failed: list[str] = []
    for attempt in range(50):
        path, barrier = tmp_path / str(attempt) / "results.sqlite3", threading.Barrier(4)

        def open_new(path: Path = path, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                SQLiteStore(path).ping()
            except StoreError as error:
                failed.append(str(error))

        openers = [threading.Thread(target=open_new) for _ in range(4)]
        for opener in openers:
            opener.start()
        for opener in openers:
            opener.join()
    assert failed == []


def test_a_database_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite3"
    SQLiteStore(path)
    sqlite3.connect(path).execute("PRAGMA user_version = 99").connection.close()
    with pytest.raises(StoreError, match="newer"):
        SQLiteStore(path)
    # refused without a write: its journal mode was set (into the file's header) before its version was read
    import gc

    gc.collect()  # the stores above: their connections closed
    later = sqlite3.connect(path)
    later.execute("PRAGMA journal_mode=DELETE")
    later.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="newer"):
        SQLiteStore(path)
    assert path.read_bytes() == before


def test_a_round_2_mongodb_result_gets_every_field_the_validator_requires() -> None:
    """A version-3 document has no geometry: once version 4's validator is installed, MongoDB refuses every update
    of it (a review, a patient reference); the upgrade fills what the validator requires with neutral values."""
    import mongomock

    client = mongomock.MongoClient(tz_aware=True)
    database = client["brain_mri_triage"]
    document = {**make_record(7, utc(2026, 11, 20, 9, 0), "glioma").__dict__}
    for name in (
        "geometry",
        "timings_ms",
        "kind",
        "study_ref",
        "section_count",
        "lesion_px",
        "lesion_mm2",
        "lesion_ml",
    ):
        document.pop(name, None)
    document.update(_id=document.pop("id"), confidence=0.9)  # as version 3 wrote it
    database["scans"].insert_one(document)
    database["meta"].insert_one({"_id": "schema", "version": 3})
    store = MongoStore(client)
    assert store.schema_version() == SCHEMA_VERSION
    stored = database["scans"].find_one({"_id": document["_id"]})
    assert not [name for name in VALIDATOR["$jsonSchema"]["required"] if name not in stored]
    assert stored["geometry"] == {} and stored["timings_ms"] == {} and stored["kind"] == "scan"
    assert store.get(document["_id"]).geometry == {}


def test_a_version_2_mongodb_review_is_moved_into_the_history_once_even_by_two_upgrades() -> None:
    """Two app processes upgrading at once (or one resumed after a crash) each inserted the result's one review:
    two history entries for one review."""
    import mongomock

    from core.storage.mongo_migrations import _mongo_v2_to_v3

    client = mongomock.MongoClient(tz_aware=True)
    database = client["brain_mri_triage"]
    document = {**make_record(8, utc(2026, 11, 20, 9, 0), "glioma").__dict__}
    for name in ("review_count", "first_reviewed_at", "geometry", "kind", "lesion_px", "lesion_mm2", "lesion_ml"):
        document.pop(name, None)
    document.update(_id=document.pop("id"), reviewed_at=utc(2026, 11, 21), reviewer="dr-old", review_verdict="agree")
    database["scans"].insert_one(document)
    database["meta"].insert_one({"_id": "schema", "version": 2})
    copy = {**document}
    store = MongoStore(client)
    assert store.schema_version() == SCHEMA_VERSION
    database["scans"].replace_one({"_id": copy["_id"]}, copy)  # the other process read it before the first wrote
    _mongo_v2_to_v3(database, database["scans"])
    history = store.reviews_of(copy["_id"])
    assert [(r.reviewer, r.action, r.final_label) for r in history] == [("dr-old", "agree", "glioma")]
    later = store.add_review(Review(copy["_id"], "dr-new", utc(2026, 11, 22), "agree", "glioma", "glioma"))
    assert later.review_count == 2 and [r.reviewer for r in store.reviews_of(copy["_id"])] == ["dr-old", "dr-new"]


def test_a_round_1_mongodb_collection_is_upgraded_on_first_use() -> None:
    import mongomock

    client = mongomock.MongoClient(tz_aware=True)
    old = client["brain_mri_triage"]["scans_v1"]
    for n, minute, patient in ((4, 0, None), (4, 1, "b" * 64), (4, 2, "c" * 64), (5, 0, None)):
        document = {**make_record(n, utc(2026, 11, 20, n, minute), "meningioma").__dict__}
        document.pop("frame")
        document.update(_id=uuid.uuid4().hex, patient_ref=patient, confidence=0.55)
        old.insert_one(document)
    store = MongoStore(client, collection="scans_v1")
    assert store.summary().total == 2 and store.schema_version() == SCHEMA_VERSION
    merged = store.get(record_id(f"{4:064x}", "btd-cnn", "1.0.0"))
    assert merged.patient_ref == "c" * 64 and merged.confidence == pytest.approx(0.9)


def test_a_database_deleted_while_running_is_refused_not_replaced_and_a_restored_backup_is_used(tmp_path: Path) -> None:
    """RELIABILITY: a data folder that disappears must not silently become a new empty store (the running app
    held it open; only open_store's check guarded a start)."""
    import shutil

    from core.storage.stamps import StoreVanished

    path = tmp_path / "data" / "results.sqlite3"
    store = SQLiteStore(path)
    assert store.add(FIXTURE[0])
    shutil.copytree(tmp_path / "data", tmp_path / "backup")
    shutil.rmtree(tmp_path / "data")
    with pytest.raises(StoreVanished, match="disappeared") as vanished:
        store.add(FIXTURE[1])
    assert str(tmp_path) not in str(vanished.value)  # every role and the sign-in page see it: no server path
    with pytest.raises(StoreVanished):
        store.ping()
    assert not path.exists()
    shutil.copytree(tmp_path / "backup", tmp_path / "data")  # an operator restores the backup
    assert store.add(FIXTURE[1]) is True and store.summary().total == 2


def test_health_check_fails_when_a_save_would(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite3"
    store = SQLiteStore(path)
    store.ping()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("DROP TABLE scans")
    other.close()
    with pytest.raises(StoreError):
        store.ping()


def test_database_file_is_private(tmp_path: Path) -> None:
    SQLiteStore(tmp_path / "results.sqlite3").add(FIXTURE[0])
    assert oct((tmp_path / "results.sqlite3").stat().st_mode)[-3:] == "600"


def test_a_version_2_database_gets_its_reviews_moved_into_the_history(tmp_path: Path) -> None:
    """tests/data/results-v2.sqlite3 was written by the version-2 code (commit 8df16da): four results (two frames
    of one file among them) and three reviews kept on the results themselves (disagree, agree, uncertain)."""
    import shutil

    path = tmp_path / "results.sqlite3"
    shutil.copy(Path(__file__).parent / "data" / "results-v2.sqlite3", path)
    store = SQLiteStore(path)
    assert store.schema_version() == SCHEMA_VERSION and (tmp_path / "results.sqlite3.v2.bak").exists()
    assert store.summary().total == 4
    by_sha = {r.image_sha256[-1]: r for r in store.recent(10) if r.frame in (None, 0)}
    first, second, framed = by_sha["1"], by_sha["2"], by_sha["3"]
    assert (first.final_label, first.review_verdict, first.review_count) == ("meningioma", "override", 1)
    assert (second.final_label, second.review_verdict) == ("notumor", "agree")
    assert (framed.final_label, framed.review_verdict) == ("pituitary", "override")  # uncertain: an override
    assert [(r.action, r.note) for r in store.reviews_of(first.id)] == [("override", "dural tail")]
    assert first.disagrees and not second.disagrees


def test_quality_aggregates_equal_what_the_raw_records_say(store) -> None:
    """Per-day quality counts, the confusion of verdicts against final labels and review turnaround, computed in
    the database, against the same figures computed here from the records."""
    base = utc(2026, 6, 1, 8, 0)
    plan = [  # (n, hours after base, label, gate, final label or None, hours to first review)
        (1, 0, "glioma", "accepted", "glioma", 2),
        (2, 1, "notumor", "accepted", "glioma", 30),
        (3, 2, "meningioma", "needs_review", "meningioma", 5),
        (4, 3, "notumor", "accepted", None, None),
        (5, 26, "pituitary", "accepted", "notumor", 1),
        (6, 27, "glioma", "rejected", None, None),
        (7, 28, "notumor", "needs_review", "notumor", 0),
        (8, 50, "glioma", "accepted", None, None),
    ]
    for n, hours, label, gate, final, after in plan:
        record = replace(make_record(n, base + timedelta(hours=hours), label, confidence=0.6 + n / 40), gate=gate)
        store.add(record)
        if final is not None:
            action = "agree" if final == label else "override"
            store.add_review(Review(record.id, "dr", record.created_at + timedelta(hours=after), action, label, final))
    records = [store.get(make_record(n, base).id) for n, *_ in plan]
    days = store.daily_quality(Filters(), "UTC")
    assert [d.day for d in days] == [date(2026, 6, 1), date(2026, 6, 2), date(2026, 6, 3)]
    for day in days:
        mine = [r for r in records if r.created_at.date() == day.day]
        shown = [r for r in mine if r.gate != "rejected"]
        reviewed = [r for r in shown if r.review_count]
        assert (day.shown, day.tumour, day.flagged, day.rejected) == (
            len(shown),
            sum(r.is_tumour for r in shown),
            sum(r.gate == "needs_review" for r in mine),
            sum(r.gate == "rejected" for r in mine),
        )
        assert (day.reviewed, day.agreed) == (len(reviewed), sum(r.final_label == r.label for r in reviewed))
        assert day.probability_sum == pytest.approx(sum(r.tumour_probability for r in shown))
        assert day.probability_squares == pytest.approx(sum(r.tumour_probability**2 for r in shown))
    assert store.confusion(Filters()) == {
        ("glioma", "glioma"): 1,
        ("notumor", "glioma"): 1,
        ("meningioma", "meningioma"): 1,
        ("pituitary", "notumor"): 1,
        ("notumor", "notumor"): 1,
    }
    assert store.turnaround_hours(Filters()) == {2: 1, 30: 1, 5: 1, 1: 1, 0: 1}
    june_first = Filters(start=utc(2026, 6, 1), end=utc(2026, 6, 2))
    assert sum(store.turnaround_hours(june_first).values()) == 3
    # a second review changes the final label: the aggregates follow the latest
    store.add_review(Review(records[1].id, "dr2", base + timedelta(days=3), "agree", "notumor", "notumor"))
    assert store.confusion(june_first)[("notumor", "notumor")] == 1
    assert store.turnaround_hours(june_first) == {2: 1, 30: 1, 5: 1}  # the first review's time stays
    late = Review(records[2].id, "dr3", records[2].created_at + timedelta(hours=1), "agree", "meningioma", "meningioma")
    store.add_review(late)  # a second review on a clock behind the first's: the first saved is still the first
    assert store.turnaround_hours(june_first) == {2: 1, 30: 1, 5: 1}  # (MongoDB took the earliest clock: 1 h)
    skewed = replace(make_record(9, base + timedelta(hours=4), "glioma"), gate="accepted")
    store.add(skewed)  # reviewed "before" it was saved (another machine's clock): hour 0, with the true hour-0 one
    store.add_review(Review(skewed.id, "dr", skewed.created_at - timedelta(minutes=90), "agree", "glioma", "glioma"))
    assert store.turnaround_hours(june_first) == {0: 1, 2: 1, 30: 1, 5: 1}
    assert store.turnaround_hours(Filters())[0] == 2


def test_the_worklist_puts_unreviewed_first_then_flagged_then_refused_newest_first(store) -> None:
    base = utc(2026, 7, 1, 8)
    made = []
    for n, (gate, hours) in enumerate(
        [("accepted", 0), ("needs_review", 1), ("rejected", 2), ("accepted", 3), ("needs_review", 4)], start=1
    ):
        record = replace(make_record(n, base + timedelta(hours=hours), "glioma" if n % 2 else "notumor"), gate=gate)
        store.add(record)
        made.append(record)
    store.add_review(Review(made[4].id, "dr", base + timedelta(hours=9), "override", made[4].label, "notumor"))
    order = [r.image_sha256[-1] for r in store.worklist(WorklistQuery(reviewed=None))]
    assert order == ["2", "4", "1", "3", "5"]  # unreviewed: flagged, accepted (newest first), refused; then reviewed
    assert [r.image_sha256[-1] for r in store.worklist(WorklistQuery())] == ["2", "4", "1", "3"]
    assert [r.image_sha256[-1] for r in store.worklist(WorklistQuery(reviewed=True, disagreements=True))] == ["5"]
    assert [r.image_sha256[-1] for r in store.worklist(WorklistQuery(gates=("rejected",)))] == ["3"]
    assert [r.image_sha256[-1] for r in store.worklist(WorklistQuery(labels=("notumor",)))] == ["2", "4"]
    assert len(store.worklist(WorklistQuery(reviewed=None), limit=2)) == 2
    hour = base + timedelta(hours=1)  # an age filter's window, and what it leaves out (the page warns of it)
    assert [r.image_sha256[-1] for r in store.worklist(WorklistQuery(since=hour))] == ["2", "4", "3"]
    assert [r.image_sha256[-1] for r in store.worklist(WorklistQuery(before=hour))] == ["1"]
    window = WorklistQuery(reviewed=None, since=hour, before=base + timedelta(hours=4))
    assert [r.image_sha256[-1] for r in store.worklist(window)] == ["2", "4", "3"]  # 5 at the end: left out


def test_the_image_keys_of_unreviewed_results_are_what_a_purge_keeps(store) -> None:
    base = utc(2026, 7, 1, 8)
    keys = ["a" * 64, "b" * 64]
    made = [replace(make_record(n, base), image_key=key) for n, key in enumerate([*keys, None], start=1)]
    for record in made:
        store.add(record)
    assert store.unread_image_keys() == set(keys)
    store.add_review(Review(made[0].id, "dr", base + timedelta(hours=1), "agree", made[0].label, made[0].label))
    assert store.unread_image_keys() == {keys[1]}


def test_a_refused_image_is_never_listed_under_a_verdict_or_as_a_disagreement(store) -> None:
    """A refused image's hidden class decided "disagrees", the Verdict filter and the Disagreements list (a row
    reading "Refused" under Verdict = glioma); and overriding it to that hidden class without a reason was refused
    with a message the reader could not understand (every review of it is an override)."""
    base = utc(2026, 7, 1, 8)
    refused = replace(make_record(1, base, "glioma"), gate="rejected")
    shown = replace(make_record(2, base + timedelta(hours=1), "glioma"), gate="accepted")
    store.add(refused)
    store.add(shown)
    kept = store.add_review(Review(refused.id, "dr", base + timedelta(hours=2), "override", "glioma", "glioma"))
    assert kept.final_label == "glioma" and not kept.disagrees
    store.add_review(Review(shown.id, "dr", base + timedelta(hours=2), "override", "glioma", "notumor"))
    hidden = store.add_review(Review(refused.id, "dr", base + timedelta(hours=3), "override", "glioma", "notumor"))
    assert not hidden.disagrees and store.get(shown.id).disagrees
    listed = store.worklist(WorklistQuery(reviewed=True, disagreements=True))
    assert [r.id for r in listed] == [shown.id]
    assert [r.id for r in store.worklist(WorklistQuery(reviewed=None, labels=("glioma",)))] == [shown.id]
    both = store.worklist(WorklistQuery(reviewed=None))
    assert [r.id for r in both] == [shown.id, refused.id]
    with pytest.raises(InvalidRecord, match="changes the label"):  # a verdict shown: the rule stands
        store.add_review(Review(shown.id, "dr", base + timedelta(hours=4), "override", "glioma", "glioma"))


def _same(a: object, b: object) -> bool:
    """Equal figures; sums of floats in another order may differ in the last bit."""
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if hasattr(a, "__dataclass_fields__"):
        return all(_same(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)
    return a == pytest.approx(b, rel=1e-12) if isinstance(a, float) else a == b


def test_the_roll_ups_give_the_figures_the_results_give(tmp_path: Path) -> None:
    """Every aggregate the dashboard reads from the roll-ups (whole-quarter ranges) equals the same aggregate summed
    from the results themselves (a range one millisecond off a quarter takes that path), after inserts, reviews and
    a second review that changes a final label; in time zones a quarter or a half hour off UTC too, and across
    daylight-saving changes in both hemispheres (Norfolk Island goes from +12 h, where a UTC day counts for the
    next local day, to +11 h; Santiago changes at local midnight, among the quarters that change day)."""
    import random

    store = SQLiteStore(tmp_path / "results.sqlite3")
    rng = random.Random(7)
    records = []
    for n in range(1, 400):
        at = utc(2026, 3, 1) + timedelta(seconds=rng.randrange(0, 60 * 86400))
        label = rng.choice(LABELS)
        record = replace(
            make_record(n, at, label, rng.choice(["1.0.0", "2.0.0"]), rng.uniform(0.5, 1.0)),
            gate=rng.choice(["accepted", "accepted", "needs_review", "rejected"]),
        )
        store.add(record)
        records.append(record)

    def review(record: Record, reviewer: str, at: datetime, final: str) -> Review:
        """Agree when the label is kept, except with a refused image: an override saying why."""
        agree = final == record.label and record.gate != "rejected"
        reasons = ("image_unsuitable",) if final == record.label and not agree else ()
        return Review(record.id, reviewer, at, "agree" if agree else "override", record.label, final, reasons)

    for record in rng.sample(records, 120):
        final = rng.choice([record.label, "notumor" if record.label != "notumor" else "glioma"])
        store.add_review(review(record, "dr", record.created_at + timedelta(hours=2), final))
    for record in rng.sample(records, 30):
        if store.get(record.id).review_count:
            store.add_review(review(record, "dr2", record.created_at + timedelta(days=1), record.label))

    start, end = utc(2026, 3, 10), utc(2026, 4, 20)
    ranges = [
        Filters(),
        Filters(start=start, end=end),
        Filters(start=start, model_versions=("2.0.0",)),
        Filters(end=end, gates=("accepted", "needs_review")),
        Filters(labels=("glioma", "notumor")),
        Filters(start=utc(2026, 3, 9, 23), end=utc(2026, 4, 20, 4, 45)),  # local midnights: partial UTC days
        Filters(start=utc(2026, 3, 12, 5), end=utc(2026, 3, 12, 18, 30)),
    ]
    for filters in ranges:
        raw = replace(filters, start=(filters.start or utc(2020, 1, 1)) - timedelta(milliseconds=1))
        assert _same(store.summary(filters), store.summary(raw))
        assert _same(store.by_model(filters), store.by_model(raw))
        for zone in (
            "UTC",
            "Europe/Paris",
            "Asia/Kolkata",
            "Asia/Kathmandu",
            "America/New_York",
            "Pacific/Kiritimati",
            "Pacific/Pago_Pago",
            "Pacific/Norfolk",
            "Australia/Lord_Howe",
            "America/Santiago",
        ):
            assert _same(store.daily_counts(filters, zone), store.daily_counts(raw, zone)), (filters, zone)
            assert _same(store.daily_quality(filters, zone), store.daily_quality(raw, zone)), (filters, zone)
        # the whole-day roll-ups of the histogram, confusion and turnaround against the records themselves
        now = [store.get(r.id) for r in records]
        inside = [
            r
            for r in now
            if (filters.start is None or r.created_at >= filters.start)
            and (filters.end is None or r.created_at < filters.end)
        ]
        scoped = [r for r in inside if not filters.model_versions or r.model_version in filters.model_versions]
        picked = [
            r
            for r in scoped
            if (not filters.labels or r.label in filters.labels) and (not filters.gates or r.gate in filters.gates)
        ]
        histogram = [0] * 20
        for r in picked:
            histogram[min(int(r.confidence * 20), 19)] += 1
        assert store.confidence_histogram(filters) == histogram
        reviewed = [r for r in scoped if r.review_count and r.gate != "rejected"]
        assert store.confusion(filters) == dict(Counter((r.label, r.final_label) for r in reviewed))
        first_review = {r.id: min(v.created_at for v in store.reviews_of(r.id)) for r in reviewed}
        hours = Counter(int((first_review[r.id] - r.created_at).total_seconds() // 3600) for r in reviewed)
        assert store.turnaround_hours(filters) == dict(hours)


def test_gridfs_keeps_images_like_the_folder_store() -> None:
    """GridFS needs a real MongoDB (mongomock's GridFS does not work with pymongo 4.20)."""
    uri = os.environ.get("BTD_TEST_MONGODB_URI")
    if not uri:
        pytest.skip("needs BTD_TEST_MONGODB_URI: a real MongoDB server")
    import numpy as np

    from core.storage.images import GridFSImages

    store = MongoStore.connect(uri, f"btd_test_{uuid.uuid4().hex[:8]}")
    try:
        images = GridFSImages(store._db)
        key = images.put(np.zeros((64, 64), np.uint8))
        assert images.put(np.zeros((64, 64), np.uint8)) == key and images.stored_keys() == [key]
        assert images.get(key).startswith(b"\x89PNG") and images.delete(key) and images.get(key) is None
    finally:
        store._client.drop_database(store._db.name)


def test_a_folder_image_store_that_is_no_folder_is_a_store_error_every_caller_handles(tmp_path: Path) -> None:
    """With "images" a file, reading or deleting raised NotADirectoryError: a traceback on the Worklist and History,
    and a purge stopped at its first image."""
    import numpy as np

    from core.errors import StoreUnavailable
    from core.storage.images import FolderImages

    (tmp_path / "images").write_bytes(b"not a folder")
    images = FolderImages(tmp_path / "images")
    for call in (
        lambda: images.put(np.zeros((8, 8), np.uint8)),
        lambda: images.get("a" * 64),
        lambda: images.delete("a" * 64),
    ):
        with pytest.raises(StoreUnavailable, match="image store cannot be"):
            call()
    assert images.stored_keys() == [] and images.expired(datetime.now(UTC)) == []


def test_the_gridfs_image_store_reports_a_database_gone_as_a_store_error_every_caller_handles() -> None:
    """pymongo's own ServerSelectionTimeoutError reached the Scan page and the CLI as a traceback."""
    import numpy as np
    import pymongo

    from core.errors import StoreUnavailable
    from core.storage.images import GridFSImages

    client = pymongo.MongoClient("mongodb://127.0.0.1:9", serverSelectionTimeoutMS=200, connectTimeoutMS=200)
    images = GridFSImages(client["btd_gone"])
    for call in (
        lambda: images.put(np.zeros((8, 8), np.uint8)),
        lambda: images.get("a" * 64),
        lambda: images.delete("a" * 64),
        images.stored_keys,
        lambda: images.expired(datetime.now(UTC)),
    ):
        with pytest.raises(StoreUnavailable, match="cannot be reached"):
            call()
    client.close()


# --- series (schema version 4) ------------------------------------------------------------------------------


def make_series(n: int, created_at: datetime, label: str = "glioma", study: int = 1, sections: int = 5) -> Record:
    base = replace(make_record(n, created_at, label), image_format="dicom", section_count=sections)
    geometry = {"spacing": [0.9, 0.9], "thickness": 5.0, "orientation": [1, 0, 0, 0, 1, 0], "plane": "axial"}
    return replace(base, study_ref=f"{study:064x}", image_bytes=sections * 512 * 512, geometry=geometry)


def series_sections(count: int = 5) -> list[Section]:
    return [Section(0, -10.0, None, None, "the head region covers 4% of the frame, unlike a brain slice")] + [
        Section(i, -10.0 + 5 * i, 0.1 * i, "glioma" if i > 2 else "notumor") for i in range(1, count)
    ]


def test_a_series_is_saved_with_its_sections_once_and_read_back(store) -> None:
    series = make_series(20, utc(2026, 5, 1, 9, 0), sections=5)
    assert series.kind == "series" and FIXTURE[0].kind == "scan"
    assert store.add_series(series, series_sections()) is True
    assert store.add_series(series, series_sections()) is False  # saved once
    back = store.get(series.id)
    assert back.kind == "series" and back.section_count == 5 and back.study_ref == f"{1:064x}"
    assert back.geometry["spacing"] == [0.9, 0.9] and back.geometry["plane"] == "axial"
    assert store.recent(1)[0].geometry == back.geometry
    sections = store.sections_of(series.id)
    assert [s.index for s in sections] == [0, 1, 2, 3, 4]
    assert sections[0].skipped.startswith("the head region") and sections[0].tumour_probability is None
    assert sections[4].tumour_probability == pytest.approx(0.4) and sections[4].label == "glioma"
    nifti = replace(make_series(21, utc(2026, 5, 1, 9, 5), sections=2), image_format="nifti")
    assert store.add_series(nifti, series_sections(2)) is True and store.get(nifti.id).image_format == "nifti"


def test_a_series_with_a_bad_section_or_a_wrong_count_writes_nothing(store) -> None:
    series = make_series(22, utc(2026, 5, 1, 9, 0), sections=3)
    with pytest.raises(InvalidRecord):
        store.add_series(series, series_sections(2))  # three announced, two given
    broken = [*series_sections(2), Section(2, 0.0, 1.7, "glioma")]  # a probability above 1
    with pytest.raises(InvalidRecord):
        store.add_series(series, broken)
    assert store.get(series.id) is None and store.sections_of(series.id) == []
    with pytest.raises(InvalidRecord):
        store.add(replace(series, study_ref="not a hash"))


def test_scans_and_series_are_counted_apart_and_studies_group_their_series(store) -> None:
    for record in FIXTURE:
        store.add(record)
    day = utc(2026, 4, 1, 0, 0)
    store.add_series(make_series(30, day + timedelta(hours=9), "glioma", study=7), series_sections())
    store.add_series(make_series(31, day + timedelta(hours=9, minutes=5), "notumor", study=7), series_sections())
    store.add_series(make_series(32, day + timedelta(hours=30), "notumor", study=8), series_sections())
    everything = store.summary()
    assert everything.total == len(FIXTURE) + 3
    assert store.summary(Filters(kinds=("series",))).total == 3
    assert store.summary(Filters(kinds=("scan",))).total == len(FIXTURE)
    days = store.daily_counts(Filters(kinds=("series",)), "UTC")
    assert [(d.day, d.total, d.tumour) for d in days] == [(date(2026, 4, 1), 2, 1), (date(2026, 4, 2), 1, 0)]
    studies = [(d.day, d.total, d.tumour) for d in store.daily_studies(Filters(), "UTC")]
    assert studies == [(date(2026, 4, 1), 1, 1), (date(2026, 4, 2), 1, 0)]  # one study of two series: tumour
    later = store.daily_studies(Filters(start=day + timedelta(hours=24)), "UTC")
    assert [(d.day, d.total, d.tumour) for d in later] == [(date(2026, 4, 2), 1, 0)]
    # a study's day is its first series' local day: 09:00 UTC on 1 April is still 31 March in Honolulu
    honolulu = store.daily_studies(Filters(), "Pacific/Honolulu")
    assert [(d.day, d.total) for d in honolulu] == [(date(2026, 3, 31), 1), (date(2026, 4, 1), 1)]


def test_a_study_saved_across_midnight_counts_once_on_its_first_day_whatever_the_range(store) -> None:
    """Its series were grouped within the range asked: the 3 March board and the 4 March board each counted it (and
    the second one as tumour-free), while the two days together counted it once."""
    night = utc(2026, 3, 3, 23, 59)
    store.add_series(make_series(40, night, "notumor", study=9), series_sections())
    store.add_series(make_series(41, night + timedelta(minutes=2), "glioma", study=9), series_sections())

    def studies(start: datetime, end: datetime) -> list[tuple[date, int, int]]:
        return [(d.day, d.total, d.tumour) for d in store.daily_studies(Filters(start=start, end=end), "UTC")]

    third, fourth, both = utc(2026, 3, 3, 0, 0), utc(2026, 3, 4, 0, 0), utc(2026, 3, 5, 0, 0)
    assert studies(third, fourth) == [(date(2026, 3, 3), 1, 1)]  # its verdict counts its later series too
    assert studies(fourth, both) == []
    assert studies(third, both) == [(date(2026, 3, 3), 1, 1)]


def test_a_study_with_a_series_nobody_could_read_and_no_tumour_series_has_no_verdict_in_the_studies_chart(
    store,
) -> None:
    """The app gives such a study no verdict (a FLAIR series the gate refused is where a lesion would be missed);
    the studies' chart counted it tumour-free, so the tumour rate of studies read low. A tumour series still makes
    the study a tumour study."""
    day = utc(2026, 5, 1, 8, 0)
    unread = {"study_unread": 1}
    store.add_series(replace(make_series(50, day, "notumor", study=11), geometry=unread), series_sections())
    store.add_series(make_series(51, day + timedelta(minutes=1), "notumor", study=11), series_sections())
    store.add_series(replace(make_series(52, day, "glioma", study=12), geometry=unread), series_sections())
    store.add_series(make_series(53, day, "notumor", study=13), series_sections())
    studies = [(d.day, d.total, d.tumour) for d in store.daily_studies(Filters(), "UTC")]
    assert studies == [(date(2026, 5, 1), 2, 1)]  # study 12 (tumour) and 13 (no tumour); 11 has no verdict
    assert store.get(make_series(50, day, "notumor", study=11).id).study_unread == 1


def test_a_study_read_by_two_model_versions_counts_once_for_each_as_a_scan_does(store) -> None:
    """Its series were merged across models (tumour when either said so) while a re-read single scan counted twice:
    after a back-fill the per-study board mixed two models' verdicts."""
    day = utc(2026, 5, 2, 8, 0)
    first = make_series(70, day, "glioma", study=14)
    again = make_record(70, day + timedelta(hours=1), "notumor", "2.0.0")
    again = replace(again, image_format="dicom", section_count=5, study_ref=first.study_ref, geometry=first.geometry)
    store.add_series(first, series_sections())
    store.add_series(again, series_sections())
    assert [(d.total, d.tumour) for d in store.daily_studies(Filters(), "UTC")] == [(2, 1)]  # one per model
    only = Filters(model_versions=("2.0.0",))
    assert [(d.total, d.tumour) for d in store.daily_studies(only, "UTC")] == [(1, 0)]


VERSION_6_STATEMENTS = ("DROP TRIGGER shifted_on_insert", "DROP TRIGGER shifted_on_review", "DROP TABLE rollup_shifted")


def test_a_version_5_database_gets_its_shifted_day_roll_ups_built_on_upgrade(tmp_path: Path) -> None:
    """A version-5 file (no days shifted by whole hours) opens as version 6: the shifted days are built from the
    results, give the per-day figures of zones far from UTC that the results give, and are kept by later writes."""
    path = tmp_path / "results.sqlite3"
    store = SQLiteStore(path)
    for record in FIXTURE:
        store.add(record)
    store.add_review(
        Review(
            FIXTURE[2].id, "dr", FIXTURE[2].created_at + timedelta(hours=1), "agree", FIXTURE[2].label, FIXTURE[2].label
        )
    )
    zones = ("Asia/Tokyo", "America/Los_Angeles", "Australia/Sydney")
    expected = [(store.daily_counts(Filters(), zone), store.daily_quality(Filters(), zone)) for zone in zones]
    del store
    connection = sqlite3.connect(path)
    for statement in (*VERSION_6_STATEMENTS, "PRAGMA user_version = 5"):
        connection.execute(statement)
    connection.commit()
    connection.close()
    upgraded = SQLiteStore(path)
    assert upgraded.schema_version() == SCHEMA_VERSION == 13 and (tmp_path / "results.sqlite3.v5.bak").exists()
    shifted = sqlite3.connect(path).execute("SELECT count(DISTINCT shift), sum(n), sum(reviewed) FROM rollup_shifted")
    assert shifted.fetchone() == (12, 12 * len(FIXTURE), 12)
    assert _same(
        [(upgraded.daily_counts(Filters(), zone), upgraded.daily_quality(Filters(), zone)) for zone in zones], expected
    )
    late = make_record(99, utc(2026, 4, 6, 14, 45), "notumor", "1.0.0", 0.9)  # Tokyo 04-06 23:45, Sydney 04-07
    upgraded.add(late)
    upgraded.add_review(Review(late.id, "dr", late.created_at + timedelta(hours=2), "override", "notumor", "glioma"))
    for zone in zones:
        raw = Filters(start=utc(2020, 1, 1) - timedelta(milliseconds=1))  # the path that reads the results
        assert _same(upgraded.daily_quality(Filters(), zone), upgraded.daily_quality(raw, zone))


def test_a_version_4_database_gets_its_day_roll_ups_built_on_upgrade(tmp_path: Path) -> None:
    """A version-4 file (quarter roll-ups only: the day tables, their triggers and the new indexes removed here, as
    version 4 wrote it) opens as the current version with day roll-ups that give the figures the results give."""
    path = tmp_path / "results.sqlite3"
    store = SQLiteStore(path)
    for record in FIXTURE:
        store.add(record)
    store.add_review(
        Review(FIXTURE[0].id, "dr", FIXTURE[0].created_at + timedelta(hours=3), "override", FIXTURE[0].label, "notumor")
    )
    expected = (
        store.summary(),
        store.confidence_histogram(),
        store.confusion(Filters()),
        store.daily_counts(Filters(), "Europe/Paris"),
    )
    del store
    connection = sqlite3.connect(path)
    for statement in (
        "DROP TRIGGER days_on_insert",
        "DROP TRIGGER days_on_review",
        "DROP TABLE rollup_day",
        "DROP TABLE confidence_day",
        "DROP TABLE confusion_day",
        "DROP TABLE turnaround_day",
        "DROP INDEX rollup_by_slot",
        "DROP INDEX scans_disagreements",
        "DROP INDEX scans_studies",
        *VERSION_6_STATEMENTS,
        "CREATE INDEX scans_series ON scans (kind, created_ms, study_ref) WHERE kind = 'series'",
        "PRAGMA user_version = 4",
    ):
        connection.execute(statement)
    connection.commit()
    connection.close()
    upgraded = SQLiteStore(path)
    assert upgraded.schema_version() == SCHEMA_VERSION == 13 and (tmp_path / "results.sqlite3.v4.bak").exists()
    tables = {row[0] for row in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}
    assert {"rollup_day", "confusion_day", "days_on_insert", "scans_studies"} <= tables and "scans_series" not in tables
    assert (
        upgraded.summary(),
        upgraded.confidence_histogram(),
        upgraded.confusion(Filters()),
        upgraded.daily_counts(Filters(), "Europe/Paris"),
    ) == expected


def test_a_version_3_database_is_rebuilt_for_series_keeping_reviews_and_the_audit_chain(tmp_path: Path) -> None:
    """tests/data/results-v3.sqlite3 was written by the version-3 code (commit d7316ba): three results, an
    override and an agreement in the append-only history, one audit event."""
    import shutil

    path = tmp_path / "results.sqlite3"
    shutil.copy(Path(__file__).parent / "data" / "results-v3.sqlite3", path)
    store = SQLiteStore(path)
    assert store.schema_version() == SCHEMA_VERSION and (tmp_path / "results.sqlite3.v3.bak").exists()
    records = store.recent(10)
    assert len(records) == 3 and {r.kind for r in records} == {"scan"}
    assert store.summary(Filters(kinds=("scan",))).total == 3  # the roll-ups were rebuilt with the kind
    first = next(r for r in records if r.image_sha256.endswith("1"))
    assert (first.final_label, first.review_count) == ("meningioma", 1)
    assert [(r.action, r.reasons, r.note) for r in store.reviews_of(first.id)] == [
        ("override", ("wrong_type",), "dural tail")
    ]
    assert len(store.audit_events()) == 1 and first_broken(store.audit_events()) is None
    from core.services import audit

    # upgraded under the server's audit key: its head is signed as it is made (unsigned, the first `audit verify`
    # said the chain was altered, exit 1, and marked it broken on the Audit page until a full check after an event)
    keyed = tmp_path / "keyed" / "results.sqlite3"
    keyed.parent.mkdir()
    shutil.copy(Path(__file__).parent / "data" / "results-v3.sqlite3", keyed)
    checked = audit.verify(SQLiteStore(keyed, audit_key=b"k" * 32))
    assert checked.intact and checked.problem is None, checked.problem
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):  # still append-only after the rebuild
        sqlite3.connect(path, isolation_level=None).execute("DELETE FROM reviews")
    assert store.add_series(make_series(40, utc(2026, 11, 29, 9, 0)), series_sections()) is True
    assert store.summary().total == 4 and store.summary(Filters(kinds=("series",))).total == 1


def test_a_version_6_database_gets_the_orientation_its_nifti_series_pixels_really_have(tmp_path: Path) -> None:
    """Versions up to 6 stored every NIfTI series with (1, 0, 0, 0, -1, 0), which named the patient's right "L" and
    anterior "P" on pixels that show them on the right and at the top; version 7 records what the pixels show."""
    path = tmp_path / "results.sqlite3"
    store = SQLiteStore(path)
    old = {"spacing": [0.9, 0.9], "thickness": 5.0, "orientation": [1.0, 0.0, 0.0, 0.0, -1.0, 0.0], "plane": "axial"}
    nifti = replace(make_series(30, utc(2026, 5, 1, 9, 0)), image_format="nifti", geometry=old)
    dicom = replace(make_series(31, utc(2026, 5, 1, 9, 5)), geometry=old)  # a DICOM series may have it for real
    for record in (nifti, dicom):
        store.add_series(record, series_sections())
    del store
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA user_version = 6")
    connection.commit()
    connection.close()
    upgraded = SQLiteStore(path)
    assert upgraded.schema_version() == SCHEMA_VERSION == 13 and (tmp_path / "results.sqlite3.v6.bak").exists()
    assert upgraded.get(nifti.id).geometry["orientation"] == [-1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert upgraded.get(nifti.id).geometry["plane"] == "axial"
    assert upgraded.get(dicom.id).geometry["orientation"] == old["orientation"]


def test_a_version_6_mongodb_collection_gets_the_same_nifti_orientation_fix() -> None:
    import mongomock

    from core.storage.mongo_migrations import migrate_mongo

    database = mongomock.MongoClient()["btd"]
    old = [1.0, 0.0, 0.0, 0.0, -1.0, 0.0]
    database["results"].insert_many(
        [
            {"_id": "a", "kind": "series", "image_format": "nifti", "geometry": {"orientation": old}},
            {"_id": "b", "kind": "series", "image_format": "dicom", "geometry": {"orientation": old}},
        ]
    )
    database["meta"].insert_one({"_id": "schema", "version": 6})
    assert migrate_mongo(database, database["results"]) == 6
    assert database["results"].find_one({"_id": "a"})["geometry"]["orientation"] == [-1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert database["results"].find_one({"_id": "b"})["geometry"]["orientation"] == old
    assert database["meta"].find_one({"_id": "schema"})["version"] == SCHEMA_VERSION


AUDIT_SEARCH_INDEXES = {"audit_by_time", "audit_by_actor", "audit_by_target"}


def test_a_version_7_database_gets_its_audit_trail_indexed_keeping_the_chain(tmp_path: Path) -> None:
    """A version-7 file (no audit indexes but the one by action, no verified point: removed here, as version 7
    wrote it) opens as the current version after a backup, its chain intact and filtered through the new indexes."""
    path = tmp_path / "results.sqlite3"
    store = SQLiteStore(path)
    for minute, actor, action, target in AUDIT_TRAIL:
        store.append_audit(AuditEvent(utc(2026, 5, 1, 9, minute), actor, "radiologist", action, target))
    before = store.audit_events()
    del store
    downgrade = [f"DROP INDEX {name}" for name in sorted(AUDIT_SEARCH_INDEXES)]
    sqlite3.connect(path).executescript(";".join([*downgrade, "DROP TABLE audit_verified", "PRAGMA user_version = 7"]))
    upgraded = SQLiteStore(path)
    assert upgraded.schema_version() == SCHEMA_VERSION == 13 and (tmp_path / "results.sqlite3.v7.bak").exists()
    found = {row[0] for row in sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert AUDIT_SEARCH_INDEXES | {"audit_by_action"} <= found
    assert upgraded.audit_events() == before and first_broken(upgraded.audit_events()) is None
    assert [e.seq for e in upgraded.find_audit(AuditQuery(target="b" * 64), 10)] == [10, 8, 7, 6]
    assert upgraded.audit_verified() is None  # the first check after the upgrade verifies everything
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        sqlite3.connect(path, isolation_level=None).execute("DELETE FROM audit")


def test_a_version_7_mongodb_database_gets_its_audit_trail_indexed() -> None:
    import mongomock

    from core.storage.mongo_migrations import migrate_mongo

    database = mongomock.MongoClient()["btd"]
    database["results"].insert_one({"_id": "a", "kind": "scan"})
    database["audit"].insert_one({"_id": 1, "at": utc(2026, 5, 1), "actor": "dr-a", "action": "sign_in"})
    database["meta"].insert_one({"_id": "schema", "version": 7})
    assert migrate_mongo(database, database["results"]) == 7
    assert database["meta"].find_one({"_id": "schema"})["version"] == SCHEMA_VERSION
    keys = [list(spec["key"]) for spec in database["audit"].index_information().values()]
    assert [("actor", 1), ("at", -1), ("_id", -1)] in keys and [("at", -1), ("_id", -1)] in keys
    assert database["audit"].count_documents({}) == 1


def test_the_embedded_database_runs_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    """Readers (the dashboards) never wait for a writer, and a committed result survives a power cut."""
    store = SQLiteStore(tmp_path / "results.sqlite3")
    store.add(FIXTURE[0])
    connection = store._connection()
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_a_vanished_database_is_refused_not_replaced_by_an_empty_one(tmp_path: Path, monkeypatch, capsys) -> None:
    """A deleted data folder once became a new database with no accounts, and the app said "Result saved"."""
    import gc
    import shutil

    from core.cli import main
    from core.storage import open_store
    from core.storage.stamps import StoreVanished

    data = tmp_path / "data"
    first = open_store(None, data)
    first.add(make_record(1, utc(2026, 5, 1, 9, 0), "glioma"))
    shutil.rmtree(data)
    with pytest.raises(StoreVanished, match="has disappeared") as vanished:
        open_store(None, data)
    assert str(tmp_path) not in str(vanished.value)
    assert not (data / "results.sqlite3").exists()
    monkeypatch.setenv("BTD_DATA_DIR", str(data))
    # a command that reads says the same, never "there is no database: the first start makes one", which the
    # server then refused to do
    assert main(["users", "list"]) == 2
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "store_vanished"
    monkeypatch.setattr(sys, "stdin", io.StringIO("a long passphrase\n"))  # the one that makes a database: the
    assert main(["users", "add", "boss", "--role", "admin", "--password-stdin"]) == 2  # same, not "the audit key
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "store_vanished"  # is gone: bad configuration"
    state = os.environ["BTD_STATE_DIR"]
    monkeypatch.setenv("BTD_STATE_DIR", str(tmp_path / "another-state"))  # not the register that knows it
    assert main(["store", "forget"]) == 1  # it said "forgotten": false with exit 0, and the server still refused
    said = json.loads(capsys.readouterr().out)
    assert said["error"]["code"] == "not_registered" and "another-state" in said["error"]["message"]
    monkeypatch.setenv("BTD_STATE_DIR", state)
    assert main(["store", "forget"]) == 0 and '"forgotten": true' in capsys.readouterr().out
    assert open_store(None, data).summary().total == 0  # a new database, on purpose
    # a remembered file emptied to 0 bytes (a failed copy, a full disk) opened as a new, empty database too
    emptied = open_store(None, data)
    emptied.add(make_record(2, utc(2026, 5, 2, 9, 0), "glioma"))
    emptied._local.connection.close()
    gc.collect()  # the stores opened above: their connections closed (one closed later checkpoints into the file)
    for leftover in data.glob("results.sqlite3-*"):
        leftover.unlink()
    (data / "results.sqlite3").write_bytes(b"")
    with pytest.raises(StoreVanished, match="has disappeared"):
        open_store(None, data)
    assert main(["store", "forget"]) == 0 and '"forgotten": true' in capsys.readouterr().out  # as it says to
    running = open_store(None, data)
    running.add(make_record(3, utc(2026, 5, 3, 9, 0), "glioma"))
    running._local.connection.close()  # another thread's first connection, after the file was emptied
    running._local.connection = None
    gc.collect()
    for leftover in data.glob("results.sqlite3-*"):
        leftover.unlink()
    (data / "results.sqlite3").write_bytes(b"")
    with pytest.raises(StoreVanished, match="disappeared while the app was running"):
        running.summary()


def test_databases_made_at_once_under_one_register_are_each_remembered(tmp_path: Path, monkeypatch) -> None:
    """Each rewrote the register as it had read it: one of two databases made at once was forgotten, and once
    deleted it came back as a new, empty database without a word."""
    import threading

    from core.storage import stamps

    lost = 0
    for attempt in range(20):
        monkeypatch.setenv("BTD_STATE_DIR", str(tmp_path / f"state-{attempt}"))
        made = []
        for k in range(6):
            (tmp_path / f"{attempt}-{k}").mkdir()
            made.append(tmp_path / f"{attempt}-{k}" / "results.sqlite3")
            made[-1].write_bytes(b"a database")
        barrier = threading.Barrier(len(made))

        def remember(database: Path, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            stamps.remember(database)

        threads = [threading.Thread(target=remember, args=(database,)) for database in made]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        lost += len(made) - len(json.loads(stamps.register_file().read_text()))
    assert lost == 0


def test_an_emptied_database_with_images_beside_it_is_refused_whatever_the_register(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """With the register unreadable (or another BTD_STATE_DIR's, as a cron line without it runs), a database file
    emptied to 0 bytes opened as a new, empty one: a purge then deleted the images of results nobody had reviewed,
    and `audit verify` said "intact"."""
    import gc

    from core.cli import main
    from core.storage import open_store
    from core.storage.images import FolderImages
    from core.storage.stamps import StoreVanished
    from tests.scans import app_store, synthetic_slice

    data = tmp_path / "data"
    monkeypatch.setenv("BTD_DATA_DIR", str(data))
    first = app_store(data / "results.sqlite3")  # the app's database and its keys
    first.add(make_record(1, utc(2026, 5, 1, 9, 0), "glioma"))
    FolderImages(data / "images").put(synthetic_slice(64))
    for kept in (data / "images").rglob("*.png"):  # due for the purge
        os.utime(kept, (time.time() - 100 * 86400,) * 2)
    first._local.connection.close()
    gc.collect()
    for leftover in data.glob("results.sqlite3-*"):
        leftover.unlink()
    (data / "results.sqlite3").write_bytes(b"")
    monkeypatch.setenv("BTD_STATE_DIR", str(tmp_path / "another-state"))  # a register that never knew it
    with pytest.raises(StoreVanished, match=r"emptied to 0 bytes, its images still kept"):
        open_store(None, data)
    assert main(["images", "purge", "--days", "30"]) == 2
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "store_vanished"
    assert any((data / "images").rglob("*.png")) and (data / "results.sqlite3").stat().st_size == 0
    assert main(["store", "forget"]) == 0 and '"forgotten": true' in capsys.readouterr().out  # on purpose
    assert open_store(None, data).summary().total == 0
    # a brand-new data folder, and one whose images folder holds nothing, still make a database at first start
    assert open_store(None, tmp_path / "new").summary().total == 0
    (tmp_path / "bare" / "images").mkdir(parents=True)
    (tmp_path / "bare" / "results.sqlite3").write_bytes(b"")
    assert open_store(None, tmp_path / "bare").summary().total == 0
    monkeypatch.setenv("MONGODB_URI", "mongodb://127.0.0.1:9/")  # it said "not registered: run this with the
    assert main(["store", "forget"]) == 2  # server's BTD_STATE_DIR"
    assert "the results are in MongoDB" in json.loads(capsys.readouterr().out)["error"]["message"]


def test_the_health_check_writes_for_real(store) -> None:
    """A health check that only took a lock said "ready" while saves failed on a read-only or full disk."""
    store.ping()
    if isinstance(store, SQLiteStore):
        first = store._query("SELECT at_ms FROM health")[0][0]
        time.sleep(0.01)
        store.ping()
        assert store._query("SELECT at_ms FROM health")[0][0] > first
    else:
        assert store._db["meta"].find_one({"_id": "health"})["at_ms"] > 0


def test_a_version_8_database_gets_the_lesion_columns_and_keeps_its_results(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite3"
    store = SQLiteStore(path)
    old = FIXTURE[0]
    store.add(old)
    del store
    downgrade = [f"ALTER TABLE scans DROP COLUMN {name}" for name in ("lesion_px", "lesion_mm2", "lesion_ml")]
    sqlite3.connect(path).executescript(";".join([*downgrade, "PRAGMA user_version = 8"]))
    upgraded = SQLiteStore(path)
    assert upgraded.schema_version() == SCHEMA_VERSION == 13 and (tmp_path / "results.sqlite3.v8.bak").exists()
    assert upgraded.get(old.id) == old and old.lesion_px is None  # never segmented: no area claimed
    measured = replace(FIXTURE[1], lesion_px=420, lesion_mm2=105.0)
    assert upgraded.add(measured) and upgraded.get(measured.id).lesion_mm2 == 105.0


def test_a_version_10_database_gets_its_series_study_unread_column_from_their_geometry(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite3"
    store = SQLiteStore(path)
    day = utc(2026, 5, 1, 8, 0)
    unread = replace(make_series(60, day, "notumor", study=21), geometry={"study_unread": 2})
    store.add_series(unread, series_sections())
    store.add_series(make_series(61, day, "notumor", study=22), series_sections())
    del store
    downgrade = ["DROP INDEX scans_studies", "ALTER TABLE scans DROP COLUMN study_unread", "PRAGMA user_version = 10"]
    sqlite3.connect(path).executescript(";".join(downgrade))
    upgraded = SQLiteStore(path)
    assert upgraded.schema_version() == SCHEMA_VERSION and (tmp_path / "results.sqlite3.v10.bak").exists()
    column = sqlite3.connect(path).execute("SELECT id, study_unread FROM scans ORDER BY id").fetchall()
    assert sorted(column) == sorted([(unread.id, 2), (make_series(61, day, "notumor", study=22).id, None)])
    assert [(d.total, d.tumour) for d in upgraded.daily_studies(Filters(), "UTC")] == [(1, 0)]  # 21: no verdict
    plan = (
        sqlite3.connect(path)
        .execute(
            "EXPLAIN QUERY PLAN SELECT max(COALESCE(study_unread, 0)) FROM scans WHERE kind = 'series' "
            "GROUP BY COALESCE(study_ref, id)"
        )
        .fetchall()
    )
    assert "COVERING INDEX scans_studies" in str(plan)  # the chart reads the index alone, as before


def test_a_version_11_database_gets_the_accounts_sessions_from_column_and_keeps_its_accounts(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite3"
    store = SQLiteStore(path)
    store.insert_account(Account("dr-a", "radiologist", "$argon2id$hash", disabled=True, created_at=utc(2026, 1, 1)))
    del store
    downgrade = ["ALTER TABLE accounts DROP COLUMN sessions_from_ms", "ALTER TABLE accounts DROP COLUMN must_change"]
    sqlite3.connect(path).executescript(";".join([*downgrade, "PRAGMA user_version = 11"]))
    upgraded = SQLiteStore(path)
    assert upgraded.schema_version() == SCHEMA_VERSION == 13 and (tmp_path / "results.sqlite3.v11.bak").exists()
    account = upgraded.get_account("dr-a")
    assert (account.password_hash, account.disabled, account.sessions_from) == ("$argon2id$hash", True, None)
    assert upgraded.update_account("dr-a", {"sessions_from": utc(2026, 2, 1)}, {"disabled": True})
    assert upgraded.get_account("dr-a").sessions_from == utc(2026, 2, 1)


def test_a_version_12_database_gets_the_accounts_must_change_column_with_no_password_temporary(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite3"
    store = SQLiteStore(path)
    store.insert_account(Account("dr-a", "radiologist", "$argon2id$hash", created_at=utc(2026, 1, 1)))
    del store
    downgrade = ["ALTER TABLE accounts DROP COLUMN must_change", "PRAGMA user_version = 12"]
    sqlite3.connect(path).executescript(";".join(downgrade))
    upgraded = SQLiteStore(path)
    assert upgraded.schema_version() == 13 and (tmp_path / "results.sqlite3.v12.bak").exists()
    assert upgraded.get_account("dr-a").must_change is False  # a password set before: not a temporary one
    assert upgraded.update_account("dr-a", {"must_change": True}, {"password_hash": "$argon2id$hash"})
    assert upgraded.get_account("dr-a").must_change is True


def version_8_database(folder: Path) -> Path:
    """A database of one result as schema version 8 left it (no lesion columns): an upgrade backs it up first."""
    path = folder / "results.sqlite3"
    SQLiteStore(path).add(FIXTURE[0])
    downgrade = [f"ALTER TABLE scans DROP COLUMN {name}" for name in ("lesion_px", "lesion_mm2", "lesion_ml")]
    sqlite3.connect(path).executescript(";".join([*downgrade, "PRAGMA user_version = 8"]))
    return path


def test_an_upgrade_replaces_a_backup_left_cut_short_and_writes_it_private(tmp_path: Path) -> None:
    """An empty ".bak" (a full disk, a crash) was trusted as the backup and the upgrade ran without a real one; the
    copy was world-readable while it was written."""
    path = version_8_database(tmp_path)
    (tmp_path / "results.sqlite3.v8.bak").write_bytes(b"")  # what a backup cut short leaves
    assert SQLiteStore(path).schema_version() == SCHEMA_VERSION
    backup = tmp_path / "results.sqlite3.v8.bak"
    assert oct(backup.stat().st_mode)[-3:] == "600"
    with sqlite3.connect(backup) as copy:
        assert copy.execute("SELECT count(*) FROM scans").fetchone()[0] == 1
        assert copy.execute("PRAGMA user_version").fetchone()[0] == 8
    assert sorted(p.name for p in tmp_path.iterdir() if "tmp" in p.name) == []  # no draft's -wal or -shm left


def test_an_upgrade_backs_up_the_database_as_it_is_not_an_older_copy_under_the_name(tmp_path: Path) -> None:
    """After a first upgrade, a restore of the ".v8.bak" and two more results from the older release, the next
    upgrade kept the old backup: one result where the database held three."""
    path = version_8_database(tmp_path)
    shutil.copy(path, tmp_path / "results.sqlite3.v8.bak")  # an older copy under the name (one result)
    with sqlite3.connect(path) as older_release:  # the older release wrote more since
        older_release.execute("CREATE TABLE more (n)")
    assert SQLiteStore(path).schema_version() == SCHEMA_VERSION
    with sqlite3.connect(tmp_path / "results.sqlite3.v8.bak") as copy:
        assert copy.execute("SELECT count(*) FROM sqlite_master WHERE name = 'more'").fetchone()[0] == 1


def test_lesion_measures_round_trip_and_a_negative_area_is_refused(store) -> None:
    series = replace(FIXTURE[2], lesion_px=1200, lesion_ml=3.75)
    store.add(series)
    back = store.get(series.id)
    assert (back.lesion_px, back.lesion_mm2, back.lesion_ml) == (1200, None, 3.75)
    with pytest.raises(InvalidRecord, match="lesion_ml is out of range"):
        store.add(replace(FIXTURE[3], lesion_ml=-1.0))


def lesion_series(n: int, at: datetime, ml: float | None, label: str = "glioma", study: int | None = None) -> Record:
    series = make_series(n, at, label, study=study if study is not None else n)
    return replace(series, lesion_px=None if ml is None else int(ml * 1000), lesion_ml=ml)


def test_the_lesion_volumes_and_the_ranges_ends_are_read_through_indexes_never_the_whole_table(tmp_path: Path) -> None:
    """The series' kind was bound as a parameter ("kind IN (?)"), which kept SQLite off the partial index of series:
    the lesion board read every result ever saved (144 ms of 380k, whatever the range), and the history's two ends
    were read from a whole index (48 ms) three times a board."""
    store = SQLiteStore(tmp_path / "results.sqlite3")
    for k in range(40):
        store.add_series(lesion_series(300 + k, utc(2026, 1, 1, 9) + timedelta(days=k), 2.0 + k), series_sections())
    store.add(make_record(999, utc(2026, 1, 1, 8)))  # a single scan: never read by the lesion board
    executed: list[str] = []
    connection = store._connection()
    connection.set_trace_callback(executed.append)
    shown = Filters(start=utc(2026, 2, 1), end=utc(2026, 2, 5), gates=("accepted", "needs_review"))
    assert [p.studies for p in store.lesion_volumes(shown, "UTC", "day")] == [1, 1, 1, 1]
    connection.set_trace_callback(None)
    selects = [sql for sql in executed if sql.lstrip().upper().startswith("SELECT")]
    assert len(selects) >= 2
    for sql in selects:
        plan = [row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()]
        assert "SCAN scans" not in plan, (sql, plan)  # a full read of the results table


def test_lesion_volumes_of_tumour_studies_per_period_have_the_quantiles_of_their_volumes(store) -> None:
    import numpy as np

    from core.domain.results import LESION_QUANTILES

    week = utc(2026, 4, 6, 9, 0)  # a Monday
    first_week = [1.0, 2.0, 3.0, 4.0, 10.0]
    for k, ml in enumerate(first_week):
        store.add_series(lesion_series(200 + k, week + timedelta(days=k), ml), series_sections())
    store.add_series(lesion_series(210, week + timedelta(hours=2), 5.0, study=77), series_sections())
    store.add_series(lesion_series(211, week + timedelta(hours=3), 7.0, study=77), series_sections())  # study: 6.0
    store.add_series(lesion_series(212, week + timedelta(hours=4), None, study=77), series_sections())  # no volume
    store.add_series(lesion_series(220, utc(2026, 4, 12, 22, 30), 8.0), series_sections())  # Sunday 22:30 UTC
    store.add_series(lesion_series(221, utc(2026, 4, 14, 9, 0), 12.0), series_sections())
    store.add_series(lesion_series(230, week, 100.0, label="notumor"), series_sections())  # not called tumour
    store.add_series(replace(lesion_series(231, week, 90.0), gate="rejected"), series_sections())  # never shown
    store.add(replace(make_record(232, week), lesion_px=400, lesion_mm2=90.0))  # a single scan: an area
    shown = Filters(gates=("accepted", "needs_review"))
    weeks = store.lesion_volumes(shown, "UTC", "week")
    assert [(w.start, w.studies) for w in weeks] == [(date(2026, 4, 6), 7), (date(2026, 4, 13), 1)]
    expected = np.quantile([*first_week, 6.0, 8.0], LESION_QUANTILES)
    assert weeks[0].quantiles == pytest.approx(expected) and weeks[1].quantiles == pytest.approx([12.0] * 5)
    # Sunday 22:30 UTC is Monday 00:30 in Paris (summer time): that study moves to the next week
    paris = store.lesion_volumes(shown, "Europe/Paris", "week")
    assert [(w.start, w.studies) for w in paris] == [(date(2026, 4, 6), 6), (date(2026, 4, 13), 2)]
    assert paris[1].quantiles == pytest.approx(np.quantile([8.0, 12.0], LESION_QUANTILES))
    days = store.lesion_volumes(shown, "UTC", "day")
    assert [(d.start.day, d.studies) for d in days] == [(6, 2), (7, 1), (8, 1), (9, 1), (10, 1), (12, 1), (14, 1)]
    assert days[0].quantiles == pytest.approx(np.quantile([1.0, 6.0], LESION_QUANTILES))
    months = store.lesion_volumes(replace(shown, end=utc(2026, 4, 13)), "UTC", "month")
    assert [(m.start, m.studies) for m in months] == [(date(2026, 4, 1), 7)]
    assert store.lesion_volumes(replace(shown, model_versions=("9.9.9",)), "UTC", "week") == []
    assert store.lesion_volumes(Filters(), "UTC", "week")[0].studies == 8  # all gates: the refused one counts
    # a study read by two model versions is two, as the studies per day count it: never a blend of their measures
    again = replace(lesion_series(221, utc(2026, 4, 14, 9, 0), 30.0), model_version="2.0.0")
    store.add_series(replace(again, id=record_id(again.image_sha256, "btd-cnn", "2.0.0")), series_sections())
    (later,) = store.lesion_volumes(replace(shown, start=utc(2026, 4, 13)), "UTC", "week")
    assert later.studies == 2 and later.quantiles == pytest.approx(np.quantile([12.0, 30.0], LESION_QUANTILES))
    assert later.studies == sum(d.total for d in store.daily_studies(replace(shown, start=utc(2026, 4, 13)), "UTC"))


def test_a_studys_lesion_volume_is_counted_on_its_first_series_day_as_its_study_is(store) -> None:
    """The lesion chart placed a study by its first tumour series with a volume, the study counts by its first
    series: a range starting the day after a study began counted it among lesion studies but not among studies."""
    first = utc(2026, 4, 6, 23, 50)
    store.add_series(lesion_series(240, first, None, label="notumor", study=88), series_sections())
    store.add_series(lesion_series(241, first + timedelta(minutes=20), 9.0, study=88), series_sections())
    later = store.lesion_volumes(Filters(start=utc(2026, 4, 7, 0, 0)), "UTC", "day")
    assert later == [] and store.daily_studies(Filters(start=utc(2026, 4, 7, 0, 0)), "UTC") == []
    both = store.lesion_volumes(Filters(start=utc(2026, 4, 6, 0, 0)), "UTC", "day")
    assert [(d.start, d.studies) for d in both] == [(date(2026, 4, 6), 1)]
    assert both[0].quantiles == pytest.approx([9.0] * 5)


def test_a_narrow_range_of_a_long_history_counts_each_study_on_its_first_series_day(store, monkeypatch) -> None:
    """The per-study boards group only the studies with a series in a narrow range (grouping every series ever
    saved made a week's board cost as much as the whole history's): a study begun before the range and added to in
    it is still not the range's, one begun in it and added to after is, a series without a study is its own."""
    start = utc(2026, 4, 6)
    store.add_series(lesion_series(300, start - timedelta(days=400), 1.0), series_sections())  # the history's start
    store.add_series(lesion_series(301, start - timedelta(hours=2), 2.0, study=91), series_sections())
    store.add_series(lesion_series(302, start + timedelta(hours=2), 3.0, study=91), series_sections())  # began before
    store.add_series(lesion_series(303, start + timedelta(days=1), 4.0, study=92), series_sections())
    store.add_series(lesion_series(304, start + timedelta(days=9), 6.0, study=92), series_sections())  # after the range
    alone = replace(lesion_series(305, start + timedelta(days=2), 5.0), study_ref=None)
    store.add_series(alone, series_sections())
    week = Filters(start=start, end=start + timedelta(days=7))
    from core.storage import mongo_quality

    for cap in (mongo_quality.MAX_LISTED_STUDIES, 0):  # MongoDB: a list of studies too long for a command: all
        monkeypatch.setattr(mongo_quality, "MAX_LISTED_STUDIES", cap)
        days = [(d.day, d.total) for d in store.daily_studies(week, "UTC")]
        assert days == [(date(2026, 4, 7), 1), (date(2026, 4, 8), 1)]
        volumes = store.lesion_volumes(week, "UTC", "week")
        assert [(v.start, v.studies) for v in volumes] == [(date(2026, 4, 6), 2)]
        assert min(volumes[0].quantiles) == pytest.approx(5.0) == max(volumes[0].quantiles)


def test_both_stores_cut_a_moment_to_its_millisecond_and_answer_edge_queries_alike(store) -> None:
    """Found comparing the stores: SQLite rounded a moment 0.4 ms before midnight into the next day (BSON cuts it);
    sections came back in the order given and duplicates passed on MongoDB; a malformed patient reference, an
    empty range's quality rows and a limit of 0 each had two answers."""
    late = make_record(70, datetime(2026, 3, 28, 23, 59, 59, 999600, tzinfo=UTC))
    assert store.add(late)
    assert store.get(late.id).created_at == utc(2026, 3, 28, 23, 59, 59) + timedelta(milliseconds=999)
    assert [d.day for d in store.daily_counts(Filters(), "UTC")] == [date(2026, 3, 28)]
    assert store.summary(Filters(end=utc(2026, 3, 29))).total == 1
    series = make_series(71, utc(2026, 5, 1, 9, 0), sections=5)
    assert store.add_series(series, list(reversed(series_sections())))
    assert [s.index for s in store.sections_of(series.id)] == [0, 1, 2, 3, 4]
    twice = make_series(72, utc(2026, 5, 1, 10, 0), sections=2)
    with pytest.raises(InvalidRecord):
        store.add_series(twice, [Section(0, 0.0, 0.1, "notumor"), Section(0, 5.0, 0.2, "notumor")])
    for bad in ("G" * 64, "abc"):
        with pytest.raises(InvalidRecord):
            store.set_patient_ref(late.id, bad, was=None)
    assert store.daily_quality(Filters(start=utc(2030, 1, 1)), "UTC") == []
    assert store.recent(0) == [] and store.worklist(WorklistQuery(), 0) == []


def test_a_mongodb_audit_trail_from_before_version_7_gets_its_head_on_upgrade() -> None:
    """SQLite's upgrade starts the chain's head at its last event; MongoDB's left none, so the check said the chain
    had no head until the next event. Events as the store writes them (the sequence number is the _id): the upgrade
    read a "seq" field and failed on every call."""
    import mongomock

    client = mongomock.MongoClient(tz_aware=True)
    written = MongoStore(client)
    for n in range(3):
        written.append_audit(AuditEvent(utc(2026, 5, 1, 9, n), "cli", "system", "upload", detail={"n": n}))
    database = client["brain_mri_triage"]
    last = written.audit_events()[-1]
    database["meta"].delete_one({"_id": "audit_head"})  # as a version-6 database: events, no head
    database["meta"].update_one({"_id": "schema"}, {"$set": {"version": 6}})
    store = MongoStore(client)
    assert store.schema_version() == SCHEMA_VERSION
    head = store.audit_head()
    assert head is not None and (head.seq, head.hash) == (last.seq, last.hash) == (3, last.hash)
    assert store.recent(5) == [] and first_broken(store.audit_events()) is None
    from core.services import audit

    database["meta"].delete_one({"_id": "audit_head"})  # again, now upgraded under the server's audit key: signed
    database["meta"].update_one({"_id": "schema"}, {"$set": {"version": 6}})
    keyed = MongoStore(client)
    keyed.audit_key = b"k" * 32
    assert keyed.schema_version() == SCHEMA_VERSION and keyed.audit_head().mac
    checked = audit.verify(keyed)
    assert checked.intact and checked.problem is None, checked.problem


def test_a_vanished_data_folder_gets_no_new_keys_that_would_stick_after_the_backup_is_restored(
    tmp_path: Path, monkeypatch
) -> None:
    """The app created fresh patient and audit keys in the empty folder before the database check refused it: once
    the operator restored the backup, new patient references were computed with the wrong key."""
    import shutil

    from core.config import audit_key, patient_key
    from core.storage import open_store

    data = tmp_path / "data"
    monkeypatch.setenv("BTD_DATA_DIR", str(data))
    open_store(None, data).add(FIXTURE[0])
    original = patient_key({}, shared_database=False)
    shutil.copytree(data, tmp_path / "backup")
    shutil.rmtree(data)
    for key in (patient_key, audit_key):
        with pytest.raises(ValueError, match="gone with the results database"):
            key({}, shared_database=False)
    assert not data.exists()
    shutil.copytree(tmp_path / "backup", data)
    assert patient_key({}, shared_database=False) == original


def test_a_database_restored_without_its_key_files_is_refused_not_given_new_keys(tmp_path: Path, monkeypatch) -> None:
    """Restoring the database file alone made new keys silently: the intact audit trail then read as tampered with
    ("re-hashed without the key"), and typed patient references no longer found any patient's History."""
    from dataclasses import replace

    from core.config import audit_key, patient_key
    from core.services import audit
    from core.services.access import COMMAND_LINE
    from core.services.resources import open_results_store

    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("BTD_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("MONGODB_URI", raising=False)
    monkeypatch.delenv("BTD_AUDIT_KEY", raising=False)
    monkeypatch.delenv("BTD_HMAC_KEY", raising=False)
    store = open_results_store()
    audit.record(store, COMMAND_LINE, "account_created", "dr-a")
    key = patient_key({}, shared_database=False)
    store.add(replace(make_record(1, utc(2026, 5, 1, 9, 0), "glioma"), patient_ref="a" * 64))
    assert key and audit.verify(store).intact
    for name, read in (("audit.key", audit_key), ("patient-ref.key", patient_key)):
        saved = (tmp_path / "data" / name).read_bytes()
        (tmp_path / "data" / name).unlink()  # the database restored, this key file not
        with pytest.raises(ValueError, match=f"{name} is missing beside a results database made with it"):
            read({}, shared_database=False)
        assert not (tmp_path / "data" / name).exists()  # no new key written
        (tmp_path / "data" / name).write_bytes(saved)
    assert audit.verify(open_results_store()).intact
    fresh = tmp_path / "fresh"  # a new installation still gets its keys made
    monkeypatch.setenv("BTD_DATA_DIR", str(fresh))
    assert audit_key({}, shared_database=False) and patient_key({}, shared_database=False)


def test_the_database_named_in_the_mongodb_uri_is_the_one_used() -> None:
    """The URI's database was ignored: two sites configured as /site_a and /site_b on one cluster shared one
    clinical history and one account table. No server is contacted to build a client."""
    import mongomock

    from core.errors import StoreError

    assert MongoStore.connect("mongodb://127.0.0.1:1/site_a")._db.name == "site_a"
    assert MongoStore.connect("mongodb://127.0.0.1:1/?authSource=admin")._db.name == "brain_mri_triage"
    assert MongoStore.connect("mongodb://127.0.0.1:1/admin")._db.name == "brain_mri_triage"  # where to sign in
    assert MongoStore.connect("mongodb://127.0.0.1:1/site_a", "chosen")._db.name == "chosen"
    # an older URI whose path earlier releases ignored ("/test"): never a second, empty history beside the first
    client = mongomock.MongoClient(tz_aware=True)
    MongoStore(client).add(FIXTURE[0])
    with pytest.raises(StoreError, match="names the database 'test', which holds no results"):
        MongoStore(client, "test").summary()
    assert MongoStore(client).summary().total == 1 and MongoStore(client, "site_b").summary().total == 0


def test_a_backup_taken_while_the_app_writes_holds_every_result_its_keys_and_images(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """There was no way to back up the store: a copy of the file alone, taken while the store was open, held no table
    at all (everything was still in its write-ahead log), and the key files and images were nowhere listed."""
    import json
    import shutil

    import numpy as np

    from core.cli import main
    from core.services.resources import open_image_store, open_results_store

    data = tmp_path / "data"
    monkeypatch.setenv("BTD_DATA_DIR", str(data))
    monkeypatch.setenv("BTD_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("MONGODB_URI", raising=False)
    store = open_results_store()  # stays open and writing, as the running app's
    for record in FIXTURE:
        store.add(record)
    open_image_store(store).put(np.full((64, 64), 90, np.uint8))
    shutil.copy(data / "results.sqlite3", tmp_path / "copied.sqlite3")  # what a file copy gets
    with sqlite3.connect(tmp_path / "copied.sqlite3") as copied, pytest.raises(sqlite3.Error):
        copied.execute("SELECT count(*) FROM scans").fetchone()
    assert main(["store", "backup", str(tmp_path / "backup")]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["results"] == len(FIXTURE) and made["keys"] == ["audit.key"] and made["images"] == 1
    assert made["watch_state"] is False  # no PACS watch ran here
    assert oct((tmp_path / "backup").stat().st_mode)[-3:] == "700"
    assert oct((tmp_path / "backup" / "results.sqlite3").stat().st_mode)[-3:] == "600"
    assert SQLiteStore(tmp_path / "backup" / "results.sqlite3").summary().total == len(FIXTURE)
    # a copy of every result and both keys is an event of the trail, the backup's own included
    assert [(e.action, e.detail) for e in store.audit_events()] == [
        ("store_backup", {"folder": "backup", "os_user": pwd.getpwuid(os.geteuid()).pw_name})
    ]
    assert [e.action for e in SQLiteStore(tmp_path / "backup" / "results.sqlite3").audit_events()] == ["store_backup"]
    assert main(["store", "backup", str(tmp_path / "backup")]) == 2  # never over an earlier backup (exit 2: usage)
    assert "exists already" in capsys.readouterr().out
    with pytest.raises(SystemExit) as usage:  # no folder named: it read as "." ("exists already")
        main(["store", "backup", " "])
    assert usage.value.code == 2 and "name a new folder" in capsys.readouterr().out
    assert [e.action for e in store.audit_events()] == ["store_backup"]  # a refused backup leaves no event


def test_a_backup_holds_the_pacs_watchs_state_and_no_draft_and_outlives_an_image_purged_meanwhile(
    tmp_path: Path, monkeypatch
) -> None:
    """A backup left out the PACS watch's state: restored, the watch went through the PACS's whole history again
    (every study pulled, purged images stored again, reports sent again). An image a purge deleted while the backup
    copied failed the whole backup, and images still being written (drafts) were copied in."""
    import shutil

    import numpy as np

    from core.services.resources import open_image_store, open_results_store
    from core.storage.backup import backup_embedded

    data = tmp_path / "data"
    monkeypatch.setenv("BTD_DATA_DIR", str(data))
    monkeypatch.setenv("BTD_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("MONGODB_URI", raising=False)
    store = open_results_store()
    images = open_image_store(store)
    keys = [images.put(np.full((64, 64), level, np.uint8)) for level in (60, 90, 120)]
    kept = sorted((data / "images").rglob("*.png"))
    (kept[0].parent / ".abc.1.2.part").write_bytes(b"half an image")  # a write in progress
    (data / "pacs-watch.json").write_text('{"last": 4711, "handled": {}}')
    purged = kept[1]
    copy = shutil.copy2

    def purged_meanwhile(source: str, target: str, **kwargs: object) -> object:
        if Path(source) == purged and purged.exists():
            purged.unlink()  # a purge deleting it just before it is copied
        return copy(source, target, **kwargs)

    monkeypatch.setattr(shutil, "copy2", purged_meanwhile)
    made = backup_embedded(data, tmp_path / "backup")
    assert made["watch_state"] is True and made["images"] == 2 and len(keys) == 3
    assert (tmp_path / "backup" / "pacs-watch.json").read_text() == '{"last": 4711, "handled": {}}'
    assert not list((tmp_path / "backup" / "images").rglob(".*"))  # no draft


def test_an_image_purge_sweeps_the_chunks_an_interrupted_gridfs_deletion_left_behind() -> None:
    """GridFS deletes an image's document, then its chunks: a timeout between the two left pixels that no later
    purge found (purges list the documents). Chunks of an upload still in progress (no document yet) are kept."""
    from datetime import timedelta

    import mongomock
    from bson import ObjectId

    from core.storage.images import GridFSImages

    db = mongomock.MongoClient(tz_aware=True)["btd_sweep"]
    images = GridFSImages.__new__(GridFSImages)  # the sweep reads the two collections only (no bucket in mongomock)
    images._files = db["images.files"]
    hour_ago = ObjectId.from_datetime(datetime.now(UTC) - timedelta(hours=2))
    kept, orphaned, uploading = hour_ago, ObjectId.from_datetime(datetime.now(UTC) - timedelta(hours=3)), ObjectId()
    db["images.files"].insert_one({"_id": kept, "filename": "a" * 64})
    for files_id in (kept, orphaned, orphaned, uploading):
        db["images.chunks"].insert_one({"files_id": files_id, "n": 0, "data": b"x"})
    assert images.sweep(datetime.now(UTC) - timedelta(hours=1)) == 1
    left = sorted(str(c["files_id"]) for c in db["images.chunks"].find())
    assert left == sorted([str(kept), str(uploading)])


def test_a_register_that_cannot_be_written_or_read_is_said_in_the_log(tmp_path: Path, monkeypatch, caplog) -> None:
    """The vanished-database protection switched itself off without a word when the register could not be written
    (a service user with no writable home) or had been damaged."""
    import logging

    from core.storage import stamps

    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("BTD_STATE_DIR", str(state))
    (state / "stores.json").write_text("{damaged")
    with caplog.at_level(logging.WARNING, logger="btd.storage"):
        stamps.check(tmp_path / "nothing.sqlite3")
    assert "event=store_register_unreadable" in caplog.text
    caplog.clear()
    (state / "stores.json").unlink()

    def refused(*args: object) -> None:
        raise PermissionError(13, "Permission denied")  # a folder the service user may not write

    monkeypatch.setattr(stamps.os, "replace", refused)
    database = tmp_path / "results.sqlite3"
    database.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="btd.storage"):
        stamps.remember(database)
    assert "event=store_register_not_written error=Permission denied" in caplog.text


def test_a_backup_inside_the_data_folder_or_cut_short_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    """A backup into the images folder copied itself into itself until Python gave up, and one cut short by a full
    disk left a folder that looked like a backup, some keys or images missing."""
    import shutil

    from core.errors import StoreError
    from core.storage.backup import backup_embedded

    data = tmp_path / "data"
    store = SQLiteStore(data / "results.sqlite3")
    store.add(FIXTURE[0])
    (data / "images").mkdir()
    with pytest.raises(StoreError, match="inside the data folder"):
        backup_embedded(data, data / "images" / "bk")
    assert not (data / "images" / "bk").exists()
    made = backup_embedded(data, tmp_path / "first")  # no patient-reference key here: the note does not claim one
    assert "patient-ref.key" not in made["keys"] and "patient-reference key" not in made["note"]
    shutil.rmtree(tmp_path / "first")

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copytree", full)
    with pytest.raises(StoreError, match="No space left on device"):
        backup_embedded(data, tmp_path / "backup")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no backup, no draft

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "copytree", interrupted)  # Ctrl-C left a hidden copy of the database and its keys
    with pytest.raises(KeyboardInterrupt):
        backup_embedded(data, tmp_path / "backup")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_data_folder_whose_name_a_uri_would_misread_is_read_where_it_is(tmp_path: Path) -> None:
    """ "site#1" pasted into an SQLite URI opened "site" (a new empty file there): the check of the key files found no
    patient references and a new key was made beside a database that had them."""
    from core.storage import holds_keyed_data

    folder = tmp_path / "site#1 50%"
    store = SQLiteStore(folder / "results.sqlite3")
    store.add(replace(FIXTURE[0], patient_ref="a" * 64))
    assert holds_keyed_data(folder / "results.sqlite3", "patient-ref.key")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site#1 50%"]  # no stray file beside it
    (tmp_path / "old.sqlite3").write_bytes(b"")  # an empty file, or one from before the keyed data: nothing to lose
    assert not holds_keyed_data(tmp_path / "old.sqlite3", "audit.key")


def test_a_mongodb_client_writes_to_a_majority_with_short_timeouts_and_says_when_it_cannot_validate(caplog) -> None:
    """RELIABILITY: w="majority", a 2 s server selection and 3 s operations (no server needed to check), and a
    validator the server refuses (a user without the right) was passed over without a word."""
    import logging

    import mongomock
    from pymongo.errors import OperationFailure

    store = MongoStore.connect("mongodb://127.0.0.1:9/?directConnection=true")
    options = store._client.options
    assert options.write_concern.document["w"] == "majority" and options.server_selection_timeout == 2
    assert options.timeout == 3 and options.codec_options.tz_aware
    assert store._collection.write_concern.document["w"] == "majority"
    store._client.close()

    db = mongomock.MongoClient(tz_aware=True)["btd_validator"]

    def refused(*args, **kwargs):
        raise OperationFailure("not authorized on btd_validator to execute command { create: ... }", 13)

    local = MongoStore(db.client, "btd_validator")
    local._db = db
    db.create_collection = refused  # what a server says to a user without the right to set a validator
    with caplog.at_level(logging.WARNING, logger="btd.storage"):
        local.add(make_record(1, utc(2026, 5, 1, 9, 0)))
    assert "event=store_validator_not_installed error=OperationFailure" in caplog.text
    assert local.summary().total == 1  # the store works on, unvalidated


def test_a_commit_that_fails_leaves_no_transaction_open_behind_it(tmp_path: Path) -> None:
    """A COMMIT refused (a reader holding the file in rollback-journal mode) left the connection inside the dead
    transaction: later saves on that thread said "saved", other sessions were locked out, and nothing reached the
    file."""
    from core.errors import StoreError
    from core.services import audit
    from core.services.access import COMMAND_LINE

    path = tmp_path / "results.sqlite3"
    store = SQLiteStore(path, busy_timeout_s=0.2)
    store._connection().execute("PRAGMA journal_mode=DELETE")  # as where WAL is not available
    reader = sqlite3.connect(path)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM scans").fetchall()  # holds a shared lock until it ends
    with pytest.raises(StoreError), store.atomic():  # a result and its event, as every save
        store.add(make_record(1, datetime(2026, 12, 1, tzinfo=UTC)))
        audit.record(store, COMMAND_LINE, "upload", "x")
    assert not store._connection().in_transaction
    reader.rollback()
    assert store.add(make_record(2, datetime(2026, 12, 1, tzinfo=UTC)))
    with sqlite3.connect(path) as other:
        assert other.execute("SELECT count(*) FROM scans").fetchone()[0] == 1


def test_a_restore_during_a_unit_of_work_commits_none_of_it_anywhere(tmp_path: Path) -> None:
    """The result went with the old file and its audit event into the restored one."""
    from core.errors import StoreUnavailable
    from core.services import audit
    from core.services.access import COMMAND_LINE

    path = tmp_path / "results.sqlite3"
    store = SQLiteStore(path)
    shutil.copy(path, tmp_path / "backup.sqlite3")
    with pytest.raises(StoreUnavailable, match="replaced"), store.atomic():
        store.add(make_record(1, datetime(2026, 12, 1, tzinfo=UTC)))
        os.replace(tmp_path / "backup.sqlite3", path)
        audit.record(store, COMMAND_LINE, "upload", "x")
    assert store.summary().total == 0 and store.audit_events() == []


def test_study_references_alone_make_a_database_keyed(tmp_path: Path) -> None:
    """A data folder restored without its key file, holding series of studies but no patient reference, got a new
    key: the study's series saved after it had another study reference (one study counted as two)."""
    from core.storage import holds_keyed_data

    store = SQLiteStore(tmp_path / "results.sqlite3")
    store.add(replace(FIXTURE[0], patient_ref=None, study_ref="b" * 64))
    assert holds_keyed_data(tmp_path / "results.sqlite3", "patient-ref.key")


def test_a_backup_taken_after_another_process_upgraded_the_file_never_replaces_the_old_versions_copy(
    tmp_path: Path,
) -> None:
    """The app and the PACS watch started together: one upgraded the file while the other was copying it, and the
    ".v8.bak" was replaced by an already upgraded copy."""
    from core.storage.migrations import _backup

    path = tmp_path / "results.sqlite3"
    SQLiteStore(path).add(FIXTURE[0])  # the current version: what the other process left
    kept = tmp_path / "results.sqlite3.v8.bak"
    copy = sqlite3.connect(kept)  # stands for the version-8 copy the other process made
    copy.executescript("CREATE TABLE scans (id TEXT); PRAGMA user_version = 8;")
    copy.close()
    connection = sqlite3.connect(path)
    _backup(connection, path, 8)
    connection.close()
    copy = sqlite3.connect(kept)
    assert copy.execute("PRAGMA user_version").fetchone()[0] == 8
    copy.close()
    assert sorted(p.name for p in tmp_path.iterdir() if "tmp" in p.name) == []


def test_a_full_disk_is_said_as_such_when_saving_and_when_upgrading(tmp_path: Path, monkeypatch) -> None:
    """A full disk read "cannot be opened for writing" (a permissions problem), and during an upgrade SQLite's own
    rollback made ours fail with "cannot rollback - no transaction is active", which hid the cause."""
    from core.storage import migrations

    store = SQLiteStore(tmp_path / "results.sqlite3")
    connection = store._connection()
    connection.execute(f"PRAGMA max_page_count = {connection.execute('PRAGMA page_count').fetchone()[0]}")
    with pytest.raises(StoreUnavailable, match="disk holding the results database is full"):
        for k in range(100):
            store.append_audit(
                AuditEvent(utc(2026, 5, 1), "root", "admin", "account_created", f"u{k}", {"pad": "x" * 4000})
            )
    real = migrations.create_schema

    def on_a_full_disk(connection: sqlite3.Connection) -> None:
        connection.execute(f"PRAGMA max_page_count = {connection.execute('PRAGMA page_count').fetchone()[0]}")
        real(connection)

    monkeypatch.setattr(migrations, "create_schema", on_a_full_disk)
    path = tmp_path / "old.sqlite3"
    shutil.copy(ROUND_1_DATABASE, path)
    with pytest.raises(StoreError, match="is full"):
        SQLiteStore(path)
    monkeypatch.setattr(migrations, "create_schema", real)
    assert SQLiteStore(path).summary().total == 6  # nothing half-done: the upgrade runs whole on a disk with room
    # a full disk where SQLite cannot make its journal files is its "disk I/O error": said with where to look
    with pytest.raises(StoreUnavailable, match=r"input/output error.*disk has free space"), store._errors():
        raise sqlite3.OperationalError("disk I/O error")
