"""The classifier: a Keras model bundled with its card (labels, input spec, calibration, decision rule).

Build one with :meth:`Classifier.from_card`; it refuses weights whose SHA-256 differs from the card's.
Calibrated probabilities are ``softmax(z / T + b)`` (or ``sigmoid(z / T)``), where ``z`` are the logits (recovered
as ``log p`` from probability outputs), ``T`` is the card's temperature and ``b`` its per-label logit bias.
Tumour probability = 1 - P(negative label).

One instance is shared by every Streamlit session: the forward pass runs under a lock, with ``training=False``.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import ModelError
from core.model.card import ModelCard, sha256_file
from core.model.gate import GatePolicy
from core.model.preprocess import InputSpec

if TYPE_CHECKING:
    from core.model.lesion import Segmenter


def logits_of(raw: np.ndarray, card: ModelCard) -> np.ndarray:
    """A softmax or logits model's outputs (N, units) as logits (a softmax's as log-probabilities): what the
    card's temperature and bias apply to, at serving and when they are fitted."""
    raw = np.asarray(raw, dtype=np.float64)
    return np.log(np.clip(raw, 1e-12, None)) if card.output == "softmax" else raw


def calibrated_probabilities(raw: np.ndarray, card: ModelCard) -> np.ndarray:
    """Model outputs (N, units) -> calibrated probabilities (N, len(labels)) as the card declares."""
    raw = np.asarray(raw, dtype=np.float64)
    if card.output == "sigmoid":
        p = np.clip(raw.reshape(len(raw), -1)[:, 0], 1e-7, 1 - 1e-7)
        positive = 1.0 / (1.0 + np.exp(-np.log(p / (1 - p)) / card.temperature))
        return np.stack([1.0 - positive, positive], axis=1)
    return calibrated_logits(logits_of(raw, card), card)


def calibrated_logits(logits: np.ndarray, card: ModelCard) -> np.ndarray:
    """Logits (a softmax model's log-probabilities: :func:`logits_of`) -> probabilities with the card's temperature
    and bias, in the card's label order."""
    return calibrate(logits, card.temperature, np.array([card.logit_bias.get(label, 0.0) for label in card.labels]))


def calibrate(logits: np.ndarray, temperature: float, bias: np.ndarray | None = None) -> np.ndarray:
    """Calibrated probabilities: softmax(logits / T + bias), as served and as fitted (one formula)."""
    return softmax(np.asarray(logits, np.float64) / temperature + (0.0 if bias is None else bias))


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def embedding_layer(model: Any) -> Any | None:
    """The layer whose flat output feeds the last (classifying) layer: the model's own summary of an image, which
    the input gate's learned checks read (the layer named ``features`` when there is one: model 3, and an ensemble
    whose last layers are its members' outputs). None when there is no such layer."""
    named = [layer for layer in model.layers if layer.name == "features"]
    if named:
        return named[0]
    for layer in reversed(model.layers[:-1]):
        shape = getattr(getattr(layer, "output", None), "shape", None)
        if shape is not None and len(shape) == 2:
            return layer
    return None


def traced(call: Any, shape: tuple[int, int, int]) -> Any:
    """``call`` on float32 batches of ``shape`` as one traced TensorFlow graph (5x less per-call overhead than
    eager on a CPU); on another Keras backend (PyTorch on the accelerator machine) eager, outputs as NumPy."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return lambda batch: keras.tree.map_structure(keras.ops.convert_to_numpy, call(batch))
    import tensorflow as tf

    signature = [tf.TensorSpec((None, *shape), tf.float32)]
    return tf.function(tf.autograph.experimental.do_not_convert(call), input_signature=signature, reduce_retracing=True)


def _compiled_forward(model: Any, spec: InputSpec) -> Any:
    """``model(x, training=False)`` and the embedding in one pass: batch -> (raw outputs, embeddings (N, D))."""
    import keras

    shape = (spec.size, spec.size, spec.channels)
    layer = embedding_layer(model)
    if layer is None:
        forward = traced(lambda batch: model(batch, training=False), shape)
        return lambda batch: (forward(batch), np.zeros((len(batch), 0), np.float32))
    both = keras.Model(model.input, [model.output, layer.output])
    return traced(lambda batch: both(batch, training=False), shape)


def load_checked_model(weights: Path, sha256: str, card_name: str) -> Any:
    """The Keras model in ``weights`` (compile=False, safe mode), after its SHA-256 matched its card's."""
    if not weights.is_file():
        raise ModelError(f"Weights file {weights.name} named by card {card_name} is missing.")
    actual = sha256_file(weights)
    if actual != sha256:
        raise ModelError(
            f"Weights file {weights.name} does not match its card (SHA-256 {actual[:12]}..., card says "
            f"{sha256[:12]}...): refusing to load it."
        )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    import core.model.layers  # noqa: F401  (registers the project's own layers: an ensemble's input)

    try:
        return keras.saving.load_model(weights, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types for a bad file; all mean "cannot use it"
        raise ModelError(f"Weights file {weights.name} cannot be loaded as a Keras model.") from error


def with_segmenter(classifier: Classifier, lesion_card: Path | None) -> Classifier:
    """The classifier with the lesion segmenter of ``lesion_card`` beside it (every analysis then outlines and
    measures the lesion); unchanged when there is no such card (a broken card raises :class:`ModelError`)."""
    if lesion_card is not None and lesion_card.is_file():
        from core.model.lesion import Segmenter

        classifier.segmenter = Segmenter.from_card(lesion_card)
    return classifier


class Classifier:
    """A loaded model and its card. Thread-safe: one forward pass at a time."""

    def __init__(self, card: ModelCard, model: Any) -> None:
        self.card = card
        self.model = model
        self.lock = threading.Lock()  # one forward pass at a time (shared with the explainer)
        self._forward = _compiled_forward(model, card.input)
        self.gate_policy = GatePolicy.from_card(card.gate)
        self.segmenter: Segmenter | None = None  # the lesion segmenter served beside it (:func:`with_segmenter`)

    @classmethod
    def from_card(cls, card_path: str | Path) -> Classifier:
        """Read the card, check the weights' SHA-256 against it, then load the Keras model (compile=False)."""
        card = ModelCard.from_file(card_path)
        classifier = cls(card, load_checked_model(card.weights_path, card.weights_sha256, card.name))
        classifier._check_shapes()
        spec = card.input
        classifier.probabilities(np.zeros((1, spec.size, spec.size, spec.channels), np.float32))  # trace once now
        return classifier

    def _check_shapes(self) -> None:
        spec = self.card.input
        expected_in = (spec.size, spec.size, spec.channels)
        actual_in = tuple(self.model.input_shape[1:])
        if actual_in != expected_in:
            raise ModelError(f"Model {self.card.name} takes input {actual_in}, its card says {expected_in}.")
        units = int(self.model.output_shape[-1])
        expected_units = 1 if self.card.output == "sigmoid" else len(self.card.labels)
        if units != expected_units:
            raise ModelError(f"Model {self.card.name} has {units} outputs, its card implies {expected_units}.")

    def scores(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Float32 batch (N, size, size, channels) -> (raw model outputs, calibrated probabilities)."""
        raw, calibrated, _ = self.scores_and_embedding(batch)
        return raw, calibrated

    def scores_and_embedding(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Float32 batch -> (raw model outputs, calibrated probabilities, embeddings (N, D); D = 0 without one)."""
        with self.lock:
            raw, embedding = self._forward(batch.astype(np.float32, copy=False))
        raw = np.asarray(raw)
        return raw, calibrated_probabilities(raw, self.card), np.asarray(embedding)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Float32 batch (N, size, size, channels) -> calibrated probabilities (N, len(labels))."""
        return self.scores(batch)[1]
