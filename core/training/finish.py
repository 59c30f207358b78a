"""Finishing a model: everything fitted or measured on the validation split after the weights are fixed.

:func:`finish_card` (the end of every training run, and ``python -m core calibrate`` for an existing model):
1. calibration: a temperature and a bias on the no-tumour logit (:func:`core.training.calibration.fit_calibration`)
   on the validation scans of a known class;
2. the decision rule: the review band and the subtype rule (:mod:`core.training.probes`);
3. per-source figures on the validation split, and on the held-out institutions when the run left some out, with
   the LGG figures the targets name, calibration errors, and localisation (the share of LGG tumour slices whose
   Grad-CAM peak falls inside the tumour mask, dilated by 4 % of the side), from the resolution where it is highest
   (the card's ``explain.layer``);
4. the input gate (energy threshold and learned checks, :mod:`core.training.gate_fit`);
5. the series rule, on validation volumes (:mod:`core.training.series_fit`), when the data root holds them.
Everything is written into the card; the weights and their hash do not change.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.evaluation.metrics import classification_report
from core.evaluation.splits import split_file_of
from core.imaging import read_scan_file
from core.model.analysis import analyse_scan
from core.model.classifier import Classifier, logits_of
from core.model.decision import DecisionRule, tumour_probabilities
from core.model.explain import Explainer, stage_layers
from core.model.preprocess import to_model_input
from core.training.calibration import calibrate, fit_calibration, negative_bias_vector
from core.training.card_io import write_card
from core.training.config import CLASSES, NEGATIVE
from core.training.data import label_masks
from core.training.gate_fit import fit_gate
from core.training.probes import LGG_MIN_TUMOUR, fit_review_band, fit_subtype_share, readable, source_report
from core.training.series_fit import VOLUME_SOURCES, fit_series
from core.training.sources import Item, discover

BRAIN_SOURCES = ("Training", "Web-tumour", "LGG", "Normal-heads")


def split_items(root: Path, entries: Sequence[Sequence[str]], known: dict[Path, Item]) -> list[Item]:
    found = []
    for relative, label in entries:
        path = (root / relative).resolve()
        found.append(known.get(path) or Item(path, label, Path(relative).parts[0]))
    return found


def raw_logits(classifier: Classifier, items: Sequence[Item]) -> tuple[np.ndarray, list[Item]]:
    """The model's logits (a softmax model's log-probabilities, as served: :func:`logits_of`) for the items the
    app can read (crop found), in batches."""
    inputs, kept = [], []
    for item in items:
        if (read := readable(item.path)) is not None:
            inputs.append(to_model_input(read[0].pixels, read[1].box, classifier.card.input))
            kept.append(item)
    rows = [
        logits_of(classifier.scores(np.stack(inputs[i : i + 64]))[0], classifier.card)
        for i in range(0, len(inputs), 64)
    ]
    return (np.concatenate(rows) if rows else np.zeros((0, len(CLASSES)))), kept


def _tumour_sections(
    classifier: Classifier, items: Sequence[Item], limit: int
) -> list[tuple[Any, str | None, np.ndarray]]:
    """Up to ``limit`` tumour slices (mask of at least 300 pixels): each one's analysis, the type a heat map
    explains (the verdict's, glioma for a miss) and its mask dilated by 4 % of the image side."""
    sections = []
    for item in [i for i in items if i.mask is not None and (i.tumour_pixels or 0) >= LGG_MIN_TUMOUR][:limit]:
        analysis = analyse_scan(read_scan_file(item.path), classifier)
        label = analysis.prediction.label if analysis.prediction.is_tumour else "glioma"
        mask = read_scan_file(item.mask).pixels > 127
        grow = max(3, round(0.04 * max(mask.shape))) | 1
        mask = cv2.dilate(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (grow, grow))) > 0
        sections.append((analysis, label if label in classifier.card.labels else None, mask))
    return sections


def _peaks_inside(explainer: Explainer, sections: Sequence[tuple[Any, str | None, np.ndarray]]) -> dict[str, Any]:
    inside = 0
    for analysis, label, mask in sections:
        heat = explainer.explain(analysis, label).on_scan
        y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
        inside += bool(mask[y, x])
    return {
        "share": inside / len(sections) if sections else None,
        "n": len(sections),
        "inside": inside,
        "rule": "Grad-CAM peak inside the tumour mask dilated by 4 % of the side",
        "layer": explainer.layer,
    }


def localisation(
    classifier: Classifier, items: Sequence[Item], limit: int = 400, layer: str | None = None
) -> dict[str, Any]:
    """Share of tumour slices (mask of at least 300 pixels) whose Grad-CAM peak for the verdict's type lies inside
    the mask dilated by 4 % of the image side; the heat map from ``layer`` (default: the card's)."""
    return _peaks_inside(Explainer(classifier, layer), _tumour_sections(classifier, items, limit))


def fit_explain_layer(classifier: Classifier, items: Sequence[Item], limit: int = 400) -> dict[str, Any]:
    """The layer heat maps come from: of the last layer of each feature-map resolution, the one whose Grad-CAM
    peaks inside the tumour most often on these slices (the coarsest on a tie). A network whose last map is
    too coarse or biased to point anywhere (model 3's 4 x 4 map peaked in one corner on every slice) explains
    from a finer stage instead. Returns the card's ``explain`` section, with every layer's figure."""
    sections = _tumour_sections(classifier, items, limit)
    figures = {
        layer.name: _peaks_inside(Explainer(classifier, layer.name), sections)
        for layer in stage_layers(classifier.model)
    }
    best = max(reversed(list(figures)), key=lambda name: figures[name]["share"] or 0.0)
    return {
        "layer": best,
        "localisation_by_layer": {name: figure["share"] for name, figure in figures.items()},
        "localisation": figures[best],
        "fitted_on": f"validation split, {len(sections)} LGG tumour slices: the last layer of each feature-map "
        "resolution, finest first; the one whose Grad-CAM peak falls inside the tumour mask most often",
    }


def fit_rule(logits: np.ndarray, labels: Sequence[str], threshold: float = 0.5) -> tuple[float, float, DecisionRule]:
    """Calibration (a temperature and a bias on the no-tumour logit) and the decision rule (review band, subtype
    share) fitted on validation outputs of a known class (never on the web-style scans, whose type is unknown),
    around the card's ``threshold`` (the one the app serves: the band was centred on 0.5 whatever the card said)."""
    typed = np.array([label in CLASSES for label in labels])
    temperature, negative_bias = fit_calibration(logits[typed], label_masks(labels)[typed], CLASSES.index(NEGATIVE))
    bias = negative_bias_vector(negative_bias)
    calibrated = calibrate(logits, temperature, bias)
    tumour_probability = tumour_probabilities(calibrated, CLASSES, NEGATIVE)
    truth = np.array([label != NEGATIVE for label in labels])[typed]
    band = fit_review_band(tumour_probability[typed], truth, threshold=threshold)
    named = [label for label, k in zip(labels, typed, strict=True) if k]
    share = fit_subtype_share(calibrated[typed], named, threshold=threshold)
    return temperature, negative_bias, DecisionRule(CLASSES, NEGATIVE, threshold, band, share)


def kept_threshold(card: dict[str, Any]) -> dict[str, Any]:
    """A threshold the card keeps in its ``decision`` section, carried into the section written anew (the rule was
    fitted around it: dropped, the card was served at 0.5)."""
    decision = card.get("decision") or {}
    return {"threshold": decision["threshold"]} if "threshold" in decision else {}


def finish_card(
    card_path: Path, root: Path, log: Callable[[str], None] = print, restamp: bool = False
) -> dict[str, Any]:
    """Fit and measure everything above and write it into the card; returns the card. ``restamp``: a refit of a
    model already in use, every write under the version that names what it serves
    (:func:`core.training.card_io.restamped`)."""
    classifier = Classifier.from_card(card_path)
    if list(classifier.card.labels) != list(CLASSES):  # the fits index the outputs in CLASSES' order
        raise ValueError(f"a card to finish lists its labels as {list(CLASSES)}, not {list(classifier.card.labels)}")
    split = json.loads(split_file_of(card_path).read_text())
    known = {item.path.resolve(): item for item in discover([root / s for s in BRAIN_SOURCES if (root / s).is_dir()])}
    val_logits, val_items = raw_logits(classifier, split_items(root, split["validation"], known))
    labels = [item.label for item in val_items]
    temperature, negative_bias, rule = fit_rule(val_logits, labels, classifier.card.rule.threshold)
    bias = negative_bias_vector(negative_bias)
    calibrated = calibrate(val_logits, temperature, bias)
    band, share = rule.review_band, rule.subtype_min_share
    log(f"calibration: temperature {temperature}, no-tumour bias {negative_bias}; band {band}; subtype share {share}")
    card = json.loads(card_path.read_text())
    card["calibration"] = {
        "temperature": temperature,
        "logit_bias": {NEGATIVE: negative_bias},
        "fitted_on": f"validation split, {sum(label in CLASSES for label in labels)} scans of a known class "
        "(allowed-label NLL): a temperature and a bias on the no-tumour logit that undoes the training draw's "
        "class mix",
    }
    card["decision"] = {
        **kept_threshold(card),
        "review_band": list(band),
        "subtype_min_share": share,
        "fitted_on": "validation split, scans of a known class: every call less than 80 % sure, widened until "
        "calls outside the band are wrong at most 2 % of the time on each side; a type is named when it is right "
        "at least 90 % of the time",
    }
    validation = dict(card.get("metrics", {}).get("validation", {}))
    validation.update(classification_report(labels, calibrated, CLASSES, NEGATIVE, rule))
    validation["per_source"] = source_report(calibrated, val_items, rule)
    explain = fit_explain_layer(classifier, [i for i in val_items if i.source == "LGG"])
    card["explain"] = {key: value for key, value in explain.items() if key != "localisation"}
    validation["localisation"] = explain["localisation"]
    card.setdefault("metrics", {})["validation"] = validation
    if split.get("held_out"):
        held_logits, held_items = raw_logits(classifier, split_items(root, split["held_out"], known))
        held = calibrate(held_logits, temperature, bias)
        card["metrics"]["held_out"] = {
            "institutions": sorted({i.institution for i in held_items if i.institution}),
            "per_source": source_report(held, held_items, rule),
            "localisation": localisation(
                classifier, [i for i in held_items if i.source == "LGG"], layer=explain["layer"]
            ),
        }
    write_card(card_path, card, restamp=restamp)
    log(f"input gate: {json.dumps(fit_gate(card_path, root, restamp=restamp), default=str)}")
    if all((root / source).is_dir() for source in VOLUME_SOURCES):
        fit_series(card_path, root, log, restamp=restamp)
    return json.loads(card_path.read_text())


def recalibrate_saved_batchnorm(card_path: Path, root: Path, count: int = 3000, seed: int = 3) -> dict[str, Any]:
    """Recompute the batch-normalisation statistics of a saved model on ``count`` training scans (every scan of
    ``root`` not in its validation or held-out lists, drawn evenly across source and class), rewrite the weights
    file and the card's hash. For models trained before this step became part of ``train``."""
    import keras

    from core.model.card import sha256_file
    from core.training.calibration import recalibrate_batchnorm

    classifier = Classifier.from_card(card_path)
    split = json.loads(split_file_of(card_path).read_text())
    excluded = {(root / rel).resolve() for rel, _ in [*split["validation"], *split.get("held_out", [])]}
    items = discover([root / s for s in BRAIN_SOURCES if (root / s).is_dir()])
    pool = [i for i in items if i.path.resolve() not in excluded]
    groups: dict[tuple[str, str], list[Item]] = {}
    for item in pool:
        groups.setdefault((item.source, item.label), []).append(item)
    rng = np.random.default_rng(seed)
    share = max(1, count // max(1, len(groups)))
    chosen = [g[i] for g in groups.values() for i in rng.permutation(len(g))[:share]]
    inputs = [
        to_model_input(read[0].pixels, read[1].box, classifier.card.input)
        for read in map(readable, (item.path for item in chosen))
        if read is not None
    ]
    recalibrate_batchnorm(classifier.model, np.stack(inputs))
    weights = classifier.card.weights_path
    keras.saving.save_model(classifier.model, weights)
    card = json.loads(card_path.read_text())
    card["weights"]["sha256"] = sha256_file(weights)
    card["weights"]["batchnorm"] = f"statistics recomputed on {len(inputs)} clean training scans"
    write_card(card_path, card, restamp=True)  # new weights: a new version in the same write
    return {"scans": len(inputs), "groups": len(groups), "sha256": card["weights"]["sha256"]}
