"""Audit trail benchmark: fill a temporary SQLite store with a keyed chain of audit events, then time what the audit
page does on each rerun (the filtered, paged query and its count, read in the database), the page's chain check
after one new event (from the last verified event on), and the command line's full check of every event; then
the page's check once a full check has found the chain broken.

    .venv/bin/python bench/audit.py [--events 200000] [--days 365]

Events spread over DAYS days up to now, 60 accounts, result actions (upload, open, review) with result ids and
account actions with account names. They are chained with the audit key exactly as the store chains them, but
inserted in bulk (one transaction) to save the minutes that 200,000 single appends take. Also times the version-7
file's upgrade (building the indexes) and, for comparison, reading every event to filter it in Python (what the
page did before schema version 8). Prints a table and one JSON object (milliseconds).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.store import timed
from core.domain.people import NO_HEAD, AuditEvent, AuditQuery, chained
from core.domain.times import from_ms, to_ms
from core.evaluation.metrics import machine
from core.services import audit
from core.services.access import Actor
from core.storage.sqlite import SQLiteStore

ADMIN, SUPERVISOR = Actor("bench-admin", "admin"), Actor("bench-supervisor", "supervisor")
ACTIONS = ("sign_in", "upload", "open", "review", "history", "sign_in_failed", "account_created", "audit_export")
WEIGHTS = (0.15, 0.3, 0.25, 0.2, 0.04, 0.03, 0.02, 0.01)
RESULT_ACTIONS = {"upload", "open", "review", "history"}


def fill(store: SQLiteStore, n: int, days: int, seed: int = 0) -> None:
    """``n`` chained, keyed events in one transaction (the store's own append: one at a time, a transaction each)."""
    rng = np.random.default_rng(seed)
    now = datetime.now(UTC)
    offsets = np.sort(rng.uniform(0, days * 86400, n))[::-1]  # oldest first, as appended
    actions = rng.choice(len(ACTIONS), n, p=WEIGHTS)
    accounts = rng.integers(0, 60, n)
    results = rng.integers(0, n // 4 + 1, n)
    previous, head, rows = NO_HEAD.hash, NO_HEAD, []
    for k in range(n):
        action = ACTIONS[actions[k]]
        target = f"{results[k]:064x}" if action in RESULT_ACTIONS else f"user-{accounts[k]}"
        event = AuditEvent(
            now - timedelta(seconds=float(offsets[k])), f"dr-{accounts[k]}", "radiologist", action, target, {"n": k}
        )
        linked = chained(event, previous, k + 1, store.audit_key)
        detail = json.dumps(linked.detail, sort_keys=True)
        rows.append((k + 1, to_ms(linked.at), linked.actor, linked.role, action, target, detail, previous, linked.hash))
        previous, head = linked.hash, head.after(k + 1, linked.hash, store.audit_key)
    connection = store._connection()
    connection.execute("BEGIN IMMEDIATE")
    connection.executemany("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    connection.execute(
        "INSERT INTO audit_head (id, seq, hash, keyed_since, mac) VALUES (1, ?, ?, ?, ?)",
        (head.seq, head.hash, head.keyed_since, head.mac),
    )
    connection.execute("COMMIT")


def page_queries(store: SQLiteStore) -> dict[str, dict[str, float]]:
    """What one rerun of the audit page reads: the count and the newest page of the events matching its filters."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    window = {"start": today - timedelta(days=30), "end": today + timedelta(days=1)}
    cases = {
        "last 30 days (the page's default)": {**window},
        "last 30 days, one action": {**window, "action": "review"},
        "last 30 days, one account": {**window, "who": "dr-7"},
        "last 30 days, one account and action": {**window, "who": "dr-7", "action": "sign_in_failed"},
        "a year, one target (admin)": {"start": today - timedelta(days=366), "target": "user-7"},
    }
    figures = {"a page 90 % of the way back, all dates (an export's late page)": timed(deep_page(store))}
    for name, filters in cases.items():
        viewer = ADMIN if "target" in filters else SUPERVISOR

        def rerun(filters=filters, viewer=viewer) -> None:
            audit.count(store, viewer, **filters)
            shown = audit.events(store, viewer, **filters)
            if len(shown) == audit.PAGE:  # and the next page, through the keyset
                audit.events(store, viewer, **filters, before=(shown[-1].at, shown[-1].seq or 0))

        figures[name] = timed(rerun)
    return figures


def deep_page(store: SQLiteStore) -> Callable[[], object]:
    """A page far back in a dated range, as an export's late pages and the page's "Older" button read it."""
    every = store.count_audit(AuditQuery())
    at_ms, seq = store._query(
        "SELECT at_ms, seq FROM audit ORDER BY at_ms DESC, seq DESC LIMIT 1 OFFSET ?", [every * 9 // 10]
    )[0]
    query = AuditQuery(end=datetime.now(UTC) + timedelta(days=1), before=(from_ms(at_ms), int(seq)))
    return lambda: store.find_audit(query, audit.EXPORT_PAGE)


def in_python(store: SQLiteStore) -> None:
    """The page before schema version 8: every event read, then filtered here."""
    start = datetime.now(UTC) - timedelta(days=30)
    [e for e in store.audit_events() if e.action == "review" and e.at >= start]


def after_new_events(
    store: SQLiteStore, repeats: int, expected: Callable[[audit.Verification], bool]
) -> dict[str, float]:
    """The page's check after one new event each time, each answer as ``expected``."""
    samples = []
    for _ in range(repeats):
        audit.record(store, ADMIN, "audit_export", None, events=0)
        t0 = time.perf_counter()
        check = audit.verify_new(store, SUPERVISOR)
        samples.append((time.perf_counter() - t0) * 1000)
        assert expected(check), check
    return {"p50": round(statistics.median(samples), 2), "max": round(max(samples), 2)}


def incremental(store: SQLiteStore, repeats: int = 7) -> dict[str, float]:
    """The page's check after one new event each time (the first check, of everything, is not counted)."""
    return after_new_events(store, repeats, lambda check: check.intact and check.checked == 1)


def broken(store: SQLiteStore, path: Path, repeats: int = 3) -> dict[str, float]:
    """The page's check after one new event each time, once a full check found an old event edited (before session
    30 it re-hashed the whole chain on each such rerun, to name the edit again; now it says broken at once)."""
    with sqlite3.connect(path) as connection:
        connection.execute("DROP TRIGGER audit_append_only_update")
        connection.execute("UPDATE audit SET actor = 'someone-else' WHERE seq = 10")
    assert not audit.verify(store).intact  # marks the chain broken
    return after_new_events(store, repeats, lambda check: not check.intact)


def upgrade_from_version_7(path: Path) -> float:
    """Reopen the file as version 7 wrote it (no audit indexes but the one by action): the backup and index build."""
    connection = sqlite3.connect(path)
    for name in ("audit_by_time", "audit_by_actor", "audit_by_target"):
        connection.execute(f"DROP INDEX {name}")
    connection.execute("DROP TABLE audit_verified")
    connection.execute("PRAGMA user_version = 7")
    connection.commit()
    connection.close()
    t0 = time.perf_counter()
    SQLiteStore(path).schema_version()
    return round((time.perf_counter() - t0) * 1000, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--days", type=int, default=365)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="btd-audit-bench-") as folder:
        path = Path(folder) / "results.sqlite3"
        key = os.urandom(32)
        store = SQLiteStore(path)
        store.audit_key = key
        t0 = time.perf_counter()
        fill(store, args.events, args.days)
        report: dict = {"machine": machine(), "events": args.events, "days": args.days}
        report["fill_s"] = round(time.perf_counter() - t0, 1)
        report["upgrade_from_version_7_ms"] = upgrade_from_version_7(path)
        store = SQLiteStore(path)  # the upgraded file
        store.audit_key = key
        report["page_rerun_ms"] = page_queries(store)
        report["filter_in_python_ms"] = timed(lambda: in_python(store), repeats=3)
        t0 = time.perf_counter()
        first = audit.verify_new(store, SUPERVISOR)  # no verified point yet: everything, once
        report["first_page_check_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        assert first.intact and first.checked == args.events, first
        report["incremental_check_after_1_event_ms"] = incremental(store)
        report["full_check_ms"] = timed(lambda: audit.verify(store), repeats=3)
        assert audit.verify(store).intact
        report["broken_chain_page_check_after_1_event_ms"] = broken(store, path)
    table = {f"page rerun, {name}": figures for name, figures in report["page_rerun_ms"].items()}
    table |= {name: report[name] for name in ("filter_in_python_ms", "incremental_check_after_1_event_ms")}
    table |= {"full check (command line)": report["full_check_ms"]}
    table |= {"page check after 1 event, chain found broken": report["broken_chain_page_check_after_1_event_ms"]}
    table |= {"first page check (everything, once)": {"p50": report["first_page_check_ms"]}}
    table |= {"upgrade from version 7 (backup, indexes)": {"p50": report["upgrade_from_version_7_ms"]}}
    for name, figures in table.items():
        spread = f"   max {figures['max']:9.2f} ms" if "max" in figures else ""
        print(f"{name:66} p50 {figures['p50']:9.2f} ms{spread}", file=sys.stderr)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
