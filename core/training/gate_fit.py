"""Fit the input gate's energy threshold on the validation split and write the gate policy into the card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.evaluation.splits import read_held_out, read_split, split_file_of
from core.model.decision import tumour_probabilities
from core.model.preprocess import to_model_input
from core.training.card_io import write_card
from core.training.gate_learning import NOT_BRAIN, fit_learned_checks


def fit_gate(card_path: Path, root: Path, quantile: float = 0.995, restamp: bool = False) -> dict[str, Any]:
    """Fit the gate's energy threshold on the validation split and write the gate policy into the card (with
    ``restamp``, under the version that names it: :func:`core.training.card_io.restamped`).

    The threshold is the highest of the sources' ``quantile`` energies (sources of 20 scans or more), so that no
    source of real brain MRI loses more than ``1 - quantile`` of its scans to it: a pooled quantile would let a
    large, familiar source set a threshold that refuses many scans of a smaller, less familiar one. Returns the
    threshold, the share of validation scans the whole gate then rejects and the energy refusals per source.
    """
    from core.model.classifier import Classifier, embedding_layer
    from core.model.gate import GatePolicy, energy, fit_energy_threshold, image_reasons, policy_section
    from core.training.probes import readable

    classifier = Classifier.from_card(card_path)
    card = classifier.card
    energies, sources, image_rejected, unread = [], [], 0, 0
    files = read_split(split_file_of(card_path), root)
    for _, path in files:
        if (read := readable(path)) is None:  # refused by the app before the model: no energy to fit
            unread += 1
            continue
        scan, region = read
        sources.append(path.resolve().relative_to(root.resolve()).parts[0])
        raw, _ = classifier.scores(to_model_input(scan.pixels, region.box, card.input)[None])
        energies.append(energy(raw[0], card.temperature))
        image_rejected += bool(image_reasons(scan, region, GatePolicy()))
    by_source: dict[str, list[float]] = {}
    for source, value in zip(sources, energies, strict=True):
        by_source.setdefault(source, []).append(value)
    large = [values for values in by_source.values() if len(values) >= 20] or [energies]
    threshold = max(fit_energy_threshold(values, quantile) for values in large)
    rejected = sum(bool(e > threshold) for e in energies) + image_rejected + unread
    per_source = {s: round(sum(e > threshold for e in v) / len(v), 4) for s, v in sorted(by_source.items())}
    checks, learned = [], None
    if (root / NOT_BRAIN).is_dir() and embedding_layer(classifier.model) is not None:
        held_out = frozenset(path.resolve() for path in read_held_out(split_file_of(card_path), root))
        checks, learned = fit_learned_checks(classifier, root, {path.resolve() for _, path in files}, held_out=held_out)
    frame = relaxed_frame_bounds(learned)
    policy = GatePolicy(max_energy=threshold, checks=tuple(checks), **frame)
    fitted_on = f"validation split ({len(energies)} scans), the highest per-source energy quantile {quantile}"
    if checks:
        fitted_on += "; learned checks: core.training.gate_learning"
    raw = json.loads(card_path.read_text())  # the weights and their hash are unchanged
    write_card(card_path, raw | {"gate": policy_section(policy, fitted_on, learned)}, restamp=restamp)
    return {
        "max_energy": threshold,
        "validation_scans": len(files),
        "validation_rejected_at_most": rejected,
        "validation_rejected_fraction_at_most": round(rejected / len(files), 4),
        "energy_refused_per_source": per_source,
        "learned": learned,
    }


FULL_FRAME_KINDS = ("generated:noise", "generated:pink_noise", "generated:document", "generated:colour_photo")


def relaxed_frame_bounds(learned: dict[str, Any] | None, min_refused: float = 0.95) -> dict[str, float]:
    """The frame-filling bounds (head region up to 98 % of the frame, fill up to 0.95) refuse heads that fill the
    frame; they are relaxed to 1.0 only when the learned not-MRI check itself refuses at least ``min_refused`` of
    each kind of full-frame image the bounds were for, on generated seeds it never saw."""
    fresh = (learned or {}).get("generated_refused_fresh_seeds", {})
    if all((fresh.get(kind) or {}).get("share", 0.0) >= min_refused for kind in FULL_FRAME_KINDS):
        return {"max_area": 1.0, "max_fill": 1.0}
    return {}


def fit_decision(
    card_path: Path, root: Path, max_error: float = 0.02, min_type_accuracy: float = 0.9, restamp: bool = False
) -> dict[str, Any]:
    """Fit the review band and the subtype rule on the validation split's scans of a known class and write them
    into the card's ``decision`` (the weights and their hash are unchanged). Returns what was written."""
    import json

    import numpy as np

    from core.model.classifier import Classifier
    from core.training.config import CLASSES, NEGATIVE
    from core.training.finish import kept_threshold
    from core.training.probes import fit_review_band, fit_subtype_share, readable

    classifier = Classifier.from_card(card_path)
    card = classifier.card
    if list(card.labels) != list(CLASSES):  # the subtype share indexes the outputs in CLASSES' order
        raise ValueError(f"fit-decision takes a card whose labels are {list(CLASSES)}, not {list(card.labels)}")
    labels, rows = [], []
    for label, path in read_split(split_file_of(card_path), root):
        if label not in CLASSES or (read := readable(path)) is None:
            continue  # never fit on the web-style scans of unknown type, nor on a file the app refuses
        scan, region = read
        rows.append(classifier.probabilities(to_model_input(scan.pixels, region.box, card.input)[None])[0])
        labels.append(label)
    probabilities = np.asarray(rows)
    tumour_probability = tumour_probabilities(probabilities, card.labels, NEGATIVE)
    truth, threshold = np.array([label != NEGATIVE for label in labels]), card.rule.threshold  # the card's, served
    band = fit_review_band(tumour_probability, truth, max_error, threshold=threshold)
    share = fit_subtype_share(probabilities, labels, min_type_accuracy, threshold=threshold)
    decision = {
        "review_band": list(band),
        "subtype_min_share": share,
        "fitted_on": f"validation split ({len(labels)} scans of a known class): every call less than 80 % sure, "
        "widened until calls outside the band are wrong at most "
        f"{max_error:.0%} of the time on each side; a named type right at least {min_type_accuracy:.0%} of the time",
    }
    raw = json.loads(card_path.read_text())
    raw["decision"] = kept_threshold(raw) | decision
    write_card(card_path, raw, restamp=restamp)
    return decision
