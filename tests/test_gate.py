"""The input gate: what is not a brain MRI is refused, uncertain verdicts are flagged, real-looking slices pass."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.cli import main
from core.config import model_card_path
from core.errors import ScanError
from core.imaging import read_scan
from core.imaging.negatives import BODY_PARTS, KINDS, collection, make
from core.model.analysis import analyse
from core.model.classifier import Classifier
from core.model.decision import DecisionRule
from core.model.explain import Explainer, concentration, overlay
from core.model.gate import ACCEPTED, NEEDS_REVIEW, REJECTED, GatePolicy, assess, energy, image_reasons, with_review
from core.model.roi import find_brain
from core.training.gate_fit import FULL_FRAME_KINDS, relaxed_frame_bounds
from core.training.gate_learning import VARIANTS, GateSamples, Sample, brain_variant, fit_from_samples
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
    """Without a fitted energy threshold (the tiny model has none) the cheap checks already refuse most kinds; MR
    sections of other body parts are what only the learned check can refuse (next test)."""
    kinds = [(kind, image) for kind, image in collection(per_kind=10) if kind != "body_mr"]
    decisions = [gate_of(png_bytes(image), tiny_classifier) for _, image in kinds]
    refused = np.mean([d not in (ACCEPTED, NEEDS_REVIEW) for d in decisions])
    assert refused >= 0.9
    assert set(KINDS) == {kind for kind, _ in collection(per_kind=1)}


def test_mr_sections_of_other_body_parts_pass_every_fixed_image_check() -> None:
    """Grayscale, a dark background, textured tissue in a body-shaped outline: the fixed checks cannot tell a
    pelvic, abdominal, spinal or knee MR section from a brain slice (model 2.1.0 accepted pelvic MR slices), so the
    generated ones are negatives of the learned not-MRI check."""
    parts = set()
    for seed in range(12):
        pixels = make("body_mr", seed)
        parts.add(BODY_PARTS[seed % len(BODY_PARTS)])
        assert pixels.ndim == 2 and pixels.dtype == np.uint8
        assert np.median(pixels[:8, :8]) < 20  # near-black corner: MR background
        scan = read_scan(png_bytes(pixels))
        assert image_reasons(scan, find_brain(scan.pixels), GatePolicy()) == [], seed
    assert parts == set(BODY_PARTS)


def test_a_head_that_fills_the_frame_passes_the_relaxed_frame_bounds() -> None:
    """A slice cropped inside the head (its outline touches every edge) covers about 98 % of the frame: the fixed
    bounds of 2.1.0 refused it; with the learned check fitted, ``fit-gate`` relaxes them to 1.0."""
    pixels = synthetic_slice(256)
    x0, y0, x1, y1 = find_brain(pixels, margin=0.0).box
    w, h = x1 - x0, y1 - y0
    scan = read_scan(png_bytes(np.ascontiguousarray(pixels[y0 + h // 6 : y1 - h // 6, x0 + w // 6 : x1 - w // 6])))
    region = find_brain(scan.pixels)
    assert region.area_fraction > 0.98
    assert any("covers" in reason for reason in image_reasons(scan, region, GatePolicy()))
    assert image_reasons(scan, region, GatePolicy(max_area=1.0, max_fill=1.0)) == []


def test_the_frame_bounds_relax_only_when_the_learned_check_refuses_full_frame_images_itself() -> None:
    strong = {"generated_refused_fresh_seeds": {kind: {"share": 1.0} for kind in FULL_FRAME_KINDS}}
    assert relaxed_frame_bounds(strong) == {"max_area": 1.0, "max_fill": 1.0}
    weak = {
        "generated_refused_fresh_seeds": {
            **strong["generated_refused_fresh_seeds"],
            "generated:document": {"share": 0.8},
        }
    }
    assert relaxed_frame_bounds(weak) == {}
    assert relaxed_frame_bounds(None) == {} and relaxed_frame_bounds({}) == {}  # no learned check: bounds kept
    card = json.loads(model_card_path().read_text())["gate"]
    assert relaxed_frame_bounds(card["learned_report"]) == {"max_area": card["max_area"], "max_fill": card["max_fill"]}


@pytest.mark.parametrize("kind", VARIANTS)
def test_brain_variants_stay_brain_slices_of_the_expected_framing(kind: str) -> None:
    pixels = synthetic_slice(256)
    base = find_brain(pixels).area_fraction
    varied = brain_variant(pixels, kind, np.random.default_rng(3))
    area = find_brain(varied).area_fraction
    assert varied.dtype == np.uint8 and varied.ndim == 2
    expected = {"tight": area > base * 1.5, "wide": area < base * 0.6}.get(kind, abs(area - base) < 0.1)
    assert expected, (kind, base, area)


def test_learned_checks_are_fitted_and_reported_from_samples() -> None:
    """Two clouds of features: the not-MRI check refuses the fresh negatives, keeps the varied brain slices, and
    its threshold refuses at most the allowed share of each source's validation slices."""
    rng = np.random.default_rng(0)

    def cloud(n: int, centre: float, source: str, axis: int = 0, **flags: bool) -> list[Sample]:
        return [Sample(rng.normal(0.0, 1.0, 8) + centre * np.eye(8)[axis], source, **flags) for _ in range(n)]

    samples = GateSamples(
        train=cloud(300, 0.0, "A") + cloud(40, 5.0, "A", axis=1, little_brain=True, enough_brain=False),
        validation=cloud(400, 0.0, "A") + cloud(400, 0.0, "B"),
        variants=cloud(100, -1.0, "variant:tight"),
        validation_variants=cloud(200, -1.0, "variant:tight"),
        real=cloud(30, 6.0, "Not-brain-MRI"),
        generated=cloud(100, 6.0, "generated:body_mr"),
        fresh=cloud(50, 6.0, "generated:body_mr"),
    )
    checks, report = fit_from_samples(samples, max_refused=0.01)
    assert [check.name for check in checks] == ["not_mri", "little_brain"]
    assert report["generated_refused_fresh_seeds"]["generated:body_mr"]["share"] >= 0.95
    assert report["not_mri_cross_validated"]["share"] >= 0.9
    assert all(row["share"] <= 0.03 for row in report["validation_refused_by_either"].values())
    assert report["validation_variants_refused_by_either"]["variant:tight"]["share"] <= 0.1
    assert report["trained_on"] == {
        "brain": 300, "brain_variants": 100, "little_brain": 40, "real_not_mri": 30, "generated_not_mri": 100
    }  # fmt: skip


def test_a_learned_check_reads_the_facts_it_was_fitted_on_and_older_cards_read_the_first_six() -> None:
    """Checks fitted now also see the head's grey level (what model 3's per-image standardisation discards); a
    card written before them names no facts and its checks still get the six they were fitted on."""
    from core.model.gate import FACTS, IMAGE_FEATURES, LearnedCheck, background_level, features, flatness, image_facts

    pixels = synthetic_slice(256, tumour=False, seed=3)
    scan = read_scan(png_bytes(pixels))
    region = find_brain(scan.pixels)
    facts = image_facts(scan, region, np.array([2.0, 0.0, 0.0, 0.0]), 1.0)
    inside = scan.pixels[region.mask(scan.pixels.shape)] / 255.0
    assert facts["head_mean"] == pytest.approx(inside.mean()) and facts["head_std"] == pytest.approx(inside.std())
    assert (facts["background"], facts["flatness"]) == (background_level(scan, region), flatness(scan, region))
    embedding = np.zeros(3)

    def bright_head_check(**extra: object) -> dict:
        """A card's check refusing when its feature (the head's contrast for the new check, the energy for the old
        one) is above 0.05."""
        n = 3 + len(extra.get("facts", IMAGE_FEATURES))
        weights = [0.0] * n
        weights[-1 if extra else 3] = 50.0  # head_std for the new check's order; energy for the old one
        return {"name": "not_mri", "reason": "bright", "mean": [0.0] * n, "scale": [1.0] * n, "weights": weights,
                "bias": -50.0 * 0.05, "threshold": 0.5, **extra}  # fmt: skip

    old = LearnedCheck.from_card(bright_head_check())
    new = LearnedCheck.from_card(bright_head_check(facts=list(FACTS)))
    assert old.facts == IMAGE_FEATURES and new.facts == FACTS
    assert len(features(embedding, facts, old.facts)) == 9 and len(features(embedding, facts, new.facts)) == 11
    assert features(embedding, facts, new.facts)[-1] == facts["head_std"]
    assert features(embedding, facts, old.facts)[3] == facts["energy"]
    with pytest.raises(ValueError, match="takes 9 features"):
        old.probability(features(embedding, facts, FACTS))
    policy = GatePolicy(checks=(new,))
    assert facts["head_std"] > 0.05
    assert assess(scan, region, np.array([2.0, 0.0, 0.0, 0.0]), 1.0, policy, embedding).decision == REJECTED
    flat = GatePolicy(checks=(LearnedCheck.from_card({**bright_head_check(facts=list(FACTS)), "bias": -50.0}),))
    assert assess(scan, region, np.array([2.0, 0.0, 0.0, 0.0]), 1.0, flat, embedding).decision != REJECTED
    # an older card's check on the energy (the fourth value after a 3-wide embedding): refuses above -2.0
    unsure = GatePolicy(checks=(LearnedCheck.from_card({**bright_head_check(), "bias": 100.0}),))
    assert assess(scan, region, np.array([2.0, 0.0, 0.0, 0.0]), 1.0, unsure, embedding).decision != REJECTED
    assert assess(scan, region, np.array([0.1, 0.0, 0.0, 0.0]), 1.0, unsure, embedding).decision == REJECTED
    with pytest.raises(ValueError, match="does not compute: head_hue"):
        LearnedCheck.from_card(bright_head_check(facts=[*FACTS[:-1], "head_hue"]))


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
    assert flagged.decision == NEEDS_REVIEW and "38.0%" in flagged.reasons[0]  # as the panel writes it
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


def test_a_folds_learned_checks_never_read_its_held_out_institution(tmp_path: Path, monkeypatch) -> None:
    """The checks learned from everything outside the validation list: in a leave-one-institution-out fold, the
    institution left out of every other fitted rule was among their training slices."""
    from core.training import gate_learning

    for name in ("a.png", "b.png", "c.png"):
        folder = tmp_path / "Training" / "glioma"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(png_bytes(synthetic_slice(64)))
    read: list[Path] = []
    monkeypatch.setattr(gate_learning, "sample_of", lambda classifier, path, *a: read.append(Path(path).name))
    monkeypatch.setattr(gate_learning, "_variants", lambda *a, **k: [])
    monkeypatch.setattr(gate_learning, "generated_negatives", lambda *a, **k: [])
    held = frozenset({(tmp_path / "Training" / "glioma" / "c.png").resolve()})
    validation = {(tmp_path / "Training" / "glioma" / "b.png").resolve()}
    gate_learning.collect_samples(None, tmp_path, validation, held_out=held)
    assert sorted(read) == ["a.png", "b.png"]  # trained on a, thresholds set on b, c never read


def test_random_noise_in_a_head_shaped_outline_is_refused_and_textured_slices_are_not() -> None:
    """Uniform noise inside a disc passed every fixed check, and model 3 called it "no tumour" for review: tissue
    is smooth from pixel to pixel (every real section of the shared data: correlation at least 0.30), noise is not."""
    from core.model.gate import structure

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:256, :256]
    disc = ((yy - 128) ** 2 + (xx - 128) ** 2) < 100**2
    noisy = read_scan(png_bytes((disc * rng.integers(40, 256, (256, 256))).astype(np.uint8)))
    region = find_brain(noisy.pixels)
    assert structure(noisy, region) < 0.05
    assert "the head region is random noise from pixel to pixel, unlike tissue" in image_reasons(
        noisy, region, GatePolicy()
    )
    for size in (64, 128, 512):
        scan = read_scan(png_bytes(synthetic_slice(size, tumour=size == 128, seed=size)))
        region = find_brain(scan.pixels)
        assert structure(scan, region) > 0.3
        assert image_reasons(scan, region, GatePolicy()) == [], size
    assert GatePolicy.from_card({"min_structure": 0.5}).min_structure == 0.5
    # a large frame is read along a sample of its rows and columns, never on a shrunken copy (whose averaging
    # smooths noise into structure: noise in a disc read 0.30 at a quarter of 2048 px)
    yy, xx = np.mgrid[:2048, :2048]
    disc = ((yy - 1024) ** 2 + (xx - 1024) ** 2) < 800**2
    large = read_scan(png_bytes((disc * rng.integers(40, 256, (2048, 2048))).astype(np.uint8)))
    assert structure(large, find_brain(large.pixels)) < 0.1
