"""Models and their ensemble side by side on one split, each calibrated and given a decision rule as a card is.

    .venv/bin/python bench/ensemble.py --data ../shared/data/brain-mri --model models/btd-cnn.json \\
        --model RUNS/model3/btd-resnet.json [--split FILE] [--held-out]

Every model reads the same scans (the split's validation part; the first model's split file by default). Each
model's raw outputs are calibrated, and its review band and subtype rule fitted, on the validation part by
:func:`core.training.finish.fit_rule`, the function that finishes a card; the ensemble's outputs are the mean of
the members' log-probabilities (each calibrated by its own card), then fitted the same way. The figures are
:func:`core.training.probes.source_report`'s and :func:`core.evaluation.metrics.classification_report`'s, on the
validation part, or with ``--held-out`` on the split's held-out institutions (a leave-one-institution-out fold's
own, never fitted on). Prints a table and one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.evaluation.metrics import classification_report, machine
from core.evaluation.splits import split_file_of
from core.model.classifier import Classifier, calibrated_logits
from core.training.calibration import calibrate, negative_bias_vector
from core.training.config import CLASSES, NEGATIVE
from core.training.finish import BRAIN_SOURCES, fit_rule, raw_logits, split_items
from core.training.probes import source_report
from core.training.sources import discover


def figures(logits: dict[str, np.ndarray], labels: dict[str, list[str]], items: list) -> dict:
    """Fit calibration and rule on ``logits["fit"]``, score ``logits["score"]`` (the same arrays without --held-out)."""
    temperature, negative_bias, rule = fit_rule(logits["fit"], labels["fit"])
    bias = negative_bias_vector(negative_bias)
    probabilities = calibrate(logits["score"], temperature, bias)
    overall = classification_report(labels["score"], probabilities, CLASSES, NEGATIVE, rule)
    per_source = source_report(probabilities, items, rule)
    institutions = per_source.get("LGG", {}).get("targets", {})
    return {
        "temperature": temperature,
        "review_band": list(rule.review_band),
        "all": {key: overall.get(key) for key in ("n", "accuracy", "tumour_sensitivity", "tumour_specificity")},
        "review_share": overall.get("review_share"),
        "per_source": {
            source: {key: report.get(key) for key in ("n", "accuracy", "tumour_sensitivity", "tumour_specificity")}
            | {"review_share": report.get("review_share")}
            for source, report in per_source.items()
        },
        "lgg_clear_tumours_found_and_tumour_free_cleared": {
            name: [target["sensitivity"]["value"], target["specificity"]["value"]]
            for name, target in institutions.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--model", action="append", required=True, help="a model card (two or more)")
    parser.add_argument("--split", type=Path, help="the split file (default: the first model's)")
    parser.add_argument("--held-out", action="store_true", help="score the split's held-out institutions")
    args = parser.parse_args()
    if len(args.model) < 2:
        parser.error("an ensemble takes two or more --model cards")
    split = json.loads((args.split or split_file_of(Path(args.model[0]))).read_text())
    root = args.data
    known = {i.path.resolve(): i for i in discover([root / s for s in BRAIN_SOURCES if (root / s).is_dir()])}
    parts = {"fit": split_items(root, split["validation"], known)}
    parts["score"] = split_items(root, split["held_out"], known) if args.held_out else parts["fit"]
    log_probabilities: dict[str, dict[str, np.ndarray]] = {}
    kept: dict[str, list] = {}
    for card in args.model:
        classifier = Classifier.from_card(card)
        log_probabilities[card] = {}
        for part, items in parts.items():
            raw, used = raw_logits(classifier, items)
            if part in kept and [i.path for i in used] != [i.path for i in kept[part]]:
                raise SystemExit(f"{card}: reads other scans of the split than {args.model[0]}; no ensemble")
            kept[part] = used
            probabilities = calibrated_logits(raw, classifier.card)  # raw_logits gives logits already
            log_probabilities[card][part] = np.log(np.clip(probabilities, 1e-9, 1.0))
    labels = {part: [item.label for item in items] for part, items in kept.items()}
    results = {
        Path(card).parent.name + "/" + Path(card).name: figures(lp, labels, kept["score"])
        for card, lp in log_probabilities.items()
    }
    ensemble = {part: np.mean([lp[part] for lp in log_probabilities.values()], axis=0) for part in parts}
    results["ensemble (mean log-probability)"] = figures(ensemble, labels, kept["score"])
    header = f"{'model':<48} {'band':<12} {'review':>6} {'acc':>6} {'sens':>6} {'spec':>6}"
    print(f"{header}  LGG institutions (found / cleared)")
    for name, result in results.items():
        overall = result["all"]
        values = [
            result["review_share"],
            *(overall[k] for k in ("accuracy", "tumour_sensitivity", "tumour_specificity")),
        ]
        found = result["lgg_clear_tumours_found_and_tumour_free_cleared"]
        lgg = "  ".join(f"{k} {v[0]:.3f}/{v[1]:.3f}" for k, v in found.items())
        print(f"{name[-48:]:<48} {result['review_band']!s:<12} " + " ".join(f"{v:>6.3f}" for v in values) + f"  {lgg}")
    print(json.dumps({"part": "held_out" if args.held_out else "validation", "machine": machine(), "models": results}))


if __name__ == "__main__":
    main()
