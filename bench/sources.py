"""Models side by side on one validation split, per source, as the app would read each scan.

    .venv/bin/python bench/sources.py --data ../shared/data/brain-mri --split models/btd-cnn.split.json \\
        --model models/btd-cnn.json [--model OTHER.json ...] [--held-out]

For every model: the per-source figures of :func:`core.training.probes.source_report` (the LGG targets per
institution, normal heads called tumour per plane, web-style recall, calibration), the share of each source's
scans the input gate refuses (with enough brain, and too little), and on the real non-MRI images (Not-brain-MRI)
and generated ones: refused, and called tumour. Prints a table and one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.errors import ScanError
from core.evaluation.metrics import machine
from core.imaging import read_scan, read_scan_file
from core.imaging.negatives import KINDS, make
from core.model.analysis import analyse_scan
from core.model.classifier import Classifier
from core.model.gate import REJECTED
from core.training.finish import BRAIN_SOURCES, split_items
from core.training.probes import source_report
from core.training.sources import discover


def verdicts(classifier: Classifier, paths: list[Path | bytes]) -> list[tuple[str, np.ndarray | None, str | None]]:
    """(gate decision or error code, calibrated probabilities, first refusal reason) per file, as the app reads."""
    out = []
    for path in paths:
        try:
            scan = read_scan_file(path) if isinstance(path, Path) else read_scan(path)
            prediction = analyse_scan(scan, classifier).prediction
        except ScanError as error:
            out.append((error.code, None, None))
            continue
        probabilities = np.array([prediction.probabilities[label] for label in classifier.card.labels])
        out.append((prediction.gate.decision, probabilities, (prediction.gate.reasons or (None,))[0]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--split", required=True, type=Path)
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--held-out", action="store_true", help="score the split's held-out institutions instead")
    args = parser.parse_args()
    split = json.loads(args.split.read_text())
    known = {i.path.resolve(): i for i in discover([args.data / s for s in BRAIN_SOURCES if (args.data / s).is_dir()])}
    items = split_items(args.data, split["held_out" if args.held_out else "validation"], known)
    not_brain = sorted((args.data / "Not-brain-MRI").glob("*.png"))
    generated = []
    for k, kind in enumerate(KINDS):
        for i in range(20):
            from PIL import Image

            buffer = io.BytesIO()
            Image.fromarray(make(kind, 5000 + 100 * k + i)).save(buffer, "PNG")
            generated.append(buffer.getvalue())
    report: dict = {
        "machine": machine(),
        "split": str(args.split),
        "scored": "held_out" if args.held_out else "validation",
    }
    for card in args.model:
        classifier = Classifier.from_card(card)
        results = verdicts(classifier, [item.path for item in items])
        shown = [
            (item, p)
            for item, (decision, p, _) in zip(items, results, strict=True)
            if p is not None and decision != REJECTED
        ]
        rule = classifier.card.rule
        figures = source_report(np.stack([p for _, p in shown]), [item for item, _ in shown], rule)
        refused = {}
        for source in sorted({item.source for item in items}):
            mine = [(item, r) for item, r in zip(items, results, strict=True) if item.source == source]
            enough = [(i, r) for i, r in mine if (i.head_pixels or 15_000) >= 15_000]
            refused[source] = {
                "refused_with_enough_brain": sum(r[0] != "accepted" and r[0] != "needs_review" for _, r in enough),
                "n_with_enough_brain": len(enough),
                "refused_little_brain": sum(
                    r[0] not in ("accepted", "needs_review") for i, r in mine if (i.head_pixels or 15_000) < 15_000
                ),
                "n_little_brain": sum((i.head_pixels or 15_000) < 15_000 for i, _ in mine),
            }
        negatives = {}
        for name, files in (("Not-brain-MRI", list(not_brain)), ("generated", generated)):
            got = verdicts(classifier, files)
            negatives[name] = {
                "n": len(got),
                "refused": sum(d not in ("accepted", "needs_review") for d, _, _ in got),
                "called_tumour": sum(
                    d in ("accepted", "needs_review") and rule.labels_of(p[None])[0] != rule.negative_label
                    for d, p, _ in got
                    if p is not None
                ),
            }
        report[f"{classifier.card.name} {classifier.card.version}"] = {
            "per_source": figures,
            "refused": refused,
            "negatives": negatives,
        }
        print(f"{classifier.card.version}: {json.dumps(negatives)}", file=sys.stderr)
    print(json.dumps(report, indent=1, default=list))


if __name__ == "__main__":
    main()
