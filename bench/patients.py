"""The glioma collection's validation figures with intervals that count patients, not sections.

    .venv/bin/python bench/patients.py --data ../shared/data/brain-mri [--model CARD]

The cards' Wilson intervals treat every section as an independent trial, but the validation split's sections come
from a few patients (15 in all, 3 to 9 per institution): this scores the served model on the split's LGG
sections through the same probe as its card (:func:`core.training.probes.lgg_targets`) and prints, per
institution and pooled, clear tumours found and tumour-free sections cleared with both intervals (the patients'
from a percentile bootstrap over patients, itself unreliable with 3 of them). One JSON object.
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
from core.evaluation.metrics import machine
from core.evaluation.splits import split_file_of
from core.model.classifier import Classifier, calibrated_logits
from core.training.finish import raw_logits, split_items
from core.training.probes import lgg_targets
from core.training.sources import discover


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the shared data root (holds LGG/)")
    parser.add_argument("--model", type=Path, default=model_card_path())
    args = parser.parse_args()
    if not (args.data / "LGG").is_dir():
        sys.exit(f"{args.data / 'LGG'} is missing: this bench needs the shared glioma collection.")
    classifier = Classifier.from_card(args.model)
    split = json.loads(split_file_of(args.model).read_text())
    known = {item.path.resolve(): item for item in discover([args.data / "LGG"])}
    items = split_items(args.data, [e for e in split["validation"] if e[0].startswith("LGG/")], known)
    logits, kept = raw_logits(classifier, items)  # as the card's probe: what the app cannot read is not scored
    probabilities = calibrated_logits(logits, classifier.card)
    report = {}
    for place, figures in lgg_targets(probabilities, kept, classifier.card.rule).items():
        report[place] = {
            name: {key: figures[name][key] for key in ("value", "n", "wilson_95", "patients", "patients_95")}
            for name in ("sensitivity", "specificity")
        }
        found, cleared = report[place]["sensitivity"], report[place]["specificity"]
        print(
            f"{place:4} clear tumours found {found['value']:.3f} (sections {found['n']}, patients {found['patients']}: "
            f"{found['patients_95']}); tumour-free cleared {cleared['value']:.3f} (sections {cleared['n']}, "
            f"patients {cleared['patients']}: {cleared['patients_95']})",
            file=sys.stderr,
        )
    card = classifier.card
    print(json.dumps({"machine": machine(), "model": f"{card.name} {card.version}", "lgg_validation": report}))


if __name__ == "__main__":
    main()
