"""Input gate and Grad-CAM figures for the served model.

    .venv/bin/python bench/gate.py --data ../shared/data/brain-mri [--model CARD] [--per-kind 40] [--cam 150]

- Non-MRI rejection: generated images of every kind in core/imaging/negatives.py (noise, 1/f noise, shapes, documents,
  chest-X-ray-like radiographs, colour photographs, gray scenes with a blob), as PNG uploads.
- MRI rejection: every scan of the model's validation split (needs the data folder).
- Grad-CAM: mean heat inside the brain outline over mean heat outside, on validation tumour scans, and its cost.
Prints a table and one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from core.config import model_card_path
from core.errors import ScanError
from core.evaluation.metrics import machine
from core.evaluation.splits import read_split, split_file_of
from core.imaging.negatives import KINDS, make
from core.imaging.phantoms import png_bytes
from core.model.analysis import analyse
from core.model.classifier import Classifier
from core.model.explain import Explainer, concentration
from core.model.gate import REJECTED


def refused(data: bytes, classifier: Classifier) -> tuple[bool, str]:
    """Whether the gate (or the reader) refused it, and why: the gate's first reason, the reader's code, else the
    gate's decision."""
    try:
        gate = analyse(data, classifier).prediction.gate
    except ScanError as error:
        return True, error.code
    return gate.decision == REJECTED, gate.reasons[0] if gate.decision == REJECTED else gate.decision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="folder holding the training folders (for the validation split)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--per-kind", type=int, default=40)
    parser.add_argument("--cam", type=int, default=150, help="validation tumour scans for the Grad-CAM figures")
    args = parser.parse_args()
    card = Path(args.model) if args.model else model_card_path()
    classifier = Classifier.from_card(card)
    report: dict = {"machine": machine(), "model": classifier.card.version}

    per_kind = {}
    for k, kind in enumerate(KINDS):
        outcomes = [refused(png_bytes(make(kind, 50_000 + 1000 * k + i)), classifier)[0] for i in range(args.per_kind)]
        per_kind[kind] = round(float(np.mean(outcomes)), 4)
    report["non_mri_rejected"] = {"overall": round(float(np.mean(list(per_kind.values()))), 4), **per_kind}

    if args.data:
        files = read_split(split_file_of(card), Path(args.data))
        outcomes = [refused(path.read_bytes(), classifier) for _, path in files]
        reasons: dict[str, int] = {}
        for is_refused, why in outcomes:
            if is_refused:
                reasons[why] = reasons.get(why, 0) + 1
        report["validation_mri_rejected"] = {
            "fraction": round(float(np.mean([o[0] for o in outcomes])), 4),
            "n": len(outcomes),
            "needs_review_fraction": round(float(np.mean([o[1] == "needs_review" for o in outcomes])), 4),
            "by_reason": reasons,
        }
    if args.data and args.cam > 0:
        explainer = Explainer(classifier)
        tumours = [path for label, path in files if label != classifier.card.negative_label][: args.cam]
        ratios, costs = [], []
        for path in tumours:
            analysis = analyse(path.read_bytes(), classifier)
            started = time.perf_counter()
            heat = explainer.explain(analysis)
            costs.append((time.perf_counter() - started) * 1000)
            ratios.append(concentration(heat.on_scan, analysis.region.mask(analysis.scan.pixels.shape)))
        finite = [r for r in ratios if np.isfinite(r)]
        report["grad_cam"] = {
            "tumour_scans": len(tumours),
            "inside_over_outside_median": round(statistics.median(finite), 2),
            "inside_over_outside_mean_of_means": round(float(np.mean(finite)), 2),
            "share_at_least_3x": round(float(np.mean([r >= 3 for r in ratios])), 4),
            "cost_ms_p50": round(statistics.median(costs), 2),
            "cost_ms_p95": round(float(np.percentile(costs, 95)), 2),
        }
    for key, value in report.items():
        print(f"{key}: {value}", file=sys.stderr)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
