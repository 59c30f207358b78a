"""How the series rule, as served, judges short and thick-section series: cut and thinned from the validation volumes.

    .venv/bin/python bench/short_series.py --data ../shared/data/brain-mri [--model CARD]

The rule (k neighbouring analysed sections at tumour probability t) was fitted on whole validation volumes: LGG
glioma volumes of 19 to 88 sections and Normal-heads volumes of nine. A series whose longest analysed run holds no
more than k sections cannot slide the rule's window (it is the whole run), so the app judges it on its best two
neighbouring sections at the single-scan threshold as well (``core.model.decision.SeriesRule.best_window``). Read
from the same volumes, as ``fit-series`` reads them, this prints one JSON line per case:

- ``validation``: the rule's own figures (tumour volumes found, Normal-heads volumes and tumour-free stretches
  cleared), which the short-series judgement must leave as the card states them;
- ``window W``: every run of W neighbouring sections cut from the volumes; a tumour window holds the tumour on at
  least half its sections, a tumour-free one lies 3 sections or more from any tumour section (or in a normal head);
- ``1 section in N``: each volume thinned to every Nth section (each offset), as a thicker-section series of the same
  heads would be: the rule counts sections, not millimetres, so what it finds falls as sections get thicker.
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
from core.model.classifier import Classifier
from core.training.series_fit import MARGIN, tumour_free_stretches, validation_curves


def shares(called, tumour: list, clear: list) -> dict[str, float | int]:
    """The share of ``tumour`` curves called tumour and of ``clear`` ones not, with their counts."""
    found = sum(map(called, tumour)) / len(tumour) if tumour else float("nan")
    cleared = sum(not called(c) for c in clear) / len(clear) if clear else float("nan")
    return {"tumour": len(tumour), "found": round(found, 3), "tumour_free": len(clear), "cleared": round(cleared, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=model_card_path())
    args = parser.parse_args()
    classifier = Classifier.from_card(args.model)
    rule, floor = classifier.card.series, classifier.card.rule.threshold

    def called(curve: list) -> bool:
        return rule.calls_tumour(curve, floor)

    read = validation_curves(classifier, args.model, args.data)
    stretches = [part for curve, marks in read.tumour for part in tumour_free_stretches(curve, marks)]
    found = sum(called(c) for c, _ in read.tumour) / len(read.tumour)
    print(json.dumps({"case": "validation", "tumour_volumes_found": round(found, 4)} | {
        "normal_heads_cleared": round(sum(not called(c) for c in read.normal) / len(read.normal), 4),
        "tumour_free_stretches_cleared": round(sum(not called(c) for c in stretches) / len(stretches), 4),
    }))  # fmt: skip
    for width in (3, 4, 5, 6, 8):
        tumour, clear = [], [c[i : i + width] for c in read.normal for i in range(len(c) - width + 1)]
        for curve, marks in read.tumour:
            for i in range(len(curve) - width + 1):
                if sum(marks[i : i + width]) >= (width + 1) // 2:
                    tumour.append(curve[i : i + width])
                elif not any(marks[max(0, i - MARGIN) : i + width + MARGIN]):
                    clear.append(curve[i : i + width])
        print(json.dumps({"case": f"window {width}"} | shares(called, tumour, clear)))
    for step in (2, 3, 4):
        tumour = [curve[o::step] for curve, _ in read.tumour for o in range(step)]
        clear = [curve[o::step] for curve in read.normal for o in range(step)]
        print(json.dumps({"case": f"1 section in {step}"} | shares(called, tumour, clear)))


if __name__ == "__main__":
    main()
