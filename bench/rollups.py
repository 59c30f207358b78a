"""Are the SQLite roll-ups still needed? The same aggregates, on the same database, through the roll-ups and through
raw GROUP BY queries on the covering indexes (the store's own raw path, taken when a range does not start on a
quarter-hour: here one millisecond later).

    .venv/bin/python bench/store.py            # fills /tmp/btd-bench.sqlite3 with 1,000,000 results once
    .venv/bin/python bench/rollups.py [--path /tmp/btd-bench.sqlite3]

Prints a table (p50 and max of 7 runs, milliseconds) and one JSON object; the target is <= 100 ms per aggregate.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.domain.results import SHOWN, Filters
from core.evaluation.metrics import machine
from core.storage.sqlite import SQLiteStore

END = datetime(2026, 11, 1, tzinfo=UTC)  # bench/store.py's data end here
ONE_MS = timedelta(milliseconds=1)


def timed(fn, filters: Filters, repeats: int = 7) -> dict[str, float]:
    fn(filters)  # warm the page cache
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(filters)
        samples.append((time.perf_counter() - t0) * 1000)
    return {"p50": round(statistics.median(samples), 1), "max": round(max(samples), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", default="/tmp/btd-bench.sqlite3")
    args = parser.parse_args()
    if not Path(args.path).exists():
        sys.exit(f"{args.path} does not exist: run bench/store.py first")
    store = SQLiteStore(Path(args.path))
    ranges = {
        "2 years": Filters(start=END - timedelta(days=731), end=END, gates=SHOWN),
        "90 days": Filters(start=END - timedelta(days=90), end=END, gates=SHOWN),
        "30 days": Filters(start=END - timedelta(days=30), end=END, gates=SHOWN),
    }
    aggregates = {
        "summary": lambda f: store.summary(f),
        "daily counts (Europe/Paris)": lambda f: store.daily_counts(f, "Europe/Paris"),
        "daily quality (America/New_York)": lambda f: store.daily_quality(f, "America/New_York"),
        "per model version": lambda f: store.by_model(f),
    }
    report: dict = {"machine": machine(), "records": store.summary().total, "ms": {}}
    print(f"{'aggregate':<36} {'range':<8} {'roll-ups p50':>13} {'raw p50':>9} {'raw max':>9}  raw / roll-ups")
    for name, fn in aggregates.items():
        for label, filters in ranges.items():
            raw_filters = replace(filters, start=filters.start + ONE_MS)  # off the quarter-hour: the raw path
            assert fn(filters) is not None
            rolled, raw = timed(fn, filters), timed(fn, raw_filters)
            report["ms"][f"{name}, {label}"] = {"roll_ups": rolled, "raw": raw}
            ratio = raw["p50"] / max(rolled["p50"], 0.01)
            print(f"{name:<36} {label:<8} {rolled['p50']:>13} {raw['p50']:>9} {raw['max']:>9}  {ratio:6.1f}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
