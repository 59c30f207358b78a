"""How much a model leans on the training collection's shortcut, on its own validation split.

    .venv/bin/python bench/shortcut.py --data ../shared/data/brain-mri [--model CARD]

The figures training writes into a card, recomputed for any model (older cards lack the lesion probe):
- validation accuracy, tumour sensitivity and specificity, recall on held-back web-style tumour scans;
- histogram probe: known-type tumour scans re-rendered with a normal scan's intensity histogram, share still tumour;
- lesion probe: normal validation scans (axial web slices, never trained on) with a synthetic lesion painted in
  (:func:`core.training.synthetic_lesion`, seed 1), share called tumour. A model that has learnt "axial web slice =
  normal" ignores the lesion.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from core.config import model_card_path
from core.evaluation.splits import read_split, split_file_of
from core.imaging import read_scan_file
from core.model.classifier import Classifier
from core.training.probes import inference_inputs, validation_report

FIGURES = (
    "accuracy",
    "tumour_sensitivity",
    "tumour_specificity",
    "unknown_type_tumour_recall",
    "unknown_type_tumour_n",
    "shortcut_probe_tumour_recall",
    "shortcut_probe_n",
    "lesion_probe_tumour_recall",
    "lesion_probe_n",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the folder that holds the training folders")
    parser.add_argument("--model", default=None, help="model card (default: the shipped model)")
    args = parser.parse_args()
    card_path = Path(args.model) if args.model else model_card_path()
    classifier = Classifier.from_card(card_path)
    card = classifier.card
    entries = read_split(split_file_of(card_path), Path(args.data))
    inputs = inference_inputs([read_scan_file(path).pixels for _, path in entries], card.input)
    logits = np.asarray(classifier.model.predict(inputs, batch_size=64, verbose=0))
    report = validation_report(
        logits, [label for label, _ in entries], card.temperature, inputs, classifier.model, card.input
    )
    print(json.dumps({"model": card.version, **{k: report.get(k) for k in FIGURES}}))


if __name__ == "__main__":
    main()
