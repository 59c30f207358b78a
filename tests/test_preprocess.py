"""The shared preprocessing path: crop, square, scale, and the left-right asymmetry channel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.model.analysis import analyse
from core.model.classifier import Classifier
from core.model.preprocess import InputSpec, asymmetry, to_model_input
from core.model.roi import find_brain
from tests.scans import png_bytes, synthetic_slice, write_model_card

MIRROR = InputSpec(96, channels=2, mirror=True)


def _lesion_and_rest(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Masks over the model input: the synthetic lesion's side (upper right quadrant) and the brain's middle band."""
    yy, xx = np.mgrid[0:size, 0:size]
    lesion_side = (yy < size * 0.45) & (xx > size * 0.55) & (xx < size * 0.85) & (yy > size * 0.1)
    middle = (yy > size * 0.6) & (yy < size * 0.85) & (xx > size * 0.3) & (xx < size * 0.7)
    return lesion_side, middle


def _with_box(pixels: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    return pixels, find_brain(pixels).box


def test_mirror_input_is_the_plain_input_plus_its_asymmetry() -> None:
    pixels = synthetic_slice(256, tumour=True)
    box = find_brain(pixels).box
    plain = to_model_input(pixels, box, InputSpec(96))
    mirrored = to_model_input(pixels, box, MIRROR)
    assert mirrored.shape == (96, 96, 2) and mirrored.dtype == np.float32
    np.testing.assert_array_equal(mirrored[:, :, 0], plain[:, :, 0])
    np.testing.assert_allclose(mirrored[:, :, 1], asymmetry(plain[:, :, 0]))
    # the map is itself mirror-symmetric: a one-sided change shows on both sides, its place is in channel 0
    np.testing.assert_allclose(mirrored[:, :, 1], mirrored[:, ::-1, 1], atol=1e-6)


def test_a_one_sided_mass_stands_out_where_normal_anatomy_cancels() -> None:
    lesion_side, middle = _lesion_and_rest(96)
    healthy = to_model_input(*_with_box(synthetic_slice(256, seed=3)), MIRROR)[:, :, 1]
    tumour = to_model_input(*_with_box(synthetic_slice(256, seed=3, tumour=True)), MIRROR)[:, :, 1]
    assert tumour[lesion_side].max() > 0.5  # the lesion is bright against its mirror image
    assert healthy[lesion_side].max() < 0.25  # texture noise alone stays low after smoothing
    assert tumour[middle].max() < 0.25  # away from the lesion the two maps agree
    symmetric = np.tile(np.hanning(96)[None, :], (96, 1)).astype(np.float32)
    assert float(asymmetry(symmetric).max()) < 1e-6


@pytest.mark.parametrize(
    "spec",
    [
        {"size": 96, "channels": 1, "mirror": True},
        {"size": 96, "channels": 3, "mirror": True},
        {"size": 96, "channels": 2},
        {"size": 4},
        {"size": 96, "scaling": "zscore"},
    ],
)
def test_inconsistent_input_specs_are_refused(spec: dict) -> None:
    with pytest.raises(ValueError, match="unsupported input spec"):
        InputSpec(**spec)


def test_a_card_asking_for_the_mirror_channel_gets_it(tmp_path: Path) -> None:
    classifier = Classifier.from_card(write_model_card(tmp_path, mirror=True, size=48))
    assert classifier.card.input == InputSpec(48, channels=2, mirror=True)
    analysis = analyse(png_bytes(synthetic_slice(200, tumour=True)), classifier)
    assert analysis.model_input.shape == (48, 48, 2)
    assert abs(sum(analysis.prediction.probabilities.values()) - 1.0) < 1e-5
