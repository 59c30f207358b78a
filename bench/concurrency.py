"""Several sessions analysing at once through one shared classifier (as Streamlit sessions do in one process).

    .venv/bin/python bench/concurrency.py [--model CARD] [--scans 40] [--sessions 1 2 4 8]

Each session is a thread analysing its own 512 x 512 scans; every verdict is compared with the same scan analysed
alone (no cross-talk through the shared model), and latency per scan is reported for each level of concurrency.
In-process and bounded: nothing goes over the network.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from core.config import model_card_path
from core.evaluation.metrics import machine
from core.imaging.phantoms import png_bytes, synthetic_slice
from core.model.analysis import analyse
from core.model.classifier import Classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--scans", type=int, default=40, help="scans per session")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4, 8])
    args = parser.parse_args()
    classifier = Classifier.from_card(Path(args.model) if args.model else model_card_path())
    scans = [png_bytes(synthetic_slice(512, tumour=i % 2 == 0, seed=i)) for i in range(args.scans)]
    alone = [analyse(data, classifier).prediction.probabilities for data in scans]
    report: dict = {"machine": machine(), "scans_per_session": args.scans}
    for sessions in args.sessions:

        def session(offset: int) -> tuple[list[float], int]:
            latencies, mismatches = [], 0
            for k in range(args.scans):
                i = (k + offset) % args.scans
                started = time.perf_counter()
                result = analyse(scans[i], classifier).prediction.probabilities
                latencies.append((time.perf_counter() - started) * 1000)
                mismatches += any(abs(result[c] - alone[i][c]) > 1e-5 for c in result)
            return latencies, mismatches

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=sessions) as pool:
            results = list(pool.map(session, range(sessions)))
        wall = time.perf_counter() - started
        latencies = [x for lat, _ in results for x in lat]
        report[f"{sessions} sessions"] = {
            "latency_ms_p50": round(statistics.median(latencies), 2),
            "latency_ms_p95": round(float(np.percentile(latencies, 95)), 2),
            "scans_per_s": round(sessions * args.scans / wall, 1),
            "mismatched_verdicts": sum(m for _, m in results),
        }
        print(f"{sessions} sessions: {report[f'{sessions} sessions']}", file=sys.stderr)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
