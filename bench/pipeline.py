"""Per-stage latency of the scan pipeline (read, crop, preprocess, predict; batch 1), next to a peer.

The peer is the detect-tumor package's VGG16 ONNX classifier (PyPI ``detect-tumor``), run on the same files in the
same process. Usage::

    .venv/bin/python bench/pipeline.py [DIR] [--model CARD] [--limit N] [--size 512]

DIR is any folder of scans (searched recursively); without it, 50 synthetic 512 x 512 PNG slices are generated.
``--size`` re-encodes every scan as a SIZE x SIZE PNG first, so figures are for a known scan size.
Prints a table and one JSON object (figures in milliseconds).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from core.config import model_card_path
from core.evaluation.metrics import machine
from core.imaging import read_scan, read_scan_file
from core.model.analysis import analyse
from core.model.classifier import Classifier
from core.model.preprocess import to_model_input
from core.model.roi import find_brain


def scans(folder: str | None, limit: int, size: int | None) -> list[bytes]:
    from PIL import Image

    if folder is None:
        from core.imaging.phantoms import synthetic_slice

        arrays = [synthetic_slice(size or 512, tumour=i % 2 == 0, seed=i) for i in range(limit)]
    else:
        files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".dcm"})
        step = max(1, len(files) // limit)
        arrays = [read_scan_file(p).pixels for p in files[::step][:limit]]
        if size is None and not any(p.suffix.lower() == ".dcm" for p in files[::step][:limit]):
            return [p.read_bytes() for p in files[::step][:limit]]  # as stored (the peer reads no DICOM: PNG below)
    out = []
    for array in arrays:
        buffer = io.BytesIO()
        image = Image.fromarray(array)
        if size:
            image = image.resize((size, size))
        image.save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def pct(values: list[float]) -> dict[str, float]:
    p50, p95 = np.percentile(values, (50, 95))
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3)}


def bench_ours(data: list[bytes], card: Path, repeats: int) -> dict:
    started = time.perf_counter()
    classifier = Classifier.from_card(card)
    load_s = time.perf_counter() - started
    stages: dict[str, list[float]] = {k: [] for k in ("read", "crop", "preprocess", "predict", "decide", "total")}
    front: list[float] = []
    for _ in range(repeats):
        for blob in data:
            timings = analyse(blob, classifier).prediction.timings_ms
            for key in stages:
                stages[key].append(timings[key])
            t0 = time.perf_counter()
            scan = read_scan(blob)
            to_model_input(scan.pixels, find_brain(scan.pixels).box, classifier.card.input)
            front.append((time.perf_counter() - t0) * 1000)
    result = {k: pct(v) for k, v in stages.items()}
    result["read_crop_preprocess"] = pct(front)
    result["model_load_s"] = round(load_s, 3)
    result["model"] = f"{classifier.card.name} {classifier.card.version}"
    return result


def bench_peer(data: list[bytes], repeats: int) -> dict | None:
    try:
        from detect_tumor import TumorDetector
        from detect_tumor.preprocess import preprocess
    except ImportError:
        return None
    started = time.perf_counter()
    detector = TumorDetector()
    detector.predict(data[0])  # loads the ONNX session
    load_s = time.perf_counter() - started
    session, input_name, _ = detector._ensure_session()
    total, predict = [], []
    for _ in range(repeats):
        for blob in data:
            t0 = time.perf_counter()
            detector.predict(blob)
            total.append((time.perf_counter() - t0) * 1000)
            batch = preprocess(blob)
            t1 = time.perf_counter()
            session.run(None, {input_name: batch})
            predict.append((time.perf_counter() - t1) * 1000)
    return {"total": pct(total), "predict": pct(predict), "model_load_s": round(load_s, 3), "model": "VGG16 ONNX"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?")
    parser.add_argument("--model", default=None)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = scans(args.dir, args.limit, args.size or None)
    ours = bench_ours(data, Path(args.model) if args.model else model_card_path(), args.repeats)
    peer = bench_peer(data, args.repeats)
    report = {
        "machine": machine(),
        "scans": len(data),
        "size": args.size,
        "source": args.dir or "synthetic",
        "ours": ours,
        "peer_detect_tumor": peer,
    }
    if peer:
        report["ratio_ours_over_peer"] = {
            "predict_p50": round(ours["predict"]["p50"] / peer["predict"]["p50"], 3),
            "total_p50": round(ours["total"]["p50"] / peer["total"]["p50"], 3),
        }
    print(f"{'stage':24} {'p50 ms':>9} {'p95 ms':>9}", file=sys.stderr)
    for key in ("read", "crop", "preprocess", "read_crop_preprocess", "predict", "decide", "total"):
        print(f"{'ours ' + key:24} {ours[key]['p50']:9.2f} {ours[key]['p95']:9.2f}", file=sys.stderr)
    if peer:
        for key in ("predict", "total"):
            print(f"{'detect-tumor ' + key:24} {peer[key]['p50']:9.2f} {peer[key]['p95']:9.2f}", file=sys.stderr)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
