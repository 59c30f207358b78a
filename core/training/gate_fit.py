"""Fit the input gate's energy threshold on the validation split and write the gate policy into the card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.evaluation.splits import read_split, split_file_of
from core.model.preprocess import to_model_input
from core.model.roi import find_brain


def fit_gate(card_path: Path, root: Path, quantile: float = 0.995) -> dict[str, Any]:
    """Fit the gate's energy threshold on the validation split and write the gate policy into the card.

    Returns the fitted threshold and the share of validation scans the whole gate then rejects.
    """
    from core.imaging import read_scan_file
    from core.model.classifier import Classifier
    from core.model.gate import GatePolicy, energy, fit_energy_threshold, image_reasons, write_policy

    classifier = Classifier.from_card(card_path)
    card = classifier.card
    energies, image_rejected = [], 0
    files = read_split(split_file_of(card_path), root)
    for _, path in files:
        scan = read_scan_file(path)
        region = find_brain(scan.pixels)
        raw, _ = classifier.scores(to_model_input(scan.pixels, region.box, card.input)[None])
        energies.append(energy(raw[0], card.temperature))
        image_rejected += bool(image_reasons(scan, region, GatePolicy()))
    threshold = fit_energy_threshold(energies, quantile)
    rejected = sum(bool(e > threshold) for e in energies) + image_rejected
    policy = GatePolicy(max_energy=threshold)
    write_policy(card_path, policy, f"validation split ({len(files)} scans), energy quantile {quantile}")
    return {
        "max_energy": threshold,
        "validation_scans": len(files),
        "validation_rejected_at_most": rejected,
        "validation_rejected_fraction_at_most": round(rejected / len(files), 4),
    }
