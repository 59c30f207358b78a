"""The input gate: what is not a brain MRI is refused, uncertain verdicts are flagged, real-looking slices pass."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.cli import main
from core.errors import ScanError
from core.imaging import read_scan
from core.imaging.negatives import KINDS, collection, make
from core.model.analysis import analyse
from core.model.classifier import Classifier
from core.model.decision import DecisionRule
from core.model.explain import Explainer, concentration, overlay
from core.model.gate import ACCEPTED, NEEDS_REVIEW, REJECTED, GatePolicy, assess, energy, with_review
from core.model.roi import find_brain
from tests.scans import png_bytes, synthetic_slice


def gate_of(data: bytes, classifier: Classifier) -> str:
    """The gate's decision, or the reader's/crop's rejection code."""
    try:
        return analyse(data, classifier).prediction.gate.decision
    except ScanError as error:
        return error.code


def test_a_brain_like_slice_passes_the_image_checks(tiny_classifier: Classifier) -> None:
    assert gate_of(png_bytes(synthetic_slice(512, tumour=True)), tiny_classifier) in (ACCEPTED, NEEDS_REVIEW)


@pytest.mark.parametrize("kind", ["colour_photo", "document", "noise", "chest_xray"])
def test_obvious_non_mri_is_refused(kind: str, tiny_classifier: Classifier) -> None:
    for seed in range(5):
        decision = gate_of(png_bytes(make(kind, seed)), tiny_classifier)
        assert decision not in (ACCEPTED, NEEDS_REVIEW), (kind, seed)


def test_image_checks_alone_refuse_most_generated_non_mri(tiny_classifier: Classifier) -> None:
    """Without a fitted energy threshold (the tiny model has none) the cheap checks already refuse most kinds."""
    decisions = [gate_of(png_bytes(image), tiny_classifier) for _, image in collection(per_kind=10)]
    refused = np.mean([d not in (ACCEPTED, NEEDS_REVIEW) for d in decisions])
    assert refused >= 0.9
    assert set(KINDS) == {kind for kind, _ in collection(per_kind=1)}


def test_energy_is_lower_for_confident_logits() -> None:
    assert energy(np.array([9.0, 0.0, 0.0, 0.0]), 1.0) < energy(np.array([0.1, 0.0, 0.0, 0.0]), 1.0)


def test_review_is_decided_on_the_tumour_probability_not_on_the_largest_class() -> None:
    """A no-tumour verdict at P(tumour) = 0.38 is flagged; a 0.98 tumour split between two types is not."""
    scan = read_scan(png_bytes(synthetic_slice(256)))
    region = find_brain(scan.pixels)
    rule = DecisionRule(review_band=(0.2, 0.8))
    accepted = assess(scan, region, None, 1.0, GatePolicy())
    assert accepted.decision == ACCEPTED
    doubtful = rule.apply([0.19, 0.19, 0.62, 0.0])  # "no tumour", but P(tumour) = 0.38
    assert doubtful.label == "notumor" and doubtful.confidence == pytest.approx(0.62)
    flagged = with_review(accepted, doubtful.review_reasons)
    assert flagged.decision == NEEDS_REVIEW and "38%" in flagged.reasons[0]
    split = rule.apply([0.49, 0.49, 0.02, 0.0])  # a clear tumour, type unclear between two
    assert split.is_tumour and split.confidence == pytest.approx(0.98)
    assert with_review(accepted, split.review_reasons).decision == ACCEPTED
    refused = assess(scan, region, None, 1.0, GatePolicy(max_colourfulness=-1))
    assert with_review(refused, doubtful.review_reasons) is refused  # a refusal stays a refusal


def test_energy_threshold_from_the_card_refuses_unfamiliar_inputs() -> None:
    scan = read_scan(png_bytes(synthetic_slice(256)))
    region = find_brain(scan.pixels)
    strict = GatePolicy(max_energy=-20.0)
    result = assess(scan, region, np.array([1.0, 0.5, 0.2, 0.1]), 1.0, strict)
    assert result.decision == REJECTED and "unlike any brain MRI" in result.reasons[0]
    assert result.to_json()["energy"] == pytest.approx(energy(np.array([1.0, 0.5, 0.2, 0.1]), 1.0), abs=1e-4)


def test_cli_reports_the_gate_and_refuses_non_mri(tmp_path: Path, tiny_card: Path, capsys) -> None:
    photo, brain = tmp_path / "photo.png", tmp_path / "brain.png"
    photo.write_bytes(png_bytes(make("colour_photo", 3)))
    brain.write_bytes(png_bytes(synthetic_slice(256, tumour=True)))
    code = main(["predict", "--model", str(tiny_card), str(photo), str(brain)])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1
    assert lines[0]["error"]["code"] == "not_brain_mri" and lines[0]["gate"]["decision"] == REJECTED
    assert "label" not in lines[0]
    assert lines[1]["gate"]["decision"] in (ACCEPTED, NEEDS_REVIEW) and "label" in lines[1]


def test_grad_cam_is_aligned_to_the_crop_and_the_scan(tiny_classifier: Classifier) -> None:
    analysis = analyse(png_bytes(synthetic_slice(512, tumour=True)), tiny_classifier)
    explainer = Explainer(tiny_classifier)
    heat = explainer.explain(analysis)
    size = tiny_classifier.card.input.size
    assert heat.label == analysis.prediction.label
    assert heat.on_input.shape == (size, size) and heat.on_scan.shape == (512, 512)
    assert heat.on_input.min() >= 0 and heat.on_input.max() <= 1
    x0, y0, x1, y1 = analysis.region.box
    outside_box = heat.on_scan.copy()
    outside_box[y0:y1, x0:x1] = 0
    assert outside_box.max() == 0  # nothing is drawn outside the crop
    other = explainer.explain(analysis, "notumor")
    assert other.label == "notumor"
    assert overlay(analysis.scan.pixels, heat.on_scan).shape == (512, 512, 3)
    mask = analysis.region.mask(analysis.scan.pixels.shape)
    assert concentration(heat.on_scan, mask) > 1.0
    with pytest.raises(ValueError):
        explainer.explain(analysis, "cat")
