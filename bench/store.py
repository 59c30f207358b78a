"""Store benchmark: fill SQLite with synthetic records and reviews, then time every dashboard aggregate (the
supervisor's agreement and drift included), the worklist, single inserts and saving a review.

    .venv/bin/python bench/store.py [--records 1000000] [--reviews 300000] [--series 60000]
                                    [--path /tmp/btd-bench.sqlite3]

Records spread over two years with a weekly rhythm, four classes, several model versions, 2 % refused by the input
gate and the calls under 65 % confidence flagged for review; SERIES more of them are whole series, three to a study.
The database file is reused when it already holds the requested number of records
(series are added once). Times each store aggregate and the Statistics page's two service calls (the dashboard per
study and per result, the supervisor's quality board: agreement, confusion, turnaround, drift). Prints a table and
one JSON object (milliseconds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.domain.people import Review
from core.domain.results import Filters, Record, WorklistQuery
from core.evaluation.metrics import machine
from core.services.access import Actor
from core.services.statistics import dashboard, quality_board
from core.storage.mongo import MongoStore
from core.storage.sqlite import SQLiteStore
from core.storage.synthetic import synthetic_record

LABELS = ("glioma", "meningioma", "notumor", "pituitary")
VERSIONS = ("0.9.0", "1.0.0", "1.1.0", "1.2.0")
END = datetime(2026, 11, 1, tzinfo=UTC)
FIRST_DAY, LAST_DAY = (END - timedelta(days=731)).date(), (END - timedelta(days=1)).date()
SUPERVISOR = Actor("bench-supervisor", "supervisor")


def synthetic(n: int, seed: int = 0, offset: int = 0) -> list[Record]:
    rng = np.random.default_rng(seed)
    seconds = rng.uniform(0, 730 * 86400, n)
    weekday_keep = rng.random(n)
    gates = rng.random(n)
    labels = rng.choice(4, n, p=(0.2, 0.15, 0.5, 0.15))
    confidence = np.clip(rng.beta(8, 1.5, n), 0.5, 1.0)  # a call is at least 50 % sure
    records = []
    for i in range(n):
        created = END - timedelta(seconds=float(seconds[i]))
        if created.weekday() >= 5 and weekday_keep[i] < 0.6:  # fewer scans at weekends
            created -= timedelta(days=2)
        label = LABELS[labels[i]]
        c = float(confidence[i])
        version = VERSIONS[min(3, int((730 * 86400 - seconds[i]) / (730 * 86400 / 4)))]
        record = synthetic_record(offset + i, created, label, version, c, uploader="bench")
        if gates[i] < 0.02:  # the input gate refuses a few uploads and flags the uncertain calls, as in use
            record = replace(record, gate="rejected")
        elif c < 0.65:
            record = replace(record, gate="needs_review")
        records.append(record)
    return records


def add_series(store: SQLiteStore, n: int, seed: int = 2) -> None:
    """Benchmark set-up only: ``n`` series results, three to a study, spread like the scans."""
    rng = np.random.default_rng(seed)
    records = []
    for k, record in enumerate(synthetic(n, seed=seed, offset=10**9)):
        study = f"{10**9 + k // 3:064x}"
        records.append(replace(record, section_count=int(rng.integers(20, 200)), study_ref=study))
    for start in range(0, n, 50_000):
        store.add_many(records[start : start + 50_000])


def add_reviews(store: SQLiteStore, n: int, seed: int = 1) -> None:
    """Benchmark set-up only: ``n`` results get one review each (13 % overrides), written in bulk with SQL the way
    the store's add_review writes one (an append-only row and the result's summary)."""
    connection = store._connection()
    rows = connection.execute(  # a refused image is never agreed with (the stores refuse it): not reviewed here
        "SELECT id, created_ms, label FROM scans WHERE gate != 'rejected' ORDER BY random() LIMIT ?", (n,)
    ).fetchall()
    rng = np.random.default_rng(seed)
    others = {"notumor": "glioma", "glioma": "notumor", "meningioma": "glioma", "pituitary": "meningioma"}
    connection.execute("BEGIN")
    for k, (result_id, created_ms, label) in enumerate(rows):
        final = others[label] if rng.random() < 0.13 else label
        reviewed_ms = created_ms + int(rng.exponential(8 * 3_600_000))
        connection.execute(
            "INSERT INTO reviews (result_id, reviewer, created_ms, action, model_label, final_label, reasons, note) "
            "VALUES (?, 'bench', ?, ?, ?, ?, '[]', '')",
            (result_id, reviewed_ms, "agree" if final == label else "override", label, final),
        )
        connection.execute(
            "UPDATE scans SET reviewer = 'bench', review_verdict = ?, final_label = ?, reviewed_ms = ?, "
            "first_reviewed_ms = ?, review_count = 1 WHERE id = ?",
            ("agree" if final == label else "override", final, reviewed_ms, reviewed_ms, result_id),
        )
        if k % 50_000 == 0:
            print(f"reviewed {k:,}", file=sys.stderr, end="\r")
    connection.execute("COMMIT")
    connection.execute("ANALYZE")


def timed(fn, repeats: int = 7) -> dict[str, float]:
    fn()  # warm the page cache
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return {"p50": round(statistics.median(samples), 2), "max": round(max(samples), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--path", default="/tmp/btd-bench.sqlite3")
    parser.add_argument("--reviews", type=int, default=300_000, help="results given a review (SQLite only)")
    parser.add_argument("--series", type=int, default=60_000, help="series results added once (three a study)")
    parser.add_argument("--mongodb-uri", default=None, help="benchmark a real MongoDB instead of SQLite")
    args = parser.parse_args()

    store = MongoStore.connect(args.mongodb_uri, "btd_bench") if args.mongodb_uri else SQLiteStore(Path(args.path))
    report: dict = {"machine": machine(), "store": store.describe()}
    have = store.summary().total
    if have < args.records:
        if have and not args.mongodb_uri:
            Path(args.path).unlink()
            for suffix in ("-wal", "-shm"):
                Path(args.path + suffix).unlink(missing_ok=True)
            store = SQLiteStore(Path(args.path))
        started = time.perf_counter()
        chunk = 50_000
        for start in range(0, args.records, chunk):
            store.add_many(synthetic(min(chunk, args.records - start), seed=start, offset=start))
            print(f"inserted {start + chunk:,}", file=sys.stderr, end="\r")
        report["bulk_insert_records_per_s"] = round(args.records / (time.perf_counter() - started))
        if not args.mongodb_uri:
            add_reviews(store, args.reviews)
    if args.series and not store.summary(Filters(kinds=("series",))).total:
        add_series(store, args.series)
    last_30 = Filters(start=END - timedelta(days=30), end=END)
    last_7 = Filters(start=END - timedelta(days=7), end=END)
    one_year = Filters(start=END - timedelta(days=365), end=END, model_versions=("1.1.0", "1.2.0"))
    queries = {
        "summary (all)": lambda: store.summary(),
        "summary (last 30 days)": lambda: store.summary(last_30),
        "daily counts (all, Europe/Paris)": lambda: store.daily_counts(Filters(), "Europe/Paris"),
        "daily counts (1 year, 2 models, America/New_York)": lambda: store.daily_counts(one_year, "America/New_York"),
        "confidence histogram (all)": lambda: store.confidence_histogram(),
        "confidence histogram (tumour classes)": lambda: store.confidence_histogram(
            Filters(labels=("glioma", "meningioma", "pituitary"))
        ),
        "per model version (all)": lambda: store.by_model(),
        "latest 50": lambda: store.recent(50),
        "model versions": lambda: store.model_versions(),
        "quality per day (all, Europe/Paris)": lambda: store.daily_quality(Filters(), "Europe/Paris"),
        **{
            f"quality per day (all, {zone})": (lambda zone=zone: store.daily_quality(Filters(), zone))
            for zone in ("America/New_York", "America/Los_Angeles", "Asia/Kolkata", "Asia/Tokyo", "Australia/Sydney")
        },
        "quality per day (90 days)": lambda: store.daily_quality(
            Filters(start=END - timedelta(days=90), end=END), "UTC"
        ),
        "confusion: verdict x final label (all)": lambda: store.confusion(Filters()),
        "confusion (one model version)": lambda: store.confusion(Filters(model_versions=("1.2.0",))),
        "review turnaround (all)": lambda: store.turnaround_hours(Filters()),
        "worklist: unreviewed, newest 200": lambda: store.worklist(WorklistQuery()),
        "worklist: disagreements": lambda: store.worklist(WorklistQuery(reviewed=True, disagreements=True)),
        "studies per day (all, Europe/Paris)": lambda: store.daily_studies(Filters(), "Europe/Paris"),
        "studies per day (last 7 days, Europe/Paris)": lambda: store.daily_studies(last_7, "Europe/Paris"),
        "lesion volumes per day (last 7 days)": lambda: store.lesion_volumes(last_7, "Europe/Paris", "day"),
        "lesion volumes per week (2 years)": lambda: store.lesion_volumes(Filters(), "Europe/Paris", "week"),
        "Statistics page: dashboard per study (2 years, Europe/Paris)": lambda: dashboard(
            store,
            SUPERVISOR,
            start_day=FIRST_DAY,
            end_day=LAST_DAY,
            timezone="Europe/Paris",
            period="day",
            unit="study",
            now=END,
        ),
        "Statistics page: dashboard per result (90 days, UTC)": lambda: dashboard(
            store,
            SUPERVISOR,
            start_day=LAST_DAY - timedelta(days=89),
            end_day=LAST_DAY,
            timezone="UTC",
            period="day",
            unit="result",
            now=END,
        ),
        "Statistics page: quality board (2 years, Europe/Paris)": lambda: quality_board(
            store, SUPERVISOR, start_day=FIRST_DAY, end_day=LAST_DAY, timezone="Europe/Paris", period="week"
        ),
    }
    report["records"] = store.summary().total
    report["aggregates_ms"] = {name: timed(fn) for name, fn in queries.items()}
    fresh = synthetic(200, seed=999_999, offset=10**12 + time.time_ns() // 1000)
    samples = []
    for record in fresh:
        record = replace(record, created_at=datetime.now(UTC))
        t0 = time.perf_counter()
        store.add(record)
        samples.append((time.perf_counter() - t0) * 1000)
    report["single_insert_ms"] = {
        "p50": round(statistics.median(samples), 3),
        "p95": round(float(np.percentile(samples, 95)), 3),
    }
    review_samples = []
    for record in fresh[:100]:  # a radiologist's review: append it and update the result, one transaction
        stored = store.recent(1, Filters(start=record.created_at - timedelta(seconds=1)))
        target = store.get(record.id) or (stored[0] if stored else None)
        if target is None or target.gate == "rejected":  # nothing to agree with
            continue
        t0 = time.perf_counter()
        store.add_review(Review(target.id, "bench", datetime.now(UTC), "agree", target.label, target.label))
        review_samples.append((time.perf_counter() - t0) * 1000)
    report["review_save_ms"] = {
        "p50": round(statistics.median(review_samples), 3),
        "p95": round(float(np.percentile(review_samples, 95)), 3),
    }
    for name, figures in report["aggregates_ms"].items():
        print(f"{name:52} p50 {figures['p50']:8.2f} ms   max {figures['max']:8.2f} ms", file=sys.stderr)
    print(f"{'single insert':52} p50 {report['single_insert_ms']['p50']:8.3f} ms", file=sys.stderr)
    print(f"{'review save':52} p50 {report['review_save_ms']['p50']:8.3f} ms", file=sys.stderr)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
