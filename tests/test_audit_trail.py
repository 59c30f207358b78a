"""The audit trail's use cases on both stores: the page's check re-hashes only what came after the last verified
event, the command line's full check everything; events are filtered, paged and redacted where they are read."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.domain.people import AuditEvent, VerifiedPoint
from core.errors import AccessDenied
from core.services import audit
from core.services.access import Actor
from core.storage.mongo import MongoStore
from core.storage.sqlite import SQLiteStore

SUPERVISOR, ADMIN = Actor("boss", "supervisor"), Actor("root", "admin")
KEY = b"k" * 32


@pytest.fixture(params=["sqlite", "mongomock"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLiteStore | MongoStore]:
    """A store whose chain is keyed, as the app opens it."""
    if request.param == "sqlite":
        store = SQLiteStore(tmp_path / "results.sqlite3")
    else:
        import mongomock

        store = MongoStore(mongomock.MongoClient(tz_aware=True), collection=f"scans_{uuid.uuid4().hex[:8]}")
    store.audit_key = KEY
    yield store


def write(store, count: int, start: int = 0) -> None:
    """``count`` account changes by the admin, one a minute."""
    for k in range(start, start + count):
        at = datetime(2026, 5, 1, 9, tzinfo=UTC) + timedelta(minutes=k)
        store.append_audit(AuditEvent(at, "root", "admin", "account_created", f"user-{k}", {"n": k}))


def tamper(store, seq: int, **fields) -> None:
    """Edit event ``seq`` behind the application's back (SQLite: its append-only triggers dropped first)."""
    if isinstance(store, SQLiteStore):
        database = sqlite3.connect(store.path)
        database.execute("DROP TRIGGER IF EXISTS audit_append_only_update")
        database.execute("DROP TRIGGER IF EXISTS audit_append_only_delete")
        if fields:
            assignments = ", ".join(f"{name} = ?" for name in fields)
            database.execute(f"UPDATE audit SET {assignments} WHERE seq = ?", (*fields.values(), seq))
        else:
            database.execute("DELETE FROM audit WHERE seq = ?", (seq,))
        database.commit()
        database.close()
    elif fields:
        store._db["audit"].update_one({"_id": seq}, {"$set": fields})
    else:
        store._db["audit"].delete_one({"_id": seq})


def test_the_page_check_rehashes_only_the_events_after_the_last_verified_one(store) -> None:
    write(store, 5)
    first = audit.verify_new(store, SUPERVISOR)  # never checked: the whole chain
    assert (first.intact, first.events, first.checked, first.problem) == (True, 5, 5, None)
    assert store.audit_verified() == VerifiedPoint.signed(5, store.audit_events()[-1].hash, KEY)
    write(store, 1, start=5)
    then = audit.verify_new(store, SUPERVISOR)
    assert (then.intact, then.events, then.checked) == (True, 6, 1)
    assert (audit.verify_new(store, SUPERVISOR).checked, store.audit_verified().seq) == (0, 6)
    assert audit.verify(store).checked == 6  # the command line's check: always everything


class Busy:
    """The store as the application's other writers make it: ``writes`` events appended after each read of the
    head or of the events (the seconds between two reads of a long chain)."""

    def __init__(self, store, writes: int = 2) -> None:
        self.store, self.writes, self.written = store, writes, 0

    def __getattr__(self, name):
        return getattr(self.store, name)

    def _meanwhile(self) -> None:
        write(self.store, self.writes, start=100 + self.written)
        self.written += self.writes

    def audit_head(self):
        head = self.store.audit_head()
        self._meanwhile()
        return head

    def audit_events(self, *args):
        events = self.store.audit_events(*args)
        self._meanwhile()
        return events


def test_the_full_check_holds_while_the_application_writes(store) -> None:
    """The events were read, then the head: events appended between the two put the head past the events read.
    "events were deleted", exit 1, 8 times in 20 beside a few readers at work, and the page said broken until a
    quiet full check."""
    write(store, 5)
    check = audit.verify(Busy(store))
    assert check.intact and check.problem is None, check.problem
    assert audit.verify_new(store, SUPERVISOR).intact and audit.verify(store).intact  # the point is not broken


def test_the_page_check_never_marks_over_what_a_full_check_found_meanwhile(store) -> None:
    """The page's check read the verified point, re-hashed the new events (seconds) and then marked its end: a
    full check that found an edit meanwhile had its "broken" mark overwritten, and the page said whole again."""
    write(store, 5)
    audit.verify_new(store, SUPERVISOR)
    write(store, 3, start=5)
    tamper(store, 2, actor="someone-else")  # before the point: the full check's to find

    class FullCheckMeanwhile:
        def __getattr__(self, name):
            return getattr(store, name)

        def audit_events(self, *args):
            events = store.audit_events(*args)
            if args:  # the page's read of the new events: the full check runs meanwhile
                assert not audit.verify(store).intact
            return events

    audit.verify_new(FullCheckMeanwhile(), SUPERVISOR)
    assert store.audit_verified().hash == audit.BROKEN
    assert not audit.verify_new(store, SUPERVISOR).intact


def test_an_edit_after_the_verified_event_is_found_by_the_page_check(store) -> None:
    write(store, 5)
    audit.verify_new(store, SUPERVISOR)
    write(store, 3, start=5)
    tamper(store, 7, actor="someone-else")
    check = audit.verify_new(store, SUPERVISOR)
    assert not check.intact and check.first_bad.seq == 7 and check.checked == 3
    assert check.problem.startswith("event 7 was edited")
    assert store.audit_verified().seq == 5  # not moved over the edit


def test_a_deleted_event_after_the_verified_one_is_found_by_the_page_check(store) -> None:
    write(store, 5)
    audit.verify_new(store, SUPERVISOR)
    write(store, 3, start=5)
    tamper(store, 8)  # the last: the head still names it
    check = audit.verify_new(store, SUPERVISOR)
    assert not check.intact and "head says 8: events were deleted" in check.problem


def test_an_event_written_past_the_head_is_found_by_the_page_check(store) -> None:
    """The page re-hashed the events up to the head only: one written behind the application's back after it (a
    forged review) was listed on the page under a green "the chain holds" until the next real event."""
    from core.domain.people import chained

    write(store, 3)
    assert audit.verify_new(store, SUPERVISOR).intact
    last = store.audit_events()[-1]
    forged = chained(AuditEvent(last.at, "dr-b", "radiologist", "review", "f" * 64, {}), last.hash, last.seq + 1, None)
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path) as database:
            database.execute(
                "INSERT INTO audit (seq, at_ms, actor, role, action, target, detail, prev_hash, hash) "
                "VALUES (?, ?, ?, ?, ?, ?, '{}', ?, ?)",
                (4, int(last.at.timestamp() * 1000), "dr-b", "radiologist", "review", "f" * 64, last.hash, forged.hash),
            )
    else:
        store._db["audit"].insert_one(
            {"_id": 4, "at": last.at, "actor": "dr-b", "role": "radiologist", "action": "review",
             "target": "f" * 64, "detail": {}, "prev_hash": last.hash, "hash": forged.hash}
        )  # fmt: skip
    check = audit.verify_new(store, SUPERVISOR)
    assert not check.intact and check.first_bad.seq == 4 and store.audit_verified().seq == 3


def test_appends_whose_head_writes_are_still_under_way_are_no_alarm_on_the_page() -> None:
    """MongoDB writes an event, then the head: with several copies of the app appending, the page's check saw
    events past the head, checked the chain whole and reported "events were deleted" on a healthy trail."""
    import mongomock

    store = MongoStore(mongomock.MongoClient(tz_aware=True), collection=f"scans_{uuid.uuid4().hex[:8]}")
    store.audit_key = KEY
    write(store, 3)
    assert audit.verify_new(store, SUPERVISOR).intact
    pending = store._db["meta"].find_one({"_id": "audit_head"})
    write(store, 2, start=3)  # two appends whose head writes have not landed yet
    store._db["meta"].replace_one({"_id": "audit_head"}, pending)
    check = audit.verify_new(store, SUPERVISOR)
    assert check.intact and check.problem is None and store.audit_verified().seq == 3


def test_a_mongodb_event_whose_id_is_text_breaks_the_chain_and_blocks_no_append() -> None:
    """An event inserted behind the app's back with ``_id: "2"`` was listed and exported under "chain intact" (read
    by number, never checked), and every append after the next failed "too busy" (text sorts above numbers)."""
    import mongomock

    store = MongoStore(mongomock.MongoClient(tz_aware=True), collection=f"scans_{uuid.uuid4().hex[:8]}")
    store.audit_key = KEY
    write(store, 3)
    events = store._people("audit")
    forged = events.find_one({"_id": 2}) | {"_id": "2", "action": "account_role_changed", "detail": {"role": "admin"}}
    events.insert_one(forged)
    check = audit.verify(store)
    assert not check.intact and check.first_bad.action == "account_role_changed" and check.first_bad.seq == -1
    assert not audit.verify_new(store, SUPERVISOR).intact
    for k in range(2):  # appends go on after the last numbered event
        assert audit.record(store, ADMIN, "store_backup", None).seq == 4 + k
    assert audit.signs_the_chain(store) and audit.key_doubt(store) is None  # the forged event never reads as last
    events.delete_one({"_id": "2"})
    events.replace_one({"_id": 5}, events.find_one({"_id": 5}) | {"_id": 5.0})  # a JSON import: 5.0 is event 5
    assert audit.verify(store).intact


def test_the_full_check_counts_every_mongodb_event_with_a_text_id_when_they_straddle_a_chunks_end(monkeypatch):
    """Events with no number are listed after the numbered ones in every read and cannot be paged by number: when
    they straddled the last chunk's end the check stopped there and counted fewer events than the trail holds."""
    import mongomock

    monkeypatch.setattr(audit, "CHUNK", 4)
    store = MongoStore(mongomock.MongoClient(tz_aware=True), collection=f"scans_{uuid.uuid4().hex[:8]}")
    store.audit_key = KEY
    write(store, 6)  # a chunk of 4, then 2 numbered events and the 3 text ones: 5, past the chunk's end
    events = store._people("audit")
    for name in ("a", "b", "c"):
        events.insert_one(events.find_one({"_id": 2}) | {"_id": name})
    check = audit.verify(store)
    assert not check.intact and check.events == 9 and check.first_bad.seq == -1


def test_an_edit_before_the_verified_event_is_found_by_the_full_check_on_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The split the page's speed rests on: what was verified is not re-hashed by the page; ``audit verify`` re-hashes
    everything and names the edit."""
    from core.cli import main
    from core.services.resources import open_results_store

    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("MONGODB_URI", raising=False)
    store = open_results_store()
    write(store, 5)
    assert audit.verify_new(store, SUPERVISOR).intact
    tamper(store, 2, actor="someone-else")
    write(store, 2, start=5)
    assert audit.verify_new(store, SUPERVISOR).checked == 2  # the page does not look back
    assert main(["audit", "verify"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["intact"] is False and report["first_bad_event"]["seq"] == 2 and report["events"] == 7
    check = audit.verify_new(store, SUPERVISOR)  # the failed full check marked the chain broken: not re-hashed again
    assert store.audit_verified().seq == 0 and not check.intact and check.checked == 0
    assert check.problem == audit.BROKEN_BEFORE and "Check every event" in check.problem


def test_a_full_check_that_read_the_chain_before_an_edit_never_clears_the_mark_of_one_that_found_it(
    store, monkeypatch
) -> None:
    """Two full checks at once (the scheduled `audit verify`, the page's "Check every event"): the one that had read
    the chain before an event was edited finished last and marked its point over the other's "broken" mark, and the
    page's check then said the chain holds."""
    write(store, 8)
    assert audit.verify(store).intact
    walk, other = audit._walk, []

    def edited_meanwhile(*args, **kwargs):  # the first check has read the chain; then the edit, and the other check
        walked = walk(*args, **kwargs)
        monkeypatch.setattr(audit, "_walk", walk)
        tamper(store, 5, action="account_deleted")
        other.append(audit.verify(store))
        return walked

    monkeypatch.setattr(audit, "_walk", edited_meanwhile)
    first = audit.verify(store)
    assert first.intact and not other[0].intact  # each says what it read
    page = audit.verify_new(store, SUPERVISOR)
    assert not page.intact and page.problem == audit.BROKEN_BEFORE


@pytest.mark.parametrize(
    "case", ["moved past an edit", "signature rewritten", "its event edited", "its content edited", "its event gone"]
)
def test_a_verified_point_that_no_longer_matches_the_chain_is_a_broken_chain(store, case) -> None:
    """Whoever edits the database cannot make the page skip an edit by moving the verified point, and a point that
    does not match is reported and left where it was (never silently verified again); the full check names the
    edit (the page re-hashed the whole chain on every look: 20 s at a million events)."""
    write(store, 6)
    audit.verify_new(store, SUPERVISOR)
    events = {e.seq: e for e in store.audit_events()}
    point = store.audit_verified()
    if case == "moved past an edit":
        write(store, 2, start=6)
        tamper(store, 7, actor="someone-else")
        store.mark_audit_verified(VerifiedPoint(8, store.audit_events()[-1].hash, point.mac))
    elif case == "signature rewritten":
        store.mark_audit_verified(VerifiedPoint(3, events[3].hash, "0" * 64))
    elif case == "its event edited":
        tamper(store, 6, hash="hmac:" + "f" * 64)
    elif case == "its content edited":  # the newest event, its hash left: the page showed the forged actor under
        tamper(store, 6, actor="someone-else")  # "the chain holds", nothing re-hashed
    else:
        tamper(store, 6)
    stored = store.audit_verified()
    check = audit.verify_new(store, SUPERVISOR)
    assert not check.intact and check.problem and check.checked == 0  # not re-hashed
    assert store.audit_verified() == stored
    assert audit.verify_new(store, SUPERVISOR).problem == check.problem  # still broken on the next look
    if case == "signature rewritten":  # nothing else changed: only the explicit full check restores the point
        assert "record of the last verified event was altered" in check.problem
        assert audit.verify(store).intact and audit.verify_new(store, SUPERVISOR).intact
    if case == "moved past an edit":
        assert audit.verify(store).first_bad.seq == 7 and not audit.verify_new(store, SUPERVISOR).intact
    if case == "its content edited":
        assert check.problem.startswith("event 6 was edited") and audit.verify(store).first_bad.seq == 6


def _raw_head(store):
    """The chain's head row (SQLite) or document (MongoDB) as stored, to put back later."""
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path) as database:
            return database.execute("SELECT seq, hash, keyed_since, mac FROM audit_head").fetchone()
    return store._db["meta"].find_one({"_id": "audit_head"})


def _put_head(store, raw) -> None:
    """Put back a head read by :func:`_raw_head` behind the application's back (None: remove the head)."""
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path) as database:
            database.execute("DELETE FROM audit_head")
            if raw is not None:
                database.execute("INSERT INTO audit_head (id, seq, hash, keyed_since, mac) VALUES (1, ?, ?, ?, ?)", raw)
    elif raw is None:
        store._db["meta"].delete_one({"_id": "audit_head"})
    else:
        store._db["meta"].replace_one({"_id": "audit_head"}, raw)


@pytest.mark.parametrize("cut", ["to an earlier head", "to the first event, head removed"])
def test_a_chain_cut_back_before_the_verified_event_stays_broken_after_a_full_check(store, cut) -> None:
    """The newest events deleted and an earlier signed head put back (any backup holds one; MongoDB's first event
    may stand without a head): the page's check found it, then a full check read the shorter chain as whole and
    moved the verified point back to its end, which quieted the page. Every check now says broken; the point stays."""
    write(store, 7)
    earlier = _raw_head(store)
    write(store, 3, start=7)
    assert audit.verify_new(store, SUPERVISOR).intact and store.audit_verified().seq == 10
    keep = 7 if cut == "to an earlier head" else 1
    for seq in range(10, keep, -1):
        tamper(store, seq)
    _put_head(store, earlier if keep == 7 else None)
    full = audit.verify(store)
    assert not full.intact and store.audit_verified().seq == 10
    if keep == 7:  # SQLite says a chain without its head is broken anyway
        assert "event 10, verified earlier, is no longer in the chain" in full.problem
    assert not audit.verify_new(store, SUPERVISOR).intact


def test_an_unkeyed_trail_replaced_by_a_re_hashed_one_stays_broken_after_a_full_check(store) -> None:
    """A failed full check sent the page's check back to the chain's start: an unkeyed trail replaced by one
    re-hashed whole (the verified event gone) then read intact on the page."""
    from core.domain.people import event_hash

    store.audit_key = None  # a shared MongoDB without [audit] key: re-hashing is possible
    write(store, 5)
    assert audit.verify_new(store, SUPERVISOR).intact and store.audit_verified().seq == 5
    previous = "0" * 64
    for event in store.audit_events():  # every event re-written and re-hashed, the head with them
        forged = replace(event, actor="someone-else", prev_hash=previous, hash="")
        forged = replace(forged, hash=event_hash(forged))
        tamper(store, event.seq, actor=forged.actor, prev_hash=forged.prev_hash, hash=forged.hash)
        previous = forged.hash
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path) as database:
            database.execute("UPDATE audit_head SET hash = ?", (previous,))
    else:
        store._db["meta"].update_one({"_id": "audit_head"}, {"$set": {"hash": previous}})
    assert audit.verify_new(store, SUPERVISOR).intact is False
    full = audit.verify(store)  # whole in itself, but the event verified before is gone
    assert not full.intact and "verified earlier, is no longer in the chain" in full.problem
    assert not audit.verify_new(store, SUPERVISOR).intact and store.audit_verified().seq == 5


def test_events_are_filtered_in_the_database_newest_first_and_redacted_for_supervisors(store, monkeypatch) -> None:
    write(store, 4)
    review_at = datetime(2026, 5, 1, 10, tzinfo=UTC)
    store.append_audit(AuditEvent(review_at, "dr-a", "radiologist", "review", "a" * 64, {"l": "x"}))

    def everything(*args, **kwargs):
        raise AssertionError("the whole trail was read")

    monkeypatch.setattr(store, "audit_events", everything)
    assert [e.seq for e in audit.events(store, ADMIN)] == [5, 4, 3, 2, 1]
    start, end = datetime(2026, 5, 1, 9, 1, tzinfo=UTC), datetime(2026, 5, 1, 9, 3, tzinfo=UTC)
    assert [e.seq for e in audit.events(store, ADMIN, limit=2, before=(end, 4))] == [3, 2]  # the page after seq 4
    assert [e.target for e in audit.events(store, ADMIN, start=start, end=end)] == ["user-2", "user-1"]
    assert audit.count(store, ADMIN, action="account_created", start=start) == 3
    review = audit.events(store, ADMIN, target="a" * 64)
    assert [(e.actor, e.target, e.detail) for e in review] == [("dr-a", "a" * 64, {"l": "x"})]
    for action, detail in (("pacs_pull", {"instances": 8}), ("pacs_send", {"report": "1.2.3.4"})):
        assert audit.redacted(AuditEvent(review_at, "dr-a", "radiologist", action, "b" * 64, detail)).target is None
        assert audit.redacted(AuditEvent(review_at, "dr-a", "radiologist", action, "b" * 64, detail)).detail == {}
    seen = audit.events(store, SUPERVISOR, who="dr-a")
    assert [(e.actor, e.action, e.target, e.detail) for e in seen] == [("dr-a", "review", None, {})]
    assert audit.events(store, SUPERVISOR, action="account_created", limit=1)[0].target == "user-3"
    with pytest.raises(AccessDenied, match="by result or patient"):  # which events a result id selects: no
        audit.events(store, SUPERVISOR, target="a" * 64)
    with pytest.raises(AccessDenied):
        audit.count(store, SUPERVISOR, target="a" * 64)
    with pytest.raises(AccessDenied):
        audit.verify_new(store, Actor("dr-a", "radiologist"))


def test_the_export_reads_every_matching_event_a_page_at_a_time_oldest_first(store, monkeypatch) -> None:
    monkeypatch.setattr(audit, "EXPORT_PAGE", 2)
    write(store, 5)
    lines = audit.export_csv(store, ADMIN, {"action": "account_created", "who": "root"}).decode().splitlines()
    assert lines[0] == '# audit events; filters: {"action": "account_created", "who": "root"}'
    assert [line.split(",")[0] for line in lines[2:]] == ["1", "2", "3", "4", "5"]
    exported = audit.events(store, ADMIN, limit=1)[0]  # itself an event, naming what was exported
    assert exported.action == "audit_export" and exported.detail["filters"] == {
        "action": "account_created",
        "who": "root",
    }
    made = audit.export_csv(store, ADMIN, {"who": "x;=HYPERLINK(1);y", "target": "a" * 64}).decode()
    assert ";=HYPERLINK" not in made.splitlines()[0]  # the typed filter in the heading is no formula either
    seen = audit.events(store, SUPERVISOR, action="audit_export", limit=1)[0]  # supervisors read this event:
    assert seen.detail["filters"] == {"by_who": True, "by_target": True}  # not which result it was, nor a typed
    audit.export_csv(store, ADMIN, {"who": "Smith John MRN 0012345", "action": "review"})  # name that matched none
    seen = audit.events(store, SUPERVISOR, action="audit_export", limit=1)[0]
    assert seen.detail == {"events": 0, "filters": {"by_who": True, "by_action": True}}
    made = audit.export_csv(store, ADMIN, {"who": 'x,=HYPERLINK("http://e.example")'}).decode()
    heading = next(csv.reader(io.StringIO(made.splitlines()[0])))  # written as text: a comma opened a cell
    assert not any(cell.lstrip().startswith(("=", "+", "-", "@")) for cell in heading), heading
    from core.services.exports import spreadsheet_safe

    # in a cell the CSV writer quotes, a comma or a line break opens nothing: a reader's note keeps its text
    assert spreadsheet_safe("Findings:\n- oedema") == "Findings:\n- oedema" and spreadsheet_safe("[1, -3]") == "[1, -3]"


def test_the_audit_export_has_no_cell_a_spreadsheet_would_run(store) -> None:
    """A user name is text someone chose (a single sign-on claim included): never a formula in the export."""
    audit.record(store, Actor('=HYPERLINK("http://x","y")', "radiologist"), "review", "-1+2", note="@SUM(A1)")
    rows = list(csv.reader(io.StringIO(audit.export_csv(store, ADMIN, {}).decode())))
    (event,) = [r for r in rows[2:] if r[4] == "review"]
    assert event[2] == '\'=HYPERLINK("http://x","y")' and event[5] == "'-1+2" and '"@SUM(A1)"' in event[6]
    assert not any(cell.startswith(("=", "+", "-", "@")) for r in rows[1:] for cell in r)


def test_the_chains_head_is_read_through_the_service_by_readers_of_the_trail_only(store) -> None:
    """The Audit page read the head from the store itself, past the role check every other read goes through."""
    assert audit.chain_head(store, SUPERVISOR) is None
    write(store, 3)
    assert audit.chain_head(store, SUPERVISOR) == (3, store.audit_events()[-1].hash)
    with pytest.raises(AccessDenied):
        audit.chain_head(store, Actor("dr-a", "radiologist"))


def test_a_head_whose_own_write_was_cut_off_after_its_event_is_no_tampering_alarm() -> None:
    """MongoDB writes an event, then the chain's head: a timeout between them left the head one behind, and `audit
    verify` said events were deleted (a false alarm) until the next event moved it."""
    import mongomock

    store = MongoStore(mongomock.MongoClient(tz_aware=True), collection=f"scans_{uuid.uuid4().hex[:8]}")
    store.audit_key = KEY
    write(store, 3)
    behind = store._db["meta"].find_one({"_id": "audit_head"})
    write(store, 1, start=3)
    store._db["meta"].replace_one({"_id": "audit_head"}, behind)  # as if the head's update had timed out
    check = audit.verify(store)
    assert check.intact and check.problem is None
    assert audit.verify_new(store, SUPERVISOR).intact  # the page's check after it too (its point stays at the head)
    tamper(store, 4)  # the last event deleted as well: the head past the end is still an alarm
    tamper(store, 3)
    assert "events were deleted" in (audit.verify(store).problem or "")


def test_audit_verify_under_the_wrong_key_says_so_and_leaves_the_pages_check_whole(tmp_path, monkeypatch, capsys):
    """Run without the server's BTD_AUDIT_KEY, ``audit verify`` read every event as edited and wrote its "broken"
    mark, signed with its own key: the Audit page's check under the right key then raised an alarm."""
    from core.cli import main
    from core.storage import open_store

    served = open_store(None, tmp_path, KEY)  # the server, as the app opens it
    audit.record(served, ADMIN, "account_created", "dr-a")
    audit.record(served, ADMIN, "account_created", "dr-b")
    assert audit.verify_new(served, SUPERVISOR).intact
    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BTD_AUDIT_KEY", "0123456789abcdef" * 4)  # not the server's
    assert main(["audit", "verify"]) == 1
    said = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert "does not sign the chain: run it with the server's" in said["problem"] and "first_bad_event" not in said
    check = audit.verify_new(served, SUPERVISOR)
    assert check.intact and check.problem is None
    # under the server's own key, an edit of the newest event is an edit: named, and marked for the page (the
    # first version of this fix called it a wrong key, and the page stayed green)
    monkeypatch.setenv("BTD_AUDIT_KEY", KEY.hex())
    tamper(served, 2, actor="someone-else")
    assert main(["audit", "verify"]) == 1
    said = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert said["problem"].startswith("event 2 was edited") and said["first_bad_event"]["seq"] == 2
    assert not audit.verify_new(served, SUPERVISOR).intact
    # the newest event deleted, the one before it edited and an earlier head put back: the head holds under the
    # server's key, so an edit (the second version of this fix called it a wrong key)
    audit.record(served, ADMIN, "account_created", "dr-c")
    before = _raw_head(served)
    audit.record(served, ADMIN, "account_created", "dr-d")
    tamper(served, 4)
    tamper(served, 3, actor="someone-else")
    _put_head(served, before)
    assert main(["audit", "verify"]) == 1
    said = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert "was edited" in said["problem"] and "first_bad_event" in said


def test_a_command_whose_key_does_not_sign_the_chain_is_refused_and_the_server_never_is(
    store, tmp_path, monkeypatch, capsys
) -> None:
    """The first-admin command run without the server's BTD_AUDIT_KEY wrote its event under the data folder's own
    key: the trail read as tampered with from that event on, for good. A command checks the chain's last event
    (never the head alone: one written before keying, or lost, let the wrong key in); the server is never refused
    (an early version refused every audited action, sign-in included, to the server keyed the right way)."""
    from core.cli import main
    from core.errors import StoreError
    from core.services.resources import open_results_store
    from core.storage import open_store

    audit.record(store, ADMIN, "account_created", "dr-a")
    assert audit.signs_the_chain(store)
    store.audit_key = b"another key, the data folder's own"
    assert not audit.signs_the_chain(store)
    store.audit_key = None
    assert not audit.signs_the_chain(store)
    store.audit_key = KEY
    audit.record(store, ADMIN, "account_created", "dr-b")
    assert audit.verify(store).intact and len(store.audit_events()) == 2
    if isinstance(store, SQLiteStore):  # the head row lost (or written before keying): the events still say
        database = sqlite3.connect(store.path)
        database.execute("DELETE FROM audit_head")
        database.commit()
        database.close()
        store.audit_key = b"another key, the data folder's own"
        assert not audit.signs_the_chain(store)
        store.audit_key = KEY
        audit.record(store, ADMIN, "account_created", "dr-e")
        tamper(store, 3)  # the newest event deleted: the head is ahead of the events, and their tail was empty
        store.audit_key = None
        assert not audit.signs_the_chain(store)
    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "served"))  # the data folder's own key made, then a server
    audit.record(open_results_store(), ADMIN, "account_created", "dr-c")  # started with BTD_AUDIT_KEY writes on
    served = open_store(None, tmp_path / "served", bytes.fromhex("ab" * 32))  # as the app opens it: never refused
    audit.record(served, ADMIN, "account_created", "dr-d")
    with pytest.raises(StoreError, match="not signed with this command's audit key"):
        open_results_store()
    assert main(["users", "list"]) == 2 and "not signed with this" in capsys.readouterr().out
    audit.verify_new(served, SUPERVISOR)  # the Audit page's check: the point it keeps
    point = served.audit_verified()
    assert main(["audit", "verify"]) == 1  # verify still reads it, and says it does not hold under this key
    said = json.loads(capsys.readouterr().out.splitlines()[-1])
    # its key signs the first event only: not the server's, or a tail edited with its head; both said, event named
    assert said["problem"].startswith("the audit key this command runs with signs the chain's first keyed event")
    assert said["first_bad_event"]["seq"] == 2
    assert len(served.audit_events()) == 2  # nothing written: no event, and no "broken" mark for the page
    assert served.audit_verified() == point  # what the server's own check found stands


def test_a_mistyped_expected_head_is_refused_and_marks_nothing(tmp_path, monkeypatch, capsys) -> None:
    """``--expect-head 1:abc`` (a hash cut short) read as "the trail was cut or replaced" and turned the Audit page
    red with nothing edited; an Arabic-Indic digit was read as a sequence number; an empty one checked nothing."""
    from core.cli import main
    from core.services.resources import open_results_store

    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("MONGODB_URI", raising=False)
    store = open_results_store()
    write(store, 2)
    assert main(["audit", "verify"]) == 0
    head = json.loads(capsys.readouterr().out)["head"]
    seq, digest = head.split(":", 1)
    # "" too: `--expect-head "$HEAD"` with the variable unset passed as intact, the rollback check unmade
    for typo in ("1:abc", f"\u0661:{digest}", f"{seq}:{digest[:-1]}", f"{seq}{digest}", "", " "):
        assert main(["audit", "verify", "--expect-head", typo]) == 2
        assert json.loads(capsys.readouterr().out)["error"]["code"] == "bad_usage"
    assert audit.verify_new(store, SUPERVISOR).intact  # the page's check still holds
    assert main(["audit", "verify", "--expect-head", head]) == 0


def test_a_command_with_the_servers_key_opens_a_database_whose_newest_event_was_edited(tmp_path, monkeypatch) -> None:
    """The newest event edited under the server's key: every command refused, blaming the key, and no one could run
    ``users`` or a backup; the key signs the chain's head, so it is the server's, and verify names the edit."""
    from core.errors import StoreError
    from core.services.resources import open_results_store

    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("BTD_AUDIT_KEY", "the server's audit key, long enough")
    monkeypatch.delenv("MONGODB_URI", raising=False)
    write(open_results_store(), 3)
    tamper(open_results_store(), 3, actor="someone-else")
    store = open_results_store()  # opened
    assert audit.verify(store).first_bad.seq == 3
    monkeypatch.setenv("BTD_AUDIT_KEY", "another audit key, just as long")
    with pytest.raises(StoreError, match="not signed with this command's audit key"):
        open_results_store()


@pytest.mark.parametrize("chunk", [1, 3, 10, audit.CHUNK])
def test_the_full_check_reads_the_chain_a_chunk_at_a_time_and_finds_what_it_found_whole(store, monkeypatch, chunk):
    """The full check held every event at once: 1.3 GB for a million events, in the server on the Audit page's
    "check every event". Read a chunk at a time, each chunk's first event is checked against the one before it."""
    monkeypatch.setattr(audit, "CHUNK", chunk)
    write(store, 10)
    whole = audit.verify(store)
    assert whole.intact and whole.events == 10 and store.audit_verified().seq == 10
    assert not audit.verify(store, expected_head=(4, "0" * 64)).intact  # a noted head that is not in the chain
    last = store.audit_events()[-1]
    assert audit.verify(store, expected_head=(last.seq, last.hash)).intact
    tamper(store, 4)  # at a chunk's edge (chunks of 1 and 3): its next event's link no longer holds
    deleted = audit.verify(store)
    assert not deleted.intact and deleted.first_bad.seq == 5 and deleted.events == 9
    tamper(store, 8, actor="someone-else")
    edited = audit.verify(store)
    assert not edited.intact and edited.first_bad.seq == 5  # the first break, still


def test_an_export_whose_filters_match_nothing_says_so(tmp_path, monkeypatch, capsys) -> None:
    """``audit export --action nonsense`` printed the heading and no event, exit 0, and nothing said that the
    action was mistyped (the actions are not the page's words: "sign in failed" matches nothing)."""
    from core.cli import main
    from core.services.resources import open_results_store

    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("MONGODB_URI", raising=False)
    write(open_results_store(), 2)
    capsys.readouterr()
    assert main(["audit", "export", "--action", "account created"]) == 0
    out, err = capsys.readouterr()
    assert out.count("\n") == 2 and "No event matches these filters" in err  # the heading, the columns
    assert main(["audit", "export", "--action", "account_created"]) == 0
    out, err = capsys.readouterr()
    assert out.count(",account_created,") == 2 and "No event matches" not in err
