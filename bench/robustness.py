"""Do verdicts survive a tilted or shifted head? Validation scans turned or shifted, then read as the app reads them.

    .venv/bin/python bench/robustness.py --data ../shared/data/brain-mri [--model CARD ...] [--tumour-step 3]

Scans from elsewhere are rarely framed like the training collection. Each normal validation scan and every
``--tumour-step``-th known-type tumour scan of the first model's split is turned by 10, -20 or 25 degrees, or shifted
by 15 % of its width (whole frame, black fill), then goes through the app's crop, input and decision rule.
Prints, per model and movement, the share of normal scans called tumour and the share of tumour scans found, as one
JSON object per model; give several ``--model`` cards (validated on the same split) to compare them in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from core.config import model_card_path
from core.evaluation.splits import read_split, split_file_of
from core.imaging import read_scan_file
from core.model.classifier import Classifier
from core.model.decision import UNKNOWN_TYPE
from core.training.augment import move_frame
from core.training.config import NEGATIVE
from core.training.probes import inference_inputs, share_called_tumour

MOVES = {  # name: (degrees, shift right as a share of the width)
    "unmoved": (0.0, 0.0),
    "10 deg": (10.0, 0.0),
    "-20 deg": (-20.0, 0.0),
    "25 deg": (25.0, 0.0),
    "shift 15 %": (0.0, 0.15),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the folder that holds the training folders")
    parser.add_argument("--model", action="append", help="model card (repeatable; default: the shipped model)")
    parser.add_argument("--tumour-step", type=int, default=3, help="use every n-th known-type tumour scan")
    args = parser.parse_args()
    cards = [Path(m) for m in args.model] if args.model else [model_card_path()]
    entries = read_split(split_file_of(cards[0]), Path(args.data))
    normal = [read_scan_file(path).pixels for label, path in entries if label == NEGATIVE]
    known = [path for label, path in entries if label not in (NEGATIVE, UNKNOWN_TYPE)]
    tumour = [read_scan_file(path).pixels for path in known[:: args.tumour_step]]
    for card_path in cards:
        classifier = Classifier.from_card(card_path)
        model, spec, t = classifier.model, classifier.card.input, classifier.card.temperature
        figures = {}
        for name, (angle, shift) in MOVES.items():
            shares = []
            for images in (normal, tumour):
                inputs = inference_inputs([move_frame(img, angle, shift=(shift, 0.0)) for img in images], spec)
                shares.append(share_called_tumour(model, inputs, t))
            figures[name] = {"normal_called_tumour": round(shares[0], 4), "tumour_found": round(shares[1], 4)}
        result = {"model": classifier.card.version, "normal_scans": len(normal), "tumour_scans": len(tumour)}
        print(json.dumps({**result, "moves": figures}), flush=True)


if __name__ == "__main__":
    main()
