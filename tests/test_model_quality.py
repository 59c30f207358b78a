"""Behaviour of the shipped model on real slices (slow; skipped when ../shared data or the model is absent).

Invariance (small brightness, contrast and margin changes keep the label), orientation (a flipped tumour scan is
still a tumour), minimum functionality on a handful of training images per class, the input gate on generated
non-MRI images, and Grad-CAM concentrating inside the brain.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.config import MODELS_DIR
from core.errors import ScanError
from core.evaluation.splits import read_split
from core.imaging import read_scan_file
from core.imaging.negatives import collection
from core.model.analysis import analyse
from core.model.classifier import Classifier
from core.model.explain import Explainer, concentration
from core.model.gate import REJECTED
from tests.conftest import SHARED_DATA

CARD = MODELS_DIR / "btd-cnn.json"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (SHARED_DATA / "Training").is_dir(), reason="../shared/data/brain-mri is not available"),
    pytest.mark.skipif(not CARD.exists(), reason="the shipped model is not in models/"),
]
CLASSES = ("glioma", "meningioma", "notumor", "pituitary")


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier.from_card(CARD)


@pytest.fixture(scope="module")
def validation() -> list[tuple[str, Path]]:
    return read_split(CARD.with_name("btd-cnn.split.json"), SHARED_DATA)


def handful(validation: list[tuple[str, Path]], label: str, n: int = 8) -> list[Path]:
    """``n`` validation scans of ``label`` spread over the split (files are grouped by source in their folders)."""
    paths = [path for truth, path in validation if truth == label]
    return paths[:: max(1, len(paths) // n)][:n]


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("label", CLASSES)
def test_minimum_functionality_per_class(classifier: Classifier, validation, label: str) -> None:
    paths = handful(validation, label)
    correct = [analyse(p.read_bytes(), classifier).prediction.label == label for p in paths]
    assert np.mean(correct) >= 0.75, f"{label}: {sum(correct)}/{len(correct)}"


def test_small_appearance_and_margin_changes_keep_the_label(classifier: Classifier, validation) -> None:
    changed = 0
    paths = [p for label in CLASSES for p in handful(validation, label, 5)]
    for path in paths:
        pixels = read_scan_file(path).pixels
        base = analyse(png(pixels), classifier).prediction.label
        brighter = np.clip(pixels.astype(np.int16) + 12, 0, 255).astype(np.uint8)
        contrast = np.clip((pixels.astype(np.float32) - 128) * 1.1 + 128, 0, 255).astype(np.uint8)
        margin = np.pad(pixels, 16)
        for variant in (brighter, contrast, margin):
            changed += analyse(png(variant), classifier).prediction.label != base
    assert changed <= len(paths) * 3 * 0.1


def test_flipped_tumour_scans_stay_tumours(classifier: Classifier, validation) -> None:
    paths = [p for label in ("glioma", "meningioma", "pituitary") for p in handful(validation, label, 6)]
    kept = []
    for path in paths:
        pixels = read_scan_file(path).pixels
        if analyse(png(pixels), classifier).prediction.label == "notumor":
            continue
        kept.append(analyse(png(np.ascontiguousarray(pixels[:, ::-1])), classifier).prediction.label != "notumor")
    assert np.mean(kept) >= 0.9


def test_gate_refuses_generated_non_mri(classifier: Classifier) -> None:
    refused = []
    for _, image in collection(per_kind=15):
        try:
            refused.append(analyse(png(image), classifier).prediction.gate.decision == REJECTED)
        except ScanError:
            refused.append(True)
    assert np.mean(refused) >= 0.95


def test_gate_passes_validation_scans(classifier: Classifier, validation) -> None:
    sample = validation[::5]
    rejected = []
    for _, path in sample:
        try:
            rejected.append(analyse(path.read_bytes(), classifier).prediction.gate.decision == REJECTED)
        except ScanError:
            rejected.append(True)
    assert np.mean(rejected) <= 0.02


def test_grad_cam_concentrates_inside_the_brain(classifier: Classifier, validation) -> None:
    explainer = Explainer(classifier)
    paths = [p for label in ("glioma", "meningioma", "pituitary") for p in handful(validation, label, 10)]
    ratios = []
    for path in paths:
        analysis = analyse(path.read_bytes(), classifier)
        heat = explainer.explain(analysis)
        ratios.append(concentration(heat.on_scan, analysis.region.mask(analysis.scan.pixels.shape)))
    assert np.median(ratios) >= 3.0
