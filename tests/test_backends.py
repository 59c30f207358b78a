"""A model trained and saved by Keras on PyTorch (the accelerator machine has no TensorFlow) gives the same logits
when the app serves it on TensorFlow. ``tests/data/torch_backend`` holds such a model, its card and PyTorch's own
logits on 50 generated inputs; ``tests/data/torch_backend/make.py`` remakes them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.model.classifier import Classifier
from tests.data.torch_backend.make import inputs

FIXTURE = Path(__file__).parent / "data" / "torch_backend"


def test_a_model_saved_on_pytorch_gives_the_same_logits_on_tensorflow() -> None:
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the app's own runtime is TensorFlow; this suite runs on another backend")
    recorded = json.loads((FIXTURE / "logits.json").read_text())
    assert "on torch" in recorded["backend"]
    classifier = Classifier.from_card(FIXTURE / "m3.json")  # the weights' SHA-256 is checked against the card
    assert "on torch" in json.loads((FIXTURE / "m3.json").read_text())["training"]["backend"]
    raw, probabilities = classifier.scores(inputs(classifier.card.input.size))
    torch_logits = np.asarray(recorded["logits"], np.float32)
    assert raw.shape == torch_logits.shape == (50, 4)
    assert float(np.abs(raw - torch_logits).max()) <= 1e-3
    assert np.ptp(torch_logits) > 0.1  # trained logits that differ between inputs, not a constant
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
