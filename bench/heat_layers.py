"""Where each feature-map layer's Grad-CAM points on validation tumour slices: inside the tumour, and on its side.

    .venv/bin/python bench/heat_layers.py --data ../shared/data/brain-mri [--model models/btd-ensemble.json] [--n 120]

The slices are the card's validation LGG sections with a tumour mask of at least 300 pixels (the first ``--n``),
each explained for the verdict's type (glioma for a miss) as the app explains it
(:func:`core.training.finish._tumour_sections`). For every ReLU layer with a feature map: the share whose heat-map
peak lies inside the mask dilated by 4 % of the side (the card's localisation rule), and the share whose peak lies
on the tumour's side of the brain box's vertical midline (0.5 is chance). Prints one line per layer and a JSON
object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import model_card_path
from core.evaluation.splits import split_file_of
from core.model.classifier import Classifier
from core.model.explain import Explainer, _is_feature_map
from core.training.finish import BRAIN_SOURCES, _tumour_sections, split_items
from core.training.sources import discover


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--n", type=int, default=120)
    args = parser.parse_args()
    card = args.model or model_card_path()
    classifier = Classifier.from_card(card)
    split = json.loads(split_file_of(card).read_text())
    known = {i.path.resolve(): i for i in discover([args.data / s for s in BRAIN_SOURCES if (args.data / s).is_dir()])}
    lgg = [i for i in split_items(args.data, split["validation"], known) if i.source == "LGG"]
    sections = _tumour_sections(classifier, lgg, args.n)
    channels = int(classifier.model.inputs[0].shape[-1] or 1)
    layers = [
        layer
        for layer in classifier.model.layers
        if _is_feature_map(layer)
        and not getattr(layer, "preprocessing", False)
        and int(layer.output.shape[-1] or 0) > channels
        and "re_lu" in layer.name
    ]
    figures = {}
    for layer in layers:
        explainer, inside, same_side = Explainer(classifier, layer.name), 0, 0
        for analysis, label, mask in sections:
            heat = explainer.explain(analysis, label).on_scan
            y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
            inside += bool(mask[y, x])
            x0, _, x1, _ = analysis.prediction.roi
            middle = (x0 + x1) / 2
            same_side += bool((x - middle) * (np.nonzero(mask)[1].mean() - middle) > 0)
        n = len(sections)
        figures[layer.name] = {"map": int(layer.output.shape[1]), "inside": inside / n, "same_side": same_side / n}
        print(
            f"{layer.name:20s} {int(layer.output.shape[1]):3d} px",
            f"inside {inside / n:.3f}  same side {same_side / n:.3f}",
        )
    print(
        json.dumps(
            {
                "model": str(card),
                "sections": len(sections),
                "card_layer": classifier.card.explain_layer,
                "layers": figures,
            }
        )
    )


if __name__ == "__main__":
    main()
