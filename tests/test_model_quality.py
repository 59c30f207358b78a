"""Behaviour of the shipped model on real slices (slow; skipped when ../shared data or the model is absent).
``BTD_MODEL=CARD`` runs the same checks on a candidate model (its own validation split).

Invariance (small brightness, contrast and margin changes keep the label), orientation (a flipped tumour scan is
still a tumour), minimum functionality on a handful of training images per class, the input gate on varied brain
slices, and Grad-CAM concentrating inside the brain (the gate on generated images: ``test_shipped_gate.py``).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.config import MODELS_DIR, model_card_path
from core.errors import ScanError
from core.evaluation.splits import read_split, split_file_of
from core.imaging import read_scan_file
from core.model.analysis import analyse
from core.model.classifier import Classifier
from core.model.explain import Explainer, concentration
from core.model.gate import REJECTED
from tests.conftest import SHARED_DATA

CARD = model_card_path()  # the shipped card unless BTD_MODEL names a candidate
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not all((SHARED_DATA / name).is_dir() for name in ("Training", "LGG", "Normal-heads", "Web-tumour")),
        reason="../shared/data/brain-mri (all four brain folders) is not available",
    ),
    pytest.mark.skipif(
        not (CARD.exists() and split_file_of(CARD).exists()), reason="the model or its split file is not in models/"
    ),
]
CLASSES = ("glioma", "meningioma", "notumor", "pituitary")


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier.from_card(CARD)


@pytest.fixture(scope="module")
def validation() -> list[tuple[str, Path]]:
    return read_split(split_file_of(CARD), SHARED_DATA)


def handful(validation: list[tuple[str, Path]], label: str, n: int = 8) -> list[Path]:
    """``n`` validation scans of ``label`` from the training collection (where every tumour has its type), spread
    over the split (files are grouped by source in their folders). The collection holds some images twice under two
    names (Tr-no_1059.jpg and Tr-noTr_0002.jpg are one file's pixels): each counts once, or one mistake counts twice."""
    paths, seen = [], set()
    for truth, path in validation:
        if truth == label and "Training" in path.parts:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest not in seen:
                seen.add(digest)
                paths.append(path)
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


def test_gate_keeps_brain_slices_that_fill_the_frame_or_sit_small_in_it(classifier: Classifier, validation) -> None:
    """Validation slices cropped inside the head, or zoomed out in a wide black frame: refused at most 7 % and 2 %
    of the time (the shipped card's learned checks on every validation slice with enough brain: 3.2 % and 0.9 %;
    2.1.0's gate refused a coronal meningioma whose head filled the frame)."""
    from core.training.gate_learning import ENOUGH_BRAIN_PIXELS, brain_variant
    from core.training.sources import discover

    assert classifier.card.gate["max_area"] == 1.0  # the learned check, not the frame bound, refuses full frames
    head = {i.path.resolve(): i.head_pixels for i in discover([SHARED_DATA / "LGG"])}
    rng = np.random.default_rng(0)
    refused: dict[str, list[bool]] = {"tight": [], "wide": []}
    for _, path in validation[::6]:
        if (head.get(path.resolve()) or ENOUGH_BRAIN_PIXELS) < ENOUGH_BRAIN_PIXELS:
            continue
        pixels = read_scan_file(path).pixels
        for kind, flags in refused.items():
            try:
                gate = analyse(png(brain_variant(pixels, kind, rng)), classifier).prediction.gate
                flags.append(gate.decision == REJECTED)
            except ScanError:
                flags.append(True)
    shares = {kind: float(np.mean(flags)) for kind, flags in refused.items()}
    assert shares["tight"] <= 0.07 and shares["wide"] <= 0.02, shares


def test_gate_passes_validation_scans_with_enough_brain_on_every_source(classifier: Classifier, validation) -> None:
    """Real brain slices are refused at most 2.5 % of the time on each source of 100 sampled slices or more, at
    most once on a smaller one (the issue's target is 1 %; LGG sections with enough brain are refused 2 % of the time
    by 2.1.0 and 2.1.1 alike, mostly for the shape of their bright region: docs/model-report.md); LGG sections with
    under 15,000 head pixels (vertex, skull base) may be refused for holding too little brain, and are left out."""
    from core.training.sources import discover

    head = {i.path.resolve(): i.head_pixels for i in discover([SHARED_DATA / "LGG"])}
    rejected: dict[str, list[bool]] = {}
    for _, path in validation[::4]:
        if (head.get(path.resolve()) or 15_000) < 15_000:
            continue
        source = path.resolve().relative_to(SHARED_DATA.resolve()).parts[0]
        try:
            refused = analyse(path.read_bytes(), classifier).prediction.gate.decision == REJECTED
        except ScanError:
            refused = True
        rejected.setdefault(source, []).append(refused)
    shares = {source: float(np.mean(flags)) for source, flags in rejected.items()}
    assert {"Training", "LGG", "Normal-heads"} <= set(shares)
    assert all(
        share <= 0.025 if len(rejected[source]) >= 100 else sum(rejected[source]) <= 1
        for source, share in shares.items()
    ), shares


def test_a_glioma_patients_volume_is_a_tumour_and_a_healthy_head_is_not(classifier: Classifier, validation) -> None:
    """The series rule on real validation volumes: every LGG patient's FLAIR series held out for validation, and
    every Normal-heads subject's series held out (the card's series figures come from the same volumes)."""
    from core.imaging.volume import Volume
    from core.model.volume import analyse_volume
    from core.training.series_fit import volumes
    from core.training.sources import discover

    listed = {path.resolve() for _, path in validation}
    items = [i for i in discover([SHARED_DATA / "LGG", SHARED_DATA / "Normal-heads"]) if i.path.resolve() in listed]
    called = {"LGG": [], "Normal-heads": []}
    for name, members in volumes(items).items():
        if members[0].source == "LGG" and not name.endswith("_flair"):
            continue
        sections = np.stack([read_scan_file(m.path).pixels for m in members])
        volume = Volume("test", "study", name, sections, tuple(float(k) for k in range(len(members))))
        called[members[0].source].append(analyse_volume(volume, classifier).is_tumour)
    assert len(called["LGG"]) >= 5 and len(called["Normal-heads"]) >= 5
    assert np.mean(called["LGG"]) >= 0.85 and not any(called["Normal-heads"]), called


def test_a_series_too_short_for_the_rule_is_judged_without_changing_the_rules_own_figures(classifier) -> None:
    """Five-section series cut from the validation volumes: the rule's one window was the whole series, and it found
    61 % of the tumour windows; judged on their best two sections at the single-scan threshold as well, 85 %. The
    volumes the rule was fitted on (runs of six sections or more) keep the card's figures (bench/short_series.py)."""
    import json

    from core.model.card import ModelCard
    from core.training.series_fit import tumour_free_stretches, validation_curves

    card = ModelCard.from_file(model_card_path())
    rule, floor = card.series, card.rule.threshold
    read = validation_curves(classifier, model_card_path(), SHARED_DATA)
    figures = json.loads(model_card_path().read_text())["series"]["validation"]
    found = np.mean([rule.calls_tumour(c, floor) for c, _ in read.tumour])
    stretches = [part for c, marks in read.tumour for part in tumour_free_stretches(c, marks)]
    assert round(found, 4) == figures["tumour_volume_sensitivity"]
    assert (
        round(np.mean([not rule.calls_tumour(c, floor) for c in stretches]), 4)
        == figures["tumour_free_stretch_specificity"]
    )
    tumour = [c[i : i + 5] for c, marks in read.tumour for i in range(len(c) - 4) if sum(marks[i : i + 5]) >= 3]
    clear = [c[i : i + 5] for c in read.normal for i in range(len(c) - 4)]
    assert np.mean([rule.calls_tumour(c, floor) for c in tumour]) >= 0.8
    assert np.mean([not rule.calls_tumour(c, floor) for c in clear]) >= 0.95


def test_grad_cam_concentrates_inside_the_brain(classifier: Classifier, validation) -> None:
    explainer = Explainer(classifier)
    paths = [p for label in ("glioma", "meningioma", "pituitary") for p in handful(validation, label, 10)]
    ratios = []
    for path in paths:
        analysis = analyse(path.read_bytes(), classifier)
        heat = explainer.explain(analysis)
        ratios.append(concentration(heat.on_scan, analysis.region.mask(analysis.scan.pixels.shape)))
    assert np.median(ratios) >= 3.0


LESION_CARD = MODELS_DIR / "btd-lesion.json"


@pytest.mark.skipif(not LESION_CARD.exists(), reason="the shipped lesion segmenter is not in models/")
def test_the_shipped_segmenter_outlines_drawn_lesions_and_leaves_healthy_heads_alone() -> None:
    """A floor on slices it trained on, not its quality (its held-out figures, leaving institutions out, are in its
    card and below the issue's targets): most large FLAIR lesions are found where they were drawn; healthy heads get
    no lesion of 100 pixels."""
    import csv

    from core.model.lesion import Segmenter
    from core.model.roi import find_brain

    segmenter = Segmenter.from_card(LESION_CARD)
    assert segmenter.card.figures.get("segmentation_ms"), "the card states its cost"
    with (SHARED_DATA / "LGG" / "slices.csv").open() as handle:
        rows = [r for r in csv.DictReader(handle) if r["sequence"] == "flair" and int(r["tumour_pixels"]) >= 1500]
    dices = []
    for row in rows[:: max(1, len(rows) // 20)][:20]:
        pixels = read_scan_file(SHARED_DATA / "LGG" / row["file"]).pixels
        section = Path(row["file"]).stem.rsplit("_", 1)[0]
        truth = read_scan_file(SHARED_DATA / "LGG" / "masks" / f"{section}.png").pixels > 127
        found = segmenter.lesion(pixels, find_brain(pixels).box).mask
        dices.append(2 * (found & truth).sum() / (found.sum() + truth.sum()))
    assert np.median(dices) >= 0.3 and np.mean([d > 0 for d in dices]) >= 0.55, dices
    normal = sorted((SHARED_DATA / "Normal-heads" / "notumor").glob("*"))[::25][:20]
    areas = []
    for path in normal:
        pixels = read_scan_file(path).pixels
        areas.append(segmenter.lesion(pixels, find_brain(pixels).box).area_px)
    assert sum(a >= 100 for a in areas) <= 2, areas
