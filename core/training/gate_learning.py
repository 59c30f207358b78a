"""The input gate's learned checks, fitted on the model's own view of real and non-MRI images.

Two logistic checks on :func:`core.model.gate.features` (the model's penultimate-layer embedding, the image
facts the fixed checks use and the head's grey level and contrast, which a network standardising each image does
not see: with model 3's features they cut tight crops of real slices refused 1.8 % -> 0.6 % and refused one more
of 59 real non-brain images, cross-validated):
- **not brain MRI**: brain slices of every training source (their training part) against the real non-MRI images
  (chest radiographs, abdominal CT) and generated ones (:mod:`core.imaging.negatives`). The real negatives are few,
  so their refusal rate is measured by 5-fold cross-validation: each fold is scored by a check fitted without it.
- **too little brain**: LGG sections with under 10,000 head pixels (skull base, vertex) against sections with
  enough brain for a verdict.
Each threshold is set on the validation split so that at most ``max_refused`` of the real brain slices of every
source (with enough brain) are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.errors import ScanError
from core.imaging import read_scan, read_scan_file
from core.imaging.negatives import KINDS, make
from core.imaging.phantoms import png_bytes
from core.model.classifier import Classifier
from core.model.gate import FACTS, LearnedCheck, features, image_facts
from core.model.preprocess import to_model_input
from core.model.roi import find_brain
from core.training.sources import Item

LITTLE_BRAIN_PIXELS = 10_000  # LGG head area (of 256 x 256) below which a section is too little brain
ENOUGH_BRAIN_PIXELS = 15_000


@dataclass(frozen=True)
class Sample:
    values: np.ndarray
    source: str
    little_brain: bool = False
    enough_brain: bool = True


def sample_of(classifier: Classifier, data: bytes | Path, source: str, item: Item | None = None) -> Sample | None:
    """The gate features of one image as the app computes them (None when the crop finds no head at all: the
    app refuses those before the gate)."""
    try:
        scan = read_scan_file(data) if isinstance(data, Path) else read_scan(data)
        region = find_brain(scan.pixels)
    except ScanError:
        return None
    card = classifier.card
    raw, _, embedding = classifier.scores_and_embedding(to_model_input(scan.pixels, region.box, card.input)[None])
    logits = raw[0] if card.output == "logits" else None
    head = item.head_pixels if item is not None else None
    return Sample(
        features(embedding[0], image_facts(scan, region, logits, card.temperature), FACTS),
        source,
        little_brain=head is not None and head < LITTLE_BRAIN_PIXELS,
        enough_brain=head is None or head >= ENOUGH_BRAIN_PIXELS,
    )


VARIANTS = ("tight", "wide", "gamma", "rotated", "low_resolution")


def brain_variant(pixels: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A real brain slice as other hospitals and users send it: cropped so tightly that the head fills the frame,
    zoomed out in a wide black frame, another contrast curve, turned, or at low resolution. The not-brain-MRI check
    learns these as brain (model 2.1.0's gate refused a coronal slice whose head filled the frame and a sagittal
    section of a healthy volunteer's series)."""
    height, width = pixels.shape
    if kind == "tight":
        x0, y0, x1, y1 = find_brain(pixels, margin=0.0).box
        cut = rng.uniform(0.0, 0.15, 4)
        w, h = x1 - x0, y1 - y0
        crop = pixels[y0 + int(cut[1] * h) : y1 - int(cut[3] * h), x0 + int(cut[0] * w) : x1 - int(cut[2] * w)]
        return crop if min(crop.shape) >= 32 else pixels
    if kind == "wide":
        pad = int(max(height, width) * rng.uniform(0.3, 0.8))
        return np.pad(pixels, pad)
    if kind == "gamma":
        return (255.0 * (pixels / 255.0) ** np.exp(rng.uniform(-0.7, 0.7))).astype(np.uint8)
    if kind == "rotated":
        turn = cv2.getRotationMatrix2D((width / 2, height / 2), rng.uniform(-25, 25), 1.0)
        return cv2.warpAffine(pixels, turn, (width, height), flags=cv2.INTER_LINEAR)
    if kind == "low_resolution":
        side = int(rng.integers(64, 112))
        small = cv2.resize(pixels, (side, side * height // width), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    raise ValueError(kind)


def generated_negatives(classifier: Classifier, per_kind: int = 40, seed: int = 0) -> list[Sample]:
    samples = []
    for k, kind in enumerate(KINDS):
        for i in range(per_kind):
            sample = sample_of(classifier, png_bytes(make(kind, seed + 1000 * k + i)), f"generated:{kind}")
            if sample is not None:
                samples.append(sample)
    return samples


def logistic_fit(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iterations: int = 25) -> tuple[np.ndarray, float]:
    """Class-balanced, L2-regularised logistic regression by Newton's method on standardised features."""
    n, d = x.shape
    design = np.hstack([x, np.ones((n, 1))])
    weight = np.where(y == 1, 0.5 / max(y.sum(), 1), 0.5 / max((1 - y).sum(), 1)) * n
    beta = np.zeros(d + 1)
    penalty = np.eye(d + 1) * l2
    penalty[-1, -1] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ beta, -50, 50)))
        gradient = design.T @ (weight * (p - y)) + penalty @ beta
        hessian = (design * (weight * p * (1 - p))[:, None]).T @ design + penalty
        beta -= np.linalg.solve(hessian, gradient)
    return beta[:-1], float(beta[-1])


def fit_check(
    name: str,
    reason: str,
    positives: Sequence[Sample],
    negatives: Sequence[Sample],
    accepted: Sequence[Sample],
    max_refused: float,
) -> LearnedCheck:
    """A check refusing ``positives``-like inputs; its threshold refuses at most ``max_refused`` of each source's
    ``accepted`` samples (validation slices)."""
    x = np.stack([s.values for s in (*positives, *negatives)])
    y = np.r_[np.ones(len(positives)), np.zeros(len(negatives))]
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    weights, bias = logistic_fit((x - mean) / scale, y)
    check = LearnedCheck(name, reason, tuple(mean), tuple(scale), tuple(weights), bias, 1.0, FACTS)
    scores: dict[str, list[float]] = {}
    for sample in accepted:
        scores.setdefault(sample.source, []).append(check.probability(sample.values))
    # a source too small to refuse any share of (the 24 web-style scans) refuses none of its validation scans
    threshold = (
        max(
            float(np.percentile(values, 100 * (1 - max_refused)) if len(values) * max_refused >= 1 else np.max(values))
            for values in scores.values()
        )
        + 1e-9
    )
    return LearnedCheck(name, reason, tuple(mean), tuple(scale), tuple(weights), bias, min(threshold, 1.0), FACTS)


def refused_share(check: LearnedCheck, samples: Sequence[Sample]) -> dict[str, Any]:
    refused = sum(check.probability(s.values) >= check.threshold for s in samples)
    return {"refused": int(refused), "n": len(samples), "share": round(refused / len(samples), 4) if samples else None}


def cross_validated_refusals(
    real: Sequence[Sample],
    generated: Sequence[Sample],
    brain: Sequence[Sample],
    accepted: Sequence[Sample],
    max_refused: float,
    folds: int = 5,
) -> dict[str, Any]:
    """Refusals of the real non-MRI images, each scored by a check fitted without its fold."""
    order = np.random.default_rng(0).permutation(len(real))
    refused = 0
    for fold in range(folds):
        held = set(order[fold::folds].tolist())
        check = fit_check(
            "not_mri",
            "",
            [s for i, s in enumerate(real) if i not in held] + list(generated),
            brain,
            accepted,
            max_refused,
        )
        refused += sum(check.probability(real[i].values) >= check.threshold for i in held)
    return {"refused": int(refused), "n": len(real), "share": round(refused / len(real), 4), "folds": folds}


BRAIN_SOURCES = ("Training", "Web-tumour", "LGG", "Normal-heads")
NOT_BRAIN = "Not-brain-MRI"


@dataclass
class GateSamples:
    """The gate features of everything the learned checks are fitted and measured on."""

    train: list[Sample]  # training parts of the brain sources, little-brain sections included
    validation: list[Sample]  # the validation split's slices: where thresholds are set
    variants: list[Sample]  # one variant (:func:`brain_variant`) of each training slice with enough brain
    validation_variants: list[Sample]  # every variant of each validation slice with enough brain, never fitted on
    real: list[Sample]  # the real images that are not brain MRI
    generated: list[Sample]  # generated non-MRI images the not-MRI check is fitted on
    fresh: list[Sample]  # generated with other seeds, never fitted on


def _variants(classifier: Classifier, items: Sequence[Item], kinds: Sequence[str], seed: int) -> list[Sample]:
    rng = np.random.default_rng(seed)
    samples = []
    for item in items:
        try:
            pixels = read_scan_file(item.path).pixels
        except ScanError:
            continue
        for kind in kinds:
            try:  # one kind failing (no head found for a tight crop) leaves the others
                varied = brain_variant(pixels, kind, rng)
            except ScanError:
                continue
            if (s := sample_of(classifier, png_bytes(varied), f"variant:{kind}")) is not None:
                samples.append(s)
    return samples


def collect_samples(
    classifier: Classifier,
    root: Path,
    validation: set[Path],
    per_source: int = 700,
    held_out: frozenset[Path] = frozenset(),
) -> GateSamples:
    """Read (and vary, and generate) every image the checks learn from, once; never a ``held_out`` one (a fold's
    institution left out of every fitted rule: the checks trained on it, little-brain sections and all)."""
    from core.training.sources import discover

    items = discover([root / name for name in BRAIN_SOURCES if (root / name).is_dir()])
    items = [item for item in items if item.path.resolve() not in held_out]
    rng = np.random.default_rng(0)
    train, held_out, chosen_all, held_all = [], [], [], []
    for source in sorted({item.source for item in items}):
        mine = [item for item in items if item.source == source]
        held = [item for item in mine if item.path.resolve() in validation]
        rest = [item for item in mine if item.path.resolve() not in validation]
        little = [item for item in rest if (item.head_pixels or LITTLE_BRAIN_PIXELS) < LITTLE_BRAIN_PIXELS]
        chosen = [rest[i] for i in rng.permutation(len(rest))[:per_source]] + little
        train += [s for item in chosen if (s := sample_of(classifier, item.path, source, item))]
        held_out += [s for item in held if (s := sample_of(classifier, item.path, source, item))]
        chosen_all += [item for item in chosen if (item.head_pixels or ENOUGH_BRAIN_PIXELS) >= ENOUGH_BRAIN_PIXELS]
        held_all += [item for item in held if (item.head_pixels or ENOUGH_BRAIN_PIXELS) >= ENOUGH_BRAIN_PIXELS]
    variants = []
    for k, kind in enumerate(VARIANTS):  # each training slice varied one way, the kinds in turn
        variants += _variants(classifier, chosen_all[k :: len(VARIANTS)], [kind], seed=k)
    return GateSamples(
        train=train,
        validation=held_out,
        variants=variants,
        validation_variants=_variants(classifier, held_all, VARIANTS, seed=100),
        real=[s for path in sorted((root / NOT_BRAIN).glob("*.png")) if (s := sample_of(classifier, path, NOT_BRAIN))],
        generated=generated_negatives(classifier),
        fresh=generated_negatives(classifier, per_kind=20, seed=50_000),
    )


def fit_learned_checks(
    classifier: Classifier,
    root: Path,
    validation: set[Path],
    max_refused: float = 0.005,
    per_source: int = 700,
    held_out: frozenset[Path] = frozenset(),
) -> tuple[list[LearnedCheck], dict[str, Any]]:
    """Fit both checks from the folders under ``root`` (training parts only; ``validation`` paths are where the
    thresholds are set and the refusals measured; ``held_out`` ones are never read). Returns the checks and a
    report of what they refuse."""
    return fit_from_samples(collect_samples(classifier, root, validation, per_source, held_out), max_refused)


def fit_from_samples(samples: GateSamples, max_refused: float = 0.005) -> tuple[list[LearnedCheck], dict[str, Any]]:
    accepted = [s for s in samples.validation if s.enough_brain]
    brain = [s for s in samples.train if s.enough_brain] + samples.variants
    not_mri = fit_check(
        "not_mri",
        "it does not look like a brain MRI slice (another body part, a radiograph or a non-medical image)",
        [*samples.real, *samples.generated],
        brain,
        accepted,
        max_refused,
    )
    little_brain = fit_check(
        "little_brain",
        "this section holds too little brain for a verdict (skull base, vertex or a lateral section)",
        [s for s in samples.train if s.little_brain],
        brain,
        accepted,
        max_refused,
    )
    checks = [not_mri, little_brain]
    return checks, {
        "max_refused_per_source": max_refused,
        "not_mri_cross_validated": cross_validated_refusals(
            samples.real, samples.generated, brain, accepted, max_refused
        ),
        "generated_refused_in_sample": refused_share(not_mri, samples.generated),
        "generated_refused_fresh_seeds": _by_source(samples.fresh, [not_mri]),
        "validation_refused_by_either": _by_source(accepted, checks),
        "validation_variants_refused_by_either": _by_source(samples.validation_variants, checks),
        "little_brain_validation_refused": refused_share(
            little_brain, [s for s in samples.validation if s.little_brain]
        ),
        "trained_on": {
            "brain": len(brain) - len(samples.variants),
            "brain_variants": len(samples.variants),
            "little_brain": sum(s.little_brain for s in samples.train),
            "real_not_mri": len(samples.real),
            "generated_not_mri": len(samples.generated),
        },
    }


def _by_source(samples: Sequence[Sample], checks: Sequence[LearnedCheck]) -> dict[str, Any]:
    return {
        source: _either([s for s in samples if s.source == source], checks)
        for source in sorted({s.source for s in samples})
    }


def _either(samples: Sequence[Sample], checks: Sequence[LearnedCheck]) -> dict[str, Any]:
    refused = sum(any(c.probability(s.values) >= c.threshold for c in checks) for s in samples)
    return {"refused": int(refused), "n": len(samples), "share": round(refused / len(samples), 4) if samples else None}
