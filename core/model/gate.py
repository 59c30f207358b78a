"""The input gate: is this a brain MRI slice the model was built for?

- ``rejected`` with reasons when cheap image checks fail (colour, no brain-sized region, a region the shape of a page
  or a frame, a bright background, a flat or a random-noise head region) or when the model's energy score says the
  input is unlike its training data (energy = -T * logsumexp(logits / T), Liu et al. 2020; threshold fitted on the
  validation split);
- ``accepted`` otherwise; an accepted verdict becomes ``needs_review`` when the decision rule says so (its tumour
  probability is in the card's review band: :mod:`core.model.decision`), see :func:`with_review`.

The image thresholds were read off the training collection (5,772 slices: colourfulness at most 0.048, brain
region 8.5-99 % of the frame with 0.1 % quantiles 20 % and 88 %, fill 0.51-0.90 at the 0.1/99.9 % quantiles,
background median at most 0.18, flatness at most 0.39) and set outside those ranges so that real scans pass. Model
2.1 relaxed the area, fill and flatness bounds (0.10 -> 0.03, 0.40 -> 0.30, 0.45 -> 0.60): the dark, low-contrast
sections of other hospitals' glioma patients failed them (3.8 % of LGG validation sections with enough head were
refused, 2.0 % after), while the learned checks, fitted on real non-brain images, refuse what they let through
(Not-brain-MRI and generated images refused as before).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from core.errors import ModelError
from core.imaging import Scan
from core.model.decision import ACCEPTED, NEEDS_REVIEW, REJECTED  # the gate's decisions, written once
from core.model.roi import BrainRegion

IMAGE_FEATURES = ("energy", "area", "fill", "background", "flatness", "colourfulness")  # what the fixed checks use
# the head's grey level and contrast: what a network that standardises each image (model 3) no longer sees
HEAD_INTENSITY = ("head_mean", "head_std")
FACTS = IMAGE_FEATURES + HEAD_INTENSITY


@dataclass(frozen=True)
class LearnedCheck:
    """A logistic check fitted on real and non-MRI images (:mod:`core.training.gate_fit`): the probability that
    the input is what ``reason`` says, from the gate's features (:func:`features`), refused from ``threshold``."""

    name: str
    reason: str
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    threshold: float
    facts: tuple[str, ...] = IMAGE_FEATURES  # the image facts after the embedding (cards before 3.0: these six)

    @classmethod
    def from_card(cls, raw: Mapping[str, Any]) -> LearnedCheck:
        return cls(
            name=str(raw["name"]),
            reason=str(raw["reason"]),
            mean=tuple(float(v) for v in raw["mean"]),
            scale=tuple(float(v) for v in raw["scale"]),
            weights=tuple(float(v) for v in raw["weights"]),
            bias=float(raw["bias"]),
            threshold=float(raw["threshold"]),
            facts=_known_facts(raw.get("facts", IMAGE_FEATURES)),
        )

    def probability(self, values: np.ndarray) -> float:
        if len(values) != len(self.weights):
            raise ValueError(f"the {self.name} check takes {len(self.weights)} features, not {len(values)}")
        z = (np.asarray(values, np.float64) - self.mean) / np.asarray(self.scale) @ np.asarray(self.weights)
        return float(1.0 / (1.0 + np.exp(-np.clip(z + self.bias, -50, 50))))


def _known_facts(names: Sequence[Any]) -> tuple[str, ...]:
    unknown = sorted(set(map(str, names)) - set(FACTS))
    if unknown:
        raise ValueError(f"the card's gate check names facts this version does not compute: {', '.join(unknown)}")
    return tuple(str(name) for name in names)


@dataclass(frozen=True)
class GatePolicy:
    max_colourfulness: float = 0.06
    min_area: float = 0.03
    max_area: float = 0.98
    min_fill: float = 0.30
    max_fill: float = 0.95
    max_background: float = 0.25
    max_flatness: float = 0.60
    min_structure: float = 0.15
    max_energy: float | None = None  # from the card; None = no model-based check
    checks: tuple[LearnedCheck, ...] = ()  # from the card's "learned" list

    @classmethod
    def from_card(cls, card_gate: Mapping[str, Any] | None) -> GatePolicy:
        """The card's gate; a malformed one is a :class:`ModelError` (it reached the Scan page as a traceback)."""
        try:
            gate = dict(card_gate or {})
            checks = tuple(LearnedCheck.from_card(raw) for raw in gate.pop("learned", []) or [])
            known = {k: v for k, v in gate.items() if k in cls.__dataclass_fields__ and k != "checks"}
            policy = cls(**known, checks=checks)
            for name in known:
                value = getattr(policy, name)
                if value is not None and not math.isfinite(float(value)):
                    raise ValueError(f"{name} is not a number")
            return policy
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            message = f"The model card's input gate is malformed ({error}); the model cannot be used."
            raise ModelError(message) from error


@dataclass(frozen=True)
class GateResult:
    decision: str
    reasons: tuple[str, ...]
    energy: float | None

    def to_json(self) -> dict[str, Any]:
        energy = None if self.energy is None else round(self.energy, 4)
        return {"decision": self.decision, "reasons": list(self.reasons), "energy": energy}


def energy(logits: np.ndarray, temperature: float) -> float:
    """Free energy of one row of logits; lower means more like the training data."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    top = z.max()
    return float(-temperature * (top + np.log(np.exp(z - top).sum())))


def background_level(scan: Scan, region: BrainRegion) -> float:
    """Median intensity (0..1) outside the brain outline; MRI backgrounds are near black."""
    return _background(scan.pixels[~region.mask(scan.pixels.shape)])


def _background(outside: np.ndarray) -> float:
    return float(np.median(outside)) / 255.0 if outside.size else 0.0


def flatness(scan: Scan, region: BrainRegion) -> float:
    """Share of the head region's pixels within 2 grey levels of its most common value: drawings and graphics
    are mostly flat, scans are textured (training slices: at most 0.39)."""
    return _flatness(scan.pixels[region.mask(scan.pixels.shape)])


def _flatness(inside: np.ndarray) -> float:
    if inside.size == 0:
        return 1.0
    counts = np.bincount(inside, minlength=256)
    mode = int(counts.argmax())
    return float(counts[max(0, mode - 2) : mode + 3].sum() / inside.size)


STRUCTURE_SIDE = 512  # rows and columns read for the pixel-to-pixel correlation, at most


def structure(scan: Scan, region: BrainRegion) -> float:
    """Correlation of each head-region pixel with its right and lower neighbours: tissue is smooth from pixel to
    pixel, random noise is not (14,834 real sections of every source: at least 0.30, 1 % below 0.44; white noise:
    0.00). A blank or flat region counts as structured (1.0): :func:`flatness` refuses it."""
    return _structure(scan.pixels, region.mask(scan.pixels.shape))


def _structure(pixels: np.ndarray, mask: np.ndarray) -> float:
    # neighbours along every step-th row and column (a 2048 px frame cost 188 MB and 0.3 s whole); never a shrunken
    # copy, whose averaging smooths noise into structure (noise in a disc read 0.30 at a quarter of its size)
    step = max(1, -(-max(pixels.shape) // STRUCTURE_SIDE))
    rows, rows_mask = pixels[::step].astype(np.float32), mask[::step]
    columns, columns_mask = pixels[:, ::step].astype(np.float32), mask[:, ::step]
    across = rows_mask[:, :-1] & rows_mask[:, 1:]
    down = columns_mask[:-1] & columns_mask[1:]
    first = np.concatenate([rows[:, :-1][across], columns[:-1][down]])
    second = np.concatenate([rows[:, 1:][across], columns[1:][down]])
    if first.size < 2 or first.std() == 0 or second.std() == 0:
        return 1.0
    return float(np.corrcoef(first, second)[0, 1])


def image_reasons(scan: Scan, region: BrainRegion, policy: GatePolicy) -> list[str]:
    mask = region.mask(scan.pixels.shape)  # the head's outline drawn once for the three checks that read it
    reasons = []
    if scan.colourfulness > policy.max_colourfulness:
        reasons.append("it is a colour image; MRI slices are grayscale")
    if not policy.min_area <= region.area_fraction <= policy.max_area:
        reasons.append(f"the head region covers {region.area_fraction:.0%} of the frame, unlike a brain slice")
    if not policy.min_fill <= region.fill <= policy.max_fill:
        reasons.append("the brightest region does not have the shape of a head")
    if _background(scan.pixels[~mask]) > policy.max_background:
        reasons.append("its background is bright, unlike an MRI slice")
    if _flatness(scan.pixels[mask]) > policy.max_flatness:
        reasons.append("the head region is mostly one flat intensity, like a drawing rather than a scan")
    if _structure(scan.pixels, mask) < policy.min_structure:
        reasons.append("the head region is random noise from pixel to pixel, unlike tissue")
    return reasons


def image_facts(scan: Scan, region: BrainRegion, logits: np.ndarray | None, temperature: float) -> dict[str, float]:
    """Every fact of :data:`FACTS` about one image (the head's outline drawn once)."""
    mask = region.mask(scan.pixels.shape)
    inside = scan.pixels[mask]
    grey = inside.astype(np.float64) / 255.0
    return {
        "energy": energy(logits, temperature) if logits is not None else 0.0,
        "area": region.area_fraction,
        "fill": region.fill,
        "background": _background(scan.pixels[~mask]),
        "flatness": _flatness(inside),
        "colourfulness": scan.colourfulness,
        "head_mean": float(grey.mean()) if grey.size else 0.0,
        "head_std": float(grey.std()) if grey.size else 0.0,
    }


def features(embedding: np.ndarray | None, facts: Mapping[str, float], names: Sequence[str] = FACTS) -> np.ndarray:
    """What a learned check looks at: the model's own view of the image (its penultimate-layer embedding), then
    the image facts ``names`` (older cards' checks: the six of :data:`IMAGE_FEATURES`)."""
    values = [facts[name] for name in names]
    return np.concatenate([np.asarray(embedding if embedding is not None else [], np.float64), values])


def assess(
    scan: Scan,
    region: BrainRegion,
    logits: np.ndarray | None,
    temperature: float,
    policy: GatePolicy,
    embedding: np.ndarray | None = None,
) -> GateResult:
    """Accepted or rejected, for one analysed scan (``logits`` None when the model outputs probabilities only;
    ``embedding`` None when the model has no penultimate layer to read, and then no learned check runs)."""
    reasons = image_reasons(scan, region, policy)
    score = energy(logits, temperature) if logits is not None else None
    if score is not None and policy.max_energy is not None and score > policy.max_energy:
        reasons.append("the model finds it unlike any brain MRI it was trained on")
    if policy.checks and embedding is not None:
        facts = image_facts(scan, region, logits, temperature)
        reasons += [
            check.reason
            for check in policy.checks
            if check.probability(features(embedding, facts, check.facts)) >= check.threshold
        ]
    return GateResult(REJECTED if reasons else ACCEPTED, tuple(reasons), score)


def with_review(gate: GateResult, review_reasons: Sequence[str]) -> GateResult:
    """An accepted verdict the decision rule wants reviewed becomes ``needs_review`` with those reasons."""
    if gate.decision != ACCEPTED or not review_reasons:
        return gate
    return GateResult(NEEDS_REVIEW, tuple(review_reasons), gate.energy)


def fit_energy_threshold(energies: Sequence[float], quantile: float = 0.995) -> float:
    """The validation energy below which ``quantile`` of real scans fall."""
    return round(float(np.quantile(np.asarray(energies, dtype=np.float64), quantile)), 4)


def policy_section(policy: GatePolicy, fitted_on: str, report: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The model card's ``gate`` section for ``policy`` (and what its learned checks refuse)."""
    raw = asdict(policy)
    raw["learned"] = raw.pop("checks")
    return {**raw, "fitted_on": fitted_on, **({"learned_report": report} if report else {})}
